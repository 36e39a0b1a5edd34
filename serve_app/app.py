"""`build_app(args)`: the Serve application, composed in one place (the import_path target).

Every registered engine becomes a deployment named after it, with the defaults its module declares;
`serve_config.yaml` overrides resources, replicas and autoscaling by those names. An engine that
cannot be placed on this cluster (a GPU engine without GPUs) is not deployed but reported, because
a replica asking for a GPU that never comes would leave `serve run` waiting forever.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from ray.serve import Application

from config.cors import cors_policy
from config.logging import configure_from_settings
from config.settings import get_settings
from serve_app.api.deps import check_auth_settings
from serve_app.engines import registry
from serve_app.engines.spec import EngineSettings, EngineSpec

logger = logging.getLogger(__name__)


def _cluster_gpus() -> float:
    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0.0))
    except Exception:  # no cluster to ask: treat as CPU-only
        return 0.0
    return 0.0


def engine_deployment(spec: EngineSpec, own: EngineSettings) -> Any:
    """The engine's deployment, named `<Name>Engine`, with its declared defaults and resources."""
    defaults = spec.deployment
    num_cpus, num_gpus = own.resources(defaults)
    options: dict[str, Any] = {
        "name": spec.deployment_name,
        "max_ongoing_requests": defaults.max_ongoing_requests,
        "max_queued_requests": defaults.max_queued_requests,
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
    }
    from serve_app.deployments import EngineDeployment

    return cast(Any, EngineDeployment).options(**options).bind(spec.name)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Compose engines and ingress. `args` (from serve_config.yaml) is accepted for Serve's API."""
    configure_from_settings()
    settings = get_settings()
    cors_policy(settings)  # fail `serve run` itself, with the clear message, not only the replicas
    check_auth_settings(settings)
    engines = registry.validate_all(settings)
    plan = registry.plan(settings, engines, _cluster_gpus())
    for name, reason in plan.unusable.items():
        logger.info("engine %s not used by the router: %s", name, reason)
    handles = {name: engine_deployment(registry.spec(name), engines[name]) for name in plan.deploy}
    from serve_app.ingress import Ingress

    return cast(Application, cast(Any, Ingress).bind(handles, plan.unusable, plan.in_process))
