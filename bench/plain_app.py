"""Baseline for bench.ttfb: the same Flite call behind plain uvicorn + FastAPI, no Ray Serve.

It uses the same engine code as the Serve deployment (FliteEngine, same backend) so the
comparison isolates what Serve's proxy and handle hops cost.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from serve_app.core.audio import StreamResampler
from serve_app.engines.flite import FliteEngine

app = FastAPI()
# The same libflite as the service's runs (bench.ttfb passes FLITE_LIBRARY on when it is set).
engine = FliteEngine(library=os.environ.get("FLITE_LIBRARY", "auto"))


class Body(BaseModel):
    input: str
    voice: str = "alloy"


@app.post("/v1/audio/speech")
async def speech(body: Body) -> StreamingResponse:
    async def pcm() -> AsyncIterator[bytes]:
        resampler = StreamResampler(engine.sample_rate, 24000)
        async for chunk in engine.synthesize(body.input, body.voice):
            if isinstance(chunk, bytes) and chunk:  # word marks and the start marker carry no audio
                yield resampler.feed(chunk)
        yield resampler.flush()

    return StreamingResponse(pcm(), media_type="audio/pcm")
