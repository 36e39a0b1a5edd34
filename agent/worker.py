"""The voice agent: LiveKit entrypoint, plugin selection, and Ray actors hosting LiveKit workers.

- `entrypoint(ctx)`: one LiveKit job = one conversation. It registers the session with the
  sessions API, wires `ServeTTS` (TTS) with VAD, STT and LLM plugins chosen by settings, and
  registers the cleanup with `ctx.add_shutdown_callback` (finalize, clear latency, usage line).
- `build_server()`: a livekit `AgentServer` (the 1.x worker) with this entrypoint; `python -m
  agent start|dev` runs it through livekit's CLI, which owns signals there (first signal drains
  the jobs, whose shutdown callbacks finalize their sessions).
- `AgentWorkerHost` / `run_ray()`: `python -m agent ray --replicas N` starts N Ray actors, each
  running an `AgentServer` that registers with LIVEKIT_URL, so the agent fleet scales with the
  cluster; in the actors the ServeTTS plugin reaches the engines through deployment handles.

VAD, STT and LLM plugins (silero, deepgram, openai) are optional (`pip install .[agent]`) and
imported only when a job needs them, so this module imports and tests without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobExecutorType, JobProcess

from agent.api_client import AgentApiClient
from agent.latency import LatencyMonitor
from agent.lifecycle import (
    SessionRegistry,
    ShutdownCoordinator,
    make_shutdown_callback,
    open_session,
)
from agent.tts import ServeTTS, ServeTTSOptions
from config.settings import Settings, get_settings

logger = logging.getLogger(__name__)

ACTOR_NAMESPACE = "voice-agent"


class PluginMissing(RuntimeError):
    """A livekit plugin chosen by settings is not installed."""


class VoiceAgent(Agent):
    """The conversational agent; its behaviour comes from AGENT_INSTRUCTIONS."""

    def __init__(self, instructions: str) -> None:
        super().__init__(instructions=instructions)


def _plugin(name: str) -> Any:
    try:
        return importlib.import_module(f"livekit.plugins.{name}")
    except ImportError as exc:
        raise PluginMissing(
            f"livekit plugin '{name}' is not installed; pip install 'voice-tts-serve[agent]'"
        ) from exc


def make_vad(settings: Settings) -> Any:
    """Silero VAD (its model ships inside the plugin package), or None when AGENT_VAD=none."""
    if settings.agent.vad == "none":
        return None
    return _plugin("silero").VAD.load()


def make_stt(settings: Settings) -> Any:
    if settings.agent.stt == "deepgram":
        return _plugin("deepgram").STT()
    if settings.agent.stt == "openai":
        return _plugin("openai").STT()
    raise PluginMissing(f"unsupported AGENT_STT '{settings.agent.stt[:32]}' (deepgram, openai)")


def make_llm(settings: Settings) -> Any:
    if settings.agent.llm == "openai":
        return _plugin("openai").LLM(model=settings.agent.llm_model)
    raise PluginMissing(f"unsupported AGENT_LLM '{settings.agent.llm[:32]}' (openai)")


def build_session(*, llm: Any, tts: Any = None, stt: Any = None, vad: Any = None) -> AgentSession:
    """The AgentSession; `None` components are left out (text-only sessions need only the LLM)."""
    kwargs: dict[str, Any] = {"llm": llm}
    for name, value in (("tts", tts), ("stt", stt), ("vad", vad)):
        if value is not None:
            kwargs[name] = value
    return AgentSession(**kwargs)


@dataclass
class AgentRuntime:
    """Per-process shared state: the API client, the latency monitor and the active sessions."""

    settings: Settings
    api: AgentApiClient
    monitor: LatencyMonitor
    registry: SessionRegistry = field(default_factory=SessionRegistry)
    replayer: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentRuntime:
        return cls(settings, AgentApiClient.from_settings(settings), LatencyMonitor(settings.agent.latency_window))

    def ensure_replayer(self) -> None:
        """Replay queued finalizations now and periodically (once per process)."""
        if self.replayer is None or self.replayer.done():
            self.replayer = asyncio.get_running_loop().create_task(
                self.api.run_outbox_replayer(self.settings.agent.outbox_replay_interval_s)
            )

    async def aclose(self) -> None:
        await self.registry.drain("shutdown")
        if self.replayer is not None:
            self.replayer.cancel()
            with contextlib.suppress(BaseException):
                await self.replayer
        await self.api.aclose()


_runtime: AgentRuntime | None = None


def get_runtime() -> AgentRuntime:
    global _runtime
    if _runtime is None:
        _runtime = AgentRuntime.from_settings(get_settings())
    return _runtime


def prewarm(proc: JobProcess) -> None:
    """Load the VAD model once per job process, before any job arrives."""
    settings = get_settings()
    with contextlib.suppress(PluginMissing):
        proc.userdata["vad"] = make_vad(settings)


async def entrypoint(ctx: JobContext) -> None:
    """One LiveKit job: one conversation, registered, tracked and finalized on shutdown."""
    runtime = get_runtime()
    settings = runtime.settings
    runtime.ensure_replayer()
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    info = await runtime.api.create_session(
        ctx.room.name, participant.identity, agent_name=settings.agent.name, metadata={"job_id": ctx.job.id}
    )
    session_id = info["id"] if info else None
    active = open_session(
        session_id=session_id,
        room=ctx.room.name,
        api=runtime.api,
        monitor=runtime.monitor,
        registry=runtime.registry,
        heartbeat_interval_s=settings.agent.heartbeat_interval_s,
    )
    tts = ServeTTS(ServeTTSOptions.from_settings(settings, session_id=session_id), settings=settings)
    cleanup = make_shutdown_callback(active, runtime.registry)

    async def on_shutdown(reason: str) -> None:
        await cleanup(reason)
        with contextlib.suppress(Exception):
            await tts.aclose()

    ctx.add_shutdown_callback(on_shutdown)
    vad = ctx.proc.userdata.get("vad")
    session = build_session(llm=make_llm(settings), tts=tts, stt=make_stt(settings), vad=vad)
    active.tracker.attach(session.llm, session.tts, session.stt)
    await session.start(agent=VoiceAgent(settings.agent.instructions), room=ctx.room)
    logger.info("agent joined room %s (session %s)", ctx.room.name[:64], session_id)


def build_server(settings: Settings | None = None, *, port: int | None = None) -> AgentServer:
    """An AgentServer (livekit's worker) running `entrypoint`; port 0 picks a free health port."""
    settings = settings or get_settings()
    kwargs: dict[str, Any] = {}
    if port is not None:
        kwargs["port"] = port
    server = AgentServer(
        job_executor_type=JobExecutorType(settings.agent.job_executor),
        num_idle_processes=settings.agent.num_idle_processes,
        drain_timeout=settings.agent.drain_timeout_s,
        ws_url=settings.agent.livekit_url,
        api_key=settings.agent.livekit_api_key,
        api_secret=settings.agent.livekit_api_secret,
        setup_fnc=prewarm,
        **kwargs,
    )
    server.rtc_session(entrypoint, agent_name=settings.agent.name)
    return server


class AgentWorkerHost:
    """Body of the Ray actor that hosts one LiveKit worker (wrapped by `agent_actor_class`).

    `start()` runs the AgentServer in the actor's event loop; `status()` reports what it is
    doing (registered with LiveKit or not, active jobs, health port); `drain()` stops taking
    jobs, waits for running ones, finalizes what is left, replays the outbox and stops.
    """

    def __init__(self, index: int = 0) -> None:
        from config.logging import configure_from_settings

        configure_from_settings()
        self.index = index
        self.settings = get_settings()
        self.runtime = AgentRuntime.from_settings(self.settings)
        global _runtime
        _runtime = self.runtime  # thread-executor jobs in this actor share it
        self.server = build_server(self.settings, port=0)
        self.state = "created"
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def start(self, timeout_s: float = 60.0) -> dict[str, Any]:
        if self._task is None:
            self.server.on("worker_started", lambda *_: self._started.set())
            self._task = asyncio.get_running_loop().create_task(self._run())
            self.runtime.ensure_replayer()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._started.wait(), timeout_s)
        return await self.status()

    async def _run(self) -> None:
        self.state = "running"
        try:
            await self.server.run(devmode=False)
            if self.state == "running":
                self.state = "stopped"
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            logger.error("agent worker %d failed: %s", self.index, self.error)
        finally:
            self._started.set()

    async def status(self) -> dict[str, Any]:
        server = self.server
        try:
            active_jobs = len(server.active_jobs)
        except AttributeError:  # not started yet: no process pool
            active_jobs = 0
        pending = 0
        if self.runtime.api.outbox is not None:
            with contextlib.suppress(Exception):
                pending = len(self.runtime.api.outbox)
        return {
            "index": self.index,
            "pid": os.getpid(),
            "state": self.state,
            "error": self.error,
            "worker_id": server.id,
            "registered": server.id != "unregistered",
            "draining": server.draining,
            "active_jobs": active_jobs,
            "active_sessions": len(self.runtime.registry),
            "health_port": server.worker_info.http_port,
            "livekit_url": self.settings.agent.livekit_url,
            "outbox_pending": pending,
        }

    async def drain(self, timeout_s: float | None = None) -> dict[str, Any]:
        timeout = int(timeout_s if timeout_s is not None else self.settings.agent.drain_timeout_s)
        self.state = "draining"
        if self._task is not None and not self._task.done():
            try:
                await self.server.drain(timeout=timeout)
            except TimeoutError:
                logger.warning("agent worker %d: jobs still running after %ds; closing", self.index, timeout)
            except Exception as exc:  # never started (no pool): nothing to drain
                logger.debug("drain: %s", type(exc).__name__)
            await self.server.aclose()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)
        await self.runtime.registry.drain("worker drain")
        await self.runtime.api.replay_outbox()
        await self.runtime.aclose()
        self.state = "stopped"
        logger.info("agent worker %d drained", self.index)
        return await self.status()


def agent_actor_class(num_cpus: float | None = None) -> Any:
    """`AgentWorkerHost` as a Ray actor class (made lazily: importing this module needs no Ray)."""
    import ray

    cpus = get_settings().agent.actor_num_cpus if num_cpus is None else num_cpus
    options: dict[str, Any] = {"num_cpus": cpus, "max_concurrency": 16}
    return ray.remote(**options)(AgentWorkerHost)


def spawn_actors(replicas: int, *, env: dict[str, str] | None = None, num_cpus: float | None = None) -> list[Any]:
    """Create `replicas` named actors (namespace `voice-agent`) and start their workers."""
    import ray

    cls = agent_actor_class(num_cpus)
    options: dict[str, Any] = {"namespace": ACTOR_NAMESPACE}
    if env:
        options["runtime_env"] = {"env_vars": env}
    actors = [cls.options(name=f"agent-worker-{i}", **options).remote(i) for i in range(replicas)]
    statuses = ray.get([a.start.remote() for a in actors])
    for status in statuses:
        logger.info(
            "agent actor %d: state=%s registered=%s health_port=%s",
            status["index"], status["state"], status["registered"], status["health_port"],
        )
    return actors


async def drain_actors(actors: list[Any], timeout_s: float) -> list[dict[str, Any]]:
    """Drain every actor concurrently; returns their final status."""
    refs = [a.drain.remote(timeout_s) for a in actors]
    results = await asyncio.gather(*refs, return_exceptions=True)
    return [r if isinstance(r, dict) else {"state": "error", "error": type(r).__name__} for r in results]


async def run_ray(replicas: int, *, address: str | None = None) -> int:
    """`python -m agent ray`: N actors until SIGINT/SIGTERM (first drains, second forces)."""
    import ray

    settings = get_settings()
    if not ray.is_initialized():
        ray.init(address=address, namespace=ACTOR_NAMESPACE, configure_logging=False)
    actors = spawn_actors(replicas)

    async def drain() -> None:
        for status in await drain_actors(actors, settings.agent.drain_timeout_s):
            logger.info("agent actor %s: %s", status.get("index"), status.get("state"))
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)

    coordinator = ShutdownCoordinator(drain, timeout_s=settings.agent.drain_timeout_s + 30)
    coordinator.install()
    await coordinator.wait()
    return 0
