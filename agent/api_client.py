"""AgentApiClient: the agent's side of the sessions API, best effort by design.

A conversation must never fail because bookkeeping failed. So no method here raises into the
agent: `create_session` returns None when the API is down (the agent still talks), `heartbeat`
returns False, and `finalize_session` retries with exponential backoff and jitter and, if the
API still cannot be reached, writes the finalization to the durable `Outbox`, which
`replay_outbox` (run periodically and at start) delivers later. Finalize is idempotent on the
server (`PATCH /v1/sessions/{id}/finalize` returns 200 again), so a replay after a lost
response is harmless.

Retryable: connection errors, timeouts, 408, 429 and 5xx. Not retryable: other 4xx (the server
understood and refused; retrying would get the same answer).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from agent.outbox import Outbox, OutboxEntry
from config.settings import Settings

logger = logging.getLogger(__name__)

FinalizeOutcome = Literal["delivered", "queued", "rejected"]
_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt i waits base * 2**i, scaled by 0.5..1.0, capped.

    The jitter spreads out the retries of many agents that lost the API at the same moment.
    """

    retries: int = 4
    base_s: float = 0.5
    max_s: float = 8.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_s, self.base_s * (2**attempt))
        return ceiling * (0.5 + 0.5 * (rng or random).random())


class _Retryable(Exception):
    """An attempt failed in a way another attempt may fix."""


class _Rejected(Exception):
    """The server answered with a final refusal."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class AgentApiClient:
    """httpx client for `/v1/sessions` with bearer auth, retries and the durable outbox."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        outbox: Outbox | None = None,
        policy: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.outbox = outbox
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentApiClient:
        return cls(
            settings.agent.api_base_url,
            api_key=settings.agent.api_key,
            outbox=Outbox(settings.agent.outbox_path),
            policy=RetryPolicy(
                settings.agent.finalize_retries,
                settings.agent.finalize_backoff_s,
                settings.agent.finalize_max_backoff_s,
            ),
            timeout_s=settings.agent.api_timeout_s,
        )

    # ------------------------------------------------------------------ public API
    async def create_session(
        self,
        room: str,
        participant: str | None,
        *,
        agent_name: str,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Register a session; the session JSON, or None when the API could not be reached.

        Every retry carries the same Idempotency-Key, so a response lost on the way back never
        leaves a duplicate session behind.
        """
        body = {
            "room": room, "participant": participant, "agent_name": agent_name, "metadata": metadata or {}
        }
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        try:
            response = await self._with_retries(
                "create", lambda: self._send("POST", "/v1/sessions", body, headers=headers)
            )
        except (_Retryable, _Rejected) as exc:
            logger.warning("session create failed for room %s: %s", room[:64], str(exc)[:200])
            return None
        data: dict[str, Any] = response.json()
        logger.debug("session %s created for room %s", data.get("id"), room[:64])
        return data

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        try:
            response = await self._send("GET", f"/v1/sessions/{session_id}")
        except (_Retryable, _Rejected):
            return None
        result: dict[str, Any] = response.json()
        return result

    async def heartbeat(self, session_id: str) -> bool:
        """One attempt (the next heartbeat is the retry); True when the server confirmed it."""
        try:
            await self._send("POST", f"/v1/sessions/{session_id}/heartbeat")
        except (_Retryable, _Rejected) as exc:
            logger.debug("heartbeat for %s failed: %s", session_id[:64], str(exc)[:200])
            return False
        return True

    async def finalize_session(self, session_id: str, usage: dict[str, Any] | None = None) -> FinalizeOutcome:
        """Mark the session COMPLETED. Never raises; queues to the outbox when retries run out."""
        try:
            await self._finalize_with_retries(session_id, usage, self.policy.retries)
        except _Rejected as exc:
            logger.warning("finalize of %s rejected: %s", session_id[:64], str(exc)[:200])
            return "rejected"
        except _Retryable as exc:
            logger.warning(
                "finalize of %s failed after %d attempts: %s", session_id[:64], self.policy.retries + 1, exc
            )
            return self._queue(session_id, usage)
        except Exception as exc:  # never into the agent: anything unexpected is queued too
            logger.error("finalize of %s: unexpected %s", session_id[:64], type(exc).__name__)
            return self._queue(session_id, usage)
        logger.debug("session %s finalized", session_id[:64])
        return "delivered"

    async def replay_outbox(self) -> dict[str, int]:
        """Deliver queued finalizations (one attempt each); never raises."""
        if self.outbox is None:
            return {"delivered": 0, "rejected": 0, "failed": 0}

        async def deliver(entry: OutboxEntry) -> Literal["delivered", "rejected", "failed"]:
            try:
                await self._finalize_with_retries(entry.session_id, entry.usage, 0)
            except _Rejected:
                return "rejected"
            except Exception:
                return "failed"
            return "delivered"

        try:
            return await self.outbox.replay(deliver)
        except Exception as exc:
            logger.error("outbox replay failed: %s", type(exc).__name__)
            return {"delivered": 0, "rejected": 0, "failed": 0}

    async def run_outbox_replayer(self, interval_s: float) -> None:
        """Replay now and then every `interval_s` until cancelled (a background task)."""
        while not self._closed:
            await self.replay_outbox()
            await asyncio.sleep(interval_s)

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    async def __aenter__(self) -> AgentApiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals
    def _queue(self, session_id: str, usage: dict[str, Any] | None) -> FinalizeOutcome:
        if self.outbox is None:
            logger.error("finalize of %s lost: no outbox configured", session_id[:64])
            return "rejected"
        try:
            self.outbox.append(OutboxEntry(session_id=session_id, usage=usage))
        except OSError as exc:
            logger.error("finalize of %s could not be queued: %s", session_id[:64], exc)
            return "rejected"
        return "queued"

    async def _finalize_with_retries(
        self, session_id: str, usage: dict[str, Any] | None, retries: int
    ) -> None:
        body = {"usage": usage} if usage is not None else None
        await self._with_retries(
            "finalize", lambda: self._send("PATCH", f"/v1/sessions/{session_id}/finalize", body), retries
        )

    async def _with_retries(
        self, what: str, call: Callable[[], Awaitable[httpx.Response]], retries: int | None = None
    ) -> httpx.Response:
        retries = self.policy.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                return await call()
            except _Retryable as exc:
                if attempt >= retries:
                    raise
                delay = self.policy.delay(attempt)
                logger.debug("%s attempt %d failed (%s); retrying in %.2fs", what, attempt + 1, exc, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        try:
            response = await self._client.request(method, path, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"transport: {type(exc).__name__}") from None
        if response.status_code in _RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise _Rejected(response.status_code, response.text[:200])
        return response
