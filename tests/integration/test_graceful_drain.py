"""Graceful shutdown of `python -m serve_app.launch` with speech streams in flight (serve_app/drain.py).

Each test starts the real launcher as a subprocess in its own process group (its own private Ray
cluster, real Serve, real Flite), so the shared test cluster is never touched. Both launchers
start together, because a private cluster takes most of the time here. RAY_ADDRESS points at a
dead address to show that the launcher never attaches to another cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from serve_app.launch import SAME_STOP_WINDOW_S
from tests.conftest import TEST_ENV, free_port

pytestmark = pytest.mark.integration

SENTENCES = 30
TEXT = " ".join(f"This is sentence number {i} of a long answer that keeps going." for i in range(SENTENCES))
SPEECH = {"model": "tts-1", "engine": "flite", "input": TEXT, "response_format": "pcm"}
READ_CHUNK = 64 * 1024
READ_PAUSE_S = 0.05  # a client slower than the server, so streams are still running at the signal
EXIT_LIMIT_S = 120.0  # liveness bound only: drain (30 s at most) plus Serve and Ray shutting down


@dataclass
class Launcher:
    """One `python -m serve_app.launch` in its own process group, logging to a file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the group this test started (the launcher and the Ray processes it spawned)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


# Stands in for `make run`: the launcher is its child in the same process group, and a SIGTERM to the
# parent is forwarded to the child, as GNU make does (make itself then exits 143, which is make's own
# rule for signals; this parent exits with the launcher's status so the test can read it).
MAKE_LIKE_PARENT = (
    "import signal, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))\n"
    "sys.exit(child.wait())\n"
)


def start_launcher(tmp: Path, *extra: str, under_parent: bool = False) -> Launcher:
    port = free_port()
    env = {
        **os.environ,
        "ENV": "test",
        "ENV_FILE": "/nonexistent/.env",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/s.db",
        "TTS_ENGINE_CHAIN": "flite",
        "RAY_ADDRESS": "127.0.0.1:1",
        "TTS_NORMALIZE_CACHE_DIR": TEST_ENV["TTS_NORMALIZE_CACHE_DIR"],
    }
    log = tmp / "launch.log"
    with log.open("wb") as out:
        command = [
            sys.executable, "-m", "serve_app.launch", "--port", str(port), "--num-cpus", "2",
            "--dashboard-port", "0", *extra,
        ]
        if under_parent:
            command = [sys.executable, "-c", MAKE_LIKE_PARENT, *command]
        proc = subprocess.Popen(
            command, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Launcher(proc, f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def launchers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launcher]]:
    started: dict[str, Launcher] = {}
    try:
        started["graceful"] = start_launcher(tmp_path_factory.mktemp("graceful"))
        started["forced"] = start_launcher(tmp_path_factory.mktemp("forced"), "--drain-timeout-s", "300")
        started["group"] = start_launcher(tmp_path_factory.mktemp("group"), under_parent=True)
        yield started
    finally:
        for launcher in started.values():
            launcher.kill()


def ready(launcher: Launcher) -> Launcher:
    """Wait for the application itself (the proxy answers 404 before it is deployed)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert launcher.proc.poll() is None, f"launcher exited early\n{launcher.log_tail()}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{launcher.url}/health", timeout=5).status_code == 200:
                return launcher
        time.sleep(0.25)
    raise AssertionError(f"the application never came up\n{launcher.log_tail()}")


@dataclass
class Stream:
    """A speech request read slowly on a thread; records its bytes and how it ended."""

    url: str
    pause_s: float = READ_PAUSE_S
    hold: threading.Event | None = None  # while set, stop reading (a stalled client)
    started: threading.Event = field(default_factory=threading.Event)
    size: int = 0
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(60), f"no audio started: {self.error}"
        return self

    def _run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/v1/audio/speech", json=SPEECH, timeout=120) as response:
                assert response.status_code == 200, response.read()
                for chunk in response.iter_bytes(READ_CHUNK):
                    self.size += len(chunk)
                    self.started.set()
                    while self.hold is not None and self.hold.is_set():
                        time.sleep(0.1)
                    time.sleep(self.pause_s)
        except Exception as exc:  # the assertions below say which stream ended how
            self.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.started.set()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "stream did not end"


def wait_draining(launcher: Launcher) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = httpx.get(f"{launcher.url}/health/ready", timeout=10)
        if response.status_code == 503:
            assert response.json() == {"status": "draining"}
            return
        time.sleep(0.2)
    raise AssertionError(f"/health/ready never said draining\n{launcher.log_tail()}")


def test_sigterm_drains_streams_in_flight_then_exits_zero(launchers: dict[str, Launcher]) -> None:
    launcher = ready(launchers["graceful"])
    try:
        full = httpx.post(f"{launcher.url}/v1/audio/speech", json=SPEECH, timeout=120)
    except httpx.HTTPError as exc:  # the service's log says why the stream ended
        raise AssertionError(f"{type(exc).__name__}: {exc}\n{launcher.log_tail()}") from exc
    assert full.status_code == 200 and len(full.content) > 0
    streams = [Stream(launcher.url).start() for _ in range(3)]
    assert all(s.error is None for s in streams), ([s.error for s in streams], launcher.log_tail())

    os.kill(launcher.proc.pid, signal.SIGTERM)  # the launcher only: Ray's processes would die of it
    wait_draining(launcher)
    refused = httpx.post(f"{launcher.url}/v1/audio/speech", json={**SPEECH, "input": "Hello."}, timeout=30)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "draining"
    assert int(refused.headers["retry-after"]) > 0
    assert any(s.size < len(full.content) for s in streams), "every stream was over before the drain began"

    for stream in streams:
        stream.join()
    assert [(s.error, s.size) for s in streams] == [(None, len(full.content))] * 3, launcher.log_tail()
    assert launcher.proc.wait(timeout=EXIT_LIMIT_S) == 0, launcher.log_tail()
    log = launcher.log_tail()
    assert "SIGTERM: draining for up to 30s" in log  # the Ingress graceful_shutdown_timeout_s
    assert "drained in" in log


def test_second_signal_exits_at_once_with_128_plus_signum(launchers: dict[str, Launcher]) -> None:
    launcher = ready(launchers["forced"])
    hold = threading.Event()
    hold.set()
    stalled = Stream(launcher.url, pause_s=0.0, hold=hold).start()  # reads one chunk, then stalls

    os.kill(launcher.proc.pid, signal.SIGTERM)
    wait_draining(launcher)
    assert launcher.proc.poll() is None  # still draining: the stalled stream is in flight
    # HAProxy's health check drains too: it is reloaded to fail it, which takes a moment.
    healthz = f"{launcher.url}/-/healthz"
    deadline = time.monotonic() + 10
    while httpx.get(healthz, timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "HAProxy's /-/healthz still answers 200 while draining"
        time.sleep(0.1)
    time.sleep(SAME_STOP_WINDOW_S)  # an operator insisting, not the same stop delivered twice
    os.kill(launcher.proc.pid, signal.SIGTERM)
    assert launcher.proc.wait(timeout=EXIT_LIMIT_S) == 128 + signal.SIGTERM, launcher.log_tail()
    assert "SIGTERM again: exiting without waiting for the drain" in launcher.log_tail()

    hold.clear()
    stalled.join()
    assert stalled.error is not None  # cut: the chunked body never completed


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_whole_process_group_drains_and_exits_zero(launchers: dict[str, Launcher]) -> None:
    """`make run` under systemd: SIGTERM to every process of the group, and make forwards it again."""
    launcher = ready(launchers["group"])
    parent_group = launcher.proc.pid  # the make-like parent leads the group; the launcher is in it
    children = [int(p) for p in subprocess.check_output(["pgrep", "-P", str(parent_group)]).split()]
    assert len(children) == 1
    ray_group = children[0]  # Ray's processes lead by the launcher's pid: the group it made for them
    full = httpx.post(f"{launcher.url}/v1/audio/speech", json=SPEECH, timeout=120)
    stream = Stream(launcher.url).start()

    os.killpg(parent_group, signal.SIGTERM)  # the group signal; the parent forwards a second one
    wait_draining(launcher)
    stream.join()
    assert (stream.error, stream.size) == (None, len(full.content))
    assert launcher.proc.wait(timeout=40) == 0, launcher.log_tail()
    deadline = time.monotonic() + 40
    while (group_alive(parent_group) or group_alive(ray_group)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group_alive(parent_group) and not group_alive(ray_group), "processes left behind"
    # The forwarded copy may coalesce with the group's in the kernel; when it does arrive separately it
    # is the same stop (tests/unit/test_launch_signals.py), never a forced exit.
    assert "exiting without waiting" not in launcher.log.read_text(errors="replace")
