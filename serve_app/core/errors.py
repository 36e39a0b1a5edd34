"""Every error the service raises on purpose, under one root the API maps to OpenAI's shape.

`ServiceError` carries what an HTTP answer needs (status, OpenAI `type`, `code`, `param`,
`retry_after_s`), so the mapping to `{"error": {...}}` lives in one place (`serve_app.api.errors`)
and the layers below never import FastAPI. The router reasons about the engine branch:
`InvalidInput` is the caller's fault and never a strike; `EngineBusy` means full, not broken, and
is never a strike either; every other `EngineUnavailable` is a strike.
"""

from __future__ import annotations

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_type(status: int) -> str:
    """OpenAI's `type` for an HTTP status."""
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def reason_of(exc: BaseException) -> str:
    """Short `Type: message` of an error for logs and status pages; Ray's wrapper
    (`RayTaskError.cause`) is unwrapped so the engine's own error shows."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


class ServiceError(Exception):
    """Root of the hierarchy: a message for the caller plus how to answer it over HTTP."""

    status = 500
    code = "internal_error"
    default_retry_after_s: float | None = None
    # Which sentence of a stream could not be spoken (0-based, in the stream's order), when known:
    # set by the router as it raises a sentence's error, so a caller can say what was not spoken.
    sentence: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.retry_after_s = retry_after_s if retry_after_s is not None else self.default_retry_after_s

    @property
    def type(self) -> str:
        return error_type(self.status)


# --- the caller's mistakes (4xx) -------------------------------------------------------------


class InvalidInput(ServiceError):
    """The request itself is wrong (empty text, unknown voice): never a strike against an engine."""

    status = 400
    code = "invalid_input"


class UnknownEngine(InvalidInput):
    """A request pinned an engine that is not in the chain."""

    code = "unknown_engine"


class Unauthorized(ServiceError):
    status = 401
    code = "invalid_api_key"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "request_too_large"


# --- the service's side (5xx) ----------------------------------------------------------------


class ServiceUnavailable(ServiceError):
    """Temporarily unable to serve; `retry_after_s` becomes the Retry-After header."""

    status = 503
    code = "service_unavailable"


class EngineUnavailable(ServiceUnavailable):
    """The engine cannot serve now (missing dependency, crashed, network down): a strike."""

    code = "engine_unavailable"


class EngineTimeout(EngineUnavailable):
    """The engine did not produce audio in time (first byte or between chunks): a strike."""

    code = "engine_timeout"


class EngineBusy(EngineUnavailable):
    """The engine is full (its queue or batch is at capacity), not broken: never a strike."""

    code = "engine_busy"


class AllEnginesFailed(ServiceUnavailable):
    """No engine in the chain could speak a sentence."""

    code = "all_engines_failed"


class EnginesBusy(AllEnginesFailed):
    """Every candidate engine stayed at capacity for the whole queueing budget."""

    code = "engines_busy"


class Draining(ServiceUnavailable):
    """This replica is shutting down gracefully and takes no new work."""

    code = "draining"


class DatabaseUnavailable(ServiceUnavailable):
    """The sessions database is down or its breaker is open."""

    code = "database_unavailable"
    default_retry_after_s = 1.0


# --- how one engine attempt can fail, as the router tells strikes apart --------------------------


class FirstByteTimeout(EngineTimeout):
    """No audio within the time-to-first-byte budget (a strike)."""


class StallTimeout(EngineTimeout):
    """Audio started, then stopped for longer than the stall budget (a strike)."""


class EmptyAudio(EngineUnavailable):
    """The engine ended its stream without any audio (a strike)."""
