"""`GET /v1/deployments`: the Serve deployments of this cluster and their replicas by state.

Operators (and the playground's Status panel) want to see replicas come and go while autoscaling
or after a replica was replaced, without opening the Ray dashboard. Outside a Ray cluster (plain
uvicorn, in-process tests) there is nothing to report, and the answer says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from serve_app.api.deps import require_api_key

router = APIRouter(tags=["cluster"], dependencies=[Depends(require_api_key)])
STATUS_TIMEOUT_S = 5.0


def _serve_status() -> list[dict[str, Any]]:
    import ray
    from ray import serve

    if not ray.is_initialized():
        raise RuntimeError("not running in a Ray cluster")
    rows: list[dict[str, Any]] = []
    for app_name, app in serve.status().applications.items():
        for name, deployment in app.deployments.items():
            rows.append(
                {
                    "application": app_name,
                    "name": name,
                    "status": str(
                        deployment.status.value if hasattr(deployment.status, "value") else deployment.status
                    ),
                    "replicas": {
                        str(getattr(state, "value", state)): count for state, count in deployment.replica_states.items()
                    },
                }
            )
    return rows


@router.get("/v1/deployments")
async def list_deployments() -> dict[str, Any]:
    """Each deployment's status and its replicas by state (RUNNING, STARTING, ...)."""
    try:
        rows = await asyncio.wait_for(asyncio.to_thread(_serve_status), STATUS_TIMEOUT_S)
    except Exception as exc:  # no cluster, or the controller is slow: a status page, not an error
        return {"object": "list", "data": [], "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"object": "list", "data": rows}
