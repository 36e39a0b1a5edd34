"""`build_app(args)`: the Serve application, composed in one place (the import_path target).

Engines that cannot run here are not deployed but reported: Zonos on a cluster without GPUs asks
for a GPU that never comes, which would leave `serve run` waiting forever, so it is left out and
`/v1/engines` says why. Resources, replicas and autoscaling live in `serve_config.yaml`.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, cast

from ray.serve import Application

from config.logging import configure_from_settings
from config.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def _cluster_gpus() -> float:
    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0.0))
    except Exception:  # no cluster to ask: treat as CPU-only
        return 0.0
    return 0.0


CPU_ENGINES = ("edge", "flite")


def engine_plan(settings: Settings, gpus: float) -> tuple[list[str], dict[str, str]]:
    """Which engines to deploy, and which the router must not use (with the reason).

    CPU engines are always deployed, even when disabled or left out of the chain, because
    `serve_config.yaml` configures them by name and Serve rejects configuration for deployments
    that are not in the application; a disabled engine costs one idle fractional-CPU replica.
    Zonos is deployed only where it can be scheduled (GPU present, or CPU mode asked for).
    """
    deploy: list[str] = []
    unusable: dict[str, str] = {}
    for name in ("zonos", *CPU_ENGINES):
        module_missing = importlib.util.find_spec(f"serve_app.engines.{name}") is None
        if module_missing:
            unusable[name] = f"engine module serve_app.engines.{name} is not installed"
            continue
        if name == "zonos":
            if not settings.zonos_enabled or "zonos" not in settings.tts_engine_chain:
                unusable[name] = "disabled by ZONOS_ENABLED=false or TTS_ENGINE_CHAIN"
                continue
            if settings.zonos_num_gpus > 0 and gpus < settings.zonos_num_gpus:
                unusable[name] = (
                    f"no GPU in the Ray cluster (ZONOS_NUM_GPUS={settings.zonos_num_gpus:g}, cluster GPUs={gpus:g}); "
                    "set ZONOS_DEVICE=cpu and ZONOS_NUM_GPUS=0 to run it on CPU"
                )
                continue
        deploy.append(name)
        if not getattr(settings, f"{name}_enabled"):
            unusable[name] = f"disabled by {name.upper()}_ENABLED=false"
        elif name not in settings.tts_engine_chain:
            unusable[name] = "not in TTS_ENGINE_CHAIN"
    return deploy, unusable


def _engine_deployment(name: str, settings: Settings) -> Any:
    if name == "zonos":
        from serve_app.engines.zonos_deployment import ZonosDeployment

        return cast(Any, ZonosDeployment).options(
            ray_actor_options={"num_gpus": settings.zonos_num_gpus, "num_cpus": 1}
        ).bind()
    from serve_app.deployments import EngineDeployment

    return cast(Any, EngineDeployment).options(name=f"{name.capitalize()}Engine").bind(name)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Compose engines and ingress. `args` (from serve_config.yaml) is accepted for Serve's API."""
    configure_from_settings()
    settings = get_settings()
    from config.cors import cors_policy
    from serve_app.api.deps import check_auth_settings

    cors_policy(settings)  # fail `serve run` itself, with the clear message, not only the replicas
    check_auth_settings(settings)
    deploy, skipped = engine_plan(settings, _cluster_gpus())
    for name, reason in skipped.items():
        logger.info("engine %s not used by the router: %s", name, reason)
    handles = {name: _engine_deployment(name, settings) for name in deploy}
    from serve_app.ingress import Ingress

    return cast(Application, cast(Any, Ingress).bind(**handles, unavailable=skipped))

