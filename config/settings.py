"""One validated Settings object for every process (ingress, engine replicas, agent workers).

Every knob comes from an environment variable (or `.env`), so a Ray replica on another node
configures itself from the `runtime_env` the operator set, and nothing is hard-coded in code.
A bad value stops the process at start with one line per offending variable
(`SettingsError`), instead of failing on the first request an hour later.
"""

from __future__ import annotations

import functools
import os
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Environment(StrEnum):
    """Deployment environment; production turns the security failsafes on."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class SettingsError(RuntimeError):
    """Raised when the environment holds invalid settings; the message names each variable."""


def _split_csv(value: Any) -> Any:
    """Accept `a,b,c` (the documented form) as well as a JSON list or a real list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]
S = TypeVar("S", bound=BaseSettings)


def settings_config(env_prefix: str = "") -> SettingsConfigDict:
    """The one way every settings class here reads the environment (and `.env`, or ENV_FILE)."""
    return SettingsConfigDict(
        env_prefix=env_prefix,
        env_file=os.environ.get("ENV_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
    )


class Settings(BaseSettings):
    """Settings of the service. Field names map to upper-case environment variables.

    Engines add their own classes (prefix `<ENGINE>_`) next to their code; see
    `serve_app.engines.spec.EngineSettings`.
    """

    model_config = settings_config()

    # --- general -------------------------------------------------------------------------
    env: Environment = Environment.DEVELOPMENT
    log_level: str = "INFO"
    log_json: bool = False
    log_text_max_chars: int = Field(80, ge=10, le=500)

    # --- HTTP surface --------------------------------------------------------------------
    cors_allowed_origins: CsvList = Field(default_factory=list)
    cors_allow_credentials: bool = True
    api_keys: CsvList = Field(default_factory=list)
    max_input_chars: int = Field(4096, ge=1, le=100_000)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_upload_bytes: int = Field(10 * 1_048_576, ge=1024)

    # --- engines and the fallback chain ---------------------------------------------------
    # The default chain: the only place besides each engine's own module that names engines.
    tts_engine_chain: CsvList = Field(default_factory=lambda: ["zonos", "edge", "piper", "flite"])
    tts_max_strikes: int = Field(3, ge=1, le=100)
    tts_breaker_cooldown_s: float = Field(5.0, gt=0)
    tts_breaker_max_cooldown_s: float = Field(120.0, gt=0)
    tts_probe_text: str = "Probe."
    tts_ttfb_timeout_s: float = Field(8.0, gt=0)
    tts_stall_timeout_s: float = Field(8.0, gt=0)
    tts_engine_concurrency: int = Field(64, ge=1)
    tts_sentence_max_chars: int = Field(250, ge=20, le=2000)
    tts_lookahead_sentences: int = Field(2, ge=0, le=16)
    # Registered voice clones (reference clips), read by engines that clone.
    voices_dir: str = "./data/voices"
    voices_max: int = Field(1000, ge=1)

    # --- database ------------------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./data/sessions.db"
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(20, ge=0)
    db_pool_recycle: int = Field(3600, ge=-1)
    db_pool_pre_ping: bool = True
    db_pool_timeout: float = Field(10.0, gt=0)
    db_connect_timeout: float = Field(5.0, gt=0)
    db_statement_timeout_ms: int = Field(15_000, ge=0)
    db_keepalives_idle: int = Field(30, ge=1)
    db_keepalives_interval: int = Field(10, ge=1)
    db_keepalives_count: int = Field(5, ge=1)
    db_breaker_failures: int = Field(3, ge=1)
    db_breaker_reset_s: float = Field(5.0, gt=0)
    db_migrate_on_start: bool = True
    debug_sql: bool = False

    # sessions
    session_ttl_s: float = Field(300.0, gt=0)
    session_sweep_interval_s: float = Field(30.0, gt=0)

    # --- agent ---------------------------------------------------------------------------
    api_base_url: str = "http://127.0.0.1:8000"
    agent_api_key: str | None = None
    agent_name: str = "voice-agent"
    agent_tts_voice: str = "alloy"
    agent_tts_transport: str = Field("auto", pattern="^(auto|handle|http)$")
    agent_outbox_path: str = "./data/agent-outbox.jsonl"
    agent_finalize_retries: int = Field(4, ge=0)
    agent_finalize_backoff_s: float = Field(0.5, gt=0)
    agent_heartbeat_interval_s: float = Field(30.0, gt=0)
    agent_latency_window: int = Field(512, ge=8)
    agent_stt: str = "deepgram"
    agent_llm: str = "openai"
    agent_llm_model: str = "gpt-4o-mini"
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = None
    agent_tts_model: str = "tts-1"
    agent_tts_language: str | None = None
    agent_api_timeout_s: float = Field(10.0, gt=0)
    agent_finalize_max_backoff_s: float = Field(8.0, gt=0)
    agent_outbox_replay_interval_s: float = Field(30.0, gt=0)
    agent_instructions: str = "You are a friendly voice assistant. Answer briefly, in plain spoken sentences."
    agent_vad: str = Field("silero", pattern="^(silero|none)$")
    agent_job_executor: str = Field("process", pattern="^(process|thread)$")
    agent_num_idle_processes: int = Field(1, ge=0, le=64)
    agent_drain_timeout_s: int = Field(600, ge=1)
    agent_actor_num_cpus: float = Field(1.0, gt=0)

    @field_validator("cors_allowed_origins", "api_keys", "tts_engine_chain", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("tts_engine_chain")
    @classmethod
    def _chain(cls, value: list[str]) -> list[str]:
        """Shape only; which names exist is the engine registry's business (checked at build time)."""
        names = [v.lower() for v in value]
        if not names:
            raise ValueError("at least one engine is required")
        if len(set(names)) != len(names):
            raise ValueError("an engine is listed twice")
        return names

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        if value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value[len("postgresql://") :]
        return value

    @model_validator(mode="after")
    def _cooldowns(self) -> Settings:
        if self.tts_breaker_max_cooldown_s < self.tts_breaker_cooldown_s:
            raise ValueError("TTS_BREAKER_MAX_COOLDOWN_S must be >= TTS_BREAKER_COOLDOWN_S")
        return self

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def format_validation_error(error: ValidationError, env_prefix: str = "") -> str:
    """One line per bad variable, named as the operator writes it (upper case, with its prefix)."""
    lines = []
    for item in error.errors():
        name = (env_prefix + "_".join(str(p) for p in item["loc"])).upper() or "SETTINGS"
        lines.append(f"invalid setting {name}: {item['msg']}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment, raising `SettingsError` with readable lines."""
    return load_section(Settings, **overrides)


def load_section(cls: type[S], **overrides: Any) -> S:
    """Any settings class from the environment, with `SettingsError` lines naming the variables."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        raise SettingsError(format_validation_error(exc, prefix)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings (cached; tests call `get_settings.cache_clear()`)."""
    return load_settings()
