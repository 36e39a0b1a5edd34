"""A job entrypoint for the worker tests: the real per-job runtime, one spoken turn, a report.

It is `agent.worker.entrypoint` without the parts that need a LiveKit room and an LLM: the job opens
its `JobRuntime` on its own loop (sessions API client, outbox replayer, session, ServeTTS), speaks
one turn through `ServeTTS.stream()`, writes what it saw to `$AGENT_JOB_RESULTS/<job id>.json`,
and shuts the job down, so its shutdown callback finalizes the session and closes everything.
Module-level, so livekit's process executor can import it by name in its job processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

from livekit.agents import JobContext
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

from agent.worker import open_job

TURN = "Hello from the job. This answer has two sentences."


async def speak_one_turn(ctx: JobContext) -> None:
    job = open_job(ctx)
    room = ctx.job.room.name
    await job.begin(room, "tester")
    assert job.tts is not None
    text = TURN
    stream = job.tts.stream()
    for i in range(0, len(text), 5):  # LLM-like fragments, split mid-word
        stream.push_text(text[i : i + 5])
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    words = [str(w).strip() for ev in events for w in ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
    report = {
        "room": room,
        "text": text,
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "loop": id(asyncio.get_running_loop()),
        "transport": job.tts.stream_transport,
        "audio_s": sum(ev.frame.duration for ev in events),
        "words": words,
        "session_id": job.active.session_id if job.active else None,
    }
    out = Path(os.environ["AGENT_JOB_RESULTS"]) / f"{room}.json"
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(report))
    partial.replace(out)  # the test waits for the file: it must appear whole
    ctx.shutdown("turn spoken")
