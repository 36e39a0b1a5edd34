"""Logging the way the seed asks: no emoji, user text truncated, verbose events at DEBUG.

`truncate()` is the single helper every module uses before user text reaches a log line;
`SanitizingFilter` is a second line of defence that strips emoji and control characters
and masks anything that looks like a bearer token or password in any record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_DEFAULT_MAX = 80
_max_chars = _DEFAULT_MAX

# Emoji, pictographs, dingbats and variation selectors: never in a log line.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f900-\U0001f9ff\U0000fe00-\U0000fe0f\U0000200d]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SECRETS = re.compile(
    r"(?i)(bearer\s+|api[_-]?key[=:]\s*|password[=:]\s*|secret[=:]\s*|://[^:/@\s]+:)([^\s@,;\"']+)"
)


def truncate(text: str | None, limit: int | None = None) -> str:
    """Shorten user text for logs: at most `limit` characters, newlines flattened, length noted."""
    if text is None:
        return ""
    limit = limit or _max_chars
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}... ({len(flat)} chars)"


def sanitize(message: str) -> str:
    """Remove emoji and control characters and mask secrets in a formatted message."""
    message = _EMOJI.sub("", message)
    message = _CONTROL.sub(" ", message)
    return _SECRETS.sub(lambda m: m.group(1) + "***", message)


class SanitizingFilter(logging.Filter):
    """Applies `sanitize` to every record, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            rendered = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            rendered = str(record.msg)
        record.msg = sanitize(rendered)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """JSON lines for log shippers; same fields as the text format."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = sanitize(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO", *, json_lines: bool = False, text_max_chars: int = 80) -> None:
    """Configure the root logger once per process (idempotent: replicas may call it again)."""
    global _max_chars
    _max_chars = text_max_chars
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_voice_tts", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._voice_tts = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(SanitizingFilter())
    root.addHandler(handler)
    for name in ("serve_app", "agent", "config"):
        logging.getLogger(name).setLevel(level)
        _ensure_filter(logging.getLogger(name))
    # Libraries that are chatty at INFO stay at WARNING unless we are debugging.
    quiet = "DEBUG" if level == "DEBUG" else "WARNING"
    for name in ("httpx", "httpcore", "websockets", "aiosqlite", "asyncio", "multipart"):
        logging.getLogger(name).setLevel(quiet)


def _ensure_filter(logger: logging.Logger) -> None:
    if not any(isinstance(f, SanitizingFilter) for f in logger.filters):
        logger.addFilter(SanitizingFilter())


def configure_from_settings() -> None:
    """Configure logging from the process settings (used by replicas and the agent)."""
    from config.settings import get_settings

    settings = get_settings()
    log = settings.log
    configure_logging(log.level, json_lines=log.json_lines, text_max_chars=log.text_max_chars)
