"""`create_app`: the FastAPI application, given its settings and its router.

Routes, middlewares and error handling are assembled here, explicitly; the state the routes use is
opened by the lifespan (`serve_app.state.open_state`) and lives on `app.state.services`. The same
app runs in a Serve replica (serve_app/ingress.py), under plain uvicorn, and in tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from config.cors import cors_policy
from config.settings import Settings
from serve_app.api import cluster, health, realtime, sessions, speech, voice_upload, web
from serve_app.api.deps import check_auth_settings
from serve_app.api.errors import install_error_handlers
from serve_app.api.middleware import BodySizeLimit, InFlightCounter, RequestId
from serve_app.drain.replica import ReplicaDrain
from serve_app.router import FallbackRouter
from serve_app.state import open_state

ROUTERS = (
    health.router,
    speech.router,
    realtime.router,
    sessions.router,
    voice_upload.router,
    cluster.router,
    web.router,
)


def create_app(settings: Settings, router: FallbackRouter, *, add_request_id: bool = True) -> FastAPI:
    """The application; raises at build time when a production failsafe is not satisfied.

    `add_request_id` is off inside Serve, whose proxy already echoes (or assigns) X-Request-ID.
    """
    policy = cors_policy(settings)  # raises CorsConfigurationError in production without origins
    check_auth_settings(settings)  # raises AuthConfigurationError in production without keys
    drain = ReplicaDrain()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_state(settings, router, drain) as state:
            app.state.services = state
            try:
                yield
            finally:
                app.state.services = None

    app = FastAPI(
        title="voice-tts-serve",
        version="0.1.0",
        description="OpenAI-compatible text-to-speech on Ray Serve, with a fallback router across engines.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for route_group in ROUTERS:
        app.include_router(route_group)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=policy.allow_origins,
        allow_credentials=policy.allow_credentials,
        allow_methods=policy.allow_methods,
        allow_headers=policy.allow_headers,
        expose_headers=policy.expose_headers,
        max_age=policy.max_age,
    )
    app.add_middleware(BodySizeLimit, limit=settings.http.max_body_bytes, upload_limit=settings.http.max_upload_bytes)
    if add_request_id:
        app.add_middleware(RequestId)
    app.add_middleware(InFlightCounter, drain=drain)  # outermost: counts until the last byte is sent
    return app
