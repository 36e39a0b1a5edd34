"""`build_app(args)`: the Serve application, composed in one place (the import_path target).

Engines that cannot run here are not deployed but reported: Zonos on a cluster without GPUs asks
for a GPU that never comes, which would leave `serve run` waiting forever, so it is left out and
`/v1/engines` says why. Resources, replicas and autoscaling live in `serve_config.yaml`.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

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


def engine_plan(settings: Settings, gpus: float) -> tuple[list[str], dict[str, str]]:
    """Which engines of the chain to deploy, and why the others are not deployed."""
    deploy: list[str] = []
    skipped: dict[str, str] = {}
    for name in settings.tts_engine_chain:
        if not getattr(settings, f"{name}_enabled"):
            skipped[name] = f"disabled by {name.upper()}_ENABLED=false"
        elif importlib.util.find_spec(f"serve_app.engines.{name}") is None:
            skipped[name] = f"engine module serve_app.engines.{name} is not installed"
        elif name == "zonos" and settings.zonos_num_gpus > 0 and gpus < settings.zonos_num_gpus:
            skipped[name] = (
                f"no GPU in the Ray cluster (ZONOS_NUM_GPUS={settings.zonos_num_gpus:g}, cluster GPUs={gpus:g}); "
                "set ZONOS_DEVICE=cpu and ZONOS_NUM_GPUS=0 to run it on CPU"
            )
        else:
            deploy.append(name)
    return deploy, skipped


def _engine_deployment(name: str, settings: Settings) -> Any:
    if name == "zonos":
        from serve_app.engines.zonos_deployment import ZonosDeployment

        return ZonosDeployment.options(
            ray_actor_options={"num_gpus": settings.zonos_num_gpus, "num_cpus": 1}
        ).bind()
    from serve_app.deployments import EngineDeployment

    return EngineDeployment.options(name=f"{name.capitalize()}Engine").bind(name)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Compose engines and ingress. `args` (from serve_config.yaml) may override `engines`."""
    configure_from_settings()
    settings = get_settings()
    from config.cors import cors_policy
    from serve_app.api.deps import check_auth_settings

    cors_policy(settings)  # fail `serve run` itself, with the clear message, not only the replicas
    check_auth_settings(settings)
    deploy, skipped = engine_plan(settings, _cluster_gpus())
    only = (args or {}).get("engines")
    if only:
        for name in [n for n in deploy if n not in only]:
            deploy.remove(name)
            skipped[name] = "left out by application args"
    for name, reason in skipped.items():
        logger.info("engine %s not deployed: %s", name, reason)
    handles = {name: _engine_deployment(name, settings) for name in deploy}
    from serve_app.ingress import Ingress

    return Ingress.bind(**handles, unavailable=skipped)


app = build_app
