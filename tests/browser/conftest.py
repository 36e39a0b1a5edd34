"""Browser tests: PLAYGROUND_URL to aim them at a service already running
(e.g. `make run`: PLAYGROUND_URL=http://127.0.0.1:8000 pytest tests/browser) instead of the test
cluster's. They create and delete a clone there and expect the API to be open (no API_KEYS)."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PLAYGROUND_URL"):

    @pytest.fixture(scope="session")
    def serve_url() -> str:
        return os.environ["PLAYGROUND_URL"].rstrip("/")
