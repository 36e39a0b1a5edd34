"""Health endpoints, open without auth: liveness, readiness (engines + database), database."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.api.deps import StateDep
from serve_app.state import AppState

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(state: StateDep) -> dict[str, Any]:
    """Liveness: the process answers. Does not touch engines or the database."""
    return {"status": "ok", "env": state.settings.env.value}


async def database_health(state: AppState) -> tuple[bool, dict[str, Any]]:
    """(healthy, details) of the database; unhealthy when no database layer is configured here."""
    database = state.database
    if database is None:
        return False, {"status": "unavailable", "reason": "database layer not configured"}
    report = await database.health()
    return bool(report.get("ok")), report


@router.get("/health/db", responses={503: {"description": "database unavailable"}})
async def health_db(state: StateDep) -> JSONResponse:
    ok, report = await database_health(state)
    return JSONResponse({"status": "ok" if ok else "unavailable", **report}, status_code=200 if ok else 503)


@router.get("/health/ready", responses={503: {"description": "not ready"}})
async def health_ready(state: StateDep) -> JSONResponse:
    """Ready when the database answers and at least one engine can speak; 503 while draining."""
    if state.drain.draining:  # load balancers stop sending here while requests in flight finish
        return JSONResponse({"status": "draining"}, status_code=503)
    engines = await state.router.engines_status()
    speaking = [e["name"] for e in engines if e["available"]]
    db_ok, db_report = await database_health(state)
    ready = bool(speaking) and db_ok
    body = {
        "status": "ready" if ready else "not_ready",
        "engines": {e["name"]: {"available": e["available"], "reason": e["reason"]} for e in engines},
        "database": db_report,
    }
    return JSONResponse(body, status_code=200 if ready else 503)
