"""Word timing: the engines' own word marks, aligned to the text, and estimates from the audio.

Why this module exists: a voice agent shows captions and truncates its transcript at the word the
user interrupted, so every answer needs word start/end times, whatever engine spoke it.

- `WordMark` is what an engine with real alignment yields in its stream, between PCM chunks (from
  its service's word-boundary events, or its synthesizer's segment times). Times are seconds from
  the start of that engine's audio for the text it was given. It is a small frozen dataclass so it
  pickles through Serve's streaming handles unchanged.
- Engines name words their own way (one says "one", "hundred", "twenty", "three" for "123",
  lower-case, without punctuation). `WordAligner` maps those marks back onto the text's
  whitespace-separated tokens, in order, and merges the marks that belong to one token, so the
  timings carry the words of the text that was spoken (its spoken form) and a char offset, which
  is what lets a failover resume at the first word the listener has not heard.
- `estimate_words` gives engines without alignment (neural models, anything new) timings from the
  audio they actually produced: the speech between the leading and trailing silence is shared out
  by per-word weights (letters; digits count more because they expand into several words), and each
  clause break is moved to the pause the audio has near it. Against an engine's exact times this lands
  within about 90 ms (median) of the true word start; exact marks are always preferred.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.core.audio import SAMPLE_WIDTH


@dataclass(frozen=True)
class WordMark:
    """One word and when it is heard, in seconds (from the start of the engine's audio for its text)."""

    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TimedWord:
    """A word of a known text with its times; `offset` is where its token starts in that text."""

    word: str
    start_s: float
    end_s: float
    offset: int

    def shifted(self, seconds: float, chars: int = 0) -> TimedWord:
        return TimedWord(self.word, self.start_s + seconds, self.end_s + seconds, self.offset + chars)

    def mark(self, seconds: float = 0.0) -> WordMark:
        """As a `WordMark` shifted by `seconds`, rounded to the millisecond."""
        return WordMark(self.word, round(self.start_s + seconds, 3), round(self.end_s + seconds, 3))


@dataclass(frozen=True)
class Token:
    """A whitespace-separated piece of text that has something to speak."""

    text: str  # as written, punctuation included
    offset: int  # first character in the text
    key: str  # lower-case letters and digits only, for matching engine words

    @property
    def display(self) -> str:
        """The word as shown to a caller: the token without the punctuation around it."""
        stripped = _OUTER_PUNCTUATION.sub("", self.text)
        return stripped or self.text


_TOKEN = re.compile(r"\S+")
# Leading/trailing characters that are not letters, digits or an apostrophe inside a word.
_OUTER_PUNCTUATION = re.compile(r"^[^\w]+|[^\w'\u2019]+$|['\u2019]+$")
_PAUSE_AFTER = {",": 1.5, ";": 2.5, ":": 2.5, "\u2014": 2.0, "-": 1.0, ".": 3.0, "!": 3.0, "?": 3.0, "\u2026": 3.0}


def _key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def tokens(text: str) -> list[Token]:
    """The tokens of `text` that have a letter or digit (a lone dash or ellipsis is not a word)."""
    found: list[Token] = []
    for match in _TOKEN.finditer(text):
        key = _key(match.group())
        if key:
            found.append(Token(match.group(), match.start(), key))
    return found


def _subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(ch in letters for ch in short)


def _matches(word_key: str, token_key: str) -> bool:
    """Whether an engine's word is (the start of) a token: one starts the other ("dont" / "don't",
    "well" / "well-known"), or the token is an abbreviation of the word ("dr" / "doctor")."""
    if not word_key or not token_key:
        return False
    if token_key.startswith(word_key) or word_key.startswith(token_key):
        return True
    return token_key[0] == word_key[0] and len(token_key) <= 4 and _subsequence(token_key, word_key)


def _spelled_out(token: Token) -> bool:
    """A token an engine reads as other words (digits, symbols): its words never match it."""
    return any(ch.isdigit() for ch in token.key) or not token.text.replace("'", "").isalpha()


class WordAligner:
    """Maps an engine's word marks, as they stream in, onto the tokens of the text it was given.

    Greedy and in order: a mark matches the next token, or one of the few after it (an engine may
    skip a token it does not voice); a mark that matches none continues the current token (an
    expansion such as a number read as several words). Marks of one token are merged into one
    `TimedWord`, released when the next token starts or at `finish()`.
    """

    LOOKAHEAD = 3

    def __init__(self, text: str) -> None:
        self.tokens = tokens(text)
        self._next = 0  # the next token a mark may start
        self._current: int | None = None  # the token being voiced
        self._start = 0.0
        self._end = 0.0
        self._heard = ""  # the current token's marks so far, as keys

    def feed(self, mark: WordMark) -> list[TimedWord]:
        """The words completed by this mark (zero or one)."""
        key = _key(mark.word)
        if not key:
            return []  # punctuation boundaries carry no word
        if self._current is not None and self.tokens[self._current].key.startswith(self._heard + key):
            # The token spelled out piece by piece ("PM" as "p", "m"): the "m" must not start "more".
            self._heard += key
            self._end = max(self._end, mark.end_s)
            return []
        found = None
        for index in range(self._next, min(len(self.tokens), self._next + self.LOOKAHEAD)):
            if _matches(key, self.tokens[index].key):
                found = index
                break
        if found is None and self._next < len(self.tokens):
            current = self.tokens[self._current] if self._current is not None else None
            if current is None or (not _spelled_out(current) and _spelled_out(self.tokens[self._next])):
                # The first mark, or the first word of a number or symbol read aloud ("123", "$5").
                found = self._next
        if found is None:
            if self._current is not None:  # more words of the current token ("hundred" of "123")
                self._end = max(self._end, mark.end_s)
            return []
        done = self._close()
        self._current, self._next = found, found + 1
        self._start, self._end = mark.start_s, max(mark.start_s, mark.end_s)
        self._heard = key
        return done

    def finish(self) -> list[TimedWord]:
        return self._close()

    @property
    def unstarted(self) -> int:
        """Tokens no mark has reached yet (at the end of a stream: words the engine never said)."""
        return len(self.tokens) - self._next

    def _close(self) -> list[TimedWord]:
        if self._current is None:
            return []
        token = self.tokens[self._current]
        self._current = None
        return [TimedWord(token.display, self._start, self._end, token.offset)]


def align_marks(text: str, marks: Sequence[WordMark]) -> list[TimedWord]:
    """All of `marks` aligned to `text` at once (see `WordAligner`)."""
    aligner = WordAligner(text)
    words = [word for mark in marks for word in aligner.feed(mark)]
    return words + aligner.finish()


def resume_offset(text: str, heard: Sequence[TimedWord]) -> int | None:
    """Where to resume `text` after its words `heard` were heard in full: the next token's offset.

    None when nothing was heard (say it all again); `len(text)` when every word was heard.
    """
    if not heard:
        return None
    last = heard[-1].offset
    for token in tokens(text):
        if token.offset > last:
            return token.offset
    return len(text)


# ---------------------------------------------------------------------------------------- estimation

FRAME_S = 0.01
SILENCE_RATIO = 0.04  # a frame quieter than this share of the loud frames' level is silence
MIN_GAP_S = 0.06  # a silence this long inside speech may be the pause at a clause break
SNAP_WINDOW = 0.25  # ... when it lies within this share of the speech of where the words put the break


def _word_weight(token: Token) -> float:
    letters = sum(ch.isalpha() for ch in token.key)
    digits = sum(ch.isdigit() for ch in token.key)
    return 1.0 + letters + 3.0 * digits


def _pause_weight(token: Token) -> float:
    tail = token.text.rstrip("\"'\u201d\u2019)]")
    return _PAUSE_AFTER.get(tail[-1:], 0.0) if tail else 0.0


def _frames(pcm: bytes, sample_rate: int) -> np.ndarray:
    """Root-mean-square level of each 10 ms frame."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH], dtype="<i2").astype(np.float32)
    size = max(1, int(sample_rate * FRAME_S))
    count = len(samples) // size
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    framed = samples[: count * size].reshape(count, size)
    return np.sqrt(np.mean(framed * framed, axis=1))


def _voiced(levels: np.ndarray) -> np.ndarray | None:
    if levels.size == 0:
        return None
    loud = float(np.percentile(levels, 90))
    voiced = levels > max(loud * SILENCE_RATIO, 30.0)
    return voiced if voiced.any() else None


def _gaps(voiced: np.ndarray) -> list[tuple[float, float]]:
    """Silences of at least MIN_GAP_S between the first and the last voiced frame (seconds)."""
    on = np.flatnonzero(voiced)
    first, last = int(on[0]), int(on[-1])
    gaps: list[tuple[float, float]] = []
    start: int | None = None
    for index in range(first, last + 1):
        if not voiced[index]:
            start = index if start is None else start
        elif start is not None:
            if (index - start) * FRAME_S >= MIN_GAP_S:
                gaps.append((start * FRAME_S, index * FRAME_S))
            start = None
    return gaps


def _spread(group: Sequence[Token], start: float, end: float) -> list[TimedWord]:
    """Share [start, end] among `group` by word weight, leaving each clause pause after its word."""
    weights = [_word_weight(t) for t in group]
    pauses = [_pause_weight(t) if i < len(group) - 1 else 0.0 for i, t in enumerate(group)]
    total = sum(weights) + sum(pauses)
    scale = (end - start) / total if total > 0 else 0.0
    out: list[TimedWord] = []
    cursor = start
    for token, weight, pause in zip(group, weights, pauses, strict=True):
        word_end = cursor + weight * scale
        out.append(TimedWord(token.display, round(cursor, 4), round(word_end, 4), token.offset))
        cursor = word_end + pause * scale
    return out


def _fit(found: Sequence[Token], begin: float, end: float, anchors: dict[int, tuple[float, float]]) -> list[TimedWord]:
    """Words spread by weight between anchors: anchor i fixes where word i ends and word i+1 starts."""
    words: list[TimedWord] = []
    start, first = begin, 0
    for index in [*sorted(anchors), len(found) - 1]:
        stop = anchors[index][0] if index in anchors else end
        words.extend(_spread(found[first : index + 1], start, stop))
        if index in anchors:
            start, first = anchors[index][1], index + 1
    return words


def _snap(
    gaps: list[tuple[float, float]], predicted: float, window: float, low: float, high: float, taken: set[int]
) -> int | None:
    """The unused gap nearest `predicted` (within `window`) that lies inside (low, high)."""
    best = None
    for index, (gap_start, gap_end) in enumerate(gaps):
        if index in taken or gap_start <= low or gap_end >= high or abs(gap_start - predicted) > window:
            continue
        if best is None or abs(gap_start - predicted) < abs(gaps[best][0] - predicted):
            best = index
    return best


def estimate_words(text: str, pcm: bytes, sample_rate: int) -> list[TimedWord]:
    """Timings for the words of `text` from the PCM (s16 mono) an engine produced for it.

    The speech runs from the first to the last voiced frame. The words are shared over it by weight,
    which predicts where each clause ends. Each clause break (after `,` `;` `.` ...) then moves to the
    silence nearest its predicted place, if one lies within a quarter of the speech and after the
    previous break's; the words of each clause are shared by weight between those anchors. Silences
    inside a clause (the closure before a stop consonant, a breath) are not used: snapping word
    boundaries to them made the estimate worse against an engine's exact times (bench/realtime.py).
    """
    found = tokens(text)
    if not found or sample_rate <= 0:
        return []
    duration = len(pcm) / (SAMPLE_WIDTH * sample_rate)
    voiced = _voiced(_frames(pcm, sample_rate))
    if voiced is None:
        return _spread(found, 0.0, duration)
    on = np.flatnonzero(voiced)
    begin, end = float(on[0]) * FRAME_S, min(duration, (float(on[-1]) + 1) * FRAME_S)
    gaps = _gaps(voiced)
    anchors: dict[int, tuple[float, float]] = {}
    taken: set[int] = set()
    breaks = [i for i, t in enumerate(found[:-1]) if _pause_weight(t) >= _PAUSE_AFTER[","]]
    predicted = _spread(found, begin, end)
    window = SNAP_WINDOW * (end - begin)
    for i in breaks:
        low = max((anchors[j][1] for j in anchors), default=begin)
        best = _snap(gaps, predicted[i].end_s, window, low, end, taken)
        if best is not None:
            anchors[i] = gaps[best]
            taken.add(best)
    return _fit(found, begin, end, anchors)
