"""The voice agent: LiveKit entrypoint, plugin selection, and Ray actors hosting LiveKit workers.

- `entrypoint(ctx)`: one LiveKit job = one conversation. It registers the session with the
  sessions API, wires `ServeTTS` (TTS) with VAD, STT and LLM plugins chosen by settings, and
  registers the cleanup with `ctx.add_shutdown_callback` (finalize, clear latency, usage line).
- `build_server()`: a livekit `AgentServer` (the 1.x worker) with this entrypoint; `python -m
  agent start|dev` runs it through livekit's CLI, which owns signals there (first signal drains
  the jobs, whose shutdown callbacks finalize their sessions).
- `AgentWorkerHost` / `run_ray()`: `python -m agent ray --replicas N` starts N Ray actors, each
  running an `AgentServer` that registers with LIVEKIT_URL, so the agent fleet scales with the
  cluster.

Jobs and event loops: livekit runs each job on an event loop of its own, in a child process
(`AGENT_JOB_EXECUTOR=process`, the default; Ray is not initialised there) or in a thread of the
worker's process (`thread`; in a Ray actor, Ray is initialised). Everything async a job uses - the
sessions API client, the outbox replayer, its session's heartbeat, the ServeTTS plugin with its
sockets or router - is made on the job's loop by `JobRuntime.open` and closed when the job ends;
only loop-free things are shared per process (settings, the thread-safe latency monitor). ServeTTS
then picks per job: deployment handles where Ray is initialised in the job's process (thread jobs
in an actor), otherwise the realtime WebSocket (`auto`); the job logs which one it uses.

VAD, STT and LLM plugins (silero, deepgram, openai) are optional (`pip install .[agent]`) and
imported only when a job needs them, so this module imports and tests without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobExecutorType, JobProcess

from agent.api_client import AgentApiClient
from agent.latency import LatencyMonitor
from agent.lifecycle import (
    ActiveSession,
    SessionRegistry,
    ShutdownCoordinator,
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
    """The AgentSession; `None` components are left out (text-only sessions need only the LLM).

    A TTS that sends word timings (ServeTTS over `websocket`/`handle`) drives the transcript:
    livekit leaves `use_tts_aligned_transcript` off unless asked, and would then pace the LLM's
    text by an estimated speaking rate instead of the words' real times in the audio.
    """
    kwargs: dict[str, Any] = {"llm": llm}
    for name, value in (("tts", tts), ("stt", stt), ("vad", vad)):
        if value is not None:
            kwargs[name] = value
    if tts is not None and tts.capabilities.aligned_transcript:
        kwargs["use_tts_aligned_transcript"] = True
    return AgentSession(**kwargs)


@dataclass
class AgentRuntime:
    """The API client, the latency monitor and the active sessions of one event loop.

    The client (httpx) and the tasks belong to the loop that made them: one runtime per job (see
    `JobRuntime`), or one for a host's own loop; never shared between loops.
    """

    settings: Settings
    api: AgentApiClient
    monitor: LatencyMonitor
    registry: SessionRegistry = field(default_factory=SessionRegistry)
    replayer: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, monitor: LatencyMonitor | None = None) -> AgentRuntime:
        monitor = monitor or LatencyMonitor(settings.agent.latency_window)
        return cls(settings, AgentApiClient.from_settings(settings), monitor)

    def ensure_replayer(self) -> None:
        """Replay queued finalizations now and periodically (on this runtime's loop)."""
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


class ProcessShared:
    """What the jobs of one process share: loop-free things only (settings, latency monitor)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.monitor = LatencyMonitor(settings.agent.latency_window)  # thread-safe
        self.jobs: set[JobRuntime] = set()  # live jobs of this process (thread executor: several)


_shared: ProcessShared | None = None


def process_shared() -> ProcessShared:
    """This process's `ProcessShared` (made on first use: job processes start without one)."""
    global _shared
    if _shared is None:
        _shared = ProcessShared(get_settings())
    return _shared


class JobRuntime:
    """One job's own state, made on the job's event loop and closed when the job ends.

    Holds a runtime (API client, outbox replayer, the session and its heartbeat) and the ServeTTS
    plugin (its HTTP client, router or sockets). `open` must run on the job's loop; `aclose`
    (the job's shutdown callback) finalizes the session and closes all of it there.
    """

    def __init__(self, shared: ProcessShared, job_id: str) -> None:
        self.shared = shared
        self.job_id = job_id
        self.settings = shared.settings
        self.runtime = AgentRuntime.from_settings(shared.settings, shared.monitor)
        self.tts: ServeTTS | None = None
        self.active: ActiveSession | None = None

    @classmethod
    def open(cls, shared: ProcessShared, job_id: str) -> JobRuntime:
        job = cls(shared, job_id)
        job.runtime.ensure_replayer()
        shared.jobs.add(job)
        return job

    async def begin(self, room: str, identity: str) -> ActiveSession:
        """Register the conversation with the sessions API and make the job's ServeTTS."""
        settings = self.settings
        info = await self.runtime.api.create_session(
            room, identity, agent_name=settings.agent.name, metadata={"job_id": self.job_id}
        )
        session_id = info["id"] if info else None
        self.active = open_session(
            session_id=session_id,
            room=room,
            api=self.runtime.api,
            monitor=self.runtime.monitor,
            registry=self.runtime.registry,
            heartbeat_interval_s=settings.agent.heartbeat_interval_s,
        )
        self.tts = ServeTTS(ServeTTSOptions.from_settings(settings, session_id=session_id), settings=settings)
        await self.tts.get_source()  # pick the transport now, so the job's log says which
        logger.info(
            "job %s (pid %d): TTS transport stream=%s synthesize=%s",
            self.job_id[:64], os.getpid(), self.tts.stream_transport, self.tts.transport,
        )
        return self.active

    async def aclose(self, reason: str = "job ended") -> None:
        try:
            await self.runtime.registry.drain(reason or "job ended")
            if self.tts is not None:
                with contextlib.suppress(Exception):
                    await self.tts.aclose()
            await self.runtime.aclose()
        finally:
            self.shared.jobs.discard(self)


def prewarm(proc: JobProcess) -> None:
    """Load the VAD model once per job process, before any job arrives."""
    settings = get_settings()
    with contextlib.suppress(PluginMissing):
        proc.userdata["vad"] = make_vad(settings)


def open_job(ctx: JobContext) -> JobRuntime:
    """The job's runtime on its own loop, closed by the job's shutdown callback."""
    job = JobRuntime.open(process_shared(), ctx.job.id)
    ctx.add_shutdown_callback(job.aclose)
    return job


async def entrypoint(ctx: JobContext) -> None:
    """One LiveKit job: one conversation, registered, tracked and finalized on shutdown."""
    job = open_job(ctx)
    settings = job.settings
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    active = await job.begin(ctx.room.name, participant.identity)
    vad = ctx.proc.userdata.get("vad")
    session = build_session(llm=make_llm(settings), tts=job.tts, stt=make_stt(settings), vad=vad)
    active.tracker.attach(session.llm, session.tts, session.stt)
    await session.start(agent=VoiceAgent(settings.agent.instructions), room=ctx.room)
    logger.info("agent joined room %s (session %s)", ctx.room.name[:64], active.session_id)


def build_server(
    settings: Settings | None = None,
    *,
    port: int | None = None,
    job_entrypoint: Callable[[JobContext], Awaitable[None]] = entrypoint,
) -> AgentServer:
    """An AgentServer (livekit's worker) running `job_entrypoint`; port 0 picks a free health port.

    The entrypoint must be a module-level function: the process executor imports it by name.
    """
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
    server.rtc_session(job_entrypoint, agent_name=settings.agent.name)
    return server


def import_entrypoint(path: str) -> Callable[[JobContext], Awaitable[None]]:
    """`module:function` -> the function (an alternative job entrypoint for a worker host)."""
    module, _, name = path.partition(":")
    function = getattr(importlib.import_module(module), name or "entrypoint")
    if not callable(function):
        raise TypeError(f"{path[:120]} is not callable")
    return cast(Callable[[JobContext], Awaitable[None]], function)


class AgentWorkerHost:
    """Body of the Ray actor that hosts one LiveKit worker (wrapped by `agent_actor_class`).

    `start()` runs the AgentServer in the actor's event loop; `status()` reports what it is
    doing (registered with LiveKit or not, active jobs, health port); `drain()` stops taking
    jobs, waits for running ones, finalizes what is left, replays the outbox and stops.
    """

    def __init__(self, index: int = 0, job_entrypoint: str | None = None) -> None:
        from config.logging import configure_from_settings

        configure_from_settings()
        self.index = index
        self.settings = get_settings()
        # The host's own loop: the outbox replayer and the final replay. Jobs have their own.
        self.runtime = AgentRuntime.from_settings(self.settings)
        self.shared = process_shared()
        function = import_entrypoint(job_entrypoint) if job_entrypoint else entrypoint
        self.server = build_server(self.settings, port=0, job_entrypoint=function)
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
            "active_sessions": len(self.shared.jobs),  # thread executor; process jobs count in active_jobs
            "health_port": server.worker_info.http_port,
            "livekit_url": self.settings.agent.livekit_url,
            "outbox_pending": pending,
        }

    async def simulate_job(self, room: str) -> None:
        """Run one job without a LiveKit server (livekit's fake job: a mock room), through the
        configured executor; a smoke test of the jobs' own loops, clients and transports."""
        await self.server.simulate_job(room, fake_job=True)

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
        if self.shared.jobs:  # their shutdown callbacks did not run; they belong to other loops
            logger.warning("agent worker %d: %d job(s) did not shut down", self.index, len(self.shared.jobs))
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


AGENT_ACTOR_ENVIRONMENT = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}


def spawn_actors(
    replicas: int,
    *,
    env: dict[str, str] | None = None,
    num_cpus: float | None = None,
    job_entrypoint: str | None = None,
) -> list[Any]:
    """Create `replicas` named actors (namespace `voice-agent`) and start their workers.

    `job_entrypoint` (`module:function`) replaces the conversation entrypoint, e.g. for a smoke test.
    """
    import ray

    cls = agent_actor_class(num_cpus)
    options: dict[str, Any] = {"namespace": ACTOR_NAMESPACE}
    # Thread-executor jobs each run their own event loop in the actor's process and share its Serve
    # handles: the handles' router must run on a loop of its own (Serve's throughput mode, inherited
    # from the cluster's environment, would bind it to whichever job's loop used it first).
    options["runtime_env"] = {"env_vars": {**AGENT_ACTOR_ENVIRONMENT, **(env or {})}}
    actors = [cls.options(name=f"agent-worker-{i}", **options).remote(i, job_entrypoint) for i in range(replicas)]
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
