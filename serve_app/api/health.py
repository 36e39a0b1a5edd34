"""Health endpoints, open without auth: liveness, readiness (engines + database), database."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app.api.deps import get_services
from serve_app.drain import is_draining

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, Any]:
    """Liveness: the process answers. Does not touch engines or the database."""
    services = get_services()
    return {"status": "ok", "env": services.settings.env.value}


async def database_health() -> tuple[bool, dict[str, Any]]:
    """(healthy, details) of the database; healthy when no database layer is configured here."""
    database = get_services().database
    if database is None:
        return False, {"status": "unavailable", "reason": "database layer not configured"}
    report = await database.health()
    return bool(report.get("ok")), report


@router.get("/health/db", responses={503: {"description": "database unavailable"}})
async def health_db() -> JSONResponse:
    ok, report = await database_health()
    return JSONResponse({"status": "ok" if ok else "unavailable", **report}, status_code=200 if ok else 503)


@router.get("/health/ready", responses={503: {"description": "not ready"}})
async def health_ready() -> JSONResponse:
    """Ready when the database answers and at least one engine can speak; 503 while draining."""
    if is_draining():  # load balancers stop sending here while requests in flight finish
        return JSONResponse({"status": "draining"}, status_code=503)
    services = get_services()
    engines: list[dict[str, Any]] = []
    if services.router is not None:
        engines = await services.router.engines_status()
    speaking = [e["name"] for e in engines if e["available"]]
    db_ok, db_report = await database_health()
    ready = bool(speaking) and db_ok
    body = {
        "status": "ready" if ready else "not_ready",
        "engines": {e["name"]: {"available": e["available"], "reason": e["reason"]} for e in engines},
        "database": db_report,
    }
    return JSONResponse(body, status_code=200 if ready else 503)
