"""The generic batching pieces, without a model: `Batcher` (batch forming, admission marker, busy,
cancellation, failures) with a small step-by-step runner, and `StreamWindow` (chunk schedule and
decode windows)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from serve_app.batching import Batcher, Row
from serve_app.engines.base import EngineBusy, EngineUnavailable, InvalidInput
from serve_app.stream_decode import StreamWindow, Window, seam_error, to_pcm


class StepRunner:
    """Speaks request `n` as n chunks of one byte pair, one per step (1 ms), checking for cancellation."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.steps = 0
        self.gate = threading.Event()
        self.gate.set()

    def run_batch(self, rows: list[Row[int]]) -> None:
        self.batches.append([row.request for row in rows])
        live = list(rows)
        step = 0
        while live:
            self.gate.wait()
            live = [row for row in live if not row.cancelled]
            for row in live:
                if row.request < 0:
                    row.fail(InvalidInput("negative length"))
                elif step < row.request:
                    row.emit(b"\x01\x00")
                else:
                    row.finish()
            live = [row for row in live if row.open]
            step += 1
            self.steps += 1
            time.sleep(0.001)


async def read(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition never held")


async def test_requests_arriving_together_share_a_batch_and_each_ends_on_its_own() -> None:
    runner = StepRunner()
    batcher = Batcher(runner, name="test", max_batch_size=3, wait_s=1.0)
    results = await asyncio.gather(*(read(batcher.stream(n)) for n in (2, 5, 3, 1)))
    assert runner.batches == [[2, 5, 3], [1]]  # full batch left at once, the fourth waited for the next
    assert [r[0] for r in results] == [b""] * 4  # the admission marker first
    assert [len(b"".join(r)) // 2 for r in results] == [2, 5, 3, 1]
    assert batcher.stats.to_dict()["largest"] == 3
    await batcher.close()


async def test_a_bad_row_fails_alone() -> None:
    batcher = Batcher(StepRunner(), name="test", max_batch_size=2, wait_s=1.0)
    good, bad = await asyncio.gather(read(batcher.stream(3)), read(batcher.stream(-1)), return_exceptions=True)
    assert isinstance(bad, InvalidInput) and isinstance(good, list) and len(b"".join(good)) == 6
    await batcher.close()


async def test_a_failing_runner_or_an_unfinished_row_is_engine_unavailable() -> None:
    class Broken:
        def run_batch(self, rows: list[Row[int]]) -> None:
            if rows[0].request == 0:
                raise RuntimeError("device lost")
            rows[0].emit(b"\x00\x00")  # and returns without finishing the row

    batcher = Batcher(Broken(), name="test", max_batch_size=1, wait_s=0)
    with pytest.raises(EngineUnavailable, match="device lost"):
        await read(batcher.stream(0))
    with pytest.raises(EngineUnavailable, match="without finishing"):
        await read(batcher.stream(1))
    assert batcher.stats.failed_batches == 1
    await batcher.close()


async def test_busy_when_the_queue_is_full_and_cancelled_rows_are_dropped() -> None:
    runner = StepRunner()
    runner.gate.clear()  # the running batch holds until released
    batcher = Batcher(runner, name="test", max_batch_size=1, wait_s=0, max_queued=1)
    running = batcher.stream(2)
    assert await anext(running) == b""  # admitted, then held at the gate
    queued = asyncio.ensure_future(read(batcher.stream(4)))
    await until(lambda: batcher.queued == 1)
    with pytest.raises(EngineBusy):
        await read(batcher.stream(1))
    queued.cancel()  # a caller gone while queued never reaches a batch
    await until(lambda: batcher.queued == 0)
    await running.aclose()  # a caller gone mid-batch: the runner drops the row at its next step
    runner.gate.set()
    await until(lambda: batcher.running == 0)
    assert runner.batches == [[2]] and runner.steps <= 1
    assert batcher.stats.cancelled == 2 and batcher.stats.busy_rejections == 1
    await batcher.close()


def test_run_now_collects_each_rows_audio_or_error() -> None:
    batcher = Batcher(StepRunner(), name="test")
    results = batcher.run_now([2, -1])
    assert results[0] == b"\x01\x00" * 2 and isinstance(results[1], InvalidInput)


def test_stream_window_ramps_up_and_keeps_context_and_lookahead() -> None:
    window = StreamWindow(first_frames=8, chunk_frames=32, left_context=8, lookahead=4)
    sizes = []
    for available in range(1, 121):
        due = window.due(available, final=available == 120)
        if due is not None:
            assert due.start == max(0, due.emit_from - 8)
            assert due.end == (120 if available == 120 else min(available, due.emit_to + 4))
            sizes.append(due.emit_to - due.emit_from)
            window.mark(due)
    assert sizes == [8, 8, 16, 32, 32, 24] and window.emitted == 120
    assert Window(4, 20, 12, 16).keep(512) == slice(8 * 512, 12 * 512)
    with pytest.raises(ValueError):
        StreamWindow(first_frames=0)


def test_seam_error_and_pcm() -> None:
    a = np.linspace(-1, 1, 100)
    assert seam_error(a, a) == {"max": 0.0, "rms": 0.0}
    assert seam_error(a + 0.01, a)["rms"] == pytest.approx(0.01)
    assert np.frombuffer(to_pcm(np.array([2.0, -2.0, 0.5])), "<i2").tolist() == [32767, -32767, 16383]


async def test_a_batch_that_stops_delivering_reports_how_long_it_has_stalled() -> None:
    runner = StepRunner()
    batcher: Batcher[int] = Batcher(runner, name="t", max_batch_size=2, wait_s=0.0)
    assert batcher.stalled_for() == 0.0  # nothing runs: nothing can be stalled
    stream = batcher.stream(1000)
    assert await anext(stream) == b""  # admitted: the batch runs
    await anext(stream)
    assert batcher.stalled_for() < 0.5  # it is delivering
    runner.gate.clear()  # the "device" hangs: no more steps
    await asyncio.sleep(0.3)
    assert batcher.stalled_for() >= 0.25
    runner.gate.set()
    await until(lambda: batcher.stalled_for() < 0.25)  # steps again: delivering again
    await stream.aclose()  # type: ignore[attr-defined]
    await until(lambda: batcher.running == 0)
    assert batcher.stalled_for() == 0.0


async def test_rows_of_answers_already_playing_join_the_next_batch_first() -> None:
    from serve_app.core.gate import PRIORITY_NEW, PRIORITY_PLAYING

    runner = StepRunner()
    runner.gate.clear()  # the running batch holds until released
    batcher = Batcher(runner, name="test", max_batch_size=1, wait_s=0)
    running = batcher.stream(1)
    assert await anext(running) == b""
    new_1 = asyncio.ensure_future(read(batcher.stream(2, PRIORITY_NEW)))
    await until(lambda: batcher.queued == 1)
    new_2 = asyncio.ensure_future(read(batcher.stream(3, PRIORITY_NEW)))
    await until(lambda: batcher.queued == 2)
    playing = asyncio.ensure_future(read(batcher.stream(4, PRIORITY_PLAYING)))
    await until(lambda: batcher.queued == 3)
    runner.gate.set()
    await read(running)
    await asyncio.gather(new_1, new_2, playing)
    assert runner.batches == [[1], [4], [2], [3]]  # the playing answer's row went ahead, then arrival order
    await batcher.close()
