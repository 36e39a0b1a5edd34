"""A private deployment for load tests: `python -m bench.serve_local` prints its URL and stays up.

It starts its own Ray cluster (never joining one already on this host, so other people's
clusters and port 8000 are left alone) and deploys `serve_config.yaml` exactly as `serve run`
would (serve_app.launch), on a free port. The fallback chain is made deterministic for a
CPU-only machine: `TTS_ENGINE_CHAIN=zonos,flite` with Edge disabled (its Microsoft service is
not reachable here, and a chain that waits for it would measure the network, not the service);
Zonos is then reported unavailable without a GPU and Flite answers. Sessions go to a PostgreSQL
database of their own (`tts_load`, created when missing) so the pool figures are real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from bench.common import free_port, wait_http

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/tts_load"
FALLBACK_DATABASE_URL = "sqlite+aiosqlite:///./data/load-sessions.db"
DEFAULT_ENV = {
    "ENV": "development",
    "LOG_LEVEL": "INFO",
    "TTS_ENGINE_CHAIN": "zonos,flite",
    "EDGE_ENABLED": "false",
    "ENV_FILE": "/nonexistent/.env",  # the developer's .env must not change what is measured
}


async def _ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in `url` when it does not exist yet."""
    import asyncpg

    parsed = urlparse(url.replace("+asyncpg", ""))
    name = parsed.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"refusing to create a database named {name!r}")
    admin = await asyncpg.connect(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database="postgres",
    )
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def prepare_environment(database_url: str, chain: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Set the replicas' environment (they inherit the driver's) and return what was set."""
    if database_url.startswith("postgresql"):
        try:
            asyncio.run(_ensure_database(database_url))
        except OSError as exc:  # no PostgreSQL here: the default falls back, an explicit URL does not
            if database_url != DEFAULT_DATABASE_URL:
                raise
            os.makedirs("data", exist_ok=True)
            database_url = FALLBACK_DATABASE_URL
            print(f"PostgreSQL not reachable ({exc}); sessions go to {database_url}", file=sys.stderr)
    env = dict(DEFAULT_ENV, TTS_ENGINE_CHAIN=chain, DATABASE_URL=database_url, **(extra or {}))
    os.environ.update(env)
    from serve_app.launch import apply_cluster_environment

    apply_cluster_environment()
    from config.settings import get_settings

    get_settings.cache_clear()
    return env


def start(
    *,
    database_url: str = DEFAULT_DATABASE_URL,
    chain: str = "zonos,flite",
    num_cpus: int | None = None,
    dashboard: bool = False,
    port: int = 0,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start Ray and the application; returns the URLs an operator (and bench.load) needs.

    `env` adds or overrides the replicas' environment (bench.realtime turns Edge on against its
    local fake service this way)."""
    import ray

    from serve_app.launch import deploy_config, load_config, own_side_ports

    env = prepare_environment(database_url, chain, env)
    dashboard_port = free_port() if dashboard else None
    with own_side_ports():
        context: Any = ray.init(  # a RayContext (address_info, dashboard_url) for a local cluster
            address="local",  # a new private cluster, even when RAY_ADDRESS names someone else's
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_port=dashboard_port,
            log_to_driver=False,
            configure_logging=False,
        )
    url = deploy_config(load_config(port=port or free_port(), host="127.0.0.1"))
    wait_http(f"{url}/health")
    metrics_port = context.address_info.get("metrics_export_port")
    return {
        "url": url,
        "ray_address": context.address_info.get("gcs_address") or context.address_info.get("address"),
        "dashboard_url": f"http://{context.dashboard_url}" if dashboard and context.dashboard_url else None,
        "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None,
        "database_url": env["DATABASE_URL"],
        "chain": chain,
    }


def stop() -> None:
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()


@contextlib.contextmanager
def local_app(**kwargs: Any) -> Iterator[str]:
    """The URL of a private deployment, torn down on exit (bench.load without --url uses this)."""
    info = start(**kwargs)
    try:
        yield info["url"]
    finally:
        stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_local", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="default: a PostgreSQL database of its own; sqlite+aiosqlite:///path also works",
    )
    parser.add_argument("--chain", default="zonos,flite", help="TTS_ENGINE_CHAIN for the replicas")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (never 8000 by default)")
    parser.add_argument("--dashboard", action="store_true", help="also start the Ray dashboard (replicas view)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the replicas (repeatable), e.g. EDGE_ENABLED=true")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env if "=" in item)
    info = start(
        database_url=args.database_url,
        chain=args.chain,
        num_cpus=args.num_cpus,
        dashboard=args.dashboard,
        port=args.port,
        env=extra,
    )
    for key, value in info.items():
        if value is not None and key != "database_url":
            print(f"{key.upper()}={value}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
