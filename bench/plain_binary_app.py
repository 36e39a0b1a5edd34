"""The simplest alternative to this service: plain uvicorn + FastAPI calling the `flite` binary.

    uvicorn bench.plain_binary_app:app --loop asyncio --workers N

What a user would write first, and nothing of ours: one flite process per request, the text as an
argument (never through a shell), flite's WAV from its stdout sent back as it is, no resampling or
streaming. bench.ttfb runs it with one worker and with one worker per core as the reference for
throughput. (`--loop asyncio`: under uvloop a child's stdout is a socket pair, which flite cannot
open as `/dev/stdout`.)
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

app = FastAPI()


class Body(BaseModel):
    input: str
    voice: str = "alloy"


@app.post("/v1/audio/speech")
async def speech(body: Body) -> Response:
    argv = ["flite", "-voice", "slt", "-o", "/dev/stdout", "-t", body.input]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    wav, err = await proc.communicate()
    if proc.returncode != 0:
        return Response(err[:200], status_code=500)
    return Response(wav, media_type="audio/wav")
