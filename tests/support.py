"""Helpers shared by test modules: the real FastAPI app in-process, and throwaway PostgreSQL databases."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

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
