"""The application state of one ingress replica, composed in one place.

`open_state` builds everything the routes use, once, and tears it down in reverse: the sessions
database (pool, migrations, sweeper, usage recorder), the voice store (sharing the database's pool
by default), the router's probe loop, the drain watcher and the gauge refresher. Routes receive
these pieces as typed dependencies (`serve_app.api.deps`); nothing is looked up in module globals.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from config.settings import Settings
from serve_app.core.replica import serve_replica_id
from serve_app.db.database import Database
from serve_app.db.lifecycle import UsageRecorder, open_database
from serve_app.db.sessions import SessionStore
from serve_app.drain.replica import ReplicaDrain, watching
from serve_app.gauges import refreshing
from serve_app.router import FallbackRouter
from serve_app.voice_store import VoiceStore
from serve_app.voice_store.factory import build_voice_store


@dataclass
class AppState:
    settings: Settings
    router: FallbackRouter
    drain: ReplicaDrain
    voices: VoiceStore | None = None
    database: Database | None = None
    sessions: SessionStore | None = None
    usage: UsageRecorder | None = None
    replica: str | None = None  # this Serve replica's full id; None outside Serve


@contextlib.asynccontextmanager
async def open_state(settings: Settings, router: FallbackRouter, drain: ReplicaDrain) -> AsyncIterator[AppState]:
    """The replica's state for as long as the app runs (the FastAPI lifespan)."""
    state = AppState(settings=settings, router=router, drain=drain, replica=serve_replica_id())
    async with contextlib.AsyncExitStack() as stack:
        opened = await stack.enter_async_context(open_database(settings))
        state.database, state.sessions, state.usage = opened.database, opened.sessions, opened.usage
        # The voices table is migrated with the sessions table and shares its pool (VOICES_BACKEND=database).
        state.voices = build_voice_store(settings, opened.database)
        stack.push_async_callback(state.voices.aclose)
        router.start()
        stack.push_async_callback(router.aclose)
        await stack.enter_async_context(watching(drain, state.replica))
        await stack.enter_async_context(refreshing(router, opened.database))
        yield state
