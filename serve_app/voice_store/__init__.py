"""Registered voice clones, seen by every replica: one `VoiceStore` over a pluggable backend.

`clips` validates and normalises uploads, `store` is the facade the routes and cloning engines use,
`factory.build_voice_store` picks the backend from VOICES_BACKEND (the sessions database by
default, `s3`, or `directory`).
"""

from serve_app.voice_store.clips import (
    MAX_SECONDS,
    MIN_SECONDS,
    NAME_MAX_CHARS,
    StoredVoice,
    VoiceLimitReached,
)
from serve_app.voice_store.store import VoiceBackend, VoiceStore, VoiceStoreUnavailable

__all__ = [
    "MAX_SECONDS",
    "MIN_SECONDS",
    "NAME_MAX_CHARS",
    "StoredVoice",
    "VoiceBackend",
    "VoiceLimitReached",
    "VoiceStore",
    "VoiceStoreUnavailable",
]
