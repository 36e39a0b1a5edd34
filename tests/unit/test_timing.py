"""Word timing pieces without Serve: aligning engine marks to text, estimating from audio, Flite's own
marks against its audio, instruction cues, and cutting streamed text into sentences."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from serve_app.core.errors import InvalidInput
from serve_app.core.style import Style, parse_instructions
from serve_app.core.text import SentenceBuffer, could_end_sentence
from serve_app.core.timing import WordAligner, WordMark, align_marks, estimate_words, resume_offset, tokens
from serve_app.engines.flite import FliteEngine


def marks(*spec: tuple[str, float, float]) -> list[WordMark]:
    return [WordMark(w, a, b) for w, a, b in spec]


def test_aligner_maps_engine_words_onto_the_text_and_merges_expansions() -> None:
    text = "Hello there, Dr. Smith! It costs 123 dollars, don't panic."
    engine = marks(
        ("hello", 0.1, 0.4), ("there", 0.4, 0.8), ("doctor", 0.9, 1.3), ("smith", 1.3, 1.6), ("it", 1.7, 1.8),
        ("costs", 1.8, 2.2), ("one", 2.2, 2.4), ("hundred", 2.4, 2.8), ("twenty", 2.8, 3.1), ("three", 3.1, 3.4),
        ("dollars", 3.4, 3.9), (",", 3.9, 3.9), ("dont", 4.0, 4.3), ("panic", 4.3, 4.8),
    )
    words = align_marks(text, engine)
    assert [w.word for w in words] == ["Hello", "there", "Dr", "Smith", "It", "costs", "123", "dollars", "don't",
                                       "panic"]
    number = words[6]
    assert (number.start_s, number.end_s) == (2.2, 3.4)  # "one hundred twenty three" is one word of the text
    assert all(text[w.offset:].startswith(w.word[:2]) for w in words)


def test_aligner_keeps_a_spelled_out_acronym_on_its_token() -> None:
    """Flite says "PM" as "p", "m": the "m" continues "PM" and must not jump ahead to "more"."""
    text = "at three thirty PM, so nothing more is due."
    engine = marks(
        ("at", 0.0, 0.1), ("three", 0.1, 0.4), ("thirty", 0.4, 0.8), ("p", 0.8, 0.9), ("m", 0.9, 1.0),
        ("so", 1.1, 1.3), ("nothing", 1.3, 1.7), ("more", 1.7, 1.9), ("is", 1.9, 2.0), ("due", 2.0, 2.3),
    )
    words = align_marks(text, engine)
    assert [w.word for w in words] == ["at", "three", "thirty", "PM", "so", "nothing", "more", "is", "due"]
    assert (words[3].start_s, words[3].end_s) == (0.8, 1.0)


def test_aligner_streams_a_word_once_the_next_one_starts() -> None:
    aligner = WordAligner("one two")
    assert aligner.feed(WordMark("one", 0.0, 0.3)) == []
    done = aligner.feed(WordMark("two", 0.3, 0.6))
    assert [w.word for w in done] == ["one"]
    assert aligner.unstarted == 0
    assert [w.word for w in aligner.finish()] == ["two"]


def test_resume_offset_is_the_first_word_not_heard() -> None:
    text = "Alpha beta, gamma delta."
    words = align_marks(text, marks(("alpha", 0, 0.2), ("beta", 0.2, 0.4), ("gamma", 0.5, 0.7)))
    assert text[resume_offset(text, words[:2]) :] == "gamma delta."
    assert resume_offset(text, []) is None
    assert resume_offset(text, align_marks(text, marks(("alpha", 0, 1), ("beta", 1, 2), ("gamma", 2, 3),
                                                       ("delta", 3, 4)))) == len(text)


def _tone(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (6000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def _silence(seconds: float, rate: int = 16000) -> bytes:
    return bytes(2 * int(seconds * rate))


def test_estimate_skips_silence_and_fits_clauses_to_their_pauses() -> None:
    pcm = _silence(0.2) + _tone(1.0) + _silence(0.4) + _tone(0.6) + _silence(0.3)
    words = estimate_words("One two three, four five.", pcm, 16000)
    assert [w.word for w in words] == ["One", "two", "three", "four", "five"]
    assert words[0].start_s == pytest.approx(0.2, abs=0.02)
    assert words[2].end_s == pytest.approx(1.2, abs=0.02)  # the clause ends where the pause starts
    assert words[3].start_s == pytest.approx(1.6, abs=0.02)
    assert words[-1].end_s == pytest.approx(2.2, abs=0.02)
    assert all(a.end_s <= b.start_s for a, b in pairwise(words))


def test_estimate_of_silence_or_nothing_is_safe() -> None:
    assert estimate_words("", _tone(1.0), 16000) == []
    spread = estimate_words("Two words", _silence(1.0), 16000)
    assert [w.word for w in spread] == ["Two", "words"] and spread[-1].end_s <= 1.0


async def test_flite_marks_match_its_audio() -> None:
    """Flite's own word times against its audio: the pauses between words are silent and each word's
    span is speech (so starts and ends are right to within the 20 ms margins used)."""
    engine = FliteEngine(backend="library")
    # The empty start marker aside (libflite's lock is this request's), the timings come first.
    pieces = [p async for p in engine.synthesize("One, two. Three, four.", "slt") if p != b""]
    found = [p for p in pieces if isinstance(p, WordMark)]
    pcm = b"".join(p for p in pieces if isinstance(p, bytes))
    assert [m.word for m in found] == ["one", "two", "three", "four"]
    assert isinstance(pieces[0], WordMark)  # the timings come before the audio
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    level = np.sqrt(np.convolve(samples**2, np.ones(160) / 160, mode="same"))  # 10 ms RMS
    loud = np.percentile(level, 95)

    def span(start: float, end: float) -> np.ndarray:
        return level[int((start + 0.02) * 16000) : int((end - 0.02) * 16000)]

    gaps = [(a.end_s, b.start_s) for a, b in pairwise(found) if b.start_s - a.end_s > 0.08]
    assert len(gaps) == 3  # after "one," "two." and "three,"
    assert all(span(a, b).max() < 0.05 * loud for a, b in gaps)
    assert all(span(m.start_s, m.end_s).mean() > 0.2 * loud for m in found)
    assert found[-1].end_s <= len(samples) / 16000


def test_instruction_cues() -> None:
    assert parse_instructions(None) == Style()
    assert parse_instructions("Speak slowly and calmly.").speed < 1.0
    assert parse_instructions("Talk very quickly!").speed > parse_instructions("Talk quickly").speed > 1.0
    assert parse_instructions("don't speak too fast").speed == 1.0
    cheerful = parse_instructions("Sound cheerful and upbeat")
    assert cheerful.pitch_hz > 0 and cheerful.emotion == "happiness"
    assert parse_instructions("whisper").volume_percent < 0
    assert parse_instructions("Use a British accent").neutral  # not understood: ignored
    assert parse_instructions("slowly " * 50).speed >= 0.6


def test_sentence_buffer_cuts_when_a_sentence_is_complete() -> None:
    buffer = SentenceBuffer(max_chars=60)
    out: list[str] = []
    for fragment in ["Hel", "lo the", "re.", " It costs 3", ".", "50 to", "day, Dr", ". Smith", " said. Ok"]:
        out += buffer.append(fragment)
    assert out == ["Hello there.", "It costs 3.50 today, Dr. Smith said."]
    assert buffer.flush() == ["Ok"]
    assert buffer.flush() == []


def test_could_end_sentence_agrees_with_the_buffer() -> None:
    """Text that `could_end_sentence` accepts is a sentence for `SentenceBuffer` once a space and a
    capital follow; the rest is not."""
    for text in ("It is in room 582.", 'Is it "done?"', "Wait!)", "We close at 5 p.m. Bye.", "Go…"):
        assert could_end_sentence(text)
        assert SentenceBuffer().append(text + " Next") == [text]
    for text in ("See Dr.", "J.", "It costs 3", "e.g.", ""):
        assert not could_end_sentence(text)
        assert SentenceBuffer().append(text + " Next") == []


def test_sentence_buffer_cuts_run_ons_and_rejects_control_characters() -> None:
    buffer = SentenceBuffer(max_chars=40)
    out = buffer.append("and then we went on, " * 5)
    assert out and all(len(s) <= 40 for s in out)
    kept = buffer.text
    with pytest.raises(InvalidInput):
        buffer.append("bad \x07 bell")
    assert buffer.text == kept  # nothing of the bad fragment got in
    assert buffer.clear() == kept and len(buffer) == 0


def test_tokens_skip_punctuation_only_pieces() -> None:
    assert [t.text for t in tokens("Wait \u2014 what ... now?")] == ["Wait", "what", "now?"]
