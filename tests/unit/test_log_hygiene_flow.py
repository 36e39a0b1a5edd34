"""Log hygiene of a full in-process run, at DEBUG and at INFO, every logger captured.

The real app (create_app + lifespan: PostgreSQL sessions database, sweeper, router over an
in-process FliteEngine) serves a whole conversation's worth of requests carrying a long, marked
user text with a fake secret in it, a bearer key, and a database URL with a password. Two views
are checked: every record any logger created (nothing sensitive may even be formatted into a
record) and the project's own handler output (what an operator reads: no emoji either).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from config.logging import configure_logging
from tests.support import throwaway_database
from tests.unit.test_security_app import app_settings, inprocess_app

DB_PASSWORD = "Pg-Pa55word-Never-Logged"  # PostgreSQL here trusts local TCP, so any password connects
BEARER = "sk-bearer-KEYVALUE-0123456789abcdef"
SECRET_IN_TEXT = "sk-test-SECRETVALUE"
EMOJI = "\U0001f600"
TEXT_LOG_LIMIT = 80  # LOG_TEXT_MAX_CHARS default: the most user text one line may carry


def user_text(marker: str) -> str:
    """About 300 characters: an emoji and the marker up front (inside any truncation), the secret late.

    The secret sits beyond the truncation limit of its own sentence too: engines log each sentence
    they speak (truncated), so only a position past the limit within every logged piece hides it.
    """
    filler = " ".join(f"Sentence {i} of the reply keeps the listener company." for i in range(3))
    long_one = (
        "Then comes a long sentence that keeps going with many plain words, well past any log limit, "
        f"and the key is {SECRET_IN_TEXT} at its end."
    )
    text = f"{EMOJI} {marker} says hello. {filler} {long_one}"
    assert 280 <= len(text) <= 400 and long_one.index(SECRET_IN_TEXT) > TEXT_LOG_LIMIT
    return text


def longest_user_text_run(line: str, text: str) -> int:
    """Length of the longest piece of `text` found verbatim in `line` (tested up to limit + 1)."""
    for size in (TEXT_LOG_LIMIT + 1, 40, 8):
        if any(text[i : i + size] in line for i in range(len(text) - size + 1)):
            return size
    return 0


class Capture(logging.Handler):
    """Every record of every logger, rendered as the message plus any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append((record.levelno, record.name, message))


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        configure_logging("INFO")


@pytest.fixture
async def pg_url_with_password() -> AsyncIterator[str]:
    """A throwaway database, addressed by a URL that carries a password."""
    async with throwaway_database("tts_loghyg") as name:
        yield f"postgresql+asyncpg://postgres:{DB_PASSWORD}@127.0.0.1:5432/{name}"


async def conversation(client: httpx.AsyncClient, text: str) -> None:
    """What an agent session does, plus the mistakes a client makes, all carrying the user text."""
    auth = {"Authorization": f"Bearer {BEARER}"}
    created = await client.post("/v1/sessions", json={"room": "room-1", "participant": "alice"}, headers=auth)
    assert created.status_code == 201, created.text
    session_id = created.json()["id"]
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "session_id": session_id}
    spoken = await client.post("/v1/audio/speech", json=body, headers=auth)
    assert spoken.status_code == 200 and len(spoken.content) > 48000, spoken.text[:200]
    for bad, status in [
        ({"voice": "nobody"}, 400),
        ({"input": text * 20}, 400),  # over MAX_INPUT_CHARS
        ({"input": text + "\x00"}, 400),
        ({"speed": 9.0}, 422),
    ]:
        response = await client.post("/v1/audio/speech", json={**body, **bad}, headers=auth)
        assert response.status_code == status, (bad.keys(), response.text[:200])
    refused = await client.post("/v1/audio/speech", json=body, headers={"Authorization": "Bearer sk-wrong-GUESS"})
    assert refused.status_code == 401
    usage = {"usage": {"characters": len(text), "requests": 1}}
    finalized = await client.patch(f"/v1/sessions/{session_id}/finalize", json=usage, headers=auth)
    assert finalized.status_code == 200, finalized.text
    assert (await client.get("/v1/engines", headers=auth)).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200


def forbidden_in(line: str, text: str) -> list[str]:
    found = [
        name
        for name, value in [
            ("secret from the user text", SECRET_IN_TEXT),
            ("bearer key", BEARER),
            ("wrong bearer key", "sk-wrong-GUESS"),
            ("database password", DB_PASSWORD),
        ]
        if value in line
    ]
    if longest_user_text_run(line, text) > TEXT_LOG_LIMIT:
        found.append("untruncated user text")
    return found


@pytest.mark.postgres
async def test_debug_run_logs_nothing_sensitive(
    capture: Capture, capsys: pytest.CaptureFixture[str], pg_url_with_password: str, tmp_path: Path
) -> None:
    configure_logging("DEBUG")  # after capsys is active: the project's handler writes into it
    marker = f"MARK{uuid.uuid4().hex[:12]}"
    text = user_text(marker)
    settings = app_settings(
        tmp_path, database_url=pg_url_with_password, api_keys=BEARER, log_level="DEBUG", debug_sql=False
    )
    async with inprocess_app(settings) as (_, client):
        await conversation(client, text)
    output = capsys.readouterr().err

    assert len(capture.lines) > 20, "the capture saw too little to mean anything"
    debug_records = [line for level, _, line in capture.lines if level == logging.DEBUG]
    assert any(marker in line for line in debug_records), "DEBUG should carry the (truncated) text"
    problems = [(name, what) for _, name, line in capture.lines for what in forbidden_in(line, text)]
    assert not problems, problems
    assert marker in output  # the truncated text reached the operator's log ...
    output_problems = [what for line in output.splitlines() for what in forbidden_in(line, text)]
    assert not output_problems, output_problems
    assert EMOJI not in output  # ... with the emoji stripped
    assert not [line for line in output.splitlines() if any(0x1F000 <= ord(ch) <= 0x1FAFF for ch in line)]


async def test_info_run_is_quiet_in_steady_state(capture: Capture, tmp_path: Path) -> None:
    """At INFO only essential events: start-up lines, then nothing per request on the happy path."""
    configure_logging("INFO")
    text = user_text(f"MARK{uuid.uuid4().hex[:12]}")
    async with inprocess_app(app_settings(tmp_path, api_keys=BEARER)) as (_, client):
        await conversation(client, text)  # warms up: first requests, sessions, error paths
        after_warmup = len(capture.lines)
        auth = {"Authorization": f"Bearer {BEARER}"}
        for _ in range(5):
            body = {"input": text, "voice": "alloy", "response_format": "pcm"}
            assert (await client.post("/v1/audio/speech", json=body, headers=auth)).status_code == 200
            assert (await client.get("/v1/models", headers=auth)).status_code == 200
        steady = capture.lines[after_warmup:]
    assert not [line for level, _, line in capture.lines if level < logging.INFO]
    assert not steady, f"per-request events logged at INFO or above: {steady[:5]}"
    assert not [what for _, _, line in capture.lines for what in forbidden_in(line, text)]
