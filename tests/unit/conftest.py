"""Fixtures shared by the unit tests of one area; the session-wide ones live in tests/conftest.py."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.core import spoken
from serve_app.core.spoken import SpokenNormalizer

REPO = Path(__file__).resolve().parents[2]


def spoken_cache_dir() -> Path:
    """Where `make` compiled the spoken-form grammars (or $TTS_NORMALIZE_CACHE_DIR)."""
    return Path(os.environ.get(spoken.CACHE_DIR_ENV) or REPO / "data" / "tn-cache")


@pytest.fixture(scope="session")
def normalizer() -> Iterator[SpokenNormalizer]:
    if importlib.util.find_spec("nemo_text_processing") is None:
        # Must run in CI: there a missing library fails instead of skipping.
        message = "nemo_text_processing is not installed; run `make install-test`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    spoken.configure(spoken_cache_dir())
    shared = spoken.get_normalizer("en")
    assert shared is not None
    shared.load()  # builds the cache in a child process if missing, then loads it
    yield shared
