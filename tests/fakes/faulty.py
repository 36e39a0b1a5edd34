"""Fault-injecting engines for router tests, in-process and inside real Serve deployments.

`FaultyEngine` is a real `Engine`: it streams PCM chunks at 16 kHz, and misbehaves on demand:
error, hang before the first byte, stall after the first chunk, return nothing, fail after partial
audio, reject the input (caller error), answer busy (its queue is full), or recover after N
seconds; it can also wait in a queue first, then yield the empty admission chunk `b""`. Its
behaviour is a `FaultPlan` that tests can change at run time:

- in-process, through a `LocalControl` object the test holds;
- in Serve (`EngineDeployment.options(name="FaultZonos").bind("tests.fakes.faulty:FaultyEngine")`),
  through a named Ray actor, the `FaultBoard`, keyed by the deployment's name. The board also
  records every text each engine was asked to speak, so tests can count calls and probes.

The audio says which sentence it is: every sample of a sentence has the value
`token_for(text) * 4 + plan.code`, so a test can decode the PCM it received (`decode_runs`) and
check that every sentence arrived, in order, in full, and which engine (code) spoke it.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from config.settings import Settings
from serve_app.core.errors import EngineBusy, EngineUnavailable, InvalidInput
from serve_app.core.timing import WordMark
from serve_app.core.voices import Voice
from serve_app.engines.base import Engine, EngineCheck

SAMPLE_RATE = 16000
BOARD_NAME = "tts-fault-board"
BOARD_NAMESPACE = "tts-faults"
MODES = ("ok", "error", "hang", "stall", "empty", "partial", "invalid", "busy", "own_timeout")


@dataclass
class FaultPlan:
    """How an engine behaves. `fail_text`: only texts containing it misbehave, others are fine."""

    mode: str = "ok"
    recover_after_s: float | None = None
    fail_text: str | None = None
    code: int = 0
    sentence_ms: int = 300
    chunk_ms: int = 100
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    # Seconds spent queued before the engine starts; then it yields the admission marker b"".
    queued_s: float | None = None
    # Yield a `WordMark` for each whitespace-separated word (the sentence's time shared evenly),
    # just before the chunk in which it starts, like an engine with real alignment.
    word_marks: bool = False
    # Misbehave on this many attempts (matching `fail_text`) after the plan was set, then speak:
    # a one-off fault, such as a timeout on a starved machine. None: every attempt.
    times: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode}")
        if not 0 <= self.code <= 3:
            raise ValueError("code must be 0..3")

    def mode_for(self, text: str, elapsed_s: float) -> str:
        """The behaviour for this text, `elapsed_s` after the plan was set."""
        if self.recover_after_s is not None and elapsed_s >= self.recover_after_s:
            return "ok"
        if self.fail_text is not None and self.fail_text not in text:
            return "ok"
        return self.mode


def token_for(text: str) -> int:
    """A number identifying a sentence's text (100..7099)."""
    return zlib.crc32(text.strip().encode()) % 7000 + 100


def sample_value(text: str, code: int) -> int:
    return token_for(text) * 4 + code


@dataclass(frozen=True)
class Run:
    """A stretch of identical samples: one sentence (token) from one engine (code)."""

    token: int
    code: int
    samples: int


def decode_runs(pcm: bytes) -> list[Run]:
    """Split PCM made by fault engines (no resampling) into runs of constant value."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
    if samples.size == 0:
        return []
    edges = np.flatnonzero(np.diff(samples)) + 1
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [samples.size]))
    return [Run(int(samples[s]) // 4, int(samples[s]) % 4, int(e - s)) for s, e in zip(starts, ends, strict=True)]


def full_samples(plan: FaultPlan | None = None) -> int:
    """Samples of one sentence spoken in full (no resampling)."""
    plan = plan or FaultPlan()
    return SAMPLE_RATE * plan.chunk_ms // 1000 * max(1, plan.sentence_ms // plan.chunk_ms)


def assert_complete(runs: list[Run], text: str) -> None:
    """Every sentence of `text` arrived, in order, each ending with a full-length run.

    A shorter run of a sentence is allowed only right before that sentence's full run: it is the
    audible part of an attempt that failed mid-sentence, which the next engine then restarts.
    """
    from serve_app.core.text import normalize, split_sentences

    expected = [token_for(s) for s in split_sentences(normalize(text, max_chars=100_000))]
    order: list[int] = []
    for run in runs:
        if not order or order[-1] != run.token:
            order.append(run.token)
    assert order == expected, f"sentences out of order or missing: {order} != {expected}"
    full = full_samples()
    for token in expected:
        mine = [r for r in runs if r.token == token]
        assert mine[-1].samples == full, f"sentence {token} not spoken in full: {mine}"
        assert all(r.samples < full for r in mine[:-1]), f"sentence {token} spoken twice: {mine}"


class FaultControl(Protocol):
    """Where an engine reads its plan and writes what it was asked to speak."""

    async def plan(self) -> tuple[FaultPlan, float]:
        """The plan and the seconds since it was set."""
        ...

    async def record(self, text: str, event: str) -> None: ...


class LocalControl:
    """In-process control: the test holds this object and flips `set()` whenever it likes."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.set(plan or FaultPlan())

    def set(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._set_at = time.monotonic()

    async def plan(self) -> tuple[FaultPlan, float]:
        return self._plan, time.monotonic() - self._set_at

    async def record(self, text: str, event: str) -> None:
        self.log.append((text, event))

    def calls(self, text: str | None = None) -> int:
        return sum(1 for t, e in self.log if e == "start" and (text is None or t == text))


class FaultBoard:
    """Plans and logs of every fault engine of a Ray cluster (a named actor; see `board()`)."""

    def __init__(self) -> None:
        self._plans: dict[str, tuple[dict[str, Any], float]] = {}
        self._log: dict[str, list[tuple[str, str]]] = {}

    def set(self, key: str, plan: dict[str, Any]) -> None:
        FaultPlan(**plan)  # validate here, where the test sees the error
        self._plans[key] = (plan, time.monotonic())

    def plan(self, key: str) -> tuple[dict[str, Any], float]:
        plan, set_at = self._plans.get(key, ({}, time.monotonic()))
        return plan, time.monotonic() - set_at

    def record(self, key: str, text: str, event: str) -> None:
        self._log.setdefault(key, []).append((text, event))

    def log(self, key: str) -> list[tuple[str, str]]:
        return list(self._log.get(key, []))

    def clear(self, key: str) -> None:
        self._log.pop(key, None)


def board(create: bool = False) -> Any:
    """The cluster's `FaultBoard` actor handle (created by the test, looked up by engines)."""
    import ray

    if create:
        actor = ray.remote(FaultBoard).options(
            name=BOARD_NAME, namespace=BOARD_NAMESPACE, get_if_exists=True, num_cpus=0, lifetime=None
        )
        return actor.remote()
    return ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE)


class BoardControl:
    """Control through the `FaultBoard` actor, for engines inside Serve replicas."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._board: Any = None

    def _actor(self) -> Any:
        if self._board is None:
            self._board = board()
        return self._board

    async def plan(self) -> tuple[FaultPlan, float]:
        data, elapsed = await self._actor().plan.remote(self.key)
        return FaultPlan(**data), float(elapsed)

    async def record(self, text: str, event: str) -> None:
        await self._actor().record.remote(self.key, text, event)


class FaultyEngine(Engine):
    """An engine that speaks recognisable audio, or fails exactly as its plan says."""

    sample_rate = SAMPLE_RATE

    def __init__(self, name: str = "faulty", control: FaultControl | None = None) -> None:
        self.name = name
        self.control: FaultControl = control or LocalControl()
        self._faults: tuple[FaultPlan, int] | None = None  # the plan `times` counts for, and the count

    def _misbehaves(self, plan: FaultPlan, mode: str) -> bool:
        """Whether this attempt follows the plan's fault, counting attempts against `times`."""
        if mode == "ok" or plan.times is None:
            return mode != "ok"
        count = self._faults[1] if self._faults is not None and self._faults[0] == plan else 0
        self._faults = (plan, count + 1)
        return count < plan.times

    @classmethod
    def from_settings(cls, settings: Settings) -> FaultyEngine:
        """Inside a Serve replica: controlled through the board under the deployment's name."""
        from ray import serve

        key = serve.get_replica_context().deployment
        return cls(name=key, control=BoardControl(key))

    async def synthesize(
        self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0
    ) -> AsyncIterator[bytes | WordMark]:
        plan, elapsed = await self.control.plan()
        mode = plan.mode_for(text, elapsed)
        if not self._misbehaves(plan, mode):
            mode = "ok"
        await self.control.record(text, "start")
        if mode == "invalid":
            raise InvalidInput("injected caller error")
        if mode == "error":
            raise EngineUnavailable("injected engine error")
        if mode == "busy":
            raise EngineBusy("injected: queue full")
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "empty":
            return
        if plan.queued_s is not None:
            await asyncio.sleep(plan.queued_s)
            yield b""  # admitted: the work starts now
        if plan.first_byte_delay_s:
            await asyncio.sleep(plan.first_byte_delay_s)
        value = sample_value(text, plan.code)
        chunk = np.full(SAMPLE_RATE * plan.chunk_ms // 1000, value, dtype="<i2").tobytes()
        count = max(1, plan.sentence_ms // plan.chunk_ms)
        words = text.split() if plan.word_marks else []
        word_s = count * plan.chunk_ms / 1000 / max(1, len(words))
        marks = [WordMark(w, round(i * word_s, 4), round((i + 1) * word_s, 4)) for i, w in enumerate(words)]
        for index in range(count):
            while marks and marks[0].start_s < (index + 1) * plan.chunk_ms / 1000:
                yield marks.pop(0)
            if index == 1 and mode == "stall":
                await asyncio.Event().wait()
            if index == 1 and mode == "partial":
                raise EngineUnavailable("injected failure after partial audio")
            if index == 1 and mode == "own_timeout":  # e.g. a client library's own deadline
                raise TimeoutError("injected: the engine's own deadline")
            yield chunk
            await asyncio.sleep(plan.chunk_delay_s)
        await self.control.record(text, "done")

    def voices(self) -> list[Voice]:
        return [Voice("fault", self.name, "Fault injector")]

    async def check(self) -> EngineCheck:
        plan, elapsed = await self.control.plan()
        return EngineCheck(self.name, True, None, {"plan": asdict(plan), "plan_age_s": round(elapsed, 3)})
