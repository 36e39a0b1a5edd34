"""Health endpoints, open without auth: liveness, readiness (engines + database), database.

Load balancers and orchestrators probe these without credentials, so the status codes are always
there. When API keys are configured, the internals (pool, breakers, dependency reasons) are shown
only to callers with a valid key: an anonymous probe learns up or down, not how the service is built.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.api.deps import DetailsDep, StateDep
from serve_app.state import AppState

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(state: StateDep, details: DetailsDep) -> dict[str, Any]:
    """Liveness: the process answers. Does not touch engines or the database."""
    return {"status": "ok", "env": state.settings.env.value} if details else {"status": "ok"}


async def database_health(state: AppState) -> tuple[bool, dict[str, Any]]:
    """(healthy, details) of the database; unhealthy when no database layer is configured here."""
    database = state.database
    if database is None:
        return False, {"status": "unavailable", "reason": "database layer not configured"}
    report = await database.health()
    return bool(report.get("ok")), report


@router.get("/health/db", responses={503: {"description": "database unavailable"}})
async def health_db(state: StateDep, details: DetailsDep) -> JSONResponse:
    ok, report = await database_health(state)
    body = {"status": "ok" if ok else "unavailable", **(report if details else {})}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/health/ready", responses={503: {"description": "not ready"}})
async def health_ready(state: StateDep, details: DetailsDep) -> JSONResponse:
    """Ready when the database answers and at least one engine can speak; 503 while draining."""
    if state.drain.draining:  # load balancers stop sending here while requests in flight finish
        return JSONResponse({"status": "draining"}, status_code=503)
    engines = await state.router.engines_status()
    speaking = [e["name"] for e in engines if e["available"]]
    db_ok, db_report = await database_health(state)
    ready = bool(speaking) and db_ok
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready"}
    if details:
        body["engines"] = {e["name"]: {"available": e["available"], "reason": e["reason"]} for e in engines}
        body["database"] = db_report
    return JSONResponse(body, status_code=200 if ready else 503)
