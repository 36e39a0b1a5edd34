"""AgentApiClient against a real local HTTP server that fails on command; the durable outbox."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx

from agent.api_client import AgentApiClient, RetryPolicy
from agent.outbox import Outbox, OutboxEntry
from tests.conftest import free_port
from tests.unit import test_agent_support as support
from tests.unit.test_agent_support import FakeSessionsServer

sessions_server = support.sessions_server
fake_api = support.fake_api


class SleepRecorder:
    """Records backoff delays instead of sleeping, so tests are fast and delays are checked."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client_for(server: FakeSessionsServer, outbox: Path, retries: int = 4, **kw: object) -> AgentApiClient:
    return AgentApiClient(
        server.url, outbox=Outbox(outbox), policy=RetryPolicy(retries=retries, base_s=0.1, max_s=1.0), **kw
    )  # type: ignore[arg-type]


async def test_finalize_retries_with_backoff_until_the_server_recovers(
    fake_api: FakeSessionsServer, tmp_path: Path
) -> None:
    sleeper = SleepRecorder()
    async with client_for(fake_api, tmp_path / "outbox.jsonl", sleep=sleeper) as api:
        session = await api.create_session("room-a", "alice", agent_name="agent", metadata={"k": "v"})
        assert session is not None and session["status"] == "ACTIVE"
        fake_api.state.fail_finalize = 3
        outcome = await api.finalize_session(session["id"], {"characters": 12})
    assert outcome == "delivered"
    assert fake_api.state.finalize_calls == 4
    stored = fake_api.state.sessions[session["id"]]
    assert stored["status"] == "COMPLETED" and stored["usage"] == {"characters": 12}
    # Exponential with jitter: attempt i waits within [0.5, 1.0] x 0.1 * 2**i.
    assert len(sleeper.delays) == 3
    for i, delay in enumerate(sleeper.delays):
        assert 0.05 * 2**i <= delay <= 0.1 * 2**i
    assert not (tmp_path / "outbox.jsonl").exists()


async def test_failed_finalize_goes_to_the_outbox_and_is_replayed_after_restart(
    fake_api: FakeSessionsServer, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.jsonl"
    async with client_for(fake_api, path, retries=2, sleep=SleepRecorder()) as api:
        session = await api.create_session("room-b", "bob", agent_name="agent")
        assert session is not None
        fake_api.state.fail_finalize = 100
        assert await api.finalize_session(session["id"], {"characters": 5}) == "queued"
        assert fake_api.state.finalize_calls == 3
        # Still down: the replay keeps the entry and counts the attempt.
        assert (await api.replay_outbox())["failed"] == 1
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["attempts"] == 1
    assert fake_api.state.sessions[session["id"]]["status"] == "ACTIVE"

    # "Restart": a new client and a new Outbox object over the same file.
    fake_api.state.fail_finalize = 0
    async with client_for(fake_api, path) as api:
        assert len(api.outbox or []) == 1
        counts = await api.replay_outbox()
    assert counts == {"delivered": 1, "rejected": 0, "failed": 0}
    assert not path.exists()
    stored = fake_api.state.sessions[session["id"]]
    assert stored["status"] == "COMPLETED" and stored["usage"] == {"characters": 5}


async def test_unreachable_api_never_raises(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    api = AgentApiClient(url, outbox=Outbox(tmp_path / "o.jsonl"), policy=RetryPolicy(1, 0.01, 0.02))
    try:
        assert await api.create_session("room", "p", agent_name="a") is None
        assert await api.heartbeat("sid") is False
        assert await api.finalize_session("sid", None) == "queued"
        assert (await api.replay_outbox())["failed"] == 1
    finally:
        await api.aclose()
    assert [e.session_id for e in Outbox(tmp_path / "o.jsonl").pending()] == ["sid"]


async def test_final_refusals_are_not_retried_and_are_archived(fake_api: FakeSessionsServer, tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    sleeper = SleepRecorder()
    async with client_for(fake_api, path, sleep=sleeper) as api:
        assert await api.finalize_session("no-such-session") == "rejected"
        assert sleeper.delays == [] and fake_api.state.finalize_calls == 1
        # An entry the server refuses during replay leaves the outbox for the .rejected file.
        Outbox(path).append(OutboxEntry(session_id="no-such-session"))
        assert (await api.replay_outbox())["rejected"] == 1
    assert not path.exists()
    assert "no-such-session" in (tmp_path / "outbox.jsonl.rejected").read_text()


async def test_bearer_key_and_heartbeat(fake_api: FakeSessionsServer, tmp_path: Path) -> None:
    fake_api.state.api_key = "k-123"
    async with client_for(fake_api, tmp_path / "o.jsonl", api_key="wrong", sleep=SleepRecorder()) as api:
        assert await api.create_session("r", None, agent_name="a") is None
    async with client_for(fake_api, tmp_path / "o.jsonl", api_key="k-123") as api:
        session = await api.create_session("r", None, agent_name="a")
        assert session is not None
        assert await api.heartbeat(session["id"]) is True
        assert (await api.get_session(session["id"]) or {})["room"] == "r"
    assert fake_api.state.heartbeats == 1


async def test_outbox_keeps_entries_appended_during_a_replay_and_skips_torn_lines(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.jsonl")
    outbox.append(OutboxEntry(session_id="a"))
    with outbox.path.open("a") as fh:
        fh.write('{"session_id": "torn"')  # a crash mid-write leaves half a line

    async def deliver(entry: OutboxEntry) -> str:
        outbox.append(OutboxEntry(session_id="late"))  # another writer, meanwhile
        return "delivered"

    counts = await outbox.replay(deliver)  # type: ignore[arg-type]
    assert counts["delivered"] == 1
    assert [e.session_id for e in outbox.pending()] == ["late"]


def test_retry_policy_caps_the_delay() -> None:
    policy = RetryPolicy(retries=10, base_s=0.5, max_s=2.0)
    rng = random.Random(7)
    delays = [policy.delay(i, rng) for i in range(10)]
    assert all(0.25 <= d <= 2.0 for d in delays)
    assert max(delays[5:]) <= 2.0 and min(delays[5:]) >= 1.0


async def test_server_errors_are_retryable_but_client_errors_are_not(tmp_path: Path) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(422 if request.method == "POST" else 500, json={})

    api = AgentApiClient(
        "http://test", outbox=Outbox(tmp_path / "o.jsonl"), policy=RetryPolicy(2, 0.01, 0.01),
        transport=httpx.MockTransport(handler), sleep=SleepRecorder(),
    )
    async with api:
        assert await api.create_session("r", None, agent_name="a") is None
        assert len(calls) == 1
        assert await api.finalize_session("s") == "queued"
        assert len(calls) == 4


async def test_retried_create_carries_one_idempotency_key_and_leaves_one_session(
    fake_api: FakeSessionsServer, tmp_path: Path
) -> None:
    fake_api.state.lose_create_answers = 2  # stored, but the answer never arrives: the client retries
    async with client_for(fake_api, tmp_path / "outbox.jsonl", sleep=SleepRecorder()) as api:
        session = await api.create_session("room-i", "ivy", agent_name="agent")
    assert session is not None
    keys = fake_api.state.create_keys
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    assert list(fake_api.state.sessions) == [session["id"]]
