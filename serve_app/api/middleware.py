"""The ingress's ASGI middlewares, pure ASGI on purpose.

Starlette's `@app.middleware("http")` swallows an exception raised while a streaming body is being
sent and ends the chunked response cleanly, so a speech stream that fails after its first byte
would look complete. Pure ASGI passes the exception through: the server aborts the connection and
the client sees an incomplete transfer.
"""

from __future__ import annotations

import json
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.errors import error_body
from serve_app.core.errors import PayloadTooLarge
from serve_app.drain.replica import ReplicaDrain


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
    body = json.dumps(error_body(PayloadTooLarge(f"request body exceeds {limit} bytes"))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestId:
    """Echoes the caller's X-Request-ID (or a new one) on every response (outside Serve, whose
    proxy already does it)."""

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


class InFlightCounter:
    """Counts HTTP requests until the app returns, which for a streamed answer is after its last byte.

    The count is what the replica reports to the drain coordinator (serve_app.drain).
    """

    def __init__(self, app: ASGIApp, drain: ReplicaDrain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
