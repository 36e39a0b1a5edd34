"""Deploy `serve_config.yaml` programmatically, exactly as `serve run serve_config.yaml` does.

Tests and benchmarks use this instead of `serve.run(build_app())` so that they exercise the real
configuration (fractional CPUs, autoscaling, health checks) rather than code defaults, on a port
of their choosing. `python -m serve_app.launch` starts a private cluster and prints the URL.

Run that way, the service shuts down gracefully (serve_app/drain.py): the first SIGTERM or SIGINT
stops new speech (503 "draining", /health/ready 503) and waits for the requests in flight, up to the
Ingress deployment's graceful_shutdown_timeout_s, before Serve and the cluster are shut down (exit
0); a second signal exits at once with 128+signum. Plain `serve run` has no such drain.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"
DEFAULT_DRAIN_TIMEOUT_S = 20.0  # Serve's own default graceful_shutdown_timeout_s
DRAIN_FLUSH_S = 2.0  # after the last request ends, before Serve stops: see `drain`

logger = logging.getLogger("serve_app.launch")


def cluster_environment(path: str | Path = DEFAULT_CONFIG) -> dict[str, str]:
    """The environment the config gives Serve's controller (`controller_options.runtime_env.env_vars`).

    `serve_config.yaml` is where Ray Serve's throughput mode and the short draining periods are set,
    so that plain `serve run serve_config.yaml` gets them: the controller reads them and the proxies
    and replicas it starts inherit them. Processes that start Ray themselves (this launcher, the
    tests, the benchmarks, the simulated cluster's nodes) set the same variables in their own
    environment, so that the handles they create and every Ray process agree with the replicas.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    env = ((raw.get("controller_options") or {}).get("runtime_env") or {}).get("env_vars") or {}
    return {str(key): str(value) for key, value in env.items()}


# The side ports of HAProxy mode, fixed by default: HAProxy's statistics page and Prometheus metrics
# (8404, 9101) and the head node's Serve proxy, HAProxy's backup (8500, 9500).
HAPROXY_PORT_VARIABLES = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)


def apply_cluster_environment(path: str | Path = DEFAULT_CONFIG) -> None:
    """Set the config's controller environment here unless the operator set it; call before `ray.init`."""
    for key, value in cluster_environment(path).items():
        os.environ.setdefault(key, value)


def side_ports() -> dict[str, str]:
    """Free ports for HAProxy mode's side listeners, for one Ray node started from here."""
    return {key: str(free_port()) for key in HAPROXY_PORT_VARIABLES}


@contextlib.contextmanager
def own_side_ports() -> Iterator[None]:
    """Around `ray.init`: the cluster it starts gets side ports of its own (unless the operator set them).

    Ray's processes inherit them at start; they are removed again afterwards, so that another
    cluster started from this process's children (a test's launcher, a benchmark's `serve run`)
    picks its own instead of colliding with these.
    """
    chosen = {key: value for key, value in side_ports().items() if key not in os.environ}
    os.environ.update(chosen)
    try:
        yield
    finally:
        for key in chosen:
            os.environ.pop(key, None)


_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the reaper of every process it starts, however deep (Linux; else nothing).

    Ray stops HAProxy only in a graceful Serve shutdown: a cluster torn down without one (a drain
    that timed out, a second signal, a test session's end) leaves it running, holding the HTTP port.
    Adopted by this process instead of init, such orphans are found and ended by `end_orphans`.
    """
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def end_orphans(grace_s: float = 3.0) -> None:
    """After the cluster is shut down: end what of it is still running as this process's child."""
    leftovers = _children()
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        for pid in list(leftovers):
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    leftovers.remove(pid)
    for pid in leftovers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


# Ray's worker processes take 10002-19999 by default; ports from 20000 up to the start of the
# kernel's ephemeral range are nobody's.
_FREE_PORT_FLOOR = 20000

# Ports this process has handed out. A port is only bound when its user starts, often after
# several more have been chosen (a Ray node takes nine at once), so a probe that finds it free
# proves nothing: without this record two components of one node could be given the same port.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (for private clusters, tests and benchmarks), chosen
    below the kernel's ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the same range as the source ports of
    outgoing connections, and a starting Ray cluster opens hundreds of those: one of them was seen
    holding the port when HAProxy came to bind it a few seconds later, and the cluster failed to
    start ("Address already in use"). Below that range only a listener could take it.

    One process never gets the same port twice, even before the first taker binds it.
    """
    below = range(_FREE_PORT_FLOOR, _ephemeral_start())
    with _HANDED_OUT_LOCK:
        for port in random.sample(below, min(200, len(below))):
            if port in _HANDED_OUT:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as sock:  # no room below the ephemeral range on this host
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the IANA range starts at 49152
        return 49152


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    """Block until `url` answers below 500 (the app is up), or raise with the last error."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f}s: {last}")


def load_config(path: str | Path = DEFAULT_CONFIG, *, port: int | None = None, host: str | None = None) -> Any:
    """The validated Serve deploy schema from `path`, with the HTTP port/host overridden."""
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(Path(path).read_text())
    http = raw.setdefault("http_options", {})
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    return ServeDeploySchema.model_validate(raw)


def start_serve(config: Any) -> Any:
    """Serve's controller client, started with the config's HTTP and controller options.

    The controller replaces a proxy that is not ready within three readiness checks (5 s each),
    and `serve_start` then fails with the first proxy's death although the controller is up and
    starting another. On a loaded machine (seen in CI: three private clusters starting at once on
    2 cores) that ended the launcher. Asking again connects to the running controller; the
    application then waits in `wait_running`, and its proxy comes up behind it.
    """
    import ray.exceptions
    from ray.serve._private import api as serve_api

    def start() -> Any:
        return serve_api.serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            controller_options=config.controller_options,
        )

    try:
        return start()
    except ray.exceptions.ActorDiedError as exc:
        logger.warning("a Serve proxy was replaced while starting (%s); connecting to the controller again",
                       type(exc).__name__)
        return start()


def deploy_config(config: Any, *, timeout_s: float = 180.0) -> str:
    """Start Serve with the config's HTTP options, deploy its applications, wait until RUNNING."""
    client = start_serve(config)
    client.deploy_apps(config, _blocking=False)
    names = [app.name for app in config.applications]
    wait_running(names, timeout_s=timeout_s)
    host = config.http_options.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{config.http_options.port}"


def wait_running(app_names: list[str], *, timeout_s: float = 180.0) -> None:
    """Block until every named application is RUNNING; raise with Serve's message if one fails."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        statuses = serve.status().applications
        states = {name: statuses[name].status if name in statuses else "NOT_STARTED" for name in app_names}
        failed = {n: statuses[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve application failed: {failed}")
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve applications not running after {timeout_s:.0f}s: {states}")
        time.sleep(0.5)


def drain_timeout_s(config: Any, deployment: str = "Ingress") -> float:
    """The named deployment's graceful_shutdown_timeout_s from the config (Serve's default if unset)."""
    for app in config.applications:
        for dep in app.deployments:
            value = getattr(dep, "graceful_shutdown_timeout_s", None)
            if dep.name == deployment and isinstance(value, int | float):
                return float(value)
    return DEFAULT_DRAIN_TIMEOUT_S


class ForcedExit(Exception):
    """A second shutdown signal: stop waiting for the drain."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# A stop that reaches us twice at once is one stop: `make` forwards SIGTERM to its child while the
# same signal sent to the whole process group (systemd, `kill -- -PGID`) reaches the child too.
SAME_STOP_WINDOW_S = 1.0


class ShutdownSignals:
    """SIGTERM/SIGINT: the first asks for a drain, a later one raises `ForcedExit` in the main thread.

    Installed after `ray.init`, which sets its own SIGTERM handler (exit at once) in the driver.
    A repeat within SAME_STOP_WINDOW_S of the first is the same stop delivered twice, not an
    operator insisting, and is ignored.

    While the drain waits (`deferring`), the later signal is only recorded and `check` raises it
    between two polls: raised from the handler in the middle of `ray.get`, Ray would wrap it into a
    `RaySystemError` and the launcher would exit 1 instead of 128 + signum.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.first: int | None = None
        self.first_at = 0.0
        self.clock = clock
        self.requested = threading.Event()
        self.forced: int | None = None
        self._deferring = False

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Within: a forcing signal is raised by `check`, not by the handler."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.check()

    def check(self) -> None:
        """Raise `ForcedExit` if a forcing signal arrived."""
        if self.forced is not None:
            raise ForcedExit(self.forced)

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        now = self.clock()
        if self.first is None:
            self.first = signum
            self.first_at = now
            self.requested.set()
            return
        if now - self.first_at < SAME_STOP_WINDOW_S:
            logger.info(
                "%s again within %.1fs: the same stop, still draining", signal.Signals(signum).name, SAME_STOP_WINDOW_S
            )
            return
        for other in (signal.SIGTERM, signal.SIGINT):  # a third signal kills the process outright
            signal.signal(other, signal.SIG_DFL)
        self.forced = signum
        if not self._deferring:
            raise ForcedExit(signum)

    def wait(self) -> int:
        while not self.requested.wait(1.0):
            pass
        assert self.first is not None
        return self.first


@contextlib.contextmanager
def own_process_group() -> Iterator[None]:
    """Start Ray's processes in a process group of their own, and stay in ours.

    A stop sent to our whole process group (`make run` under systemd, `kill -- -PGID`, Ctrl-C in a
    terminal) must reach this launcher, which drains, and not Ray's processes: a GCS or raylet that
    dies first takes the streams in flight with it, and the launcher then waits on a dead cluster.
    Processes inherit the group of whoever starts them, so the launcher leads a new group while
    `ray.init` starts the cluster, then moves itself back; Ray's processes (and the workers raylet
    starts later) stay in the new group and are stopped by `ray.shutdown()` after the drain.
    """
    original = os.getpgrp()
    try:
        os.setpgid(0, 0)
    except OSError:  # a session leader cannot move: its group is its own already
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpgid(0, original)


def drain(coordinator: Any, timeout_s: float, interrupt: Callable[[], None] | None = None) -> bool:
    """Stop new speech and wait for the requests in flight; True when they all finished in time.

    `interrupt` is called between polls and may raise to stop waiting (`ShutdownSignals.check`).
    """
    from serve_app.drain.launcher import drain_proxies, request_drain, wait_drained

    started = time.monotonic()
    request_drain(coordinator)
    proxies = drain_proxies()
    drained = wait_drained(
        coordinator,
        timeout_s,
        proxies=proxies,
        interrupt=interrupt,
        on_progress=lambda s, elapsed: logger.info(
            "draining: %d request(s) in flight on %d replica(s) (%.0fs of %.0fs)",
            s.in_flight,
            s.replicas,
            elapsed,
            timeout_s,
        ),
    )
    elapsed = time.monotonic() - started
    if drained:
        logger.info("drained in %.1fs", elapsed)
        # A response the ingress has finished may still sit in its HTTP server's buffers on the way to
        # a slow client (the app's last send returns before the bytes leave); Serve's shutdown would
        # drop them, so they get a moment to go out.
        flush_until = time.monotonic() + DRAIN_FLUSH_S
        while time.monotonic() < flush_until:
            if interrupt is not None:
                interrupt()
            time.sleep(0.1)
    else:
        logger.warning("drain timed out after %.1fs; requests still in flight are cut", elapsed)
    return drained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a private Ray cluster and deploy the Serve config.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument(
        "--dashboard-port", type=int, default=8265, help="Ray dashboard (replicas, logs, metrics); 0 disables it"
    )
    parser.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="where the dashboard listens; it has no authentication and its Jobs API runs commands, "
        "so it stays on loopback unless you opt in (e.g. behind an authenticating proxy)",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=None,
        help="longest wait for requests in flight at shutdown (default: the Ingress graceful_shutdown_timeout_s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray
    from ray import serve

    from serve_app.drain.launcher import get_or_create_coordinator

    port = args.port or free_port(args.host)
    config = load_config(args.config, port=port, host=args.host)
    timeout_s = args.drain_timeout_s if args.drain_timeout_s is not None else drain_timeout_s(config)
    os.makedirs("data", exist_ok=True)
    signals = ShutdownSignals()
    # Includes the short draining periods: Serve's 30 s defaults (meant for node drains) would make
    # every drain last the whole timeout.
    apply_cluster_environment(args.config)
    adopt_orphans()
    # address="local": always a private cluster, even when RAY_ADDRESS points at another one.
    with own_process_group(), own_side_ports():
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            include_dashboard=args.dashboard_port > 0,
            dashboard_host=args.dashboard_host,
            dashboard_port=args.dashboard_port or None,
        )
    signals.install()
    try:
        coordinator = get_or_create_coordinator()  # before the replicas, so they find it at start
        url = deploy_config(config)
        print(f"SERVE_URL={url}", flush=True)
        signum = signals.wait()
        name = signal.Signals(signum).name
        logger.info("%s: draining for up to %.0fs (a second signal exits at once)", name, timeout_s)
        with signals.deferring():
            drained = drain(coordinator, timeout_s, signals.check)
        if drained:
            serve.shutdown()  # nothing in flight: replicas stop at once
        # After a timed-out drain, skip serve.shutdown: it would wait graceful_shutdown_timeout_s
        # again for the same requests; tearing the cluster down ends them now.
        ray.shutdown()
        end_orphans()
        logger.info("shut down")
        return 0
    except ForcedExit as exc:
        logger.warning("%s again: exiting without waiting for the drain", signal.Signals(exc.signum).name)
        ray.shutdown()
        end_orphans()
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
