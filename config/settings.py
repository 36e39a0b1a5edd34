"""One validated Settings object for every process (ingress, engine replicas, agent workers).

Every knob comes from an environment variable (or `.env`), so a Ray replica on another node
configures itself from the `runtime_env` the operator set, and nothing is hard-coded in code.
Settings are grouped by area (`settings.db`, `settings.router`, ...), each area a settings class of
its own that reads the variables listed in `.env.example`. A bad value stops the process at start
with one line per offending variable (`SettingsError`), instead of failing on the first request an
hour later.
"""

from __future__ import annotations

import functools
import os
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
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
        populate_by_name=True,
    )


class GeneralSettings(BaseSettings):
    """`ENV`: production turns the security failsafes on."""

    model_config = settings_config()

    env: Environment = Environment.DEVELOPMENT


class LogSettings(BaseSettings):
    """`LOG_*`: level, JSON lines, and how much user text a log line may carry."""

    model_config = settings_config(env_prefix="LOG_")

    level: str = "INFO"
    json_lines: bool = Field(False, validation_alias=AliasChoices("LOG_JSON", "json_lines"))
    text_max_chars: int = Field(80, ge=10, le=500)

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level


class HttpSettings(BaseSettings):
    """The HTTP surface: CORS, API keys, and the limits on what a request may carry."""

    model_config = settings_config()

    cors_allowed_origins: CsvList = Field(default_factory=list)
    cors_allow_credentials: bool = True
    api_keys: CsvList = Field(default_factory=list)
    max_input_chars: int = Field(4096, ge=1, le=100_000)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_upload_bytes: int = Field(10 * 1_048_576, ge=1024)

    @field_validator("cors_allowed_origins", "api_keys", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)


class RouterSettings(BaseSettings):
    """`TTS_*`: the fallback chain and the budgets every engine gets unless it sets its own."""

    model_config = settings_config(env_prefix="TTS_")

    # The default chain: the only place besides each engine's own module that names engines.
    engine_chain: CsvList = Field(default_factory=lambda: ["zonos", "edge", "piper", "flite"])
    max_strikes: int = Field(3, ge=1, le=100)
    breaker_cooldown_s: float = Field(5.0, gt=0)
    breaker_max_cooldown_s: float = Field(120.0, gt=0)
    # One breaker per engine for the whole cluster (a named Ray actor every router follows), so all
    # ingress replicas and agent conversations skip a dead engine after max_strikes failures in total.
    breaker_shared: bool = True
    # How long a router may take over the one probe of an engine before another may probe it.
    breaker_probe_lease_s: float = Field(30.0, gt=0)
    # Consecutive engine errors after which a replica fails its health check (Serve replaces it); 0: never.
    replica_max_failures: int = Field(5, ge=0)
    probe_text: str = "Probe."
    ttfb_timeout_s: float = Field(8.0, gt=0)
    stall_timeout_s: float = Field(8.0, gt=0)
    # How long a new request may wait for an engine to start its first sentence (every engine
    # full or queueing) before it is refused with 503 and Retry-After; the later sentences of an
    # answer already playing wait as long as they must, so overload never cuts a stream.
    admission_wait_s: float = Field(2.0, gt=0)
    engine_concurrency: int = Field(64, ge=1)
    sentence_max_chars: int = Field(250, ge=20, le=2000)
    lookahead_sentences: int = Field(2, ge=0, le=16)

    @field_validator("engine_chain", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("engine_chain")
    @classmethod
    def _chain(cls, value: list[str]) -> list[str]:
        """Shape only; which names exist is the engine registry's business (checked at build time)."""
        names = [v.lower() for v in value]
        if not names:
            raise ValueError("at least one engine is required")
        if len(set(names)) != len(names):
            raise ValueError("an engine is listed twice")
        return names

    @model_validator(mode="after")
    def _cooldowns(self) -> RouterSettings:
        if self.breaker_max_cooldown_s < self.breaker_cooldown_s:
            raise ValueError("TTS_BREAKER_MAX_COOLDOWN_S must be >= TTS_BREAKER_COOLDOWN_S")
        return self


class VoiceSettings(BaseSettings):
    """`VOICES_*`: registered voice clones (reference clips): where they are kept, how many at most.

    VOICES_BACKEND picks the store every replica reads: `database` (default: the sessions database,
    DATABASE_URL), `s3` (an S3-compatible bucket, VOICES_S3_*), or `directory` (VOICES_DIR, for one
    node or a volume every node mounts).
    """

    model_config = settings_config(env_prefix="VOICES_")

    backend: Literal["database", "s3", "directory"] = "database"
    dir: str = "./data/voices"
    max: int = Field(1000, ge=1)
    # How long a replica trusts that a voice it has seen still exists: the bound on a deleted voice
    # still being spoken by another replica.
    check_interval_s: float = Field(2.0, ge=0)
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "voices/"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _s3_bucket(self) -> VoiceSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("VOICES_S3_BUCKET is required when VOICES_BACKEND=s3")
        return self


class DatabaseSettings(BaseSettings):
    """`DATABASE_URL`, `DB_*`, `DEBUG_SQL`: the sessions database and its pool."""

    model_config = settings_config(env_prefix="DB_")

    url: str = Field(
        "sqlite+aiosqlite:///./data/sessions.db", validation_alias=AliasChoices("DATABASE_URL", "url")
    )
    pool_size: int = Field(10, ge=1)
    max_overflow: int = Field(20, ge=0)
    pool_recycle: int = Field(3600, ge=-1)
    pool_pre_ping: bool = True
    pool_timeout: float = Field(10.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    statement_timeout_ms: int = Field(15_000, ge=0)
    keepalives_idle: int = Field(30, ge=1)
    keepalives_interval: int = Field(10, ge=1)
    keepalives_count: int = Field(5, ge=1)
    breaker_failures: int = Field(3, ge=1)
    breaker_reset_s: float = Field(5.0, gt=0)
    migrate_on_start: bool = True
    debug_sql: bool = Field(False, validation_alias=AliasChoices("DEBUG_SQL", "debug_sql"))

    @field_validator("url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        if value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value[len("postgresql://") :]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class SessionSettings(BaseSettings):
    """`SESSION_*`: when a silent session is presumed gone, and how often that is checked."""

    model_config = settings_config(env_prefix="SESSION_")

    ttl_s: float = Field(300.0, gt=0)
    sweep_interval_s: float = Field(30.0, gt=0)


class AgentSettings(BaseSettings):
    """`AGENT_*`, `API_BASE_URL`, `LIVEKIT_*`: the voice-agent workers."""

    model_config = settings_config(env_prefix="AGENT_")

    api_base_url: str = Field("http://127.0.0.1:8000", validation_alias=AliasChoices("API_BASE_URL", "api_base_url"))
    api_key: str | None = None
    name: str = "voice-agent"
    tts_voice: str = "alloy"
    tts_transport: str = Field("auto", pattern="^(auto|handle|websocket|http)$")
    outbox_path: str = "./data/agent-outbox.jsonl"
    finalize_retries: int = Field(4, ge=0)
    finalize_backoff_s: float = Field(0.5, gt=0)
    heartbeat_interval_s: float = Field(30.0, gt=0)
    latency_window: int = Field(512, ge=8)
    stt: str = "deepgram"
    llm: str = "openai"
    llm_model: str = "gpt-4o-mini"
    livekit_url: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_URL", "livekit_url"))
    livekit_api_key: str | None = Field(None, validation_alias=AliasChoices("LIVEKIT_API_KEY", "livekit_api_key"))
    livekit_api_secret: str | None = Field(
        None, validation_alias=AliasChoices("LIVEKIT_API_SECRET", "livekit_api_secret")
    )
    tts_model: str = "tts-1"
    tts_language: str | None = None
    tts_instructions: str | None = Field(None, max_length=4096)
    tts_cancel_timeout_s: float = Field(1.0, gt=0, le=30)
    api_timeout_s: float = Field(10.0, gt=0)
    finalize_max_backoff_s: float = Field(8.0, gt=0)
    outbox_replay_interval_s: float = Field(30.0, gt=0)
    instructions: str = "You are a friendly voice assistant. Answer briefly, in plain spoken sentences."
    vad: str = Field("silero", pattern="^(silero|none)$")
    job_executor: str = Field("process", pattern="^(process|thread)$")
    num_idle_processes: int = Field(1, ge=0, le=64)
    drain_timeout_s: int = Field(600, ge=1)
    actor_num_cpus: float = Field(1.0, gt=0)


class Settings(BaseModel):
    """Settings of the service, one sub-model per area (`settings.db.pool_size`, ...).

    Each area reads its own environment variables (the names in `.env.example`); engines add their
    own areas next to their code (`serve_app.engines.spec.EngineSettings`, prefix `<ENGINE>_`).
    """

    model_config = ConfigDict(frozen=True)

    env: Environment = Environment.DEVELOPMENT
    log: LogSettings
    http: HttpSettings
    router: RouterSettings
    voices: VoiceSettings
    db: DatabaseSettings
    sessions: SessionSettings
    agent: AgentSettings

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION


SECTIONS: dict[str, type[BaseSettings]] = {
    "log": LogSettings,
    "http": HttpSettings,
    "router": RouterSettings,
    "voices": VoiceSettings,
    "db": DatabaseSettings,
    "sessions": SessionSettings,
    "agent": AgentSettings,
}


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets `field` of `cls` (its alias, or prefix + name)."""
    info = cls.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first.upper()
    return (str(cls.model_config.get("env_prefix", "")) + field).upper()


def variables(cls: type[BaseSettings]) -> dict[str, str]:
    """Every variable `cls` reads, mapped to its field."""
    return {env_name(cls, field): field for field in cls.model_fields}


def all_variables() -> set[str]:
    """Every variable the service's own settings read (engines add theirs, prefixed)."""
    classes: list[type[BaseSettings]] = [GeneralSettings, *SECTIONS.values()]
    return {name for cls in classes for name in variables(cls)}


def format_validation_error(error: ValidationError, cls: type[BaseSettings]) -> str:
    """One line per bad variable, named as the operator writes it."""
    by_field = {field: env_name(cls, field) for field in cls.model_fields}
    by_alias = {name.lower(): name for name in by_field.values()}
    lines = []
    for item in error.errors():
        first = str(item["loc"][0]) if item["loc"] else ""
        name = by_field.get(first) or by_alias.get(first.lower())
        if name is None:  # a check across fields: its message names the variables
            name = str(cls.model_config.get("env_prefix", "")).rstrip("_") or "SETTINGS"
        lines.append(f"invalid setting {name}: {item['msg']}")
    return "\n".join(lines)


def load_section(cls: type[S], **overrides: Any) -> S:
    """One settings class from the environment, with `SettingsError` lines naming the variables."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, cls)) from None


def load_settings(**overrides: Any) -> Settings:
    """Every area from the environment; all bad variables are reported together.

    `overrides` are keyed by variable name, lower case (`database_url=...`, `db_pool_size=...`), as
    tests and tools set them; `_env_file` applies to every area.
    """
    env_file = {key: overrides.pop(key) for key in ("_env_file",) if key in overrides}
    routed: dict[str, dict[str, Any]] = {name: dict(env_file) for name in ("general", *SECTIONS)}
    classes: dict[str, type[BaseSettings]] = {"general": GeneralSettings, **SECTIONS}
    owner = {var.lower(): (area, field) for area, cls in classes.items() for var, field in variables(cls).items()}
    for key, value in overrides.items():
        if key.lower() not in owner:
            raise SettingsError(f"unknown setting {key.upper()}")
        area, field = owner[key.lower()]
        routed[area][field] = value
    loaded: dict[str, Any] = {}
    problems: list[str] = []
    for area, cls in classes.items():
        try:
            loaded[area] = load_section(cls, **routed[area])
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("\n".join(problems))
    general = loaded.pop("general")
    return Settings(env=general.env, **loaded)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings (cached; tests call `get_settings.cache_clear()`)."""
    return load_settings()
