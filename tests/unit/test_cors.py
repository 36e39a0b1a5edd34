"""CORS policy: development fallback, production failsafe, wildcard never with credentials."""

from __future__ import annotations

import pytest

from config.cors import DEVELOPMENT_ORIGINS, CorsConfigurationError, allowed_origins, cors_policy
from config.settings import Settings, load_settings


def make(**kw: object) -> Settings:
    return load_settings(_env_file=None, **kw)


def test_development_falls_back_to_localhost() -> None:
    assert allowed_origins(make(env="development")) == list(DEVELOPMENT_ORIGINS)


def test_production_without_origins_refuses_to_start() -> None:
    with pytest.raises(CorsConfigurationError, match="CORS_ALLOWED_ORIGINS"):
        allowed_origins(make(env="production"))


def test_configured_origins_win_and_lose_trailing_slash() -> None:
    s = make(env="production", cors_allowed_origins="https://app.example.com/,https://www.example.com")
    assert allowed_origins(s) == ["https://app.example.com", "https://www.example.com"]
    assert cors_policy(s).allow_credentials is True


def test_wildcard_is_never_combined_with_credentials() -> None:
    policy = cors_policy(make(cors_allowed_origins="*,https://x.example", cors_allow_credentials=True))
    assert policy.allow_origins == ["*"]
    assert policy.allow_credentials is False
