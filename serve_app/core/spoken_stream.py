"""Spoken form for text that arrives in fragments: most of a sentence is normalised before it is complete.

Why: on the realtime socket a sentence arrives as LLM tokens, often over hundreds of milliseconds,
and normalising it only once it is complete puts all of NeMo's time (1.5-17 ms per number, see
`serve_app.core.spoken`) between the sentence's last token and its first audio. Here, each time the
incomplete sentence grows, the windows of it that no later text can change
(`SpokenNormalizer.stable_windows`) are normalised in a worker thread; when the sentence is
complete, `SpokenNormalizer.normalize` gets them as `known` and only the windows near its end are
left to compute. The result is exactly the whole-sentence `normalize` result: a window is always
normalised on its own, and a window that turned out not to be one of the sentence's (the text went
another way) is simply not used.

The windows at the end of a sentence are only known once it ends, and they are most of the work
when a sentence ends in a number ("... in room 582."). An LLM sends the end punctuation as a token
of its own; the sentence is complete one token later (whitespace and the next sentence, or a
flush). So when the text so far could end a sentence (`could_end_sentence`), its windows as a
complete sentence are normalised too: one extra pass per sentence, right when it is most likely to
pay (wasted only when the text goes on, as "3." does with "5").

Two layers: `IncrementalSpoken` (thread-safe, blocking: the rule and the bookkeeping; what the unit
tests drive token by token) and `SpokenFeed` (one per socket, on its event loop: runs the blocking
work in a worker thread, at most one pass at a time, so a burst of tokens costs one pass).
"""

from __future__ import annotations

import asyncio
import re
import threading

from serve_app.core.spoken import SpokenNormalizer
from serve_app.core.text import could_end_sentence

_WS = re.compile(r"\s+")
# Windows kept for the sentence being built; more means the text went another way many times.
_MAX_KNOWN = 64


def _as_sentence(text: str) -> str:
    """The pending text as the sentence will read (whitespace collapsed, as `SentenceBuffer` does),
    keeping one trailing space: it says the last token is complete."""
    return _WS.sub(" ", text).lstrip()


class IncrementalSpoken:
    """The normalised windows of the sentence being built; thread-safe, one pass at a time."""

    def __init__(self, normalizer: SpokenNormalizer) -> None:
        self.normalizer = normalizer
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def missing(self, pending: str) -> list[str]:
        """Windows of `pending` worth normalising now and not normalised yet (cheap: no NeMo call):
        the stable ones, and all of them when `pending` could end the sentence as it is."""
        text = _as_sentence(pending)
        windows = self.normalizer.stable_windows(text)
        if could_end_sentence(text):
            windows += self.normalizer.windows(text.rstrip())
        return [w for w in dict.fromkeys(windows) if w not in self._known]

    def left_for(self, sentence: str) -> list[str]:
        """Windows of the complete `sentence` that `finish` would still have to normalise."""
        return [w for w in self.normalizer.windows(sentence) if w not in self._known]

    def advance(self, pending: str) -> int:
        """Normalise the `missing` windows of `pending` (the incomplete sentence so far); how many were new."""
        with self._lock:
            todo = self.missing(pending)
            for window in todo:
                self._known[window] = self.normalizer.normalize_window(window)
            while len(self._known) > _MAX_KNOWN:
                del self._known[next(iter(self._known))]
            return len(todo)

    def finish(self, sentence: str) -> str:
        """The spoken form of a complete sentence (what `SpokenNormalizer.normalize` says for it)."""
        with self._lock:
            spoken = self.normalizer.normalize(sentence, known=self._known)
            for window in [w for w in self._known if w in sentence]:
                del self._known[window]  # used; the next sentence starts afresh
            return spoken

    def reset(self) -> None:
        """The text was dropped (barge-in). Without the lock, so the event loop never waits for a pass:
        a window such a pass still adds is harmless (a window is only used where it occurs)."""
        self._known = {}


class SpokenFeed:
    """One stream's incremental normalisation on an event loop: `update` as text arrives, `spoken` when
    a sentence is complete. The NeMo work runs in a worker thread (pynini holds the GIL while it
    composes, so the loop still pauses for each window, but no coroutine waits for it)."""

    def __init__(self, normalizer: SpokenNormalizer) -> None:
        self.incremental = IncrementalSpoken(normalizer)
        self._pending = ""
        self._task: asyncio.Task[None] | None = None

    def update(self, pending: str) -> None:
        """The incomplete sentence is now `pending`: normalise what became stable, in the background."""
        self._pending = pending
        if (self._task is None or self._task.done()) and self.incremental.missing(pending):
            self._task = asyncio.create_task(self._work())

    async def _work(self) -> None:
        done: str | None = None
        while self._pending != done:  # text that came during a pass gets one more pass
            done = self._pending
            await asyncio.to_thread(self.incremental.advance, done)

    async def spoken(self, sentence: str) -> str:
        """The spoken form of a complete sentence; waits for a pass under way (its windows are ours)."""
        return await asyncio.to_thread(self.incremental.finish, sentence)

    def close(self) -> None:
        """Drop the pending text and stop scheduling (barge-in, settings change, socket closed)."""
        self._pending = ""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.incremental.reset()
