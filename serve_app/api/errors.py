"""The one place errors become HTTP answers in OpenAI's shape: `{"error": {message, type, param, code}}`.

OpenAI SDKs parse this shape into typed exceptions (`BadRequestError`, ...), so clients written
for OpenAI handle our errors unchanged. Everything the service raises on purpose is a
`serve_app.core.errors.ServiceError` and carries its status; anything else is a 500 that is
logged (by type, never with user text) and answered without internals.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.core.errors import ServiceError

logger = logging.getLogger(__name__)


def error_body(exc: ServiceError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_response(exc: ServiceError) -> JSONResponse:
    """The JSON error; 401 names the scheme, and `retry_after_s` becomes Retry-After (whole seconds)."""
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers or None)


def validation_error(exc: RequestValidationError) -> ServiceError:
    """422 like FastAPI (OpenAI's SDK maps it to UnprocessableEntityError), naming the field."""
    errors = exc.errors()
    if not errors:
        return ServiceError("invalid request", status=422, code="invalid_value")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        return ServiceError("request body is not valid JSON", status=422, code="invalid_value")
    if not param and first.get("type") == "model_attributes_type":
        # A form, multipart or plain-text body where a JSON object was expected.
        message = "request body must be a JSON object (Content-Type: application/json)"
        return ServiceError(message, status=422, code="invalid_value")
    return ServiceError(f"{param}: {msg}" if param else msg, status=422, code="invalid_value", param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ServiceError(str(exc.detail), status=exc.status_code, code=code))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error: %s", type(exc).__name__)
        return error_response(ServiceError("internal error"))
