"""The one place that decides which browser origins may call the API.

The seed replaced `allow_origins=["*"]` with an explicit list: development falls back to
localhost, production refuses to start without a list, and a wildcard never travels with
credentials (browsers reject that combination and it would be a CSRF hole if they did not).
"""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings

DEVELOPMENT_ORIGINS: tuple[str, ...] = (
    "http://localhost",
    "http://localhost:3000",
    "http://localhost:5173",
    "http://localhost:8000",
    "http://127.0.0.1",
    "http://127.0.0.1:3000",
    "http://127.0.0.1:5173",
    "http://127.0.0.1:8000",
)


class CorsConfigurationError(RuntimeError):
    """Production without CORS_ALLOWED_ORIGINS: refusing to start is safer than guessing."""


@dataclass(frozen=True)
class CorsPolicy:
    """Arguments for Starlette's CORSMiddleware, already made safe."""

    allow_origins: list[str]
    allow_credentials: bool
    allow_methods: list[str]
    allow_headers: list[str]
    expose_headers: list[str]
    max_age: int = 600


def allowed_origins(settings: Settings) -> list[str]:
    """Origins allowed by the configuration, with the development fallback and production failsafe."""
    origins = [o.rstrip("/") for o in settings.http.cors_allowed_origins if o.strip()]
    if origins:
        return origins
    if settings.is_production:
        raise CorsConfigurationError(
            "CORS_ALLOWED_ORIGINS must be set when ENV=production "
            "(comma-separated origins, e.g. https://app.example.com)"
        )
    return list(DEVELOPMENT_ORIGINS)


def cors_policy(settings: Settings) -> CorsPolicy:
    """The full policy; `*` turns credentials off instead of pairing the two."""
    origins = allowed_origins(settings)
    wildcard = "*" in origins
    if wildcard:
        origins = ["*"]
    return CorsPolicy(
        allow_origins=origins,
        allow_credentials=settings.http.cors_allow_credentials and not wildcard,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", "OpenAI-Organization"],
        expose_headers=["X-Request-ID", "X-TTS-Engine", "X-Sample-Rate"],
    )
