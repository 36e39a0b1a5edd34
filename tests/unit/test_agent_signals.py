"""A real agent process with active sessions: SIGTERM drains and finalizes all of them (exit 0);
a second signal during a stuck drain forces the exit (128 + 15 = 143).

The child is this file run as a script: it opens sessions through the real AgentApiClient,
tracks them in the real AgentRuntime, and waits under the real ShutdownCoordinator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.unit import test_agent_support as support
from tests.unit.test_agent_support import FakeSessionsServer

sessions_server = support.sessions_server
fake_api = support.fake_api
ROOT = Path(__file__).resolve().parents[2]


def spawn_child(url: str, sessions: int, outbox: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENV_FILE": "/nonexistent/.env"}
    return subprocess.Popen(
        [sys.executable, __file__, url, str(sessions), str(outbox)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", f"child said {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"


def test_first_sigterm_finalizes_every_active_session(fake_api: FakeSessionsServer, tmp_path: Path) -> None:
    proc = spawn_child(fake_api.url, 3, tmp_path / "outbox.jsonl")
    try:
        wait_ready(proc)
        assert [s["status"] for s in fake_api.state.sessions.values()] == ["ACTIVE"] * 3
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert [s["status"] for s in fake_api.state.sessions.values()] == ["COMPLETED"] * 3
    for session in fake_api.state.sessions.values():
        assert session["usage"]["latency_ms"]["tts_ttfb"]["count"] == 1
    assert stderr.count("finalize=delivered") == 3
    assert "draining 3 active session(s)" in stderr
    assert not (tmp_path / "outbox.jsonl").exists()


def test_second_signal_forces_exit_while_the_drain_is_stuck(fake_api: FakeSessionsServer, tmp_path: Path) -> None:
    fake_api.state.finalize_delay_s = 120  # the API hangs: the graceful drain cannot finish
    proc = spawn_child(fake_api.url, 2, tmp_path / "outbox.jsonl")
    try:
        wait_ready(proc)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while fake_api.state.finalize_calls < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake_api.state.finalize_calls == 2  # draining, stuck in finalize
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "forcing exit with code 143" in stderr


async def _child(url: str, count: int, outbox: str) -> int:
    from agent.lifecycle import ShutdownCoordinator, open_session
    from agent.worker import AgentRuntime
    from config.settings import load_settings

    settings = load_settings(
        api_base_url=url, agent_outbox_path=outbox, agent_finalize_retries=1, agent_finalize_backoff_s=0.05,
        agent_api_timeout_s=300, agent_heartbeat_interval_s=0.2,
    )
    runtime = AgentRuntime.from_settings(settings)
    for i in range(count):
        info = await runtime.api.create_session(f"room-{i}", f"user-{i}", agent_name=settings.agent.name)
        assert info is not None
        session = open_session(
            session_id=info["id"], room=f"room-{i}", api=runtime.api, monitor=runtime.monitor,
            registry=runtime.registry, heartbeat_interval_s=settings.agent.heartbeat_interval_s,
        )
        runtime.monitor.record(session.key, "tts_ttfb", 0.12)
    coordinator = ShutdownCoordinator(runtime.aclose, timeout_s=300)
    coordinator.install()
    print("READY", flush=True)
    await coordinator.wait()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(_child(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
