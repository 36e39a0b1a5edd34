"""Settings: defaults, parsing, one clear line per bad variable, and .env.example in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.settings import Environment, SettingsError, all_variables, load_settings
from serve_app.engines import registry

ROOT = Path(__file__).resolve().parents[2]


def every_variable() -> set[str]:
    """The environment variables of the service: global settings and every engine's own (prefixed)."""
    names = all_variables()
    for spec in registry.specs().values():
        names |= {f"{spec.env_prefix}{name}".upper() for name in spec.settings.model_fields}
    return names


@pytest.fixture(autouse=True)
def _no_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")
    for name in every_variable():
        monkeypatch.delenv(name, raising=False)


def test_defaults_come_up_without_configuration() -> None:
    s = load_settings(_env_file=None)
    assert s.env is Environment.DEVELOPMENT
    assert s.db.url.startswith("sqlite+aiosqlite://")
    assert s.router.engine_chain == ["zonos", "edge", "piper", "flite"]
    assert (s.db.pool_size, s.db.max_overflow, s.db.pool_recycle) == (10, 20, 3600)
    assert s.db.pool_pre_ping is True and s.db.debug_sql is False
    engines = registry.validate_all(s)  # every engine's own settings come up without configuration too
    assert set(engines) == set(registry.specs()) and all(e.enabled for e in engines.values())
    assert engines["zonos"].model == "Zyphra/Zonos-v0.1-hybrid"  # type: ignore[attr-defined]


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("TTS_ENGINE_CHAIN", "flite,edge")
    s = load_settings(_env_file=None)
    assert s.http.cors_allowed_origins == ["https://a.example", "https://b.example"]
    assert s.router.engine_chain == ["flite", "edge"]


def test_postgres_url_gets_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    assert load_settings(_env_file=None).db.url == "postgresql+asyncpg://u@h/db"


def test_bad_values_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "zero")
    monkeypatch.setenv("TTS_ENGINE_CHAIN", "zonos,espeak")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    lines = str(info.value).splitlines()
    assert any(line.startswith("invalid setting DB_POOL_SIZE") for line in lines)
    assert any(line.startswith("invalid setting LOG_LEVEL") for line in lines)
    assert len(lines) == 2
    # Which engine names exist is the registry's to say: the chain is checked with every engine's
    # own settings, all bad lines at once, each naming its variable with the engine's prefix.
    monkeypatch.delenv("DB_POOL_SIZE")
    monkeypatch.delenv("LOG_LEVEL")
    monkeypatch.setenv("EDGE_CONNECT_TIMEOUT_S", "-1")
    monkeypatch.setenv("FLITE_BACKEND", "shell")
    with pytest.raises(SettingsError) as info:
        registry.validate_all(load_settings(_env_file=None))
    lines = str(info.value).splitlines()
    assert any(line.startswith("invalid setting TTS_ENGINE_CHAIN") and "espeak" in line for line in lines)
    assert any(line.startswith("invalid setting EDGE_CONNECT_TIMEOUT_S") for line in lines)
    assert any(line.startswith("invalid setting FLITE_BACKEND") for line in lines)
    assert len(lines) == 3


def test_empty_values_mean_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZONOS_SEED", "")
    monkeypatch.setenv("DB_POOL_SIZE", "")
    s = load_settings(_env_file=None)
    assert registry.engine_settings("zonos").seed is None and s.db.pool_size == 10  # type: ignore[attr-defined]


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    missing = every_variable() - listed
    assert not missing, f".env.example lacks {sorted(missing)}"
