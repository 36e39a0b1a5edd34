"""The FastAPI ingress: routes, CORS, body limits, errors; and its Serve deployment.

`create_app()` builds a plain FastAPI app (tests and plain uvicorn use it directly);
`Ingress` is the Serve deployment that owns the in-process `FallbackRouter` over the engines'
deployment handles. The app is built on the replica by a builder function, so settings (and
their failsafes) are read where the code runs, not where `serve run` was typed.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.cors import cors_policy
from config.logging import configure_from_settings
from config.settings import Settings, get_settings
from serve_app.api import health, speech
from serve_app.api.deps import Services, check_auth_settings, get_services, set_services
from serve_app.api.errors import error_body, install_error_handlers
from serve_app.drain import InFlightCounter, drain_lifespan
from serve_app.engine_client import EngineClient, HandleEngineClient, UnavailableEngineClient
from serve_app.gauges import gauge_refresher
from serve_app.router import FallbackRouter, RouterConfig

logger = logging.getLogger(__name__)

# Lifespan hooks other layers register (the database layer: open pool, migrate, start sweeper).
LifespanHook = Callable[[Services], Awaitable[Callable[[], Awaitable[None]] | None]]
_lifespan_hooks: list[LifespanHook] = []


def register_lifespan_hook(hook: LifespanHook) -> None:
    """Run `hook(services)` at start; the coroutine it returns (if any) runs at shutdown."""
    if hook not in _lifespan_hooks:
        _lifespan_hooks.append(hook)


class BodySizeLimit:
    """Rejects bodies over `limit` bytes with 413 before the route reads them (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        limit = self.upload_limit if content_type.startswith("multipart/") else self.limit
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_413(send, limit)
            return
        received = 0
        responded = False
        rejected = False

        async def limited_receive() -> Message:
            # A streamed (chunked) body over the limit is answered 413 right here and the app is
            # told the client left: raising instead would reach FastAPI's body parser, which turns
            # any exception into a 400 "error parsing the body".
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    rejected = True
                    if not responded:
                        await _send_413(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal responded
            if rejected:
                return  # the 413 is already the answer; drop what the app says after it
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)


async def _send_413(send: Send, limit: int) -> None:
    import json

    body = json.dumps(error_body(413, f"request body exceeds {limit} bytes", "request_too_large")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def ensure_services(settings: Settings) -> Services:
    """The process's Services, created on first use (the replica's __init__ or the lifespan)."""
    try:
        return get_services()
    except Exception:
        services = Services(settings=settings)
        set_services(services)
        return services


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application; raises at build time when a production failsafe is not satisfied."""
    settings = settings or get_settings()
    policy = cors_policy(settings)  # raises CorsConfigurationError in production without origins
    check_auth_settings(settings)  # raises AuthConfigurationError in production without keys

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        services = ensure_services(settings)
        closers: list[Callable[[], Awaitable[None]]] = []
        for hook in list(_lifespan_hooks):
            closer = await hook(services)
            if closer is not None:
                closers.append(closer)
        try:
            yield
        finally:
            for closer in reversed(closers):
                with contextlib.suppress(Exception):
                    await closer()

    app = FastAPI(
        title="voice-tts-serve",
        version="0.1.0",
        description=(
            "OpenAI-compatible text-to-speech on Ray Serve: Zonos, Edge TTS and Flite behind a fallback router."
        ),
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(speech.router)
    _include_optional_routes(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=policy.allow_origins,
        allow_credentials=policy.allow_credentials,
        allow_methods=policy.allow_methods,
        allow_headers=policy.allow_headers,
        expose_headers=policy.expose_headers,
        max_age=policy.max_age,
    )
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    if not _inside_serve_replica():
        # Serve's proxy already echoes (or assigns) X-Request-ID; adding ours would send it twice.
        app.add_middleware(RequestId)
    app.add_middleware(InFlightCounter)  # outermost: counts until the last byte is sent
    return app


def _inside_serve_replica() -> bool:
    from ray.serve import context

    return context._get_internal_replica_context() is not None


class RequestId:
    """Echoes the caller's X-Request-ID (or a new one) on every response.

    Pure ASGI on purpose: Starlette's `@app.middleware("http")` swallows an exception raised while
    a streaming body is being sent and ends the chunked response cleanly, so a speech stream that
    fails after its first byte would look complete. Passing the exception through lets the server
    abort the connection, and the client sees an incomplete transfer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = (given or uuid.uuid4().hex[:16])[:64].encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _include_optional_routes(app: FastAPI) -> None:
    """Route modules of later layers (sessions, voice upload) register themselves if present."""
    import importlib

    for module_name in ("serve_app.api.sessions", "serve_app.api.voice_upload"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        app.include_router(module.router)
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)


def build_clients(handles: dict[str, Any], unavailable: dict[str, str]) -> dict[str, EngineClient]:
    """Router clients: deployed engines via their handles, unusable ones with the reason (which wins)."""
    clients: dict[str, EngineClient] = {
        name: UnavailableEngineClient(name, reason) for name, reason in unavailable.items()
    }
    for name, handle in handles.items():
        if handle is not None and name not in clients:
            clients[name] = HandleEngineClient(name, handle)
    return clients


async def _router_lifespan(services: Services) -> Callable[[], Awaitable[None]] | None:
    """Start the router's background probe loop on the serving loop; stop it at shutdown."""
    if services.router is None:
        return None
    services.router.start()
    return services.router.aclose


register_lifespan_hook(_router_lifespan)
register_lifespan_hook(drain_lifespan)  # reports in-flight requests, picks up the drain flag
register_lifespan_hook(gauge_refresher)  # keeps breaker and pool gauges exported while idle


def _app_builder() -> FastAPI:
    configure_from_settings()
    return create_app(get_settings())


@serve.deployment(name="Ingress")
@serve.ingress(_app_builder)
class Ingress:
    """Owns the router over the engine handles; the routes reach it through `get_services()`."""

    def __init__(
        self,
        zonos: Any = None,
        edge: Any = None,
        flite: Any = None,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        configure_from_settings()  # __init__ runs before the app builder: without this its INFO lines are lost
        settings = get_settings()
        clients = build_clients({"zonos": zonos, "edge": edge, "flite": flite}, unavailable or {})
        services = ensure_services(settings)
        services.router = FallbackRouter(clients, RouterConfig.from_settings(settings))
        logger.info("ingress ready; chain=%s", ",".join(services.router.chain))
