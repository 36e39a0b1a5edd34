"""Settings: defaults, parsing, one clear line per bad variable, and .env.example in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.settings import Environment, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_come_up_without_configuration() -> None:
    s = load_settings(_env_file=None)
    assert s.env is Environment.DEVELOPMENT
    assert s.database_url.startswith("sqlite+aiosqlite://")
    assert s.tts_engine_chain == ["zonos", "edge", "flite"]
    assert (s.db_pool_size, s.db_max_overflow, s.db_pool_recycle) == (10, 20, 3600)
    assert s.db_pool_pre_ping is True and s.debug_sql is False
    assert s.zonos_model == "Zyphra/Zonos-v0.1-hybrid"


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("TTS_ENGINE_CHAIN", "flite,edge")
    s = load_settings(_env_file=None)
    assert s.cors_allowed_origins == ["https://a.example", "https://b.example"]
    assert s.tts_engine_chain == ["flite", "edge"]


def test_postgres_url_gets_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    assert load_settings(_env_file=None).database_url == "postgresql+asyncpg://u@h/db"


def test_bad_values_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "zero")
    monkeypatch.setenv("TTS_ENGINE_CHAIN", "zonos,espeak")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    lines = str(info.value).splitlines()
    assert any(line.startswith("invalid setting DB_POOL_SIZE") for line in lines)
    assert any("TTS_ENGINE_CHAIN" in line and "espeak" in line for line in lines)
    assert any(line.startswith("invalid setting LOG_LEVEL") for line in lines)
    assert len(lines) == 3


def test_empty_values_mean_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZONOS_SEED", "")
    monkeypatch.setenv("DB_POOL_SIZE", "")
    s = load_settings(_env_file=None)
    assert s.zonos_seed is None and s.db_pool_size == 10


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    missing = {name.upper() for name in Settings.model_fields} - listed
    assert not missing, f".env.example lacks {sorted(missing)}"
