"""Incremental spoken form (serve_app.core.spoken_stream) on the real NeMo grammars.

The sentences of tests/unit/spoken_corpus.tsv are fed the way an LLM streams them, under several
token splittings; whatever the splitting, the result must be exactly what `SpokenNormalizer.normalize`
says for the whole sentence, and the windows normalised early must be windows of the whole sentence
(the stability rule of `SpokenNormalizer.stable_windows`), so that little is left when it completes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from serve_app.core.spoken import SpokenNormalizer
from serve_app.core.spoken_stream import IncrementalSpoken, SpokenFeed
from serve_app.core.text import could_end_sentence
from tests.unit.test_spoken_corpus import _corpus

# Roughly how BPE tokenizers of chat models cut English: a word with its leading space, numbers in
# groups of up to three digits, every other symbol alone.
_BPE = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]| +")


def bpe_like(text: str) -> list[str]:
    pieces = _BPE.findall(text)
    assert "".join(pieces) == text
    return pieces


def fixed(size: int) -> Callable[[str], list[str]]:
    def split(text: str) -> list[str]:
        return [text[i : i + size] for i in range(0, len(text), size)]

    return split


def words_with_trailing_space(text: str) -> list[str]:
    """Whole words each followed by its space (a client that forwards whole words)."""
    return re.findall(r"\S+\s*", text)


SPLITTINGS = {"bpe": bpe_like, "4-chars": fixed(4), "1-char": fixed(1), "words": words_with_trailing_space}


def feed(incremental: IncrementalSpoken, fragments: list[str]) -> str:
    """Append fragments one by one (advancing after each), then finish the sentence."""
    pending = ""
    for fragment in fragments:
        pending += fragment
        incremental.advance(pending)
    return incremental.finish(pending.strip())


@pytest.mark.parametrize("splitting", sorted(SPLITTINGS))
def test_streamed_corpus_agrees_with_whole_sentence(normalizer: SpokenNormalizer, splitting: str) -> None:
    split = SPLITTINGS[splitting]
    incremental = IncrementalSpoken(normalizer)
    differences = []
    for category, sentence in _corpus():
        ours = feed(incremental, split(sentence))
        whole = normalizer.normalize(sentence)
        if ours != whole:
            differences.append(f"[{category}] {sentence!r}\n  whole: {whole!r}\n  fed:   {ours!r}")
    assert not differences, "\n".join(differences)


def test_stable_windows_of_every_prefix_are_windows_of_the_sentence(normalizer: SpokenNormalizer) -> None:
    """The rule itself: cut every corpus sentence at every character; nothing normalised early is wasted."""
    with_early = set()
    for _, sentence in _corpus():
        whole = set(normalizer.windows(sentence))
        for cut in range(1, len(sentence)):
            for window in normalizer.stable_windows(sentence[:cut]):
                assert window in whole, (sentence[:cut], window, sorted(whole))
                with_early.add(sentence)
    assert len(with_early) >= 25  # the corpus does exercise early windows (short sentences: ~30)


def test_little_is_left_when_the_sentence_completes(normalizer: SpokenNormalizer) -> None:
    """Fed all but the last token (". " in one fragment: nothing known about the end), a sentence
    needs at most its last window; fed the period too, nothing."""
    incremental = IncrementalSpoken(normalizer)
    early = 0
    for _, sentence in _corpus():
        pieces = bpe_like(sentence)
        pending = "".join(pieces[:-1])
        incremental.advance(pending)
        all_windows = normalizer.windows(sentence)
        left = incremental.left_for(sentence)
        assert len(left) <= 1 or all(w not in pending for w in left[1:]), (sentence, left)
        if all_windows and len(left) < len(all_windows):
            early += 1
        assert incremental.finish(sentence) == normalizer.normalize(sentence)
        incremental.advance(sentence)  # the period came as a token of its own
        if could_end_sentence(sentence):  # not after "Co." or "Dr." (the buffer waits there too)
            assert incremental.left_for(sentence) == []
        assert incremental.finish(sentence) == normalizer.normalize(sentence)
    assert early >= 25  # sentences with a number well before their end had windows done early


@pytest.mark.parametrize(
    ("fragments", "reading"),
    [
        # The tail changes the reading of a number that was already complete as a token.
        (["We meet on May", " 5", "th", " at noon."], "may fifth"),
        (["The bag weighs 5 ", "kg", " in total."], "five kilograms"),
        (["It costs 3", ".", "50", " dollars today."], "three point five zero dollars"),
        (["Call 555", "-", "123", "-", "4567", " now."], "five five five, one two three, four five six seven"),
        # A bracket opened early is closed late: the windows inside wait for it.
        (["See [the docs", " for version 2", "](https://example.com) please."], "example dot com"),
    ],
)
def test_a_tail_that_changes_an_earlier_reading(
    normalizer: SpokenNormalizer, fragments: list[str], reading: str
) -> None:
    incremental = IncrementalSpoken(normalizer)
    sentence = "".join(fragments)
    ours = feed(incremental, fragments)
    assert ours == normalizer.normalize(sentence)
    assert reading in ours.lower()


def test_a_completed_number_waits_for_its_neighbours(normalizer: SpokenNormalizer) -> None:
    """"on May 5 " is not stable (a "th" cannot come after the space, but "kg" or "2024" could still
    join its window); once the word after the window has plain words to either side, it is."""
    assert normalizer.stable_windows("We meet on May 5 ") == []
    assert normalizer.stable_windows("We meet on May 5 at noon and then") == []
    assert normalizer.stable_windows("We meet on May 5 at noon and then we ") == ["on May 5 at noon"]


def test_a_sentence_that_could_end_is_normalised_before_it_is_complete(normalizer: SpokenNormalizer) -> None:
    """The period arrives as a token of its own: the sentence's last window is done before the token
    that completes the sentence; after an abbreviation or an initial it is not (no sentence ends there)."""
    incremental = IncrementalSpoken(normalizer)
    pending = ""
    for piece in bpe_like("Your appointment is with Dr. Smith at 10:45 AM in room 582."):
        pending += piece
        if pending.endswith("Dr."):
            assert not [w for w in incremental.missing(pending) if w.endswith("Dr.")]
        incremental.advance(pending)
    sentence = pending
    assert incremental.left_for(sentence) == []
    assert incremental.finish(sentence) == normalizer.normalize(sentence)
    # "3." going on as "3.5": the early guess is not used, the result is still the sentence's own.
    incremental.advance("It costs 3.")
    assert incremental.finish("It costs 3.5 dollars.") == normalizer.normalize("It costs 3.5 dollars.")


def test_a_sentence_that_went_another_way_is_still_right(normalizer: SpokenNormalizer) -> None:
    """Windows left over from text that was dropped (a barge-in) or cut elsewhere are not used."""
    incremental = IncrementalSpoken(normalizer)
    incremental.advance("I paid $20 for the two tickets and then ")
    incremental.reset()
    assert incremental.finish("I paid $25 for it.") == normalizer.normalize("I paid $25 for it.")
    incremental.advance("Your code is 1234 and the total is $5 so ")
    sentence = "Your code is 1234."
    assert incremental.finish(sentence) == normalizer.normalize(sentence)


async def test_feed_normalises_in_the_background_and_finishes_the_tail(normalizer: SpokenNormalizer) -> None:
    feed_ = SpokenFeed(normalizer)
    pending = ""
    for piece in bpe_like("Your balance is $1,249.99 as of March 21, 2024 at 3:30 pm and nothing more is due"):
        pending += piece
        feed_.update(pending)
        await asyncio.sleep(0)
    for _ in range(200):  # the background pass finishes (bounded: no wall-clock assertion)
        if not feed_.incremental.missing(pending):
            break
        await asyncio.sleep(0.01)
    sentence = pending + " today."
    left = feed_.incremental.left_for(sentence)
    assert len(left) < len(normalizer.windows(sentence))
    assert await feed_.spoken(sentence) == normalizer.normalize(sentence)
    feed_.close()
