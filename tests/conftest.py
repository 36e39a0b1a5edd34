"""Shared fixtures. One real Ray cluster and one real Serve application per test run.

Environment is set before Ray starts so replicas inherit it: a throwaway SQLite database,
ENV=test, and short breaker cooldowns so recovery tests do not wait long.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from serve_app.launch import free_port, wait_http

__all__ = ["free_port", "wait_http"]  # test modules import them from here

if TYPE_CHECKING:
    from tests.fakes.edge_server import FakeEdgeServer

TEST_ENV = {
    "ENV": "test",
    "LOG_LEVEL": "INFO",
    "TTS_BREAKER_COOLDOWN_S": "1.0",
    "TTS_BREAKER_MAX_COOLDOWN_S": "4.0",
    "TTS_TTFB_TIMEOUT_S": "3.0",
    "TTS_STALL_TIMEOUT_S": "3.0",
    # The suite shares two cores with its own load tests: new requests may wait longer for an engine
    # than a production default would let them (the admission wait is tested on its own).
    "TTS_ADMISSION_WAIT_S": "10.0",
    "SESSION_SWEEP_INTERVAL_S": "1.0",
    "ENV_FILE": "/nonexistent/.env",
    # The spoken-form grammars `make test` compiled (replicas may run elsewhere than the repository
    # root; a missing cache would be compiled again in every replica, tens of seconds of CPU each).
    "TTS_NORMALIZE_CACHE_DIR": str(Path(__file__).resolve().parents[1] / "data" / "tn-cache"),
}


@pytest.fixture(scope="session")
def test_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def edge_server() -> Iterator[FakeEdgeServer]:
    """A local Edge TTS protocol server (tests/fakes/edge_server.py); the Serve app's Edge engine uses it."""
    from tests.fakes.edge_server import EdgeServerThread

    with EdgeServerThread("normal") as server:
        yield server


@pytest.fixture(scope="session")
def ray_cluster(test_data_dir: Path, edge_server: FakeEdgeServer) -> Iterator[None]:
    """A private local Ray cluster (random ports; Redis on 6379 is untouched)."""
    import ray

    env = dict(TEST_ENV)
    env.setdefault("EDGE_WSS_URL", edge_server.url)
    env.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{test_data_dir}/sessions.db")
    env.setdefault("VOICES_DIR", str(test_data_dir / "voices"))
    env.setdefault("AGENT_OUTBOX_PATH", str(test_data_dir / "outbox.jsonl"))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from config.settings import get_settings

    get_settings.cache_clear()
    from serve_app.launch import adopt_orphans, apply_cluster_environment, end_orphans, own_side_ports

    apply_cluster_environment()  # the tests run the cluster the way `make run` does
    adopt_orphans()  # HAProxy outlives a cluster shut down without Serve's own shutdown
    with own_side_ports():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        from ray import serve

        try:
            serve.shutdown()
        except RuntimeError:
            # Handles created inside async tests belong to the (by now closed) test event loop;
            # Serve cannot close them, and ray.shutdown() below ends the cluster anyway.
            pass
        finally:
            ray.shutdown()
            end_orphans()
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            get_settings.cache_clear()


@pytest.fixture(scope="session")
def serve_port(ray_cluster: None) -> int:
    """The HTTP port of this run's Serve proxy; Serve starts here so every app shares it."""
    from ray import serve

    from serve_app.launch import load_config

    port = free_port()
    serve.start(http_options=load_config(port=port, host="127.0.0.1").http_options.model_dump())
    return port


@pytest.fixture(scope="session")
def serve_url(serve_port: int) -> str:
    """The real application (serve_app.app:build_app) running in Serve, at the root route."""
    from serve_app.launch import deploy_config, load_config

    url = deploy_config(load_config(port=serve_port, host="127.0.0.1"))
    wait_http(f"{url}/health")
    return url


@pytest.fixture
def client(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=60.0) as c:
        yield c
