"""One simulated voice-agent session, paced like a conversation.

A real agent speaks a reply, the caller hears it out (the audio's own duration) and then talks
for a few seconds before the agent speaks again; it heartbeats while the call lasts and finalizes
with a usage summary when it ends. Pacing by audio duration is what makes "100 concurrent
sessions" mean what it means in production rather than 100 clients hammering in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load_client import ServiceClient
from bench.load_stats import latency_summary

# What a voice agent says: short, conversational, one to three sentences.
DEFAULT_UTTERANCES: tuple[str, ...] = (
    "Hi there, thanks for calling. How can I help you today?",
    "Sure, I can help with that. Could you tell me your order number?",
    "Thanks. One moment while I look that up for you.",
    "I found your order. It shipped yesterday and should arrive on Thursday.",
    "Is there anything else I can help you with?",
    "Of course. Your appointment is confirmed for ten thirty tomorrow morning.",
    "I'm sorry to hear that. Let me see what I can do.",
    "That sounds good. I have updated your address in our system.",
    "The total comes to forty two dollars and fifty cents, including tax.",
    "Great question. Our store is open from nine to six, Monday through Saturday.",
    "I can transfer you to a specialist if you would like.",
    "Just to confirm, you would like the blue one in a medium size?",
    "No problem at all. Take your time.",
    "Your refund has been processed. You should see it within three to five business days.",
    "I didn't quite catch that. Could you say it again, please?",
    "Perfect. I have sent a confirmation email to the address on file.",
    "The weather tomorrow looks sunny, with a high of seventy two degrees.",
    "Let me read that back to you: two large pizzas, one with mushrooms and one plain.",
    "Thanks for your patience. The next available slot is on Friday at two.",
    "Alright, you're all set. Have a wonderful day!",
)


def load_utterances(path: str | Path | None) -> tuple[str, ...]:
    """One utterance per non-empty line of `path`, or the built-in conversational set."""
    if path is None:
        return DEFAULT_UTTERANCES
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    utterances = tuple(line for line in lines if line and not line.startswith("#"))
    if not utterances:
        raise ValueError(f"{path} holds no utterances")
    return utterances


@dataclass(frozen=True)
class Pace:
    """Conversational timing: playback factor (1.0 = real time), user turn range, heartbeats."""

    user_turn_s: tuple[float, float] = (4.0, 6.0)
    playback_factor: float = 1.0
    heartbeat_interval_s: float = 15.0


class RunControl:
    """When sessions stop speaking: at the deadline, at the request target, or on request (Ctrl-C)."""

    def __init__(self, duration_s: float | None, requests_target: int | None) -> None:
        self.duration_s = duration_s
        self.requests_target = requests_target
        self.deadline: float | None = None  # time.monotonic() value, set by begin()
        self.speech_started = 0
        self._stop = asyncio.Event()

    def begin(self) -> None:
        """Start the clock: the conversation lasts `duration_s` from now."""
        if self.duration_s:
            self.deadline = time.monotonic() + self.duration_s

    def stop(self) -> None:
        self._stop.set()

    def claim_request(self) -> bool:
        """True when one more utterance may be spoken; counts it against the target."""
        if self.stopping():
            return False
        self.speech_started += 1
        if self.requests_target is not None and self.speech_started >= self.requests_target:
            self._stop.set()
        return True

    def stopping(self) -> bool:
        if not self._stop.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self._stop.set()
        return self._stop.is_set()

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when the run ends meanwhile (or the deadline comes first)."""
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)


@dataclass
class SessionStats:
    """What one session did; its usage summary goes to finalize."""

    index: int
    session_id: str | None = None
    utterances: int = 0
    characters: int = 0
    audio_s: float = 0.0
    errors: int = 0
    heartbeats: int = 0
    ttfbs: list[float] = field(default_factory=list)
    engines: dict[str, int] = field(default_factory=dict)
    finalized: bool = False

    def usage(self) -> dict[str, Any]:
        """In the shape of the sessions API's `UsageSummary` (extra fields are kept as sent)."""
        ttfb = latency_summary(self.ttfbs)
        return {
            "characters": self.characters,
            "audio_seconds": round(self.audio_s, 3),
            "requests": self.utterances,
            "engines": {name: {"requests": count} for name, count in self.engines.items()},
            "latency_ms": {"ttfb_p50": ttfb["p50"], "ttfb_p95": ttfb["p95"], "ttfb_max": ttfb["max"]},
            "errors": self.errors,
            "heartbeats": self.heartbeats,
            "client": "bench.load",
        }


async def run_session(
    index: int,
    client: ServiceClient,
    control: RunControl,
    utterances: Sequence[str],
    pace: Pace,
    rng: random.Random,
    *,
    agent_name: str,
    run_id: str,
) -> SessionStats:
    """Create, converse until the run stops, finalize. Never raises for a failed call."""
    stats = SessionStats(index)
    stats.session_id = await client.create_session(
        room=f"load-{run_id}-{index:04d}",
        participant=f"caller-{index:04d}",
        agent_name=agent_name,
        metadata={"source": "bench.load", "run": run_id, "index": index},
    )
    if stats.session_id is None:
        return stats
    last_heartbeat = time.monotonic()
    offset = rng.randrange(len(utterances))
    try:
        while control.claim_request():
            text = utterances[(offset + stats.utterances) % len(utterances)]
            call = await client.speak(text, stats.session_id)
            stats.utterances += 1
            stats.characters += len(text)
            if call.ok:
                stats.audio_s += call.audio_s or 0.0
                stats.ttfbs.append(call.ttfb_s or 0.0)
                engine = call.engine or "unknown"
                stats.engines[engine] = stats.engines.get(engine, 0) + 1
            else:
                stats.errors += 1
            if time.monotonic() - last_heartbeat >= pace.heartbeat_interval_s:
                stats.heartbeats += 1
                if not await client.heartbeat(stats.session_id):
                    stats.errors += 1
                last_heartbeat = time.monotonic()
            listening = (call.audio_s or 0.0) * pace.playback_factor
            await control.pause(listening + rng.uniform(*pace.user_turn_s))
    finally:
        # Shielded: a cancelled run (second Ctrl-C) still marks its sessions COMPLETED if it can.
        stats.finalized = await asyncio.shield(client.finalize(stats.session_id, stats.usage()))
    return stats
