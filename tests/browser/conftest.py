"""Browser tests: the `browser` marker, and PLAYGROUND_URL to aim them at a service already running
(e.g. `make run`: PLAYGROUND_URL=http://127.0.0.1:8000 pytest tests/browser) instead of the test
cluster's. They create and delete a clone there and expect the API to be open (no API_KEYS)."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the web playground in headless Chromium")


if os.environ.get("PLAYGROUND_URL"):

    @pytest.fixture(scope="session")
    def serve_url() -> str:
        return os.environ["PLAYGROUND_URL"].rstrip("/")
