"""What an engine declares about itself: the one record the rest of the service is derived from.

Each engine module ends with `ENGINE = EngineSpec(...)`. The registry (`registry.py`) finds those
records; settings, router limits, the API's engine names and pinned models, `/v1/engines`, the voice
catalogue and the Serve deployments are all computed from them. Adding an engine is adding its
module (plus its lines in serve_config.yaml and .env.example): nothing else names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from config.settings import Settings, settings_config
from serve_app.core.voices import VoiceTable

if TYPE_CHECKING:
    from serve_app.engines.base import Engine

WordTiming = Literal["exact", "estimated"]


@dataclass(frozen=True)
class DeploymentDefaults:
    """Serve options for the engine's deployment; serve_config.yaml overrides any of them."""

    num_cpus: float = 0.2
    num_gpus: float = 0.0
    # At least what one replica can hold: an engine that batches needs its batch plus its queue.
    max_ongoing_requests: int = 32
    # Serve's queue in front of the replicas, per caller (each ingress replica, each agent): when it
    # is full the caller gets Serve's back-pressure error at once, which the router takes as busy.
    max_queued_requests: int = 32


class EngineSettings(BaseSettings):
    """Settings every engine has; each engine subclasses it with its own prefix (`<NAME>_`).

    The three budgets default to the router's global `TTS_*` values when left empty: a GPU model
    and a local binary rarely deserve the same timeouts, but most deployments never set them.
    """

    model_config = settings_config(env_prefix="ENGINE_")

    enabled: bool = True
    ttfb_timeout_s: float | None = Field(None, gt=0)
    stall_timeout_s: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1)
    # Resources of one replica; empty = the engine's declared defaults (serve_config.yaml wins over both).
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    # "auto": leave the engine out (and report why) when this cluster cannot place it now;
    # "always": deploy it anyway, its replicas waiting until a node that fits joins (a GPU config on
    # a cluster whose GPU workers start later, or scale from zero).
    placement: Literal["auto", "always"] = "auto"
    # Where the engine runs: in each caller's process (the ingress replicas, the agents' routers) or
    # in a deployment of its own; empty = the engine's declaration (`EngineSpec.in_process`).
    in_process: bool | None = None

    def resources(self, defaults: DeploymentDefaults) -> tuple[float, float]:
        """(num_cpus, num_gpus) of one replica: these settings where set, else the defaults."""
        cpus = defaults.num_cpus if self.num_cpus is None else self.num_cpus
        gpus = defaults.num_gpus if self.num_gpus is None else self.num_gpus
        return cpus, gpus


@dataclass(frozen=True)
class EngineContext:
    """What an engine may use besides its own settings: the process settings and the catalogue."""

    settings: Settings
    catalogue: Any  # serve_app.core.voices.Catalogue; typed loosely to keep this module import-light


@dataclass(frozen=True)
class EngineSpec:
    """Everything about one engine that is not its synthesis code."""

    name: str
    title: str
    model_id: str  # the OpenAI `model` value that pins this engine (no fallback)
    settings: type[EngineSettings]
    build: Callable[[Any, EngineContext], Engine]  # (its settings, context) -> engine
    voices: VoiceTable
    speed_range: tuple[float, float] = (0.25, 4.0)
    word_timing: WordTiming = "estimated"
    deployment: DeploymentDefaults = field(default_factory=DeploymentDefaults)
    # Why the engine cannot be placed on this cluster (e.g. no GPU), or None; given its settings
    # and the cluster's GPU count. Such an engine is reported, not deployed.
    placement_problem: Callable[[Any, float], str | None] | None = None
    # Which request features the engine honours, for /v1/models and the docs.
    honours: Mapping[str, str] = field(default_factory=dict)
    # Hosted in each caller's process by default, not in a deployment: for an engine whose whole
    # synthesis costs about what a hop through Serve costs (a CPU vocoder), the hop is the
    # overhead. The caller (an ingress replica, an agent) gets its own instance, so it scales with
    # them; `<NAME>_IN_PROCESS=false` gives it a deployment again.
    in_process: bool = False

    def hosted_in_process(self, own: EngineSettings) -> bool:
        """Whether this engine runs in its callers' processes with these settings."""
        return self.in_process if own.in_process is None else own.in_process

    @property
    def deployment_name(self) -> str:
        return f"{self.name.capitalize()}Engine"

    @property
    def env_prefix(self) -> str:
        return str(self.settings.model_config.get("env_prefix", ""))
