"""What an engine replica sends: small items travel with the audio that follows them, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve_app.core.errors import EngineUnavailable
from serve_app.core.replica import ReplicaTag
from serve_app.core.timing import WordMark
from serve_app.core.wire import pack, unpack


async def script(items: list[Any], delays: dict[int, float] | None = None, fail_at: int | None = None,
                 closed: list[bool] | None = None) -> AsyncIterator[Any]:
    try:
        for index, item in enumerate(items):
            await asyncio.sleep((delays or {}).get(index, 0))
            if index == fail_at:
                raise EngineUnavailable("injected")
            yield item
    finally:
        if closed is not None:
            closed.append(True)


async def messages(stream: AsyncIterator[Any], hold_s: float = 0.05) -> list[Any]:
    return [m async for m in pack(stream, hold_s)]


def flat(sent: list[Any]) -> list[Any]:
    return [item for message in sent for item in unpack(message)]


async def test_tag_marker_and_word_marks_travel_with_the_first_audio() -> None:
    marks = [WordMark("one", 0.0, 0.2), WordMark("two", 0.2, 0.4)]
    items = [ReplicaTag("r1"), b"", *marks, b"\x01\x00" * 10, b"\x02\x00" * 10]
    sent = await messages(script(items))
    assert len(sent) == 2  # five small items and the first chunk in one message, then the next chunk
    assert flat(sent) == items


async def test_a_start_marker_with_nothing_after_it_goes_out_alone() -> None:
    # The engine starts, then takes long for its first audio: the router must hear "started" now.
    items = [b"", b"\x01\x00" * 10]
    stream = pack(script(items, delays={1: 0.5}), 0.02)
    first = await asyncio.wait_for(anext(stream), 0.3)
    assert first == b""
    assert await anext(stream) == items[1]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_held_items_are_delivered_before_the_error() -> None:
    items = [ReplicaTag("r2"), WordMark("hi", 0.0, 0.1), b"\x01\x00"]
    received: list[Any] = []
    with pytest.raises(EngineUnavailable):
        async for message in pack(script(items, fail_at=2), 0.05):
            received.extend(unpack(message))
    assert received == items[:2]  # the caller learns which replica failed


async def test_closing_early_closes_the_engine_stream() -> None:
    closed: list[bool] = []
    stream = pack(script([b"", b"\x01\x00", b"\x02\x00"], delays={1: 0.2}, closed=closed), 0.01)
    assert await anext(stream) == b""  # sent alone while the first audio is awaited
    await stream.aclose()  # the caller left while the engine worked on its first audio
    assert closed == [True]
