"""Sentence splitting and input validation."""

from __future__ import annotations

import pytest

from serve_app.core.text import normalize, split_sentences
from serve_app.engines.base import InvalidInput


def test_splits_on_sentence_ends_and_keeps_abbreviations() -> None:
    text = "Dr. Smith arrived at 5 p.m. today. Was he late? No! He was early... as usual."
    assert split_sentences(text) == [
        "Dr. Smith arrived at 5 p.m. today.",
        "Was he late?",
        "No!",
        "He was early... as usual.",
    ]


def test_initials_do_not_end_sentences() -> None:
    assert split_sentences("J. R. R. Tolkien wrote it. Then he rested.") == [
        "J. R. R. Tolkien wrote it.",
        "Then he rested.",
    ]


def test_long_sentences_are_bounded_at_clauses_then_spaces() -> None:
    long = ", ".join(f"clause number {i} goes here" for i in range(30)) + "."
    parts = split_sentences(long, max_chars=100)
    assert all(len(p) <= 100 for p in parts)
    assert " ".join(parts).replace("  ", " ") == long
    unbroken = "a" * 450
    parts = split_sentences(unbroken, max_chars=100)
    assert "".join(parts) == unbroken and all(len(p) <= 100 for p in parts)


def test_no_text_is_lost() -> None:
    text = "One. Two two. Three three three? Four four four four! Five."
    assert " ".join(split_sentences(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("a\x00b", "control"),
        ("...!!!", "nothing to speak"),
        ("x" * 5000, "limit"),
    ],
)
def test_normalize_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        normalize(text, max_chars=4096)


def test_normalize_flattens_whitespace_and_keeps_leading_dash() -> None:
    assert normalize("  -voice  kal\n hello ", max_chars=100) == "-voice kal hello"
