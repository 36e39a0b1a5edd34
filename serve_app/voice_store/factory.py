"""The one place VOICES_BACKEND turns into a `VoiceStore` (ingress and engine replicas alike)."""

from __future__ import annotations

from config.settings import Settings
from serve_app.db.database import Database
from serve_app.voice_store.store import VoiceBackend, VoiceStore


def build_backend(settings: Settings, database: Database | None = None) -> VoiceBackend:
    """The configured backend. `database` (a `serve_app.db.Database`) is the process's open sessions
    database, shared when given (the ingress); otherwise the database backend opens its own pool from
    the same settings (an engine replica) and closes it with the store."""
    backend = settings.voices.backend
    if backend == "s3":
        from serve_app.voice_store.s3 import S3Backend

        return S3Backend(settings.voices)
    if backend == "directory":
        from serve_app.voice_store.directory import DirectoryBackend

        return DirectoryBackend(settings.voices.dir)
    from serve_app.db.voices import DatabaseBackend

    if database is not None:
        return DatabaseBackend(database)
    return DatabaseBackend(Database(settings), owned=True)


def build_voice_store(settings: Settings, database: Database | None = None) -> VoiceStore:
    return VoiceStore(
        build_backend(settings, database),
        max_voices=settings.voices.max,
        check_interval_s=settings.voices.check_interval_s,
    )
