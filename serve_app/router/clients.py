"""How the router talks to an engine: in-process, through a Serve DeploymentHandle, or not at all.

The router only sees `EngineClient`. In the cluster each engine is a Serve deployment reached via
its handle (streaming); tests and the benchmarks can compose the same router over local engines;
an engine that is not deployed (a GPU engine on a CPU-only cluster) is an `UnavailableEngineClient` that
reports why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from ray.serve.exceptions import BackPressureError

from serve_app.core.errors import EngineBusy, EngineUnavailable
from serve_app.core.gate import PRIORITY_NEW
from serve_app.core.replica import ReplicaTag
from serve_app.core.timing import WordMark
from serve_app.core.voices import Voice
from serve_app.core.wire import unpack
from serve_app.engines.base import Engine, EngineCheck


@runtime_checkable
class EngineClient(Protocol):
    """`reports_start`: the stream yields `b""` when the request's work begins (after any queue), so
    a timeout before it is queueing (busy), not a broken engine."""

    name: str
    reports_start: bool

    def stream(
        self,
        text: str,
        voice: str | None,
        *,
        language: str | None,
        speed: float,
        instructions: str | None = None,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | WordMark | ReplicaTag]:
        """PCM s16le mono chunks at `sample_rate()`, with the engine's word marks where it has them
        (and, from a Serve replica, a `ReplicaTag` first: which replica serves the request)."""
        ...

    async def sample_rate(self) -> int: ...

    async def voices(self) -> list[Voice]: ...

    async def check(self) -> EngineCheck: ...

    @property
    def deployed(self) -> bool: ...


class LocalEngineClient:
    """An engine object in this process (tests, benchmarks, single-process runs)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.reports_start = engine.queues_work  # no host here: only queueing engines mark the start

    @property
    def deployed(self) -> bool:
        return True

    def stream(
        self,
        text: str,
        voice: str | None,
        *,
        language: str | None,
        speed: float,
        instructions: str | None = None,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | WordMark]:
        return self.engine.open_stream(
            text, voice, language=language, speed=speed, instructions=instructions, priority=priority
        )

    async def sample_rate(self) -> int:
        return self.engine.sample_rate

    async def voices(self) -> list[Voice]:
        return self.engine.voices()

    async def check(self) -> EngineCheck:
        return await self.engine.check()


class HandleEngineClient:
    """An engine deployment behind a Serve `DeploymentHandle` (see `serve_app.deployments`)."""

    reports_start = True  # the host marks the start of every request (see serve_app.deployments)

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self._handle = handle
        self._streaming = handle.options(stream=True)
        self._info: dict[str, Any] | None = None

    @property
    def deployed(self) -> bool:
        return True

    async def _load_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = await self._handle.info.remote()
        return self._info

    async def stream(
        self,
        text: str,
        voice: str | None,
        *,
        language: str | None,
        speed: float,
        instructions: str | None = None,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | WordMark | ReplicaTag]:
        # Instructions travel only when given: the host passes them to engines that accept them.
        extra: dict[str, Any] = {"instructions": instructions} if instructions is not None else {}
        extra["priority"] = priority
        extra["tag_replica"] = True  # the replica names itself first: strikes say which one failed
        generator = self._streaming.synthesize.remote(text, voice, language, speed, **extra)
        finished = False
        try:
            try:
                async for message in generator:
                    for item in unpack(message):  # the host sends what came together as one message
                        yield item
            except BackPressureError as exc:
                # Serve's queue for this engine is full: busy, not broken (never a strike).
                raise EngineBusy(f"{self.name}: Serve's queue for this engine is full ({exc})") from None
            finished = True
        finally:
            if not finished:
                # The router timed out, failed over or the caller left: stop the replica's work
                # (a hung engine would otherwise keep a replica slot busy forever).
                cancel = getattr(generator, "cancel", None)
                if cancel is not None:
                    cancel()

    async def sample_rate(self) -> int:
        return int((await self._load_info())["sample_rate"])

    async def voices(self) -> list[Voice]:
        return [Voice(**v) for v in (await self._load_info())["voices"]]

    async def check(self) -> EngineCheck:
        try:
            result = await self._handle.check.remote()
        except Exception as exc:  # the replica itself is gone: that is the answer
            return EngineCheck(self.name, False, f"{type(exc).__name__}: {str(exc)[:200]}")
        return EngineCheck(**result)


class UnavailableEngineClient:
    """An engine that is configured in the chain but not deployed here, with the reason."""

    reports_start = False

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    @property
    def deployed(self) -> bool:
        return False

    async def stream(
        self,
        text: str,
        voice: str | None,
        *,
        language: str | None,
        speed: float,
        instructions: str | None = None,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | WordMark]:
        raise EngineUnavailable(self.reason)
        yield b""  # pragma: no cover - makes this an async generator

    async def sample_rate(self) -> int:
        return 16000

    async def voices(self) -> list[Voice]:
        return []

    async def check(self) -> EngineCheck:
        return EngineCheck(self.name, False, self.reason)


def clients_from_handles(
    handles: dict[str, Any], unavailable: dict[str, str], local: dict[str, Engine] | None = None
) -> dict[str, EngineClient]:
    """Router clients: deployed engines via their handles, engines hosted in this process directly,
    unusable ones with the reason (which wins)."""
    clients: dict[str, EngineClient] = {
        name: UnavailableEngineClient(name, reason) for name, reason in unavailable.items()
    }
    for name, engine in (local or {}).items():
        if name not in clients:
            clients[name] = LocalEngineClient(engine)
    for name, handle in handles.items():
        if handle is not None and name not in clients:
            clients[name] = HandleEngineClient(name, handle)
    return clients
