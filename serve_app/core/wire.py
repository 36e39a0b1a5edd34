"""Fewer messages between an engine replica and its caller: items that come together travel together.

Every item an engine replica yields is one message through Serve (a pickled object, a streaming
generator report, a wake-up of the caller's loop), and that per-message cost, not the audio, is
most of what a hop costs. An engine's stream has small items around its audio: the replica's tag,
the start marker `b""`, word marks (one per word). `pack` groups each run of them with the audio
chunk that follows into one tuple; `unpack` (the caller's side) restores the original sequence.

The start marker must not wait long for company: the router starts its first-byte budget there,
and an engine that hangs after starting must be seen as started. So a held marker goes out alone
once nothing else has come for `hold_s`. Held items also go out before an error is re-raised, so
the caller learns which replica failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

HOLD_S = 0.03


def _audio(item: Any) -> bool:
    return isinstance(item, bytes) and len(item) > 0


def _out(held: list[Any]) -> Any:
    return held[0] if len(held) == 1 else tuple(held)


async def pack(stream: AsyncIterator[Any], hold_s: float = HOLD_S) -> AsyncIterator[Any]:
    """`stream`'s items, each run of non-audio items sent with the next audio chunk (see above)."""
    iterator = stream.__aiter__()
    held: list[Any] = []
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            try:
                if any(isinstance(item, bytes) for item in held):  # a start marker is waiting
                    pending = asyncio.ensure_future(anext(iterator))
                    done, _ = await asyncio.wait({pending}, timeout=hold_s)
                    if not done:
                        yield _out(held)
                        held = []
                    item = await pending
                    pending = None
                else:
                    item = await anext(iterator)
            except StopAsyncIteration:
                break
            except Exception:
                if held:
                    yield _out(held)
                    held = []
                raise
            held.append(item)
            if _audio(item):
                yield _out(held)
                held = []
        if held:
            yield _out(held)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def unpack(message: Any) -> tuple[Any, ...]:
    """The items of one message, in order."""
    return message if isinstance(message, tuple) else (message,)
