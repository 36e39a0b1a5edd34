"""Finding the Serve replica processes of one application and reading their memory.

Several Ray clusters may run on one machine (each engineer's tests start their own), all with an
application called `tts`, so matching process titles machine-wide would measure the wrong
replicas. Two ways that stay inside the right cluster:

- `RayActorLocator`: the cluster is known (`--ray-address`, or the driver is connected because
  the load test or the test suite started it): its actor table lists the
  `ServeReplica:<app>:<deployment>` actors with their PIDs and nodes.
- `ProcessTreeLocator`: only a URL is known. The process listening on the URL's port is that
  cluster's Serve proxy; its parent is the node's raylet, whose children titled
  `ray::ServeReplica:<app>:...` are exactly that cluster's replicas on this host.

Memory is the resident set size (psutil RSS), the figure an OOM killer and a pod limit act on.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

import psutil

REPLICA_PREFIX = "ServeReplica:"


@dataclass(frozen=True)
class Replica:
    """One replica process on this host; `key` names it in the report (`Ingress#1234`)."""

    deployment: str
    pid: int

    @property
    def key(self) -> str:
        return f"{self.deployment}#{self.pid}"


class ReplicaLocator(Protocol):
    source: str

    def locate(self) -> list[Replica]:
        """The application's live replicas on this host (may change while the test runs)."""
        ...


def deployment_of(title: str, app: str) -> str | None:
    """`ServeReplica:tts:Ingress` -> `Ingress` when it belongs to `app`, else None.

    Ray retitles a worker while it runs a task (`ServeReplica:tts:Ingress.handle_request`), so
    whatever follows the first dot is the method, not part of the deployment's name.
    """
    prefix = f"{REPLICA_PREFIX}{app}:"
    if title.startswith(prefix):
        return title[len(prefix) :].split(".", 1)[0] or None
    return None


def local_addresses() -> set[str]:
    """Every IP address of this host: replicas elsewhere cannot be measured with psutil."""
    found = {"127.0.0.1", "::1"}
    for addrs in psutil.net_if_addrs().values():
        found.update(a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    return found


class RayActorLocator:
    """Replicas on this host from the actor table of one Ray cluster.

    With `address` (a dashboard URL or bootstrap address the operator named) Ray's state API
    answers. Without it, the table of the cluster this driver is connected to is read from the
    GCS: the state API goes through the dashboard, which test clusters do not run, and without
    an address it falls back to the default port, which on a shared host may be another cluster.
    """

    source = "ray-actors"

    def __init__(self, app: str, address: str | None = None) -> None:
        self.app = app
        self.address = address
        self._local = local_addresses()

    def locate(self) -> list[Replica]:
        found: list[Replica] = []
        for class_name, pid, ip in self._rows():
            deployment = deployment_of(class_name, self.app)
            if deployment and pid and ip in self._local and psutil.pid_exists(pid):
                found.append(Replica(deployment, pid))
        return sorted(found, key=lambda r: r.key)

    def _rows(self) -> list[tuple[str, int, str]]:
        """(class name, pid, node IP) of every live actor."""
        if self.address:
            from ray.util.state import list_actors, list_nodes

            ips = {n.node_id: n.node_ip for n in list_nodes(address=self.address, raise_on_missing_output=False)}
            actors = list_actors(
                address=self.address, filters=[("state", "=", "ALIVE")], limit=10_000, raise_on_missing_output=False
            )
            return [(a.class_name or "", int(a.pid or 0), ips.get(a.node_id or "", "")) for a in actors]
        from ray._private import state

        return [
            (str(info.get("ActorClassName", "")), int(info.get("Pid") or 0), str(info["Address"]["IPAddress"]))
            for info in state.actors().values()
            if info.get("State") == "ALIVE"
        ]


class ProcessTreeLocator:
    """Replicas found from the Serve proxy listening on a local port (see the module docstring)."""

    source = "process-tree"

    def __init__(self, app: str, port: int) -> None:
        self.app = app
        self.port = port
        self._raylet: psutil.Process | None = None

    def locate(self) -> list[Replica]:
        raylet = self._raylet if self._raylet is not None and self._raylet.is_running() else self._find_raylet()
        if raylet is None:
            return []
        found: list[Replica] = []
        for child in raylet.children():
            try:
                title = (child.cmdline() or [""])[0]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            deployment = deployment_of(title.removeprefix("ray::"), self.app)
            if deployment:
                found.append(Replica(deployment, child.pid))
        return sorted(found, key=lambda r: r.key)

    def _find_raylet(self) -> psutil.Process | None:
        try:
            connections = psutil.net_connections(kind="tcp")
        except psutil.AccessDenied:
            return None
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port and conn.pid:
                try:
                    self._raylet = _raylet_above(psutil.Process(conn.pid))
                except psutil.NoSuchProcess:
                    continue
                if self._raylet is not None:
                    return self._raylet
        return None


def _raylet_above(process: psutil.Process) -> psutil.Process | None:
    """The raylet among the listener's ancestors: Serve's proxy is its child, while HAProxy (which
    holds the port in HAProxy mode) is a child of its manager actor, itself the raylet's child."""
    for ancestor in process.parents():
        try:
            if "raylet" in " ".join(ancestor.cmdline()[:1]):
                return ancestor
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


class NoLocator:
    """Memory cannot be read (the deployment is on another host); the report says why."""

    source = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def locate(self) -> list[Replica]:
        return []


def _is_local_host(host: str) -> bool:
    if host in ("localhost", "0.0.0.0", "::"):
        return True
    try:
        return socket.gethostbyname(host) in local_addresses()
    except OSError:
        return False


def make_locator(url: str, app: str, ray_address: str | None = None) -> ReplicaLocator:
    """The best way to find `app`'s replicas: the named or connected cluster, else the proxy's tree."""
    if ray_address:
        return RayActorLocator(app, ray_address)
    try:
        import ray

        if ray.is_initialized():
            return RayActorLocator(app)
    except ImportError:
        pass
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if not _is_local_host(host):
        return NoLocator(f"{host} is not this host; pass --ray-address to read replicas from the cluster")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return ProcessTreeLocator(app, port)


def read_rss(replicas: list[Replica]) -> dict[str, int]:
    """RSS in bytes per replica key; replicas that exited meanwhile are left out."""
    sample: dict[str, int] = {}
    for replica in replicas:
        try:
            sample[replica.key] = int(psutil.Process(replica.pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sample


def total_mb(sample: Mapping[str, int]) -> float:
    return round(sum(sample.values()) / 1_048_576, 1)
