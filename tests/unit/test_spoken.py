"""Spoken-form text on the real NeMo grammars (serve_app.core.spoken).

One normaliser for the whole session, loaded from the compiled cache: `make` builds the cache in
the install step; when it is missing the `normalizer` fixture (tests/unit/conftest.py) compiles it once
(about 40-60 s on 2 cores).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from serve_app.core import spoken
from serve_app.core.spoken import SpokenNormalizer, State, to_spoken, unchanged_spoken

REPO = Path(__file__).resolve().parents[2]


def _cache_dir() -> Path:
    return Path(os.environ.get(spoken.CACHE_DIR_ENV) or REPO / "data" / "tn-cache")


def _spoken(text: str) -> str:
    return to_spoken(text).lower()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I have 23 apples.", "i have twenty three apples."),
        ("It is 1,000,000 dollars.", "one million dollars"),
        ("That is $3.50 each.", "three dollars fifty cents"),
        ("It costs €20 or £15.", "twenty euros or fifteen pounds"),
        ("Prices rose 15% this year.", "fifteen percent"),
        ("We grew 12.5% year over year.", "twelve point five percent"),
        ("The meeting is on March 21, 2024.", "march twenty first, twenty twenty four"),
        ("It starts on 12/25/2023.", "december twenty fifth twenty twenty three"),
        ("See you at 3:30 pm.", "three thirty pm"),
        ("It's 10:45 AM now.", "ten forty five am"),
        ("This is the 21st time.", "twenty first time"),
        ("1st, 2nd and 3rd.", "first, second and third"),
        ("Call 555-123-4567 today.", "five five five, one two three, four five six seven"),
        ("Go to www.example.com for details.", "www dot example dot com"),
        ("Visit https://example.com/docs now.", "https colon slash slash example dot com slash docs"),
        ("Write to john.doe@example.com please.", "john dot doe at example dot com"),
        ("Dr. Smith will see you.", "doctor smith"),
        ("Mr. Jones vs. Ms. Lee.", "mister jones versus miss lee"),
        ("I live at 221 Baker St. in London.", "two twenty one baker street"),
        ("Meet me at St Patrick cathedral.", "saint patrick"),
        ("It weighs 2.5 kg.", "two point five kilograms"),
    ],
)
def test_written_forms_become_words(normalizer: SpokenNormalizer, text: str, expected: str) -> None:
    assert expected in _spoken(text)


@pytest.mark.parametrize(
    "text",
    [
        "Sure, I can help you with that right away.",
        "Your appointment is confirmed for Tuesday morning with the hygienist.",
        'He said "hello" (quietly); then left: gone!',
        "It's a well-known fact - really.",
        "Well... OK, I'll check — one moment.",
        "Café naïve résumé.",
        "NASA and the FBI said so, I think.",
    ],
)
def test_plain_text_is_unchanged_and_skips_the_grammars(normalizer: SpokenNormalizer, text: str) -> None:
    assert not normalizer.needs_normalization(text)
    assert unchanged_spoken(text)  # known on the event loop: no hop to a thread
    assert to_spoken(text) == text


def test_unchanged_spoken_sends_only_what_needs_the_grammars_to_them(normalizer: SpokenNormalizer) -> None:
    assert not unchanged_spoken("Your total is $12.50 today.")
    assert unchanged_spoken("Ihr Termin ist am 3. Mai.", "de")  # no normaliser for German: kept as is
    assert to_spoken("Ihr Termin ist am 3. Mai.", "de") == "Ihr Termin ist am 3. Mai."


def test_windowed_result_equals_whole_sentence(normalizer: SpokenNormalizer) -> None:
    """Only the words around candidates go through NeMo; the result is what the whole sentence gives."""
    backend = normalizer._backend
    assert backend is not None
    for text in [
        "Thanks for waiting, your order of 3 items ships on Friday and the total comes to $42.99 with tax.",
        "Sure, I booked a table for 4 people at 7:30 pm tonight, and you will get an email at jo@example.com.",
        "Please read the [guide](https://example.com/guide) before 5 pm.",
    ]:
        assert to_spoken(text) == backend.normalize(text, punct_post_process=True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\n",
        "...",
        "\U0001f600",
        "\u200b\ufeff",
        'tokens { name: "x" }',
        "a" * 3000,
        "$" * 300,
        "1,234 " * 60,
        "\x00\x07 odd 5",
    ],
)
def test_odd_input_never_raises(normalizer: SpokenNormalizer, text: str) -> None:
    out = to_spoken(text)
    assert isinstance(out, str)
    if not text.strip():
        assert out == text


def test_non_string_input_comes_back(normalizer: SpokenNormalizer) -> None:
    assert to_spoken(None) is None  # type: ignore[arg-type]
    assert to_spoken(23) == 23  # type: ignore[arg-type]


@pytest.mark.parametrize("language", ["fr", "de-DE", "es", "zh", "xx", ""])
def test_other_languages_pass_through(normalizer: SpokenNormalizer, language: str) -> None:
    if language == "":
        assert to_spoken("It is 23.", language) == "It is twenty three."  # empty tag: service default
        return
    assert spoken.get_normalizer(language) is None
    assert to_spoken("Il coûte 3 € le 21/03.", language) == "Il coûte 3 € le 21/03."


@pytest.mark.parametrize("language", [None, "en", "en-US", "EN_gb", "English"])
def test_english_tags(normalizer: SpokenNormalizer, language: str | None) -> None:
    assert to_spoken("23", language) == "twenty three"
    assert spoken.get_normalizer(language) is normalizer


def test_cache_is_versioned_and_reused(normalizer: SpokenNormalizer) -> None:
    final = spoken.cache_subdir(_cache_dir())
    assert "nemo-" in final.name and "pynini-" in final.name
    assert len(list(final.glob("*.far"))) >= 3
    assert spoken.build_cache(_cache_dir()) == final  # present: returns at once, no compile
    assert normalizer.status()["state"] == "ready"


def test_not_ready_passes_through_without_blocking(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cold = SpokenNormalizer(tmp_path / "empty", build_if_missing=False, retry_after_s=3600)
    assert cold.normalize("It costs $3.50.") == "It costs $3.50."  # starts loading, passes through
    assert not cold.wait_ready(5)
    assert cold.state is State.FAILED
    assert cold.status()["error"]
    assert cold.normalize("It costs $3.50.") == "It costs $3.50."


def test_backend_failure_returns_input_and_logs_truncated(
    normalizer: SpokenNormalizer, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def normalize(self, text: str, **_: object) -> str:
            raise RuntimeError("boom")

    failing = SpokenNormalizer(_cache_dir())
    failing.load()
    failing._backend = Broken()  # type: ignore[assignment]
    secret = "My card number is 4111 1111 1111 1111 and " + "x" * 500
    with caplog.at_level(logging.WARNING, logger="serve_app.core.spoken"):
        assert failing.normalize(secret) == secret
    assert caplog.records
    for record in caplog.records:
        assert "x" * 200 not in record.getMessage()


def test_nemo_log_records_are_truncated(normalizer: SpokenNormalizer, caplog: pytest.LogCaptureFixture) -> None:
    """NeMo logs the whole text for every '$' or '%' it meets; those records must arrive truncated."""
    long_text = "It costs $5 and 10% more, " + "and then some more words " * 20 + "for $7."
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("serve_app.core.spoken").setLevel(logging.DEBUG)
        try:
            normalizer.normalize(long_text)
        finally:
            logging.getLogger("serve_app.core.spoken").setLevel(logging.NOTSET)
    nemo = [r for r in caplog.records if r.name == "NeMo-text-processing"]
    assert all(len(r.getMessage()) < 120 for r in nemo)
    assert not logging.getLogger("NeMo-text-processing").handlers  # its own stderr handler is gone


def test_time_budget_bounds_one_call(normalizer: SpokenNormalizer) -> None:
    hurried = SpokenNormalizer(_cache_dir(), budget_s=0.0)
    hurried.load()
    text = "It costs $3.50 and 15% more."
    assert hurried.normalize(text) == text  # over budget before the first window: kept as is


def test_long_windows_are_cut(normalizer: SpokenNormalizer) -> None:
    tokens = ["1,234"] * 40
    windows = normalizer._windows(tokens, [True] * 40)
    assert all(last - first + 1 <= normalizer.max_window_tokens for first, last in windows)
    assert windows[0][0] == 0 and windows[-1][1] == 39


def test_concurrent_calls_match_sequential(normalizer: SpokenNormalizer) -> None:
    texts = [f"Order {n} costs ${n}.50 and ships on the {n}th at {n % 12 + 1}:15 pm." for n in range(1, 13)]
    expected = [to_spoken(t) for t in texts]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = to_spoken(texts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [results[i] for i in range(len(texts))] == expected


def test_load_waits_for_a_background_start(normalizer: SpokenNormalizer) -> None:
    fresh = SpokenNormalizer(_cache_dir())
    fresh.start()
    fresh.load()  # joins the loader thread instead of loading a second copy
    assert fresh.ready and fresh.wait_ready(0)
    assert fresh.normalize("It is 23.") == "It is twenty three."


def test_build_runs_in_a_child_process(normalizer: SpokenNormalizer) -> None:
    """The serving process never compiles: the build is `python -m serve_app.core.spoken --build-cache`."""
    SpokenNormalizer(_cache_dir())._build_in_child()  # cache present: the child returns at once


def test_window_memo_gives_the_same_words_and_stays_bounded(normalizer: SpokenNormalizer) -> None:
    small = SpokenNormalizer(_cache_dir(), memo_size=2)
    small.load()
    texts = [f"Your order {n} ships on the {n}th." for n in range(3, 8)]
    first = [small.normalize(t) for t in texts]
    assert len(small._memo) == 2  # oldest windows evicted
    assert [small.normalize(t) for t in texts] == first  # memoised or recomputed, the same words
    assert first == [normalizer._backend.normalize(t, punct_post_process=True) for t in texts]  # type: ignore[union-attr]
    off = SpokenNormalizer(_cache_dir(), memo_size=0)
    off.load()
    assert off.normalize(texts[0]) == first[0] and not off._memo


def test_loading_warms_every_class_once(normalizer: SpokenNormalizer) -> None:
    """The warm-up sentence must itself normalise (else the warm-up silently did nothing)."""
    backend = normalizer._backend
    assert backend is not None
    out = backend.normalize(spoken._WARM_UP_TEXT, punct_post_process=True)
    for written in ("$", "%", "2024", "3:30", "555", "@", "www."):
        assert written not in out


def test_without_the_walker_files_nemo_composes_with_pynini(normalizer: SpokenNormalizer, tmp_path: Path) -> None:
    """An old or partial cache (no exported grammars) still normalises, through pynini, and says why."""
    shipped = spoken.cache_subdir(_cache_dir())
    partial = spoken.cache_subdir(tmp_path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(shipped, partial)
    (partial / "tagger.ntg").unlink()
    fallback = SpokenNormalizer(tmp_path, build_if_missing=False)
    fallback.load()
    assert fallback.status()["walker"].startswith("off: ")
    text = "It costs $3.50 at 3:30 pm."
    assert fallback.normalize(text) == normalizer.normalize(text)
    assert "dollars" in fallback.normalize(text)


def test_walker_can_be_turned_off(normalizer: SpokenNormalizer) -> None:
    off = SpokenNormalizer(_cache_dir(), build_if_missing=False, walker=False)
    off.load()
    assert off.status()["walker"] == "off"
    text = "Call 555-123-4567 on March 21, 2024."
    assert off.normalize(text) == normalizer.normalize(text)
