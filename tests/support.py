"""Helpers shared by test modules: the real FastAPI app in-process, and throwaway PostgreSQL databases."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from config.settings import Settings
from serve_app.api.app import create_app
from serve_app.engines import registry
from serve_app.router import FallbackRouter, RouterConfig
from serve_app.router.clients import LocalEngineClient

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, router: FallbackRouter | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app with its lifespan (database opened, migrated, sweeper running) and an ASGI client.

    `router` serves speech in-process (in-process Flite, built by the registry as its deployment
    builds it, when not given); the lifespan closes it.
    """
    if router is None:
        flite = registry.build_engine("flite", settings)
        router = FallbackRouter({"flite": LocalEngineClient(flite)}, RouterConfig(chain=("flite",)))
    app = create_app(settings, router)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client,
    ):
        yield app, client


@contextlib.asynccontextmanager
async def throwaway_database(prefix: str) -> AsyncIterator[str]:
    """CREATE a uniquely named database on the local server, yield its name, DROP it (skip if no server)."""
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


FAKES = Path(__file__).resolve().parent / "fakes"


def forget_zonos() -> None:
    """Drop every imported `zonos` module (the real package and the test double share the name)."""
    for name in [m for m in sys.modules if m == "zonos" or m.startswith("zonos.")]:
        del sys.modules[name]


def real_zonos_problem() -> str | None:
    """None when the real `zonos` package imports (not the double in tests/fakes), else why not."""
    forget_zonos()
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p).resolve() != FAKES.resolve()]
    try:
        importlib.import_module("zonos.model")
        importlib.import_module("zonos.conditioning")
    except Exception as exc:
        forget_zonos()
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        sys.path[:] = saved
    return None


def require_real_zonos() -> None:
    """Tests on the real Zonos library must run in CI: there a missing package fails them, elsewhere
    it skips them, saying how to install it."""
    problem = real_zonos_problem()
    if problem is None:
        return
    message = f"the real zonos package is not importable ({problem}); run `make install-zonos`"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


class ManualClock:
    """A clock the test moves by setting `now` (breakers, guards, caches take any `() -> float`)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds, failing the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
