"""Log hygiene: truncation of user text, no emoji, secrets masked, INFO quiet."""

from __future__ import annotations

import logging

import pytest

from config.logging import SanitizingFilter, configure_logging, sanitize, truncate


def test_truncate_limits_and_notes_length() -> None:
    text = "word " * 100
    out = truncate(text, 60)
    assert out.startswith("word word")
    assert len(out) < 90 and "(499 chars)" in out
    assert truncate("short", 60) == "short"
    assert truncate("line\nbreak\tand  spaces", 60) == "line break and spaces"
    assert truncate(None) == ""


def test_sanitize_removes_emoji_and_control_and_masks_secrets() -> None:
    out = sanitize("ok \U0001f600 done \u2705 \x07 Bearer sk-secret123 postgresql://u:pw@h/db api_key=abc")
    assert "\U0001f600" not in out and "\u2705" not in out and "\x07" not in out
    assert "sk-secret123" not in out and "pw@" not in out and "abc" not in out
    assert "Bearer ***" in out


def test_filter_applies_to_every_record(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("serve_app.test_logging")
    logger.addFilter(SanitizingFilter())
    with caplog.at_level(logging.INFO, logger="serve_app.test_logging"):
        logger.info("hello %s", "\U0001f680 rocket")
    assert caplog.records[-1].getMessage() == "hello  rocket"


def test_info_level_hides_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    log = logging.getLogger("serve_app.quiet")
    log.debug("verbose detail")
    log.info("essential event")
    err = capsys.readouterr().err
    assert "essential event" in err and "verbose detail" not in err
    configure_logging("INFO", json_lines=True)
    log.info("json event")
    assert '"msg": "json event"' in capsys.readouterr().err
    configure_logging("INFO")
