"""A two-node "GPU" cluster on this machine, running deploy/serve_config.gpu.yaml (issue 15).

A Ray head (CPU only) and a second node started with `ray start --num-gpus 1` (a declared GPU: Ray
schedules GPU deployments there; Zonos runs the real library on CPU, the small random-weight model
through ZONOS_MODEL_FACTORY). Both are started with the `ray` CLI, each in its own session, temp dir
and working directory, and stopped by killing exactly those sessions (tests/integration/local_ray.py).
The suite's in-process cluster (tests/conftest.py) is not used; the fake Edge server is.

The config is the GPU config, changed only where one machine needs it (see `adapted_config`). It
shows, in one cluster and in order:
1. deployed before any GPU node joined, the app comes up: Zonos pending, the CPU engines speaking;
2. the GPU node joins: the Zonos replica starts there (its node id is the GPU node's), a request
   pinned to Zonos speaks, and a clone uploaded through the head's ingress is spoken by that replica
   (read from the sessions database: PostgreSQL, shared by nothing but the network);
3. the Zonos replica's process is killed: unpinned requests keep being served by the CPU engines,
   and after Serve replaces the replica Zonos speaks again;
4. the app deleted and deployed again with the GPU node already there: the same deployments.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import httpx
import numpy as np
import pytest
import yaml

from serve_app.core.audio import wav_header
from serve_app.launch import cluster_environment, free_port, side_ports, wait_http
from tests.integration.local_ray import RayCluster
from tests.support import PG_ADMIN_DSN, require_real_zonos

if TYPE_CHECKING:
    from tests.fakes.edge_server import FakeEdgeServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = ROOT / "deploy" / "serve_config.gpu.yaml"
APP = "tts"
ZONOS = "ZonosEngine"
PINNED_ZONOS = "zonos-v0.1"
T = TypeVar("T")


def adapted_config(source: dict[str, Any], *, port: int, env: dict[str, str]) -> dict[str, Any]:
    """deploy/serve_config.gpu.yaml as this machine needs it, and nothing else changed:

    - HTTP on loopback at a free port, and one proxy (HeadOnly): two nodes on one machine share its
      addresses, so a proxy per node could not both bind the port;
    - one replica of each deployment and small CPU shares (2 cores for two nodes and everything);
    - the application's environment (runtime_env.env_vars, as an operator sets it) adds the test's
      database, the fake Edge server, short router timeouts, and Zonos on CPU with the small
      random-weight model (ZONOS_DEVICE=cpu, ZONOS_MODEL_FACTORY); ZONOS_NUM_GPUS=1 and
      ZONOS_PLACEMENT=always stay as the GPU config has them.
    """
    config: dict[str, Any] = yaml.safe_load(yaml.safe_dump(source))
    config["http_options"].update(host="127.0.0.1", port=port)
    config["proxy_location"] = "HeadOnly"
    (app,) = config["applications"]
    app["runtime_env"]["env_vars"].update(env)
    for deployment in app["deployments"]:
        scaling = deployment.get("autoscaling_config")
        if scaling:
            scaling.update(min_replicas=1, max_replicas=1, initial_replicas=1)
        deployment["ray_actor_options"]["num_cpus"] = 0.5 if deployment["name"] == ZONOS else 0.1
    return config


def app_env(database_url: str, edge_url: str) -> dict[str, str]:
    return {
        "ENV": "test",
        "ENV_FILE": "/nonexistent/.env",
        "DATABASE_URL": database_url,
        "EDGE_WSS_URL": edge_url,
        "TTS_TTFB_TIMEOUT_S": "3.0",
        "TTS_STALL_TIMEOUT_S": "3.0",
        "TTS_BREAKER_COOLDOWN_S": "1.0",
        "TTS_BREAKER_MAX_COOLDOWN_S": "2.0",
        "TTS_NORMALIZE_CACHE_DIR": str(ROOT / "data" / "tn-cache"),
        "ZONOS_DEVICE": "cpu",
        "ZONOS_MODEL_FACTORY": "bench.zonos_random:cloning_model",
        "ZONOS_SEED": "7",
        "ZONOS_MAX_BATCH_SIZE": "2",
        # bench/ is not an installed package: the repository root on the path (the "image" here).
        "PYTHONPATH": str(ROOT),
    }


def node_env(workdir: Path) -> dict[str, str]:
    """Each node's own environment: the cluster settings `make run` uses, HAProxy side ports and a
    VOICES_DIR nobody shares (two nodes on one machine)."""
    return {**cluster_environment(), **side_ports(), "VOICES_DIR": str(workdir / "voices")}


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T:
    """Poll `probe` until it returns something other than None; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (httpx.HTTPError, KeyError) as exc:
            value, last = None, exc
        if value is not None:
            return value
        time.sleep(every_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f}s (last error: {last!r})")


def reference_clip(seconds: float = 3.0) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    samples = np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 12000
    pcm = samples.astype("<i2").tobytes()
    return wav_header(16000, len(pcm)) + pcm


class SimulatedCluster:
    """The test's view of the cluster: Serve's state through the dashboard, speech through the ingress."""

    def __init__(self, cluster: RayCluster, config_path: Path, url: str) -> None:
        self.ray = cluster
        self.config_path = config_path
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60.0)

    def deploy(self) -> None:
        self.ray.cli("serve", "deploy", str(self.config_path), "--address", self.ray.dashboard_url)

    def application(self) -> dict[str, Any] | None:
        apps: dict[str, Any] = self.ray.api("/api/serve/applications/")["applications"]
        return apps.get(APP)

    def status(self) -> str | None:
        """The application's status (DEPLOYING, RUNNING, ...), None while there is no application."""
        app = self.application()
        return str(app["status"]) if app else None

    def deployments(self) -> dict[str, Any]:
        app = self.application()
        return app["deployments"] if app else {}

    def running_replicas(self, deployment: str) -> list[dict[str, Any]]:
        found = self.deployments().get(deployment, {}).get("replicas", [])
        return [r for r in found if r["state"] == "RUNNING"]

    def nodes(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.ray.api("/api/v0/nodes?detail=true")["data"]["result"]["result"]
        return [n for n in result if n["state"] == "ALIVE"]

    def gpu_node_ids(self) -> set[str]:
        return {n["node_id"] for n in self.nodes() if n["resources_total"].get("GPU", 0) >= 1}

    def speak(self, text: str, *, model: str = "tts-1", voice: str = "alloy") -> httpx.Response:
        body = {"model": model, "input": text, "voice": voice, "response_format": "pcm", "sample_rate": 16000}
        return self.http.post("/v1/audio/speech", json=body)

    def engine(self, name: str) -> dict[str, Any]:
        data = self.http.get("/v1/engines").json()["data"]
        return next(e for e in data if e["name"] == name)

    def ready_engines(self) -> dict[str, Any]:
        body = self.http.get("/health/ready").json()
        assert "engines" in body, body
        engines: dict[str, Any] = body["engines"]
        return engines


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A throwaway PostgreSQL database: the sessions database (and voice store) of both nodes."""
    name = f"simcluster_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        try:
            connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def cluster(database_url: str, edge_server: FakeEdgeServer) -> Iterator[SimulatedCluster]:
    require_real_zonos()
    # Short, so Ray's unix sockets under the nodes' temp dirs stay within 107 bytes (pytest's are too deep).
    root = Path(tempfile.mkdtemp(prefix="simcl-", dir="/tmp"))
    port = free_port()
    config = adapted_config(
        yaml.safe_load(GPU_CONFIG.read_text()), port=port, env=app_env(database_url, edge_server.url)
    )
    config_path = root / "serve_config.gpu.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    ray = RayCluster(root)
    try:
        ray.start_head(num_cpus=2, env=node_env(root / "head"))
        sim = SimulatedCluster(ray, config_path, f"http://127.0.0.1:{port}")
        try:
            yield sim
        finally:
            sim.http.close()
    finally:
        ray.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_gpu_config_on_a_cluster_whose_gpu_node_joins_later_and_loses_its_replica(
    cluster: SimulatedCluster,
) -> None:
    # 1. Deployed before any GPU node: the app serves, Zonos waits for a GPU.
    cluster.deploy()
    wait_http(f"{cluster.url}/health", timeout_s=150)
    cpu_deployments = ("Ingress", "EdgeEngine", "PiperEngine")  # Flite runs inside the ingress
    wait_for(
        "the CPU deployments running",
        lambda: True if all(cluster.running_replicas(d) for d in cpu_deployments) else None,
        timeout_s=150,
    )
    shape_before = set(cluster.deployments())
    assert ZONOS in shape_before  # ZONOS_PLACEMENT=always: in the app with no GPU in the cluster
    assert not cluster.running_replicas(ZONOS)
    assert cluster.status() == "DEPLOYING"  # Zonos pending
    assert cluster.ready_engines()["zonos"]["available"] is False
    spoken = cluster.speak("Nothing on a GPU yet, and still an answer.")
    assert spoken.status_code == 200, spoken.text
    assert spoken.headers["x-tts-engine"] != "zonos" and len(spoken.content) > 1000

    # 2. The GPU node joins: Zonos starts there and speaks, clones included.
    gpu = cluster.ray.start_worker("gpu", num_cpus=1, num_gpus=1, env=node_env(cluster.ray.root / "gpu"))
    (gpu_node_id,) = wait_for("the GPU node alive", lambda: cluster.gpu_node_ids() or None, timeout_s=60)
    replica = wait_for("a running Zonos replica", lambda: next(iter(cluster.running_replicas(ZONOS)), None), 180)
    assert replica["node_id"] == gpu_node_id
    assert replica["pid"] in gpu.pids()  # the process is the GPU node's (its own session)
    wait_for("the app running", lambda: True if cluster.status() == "RUNNING" else None, 60)
    wait_for("zonos available", lambda: True if cluster.engine("zonos")["available"] else None, 30)

    pinned = cluster.speak("Spoken on the GPU node.", model=PINNED_ZONOS)
    assert pinned.status_code == 200, pinned.text
    assert pinned.headers["x-tts-engine"] == "zonos" and len(pinned.content) > 1000

    created = cluster.http.post("/v1/audio/voices", files={"file": ("me.wav", reference_clip(), "audio/wav")})
    assert created.status_code == 201, created.text
    voice = created.json()["id"]
    text = "Spoken in the uploaded voice."
    cloned = cluster.speak(text, model=PINNED_ZONOS, voice=voice)
    default = cluster.speak(text, model=PINNED_ZONOS)
    assert cloned.status_code == 200, cloned.text
    assert cloned.headers["x-tts-engine"] == "zonos"
    assert cloned.content != default.content  # same seed and text, another speaker embedding
    zonos = cluster.engine("zonos")["check"]["details"]
    assert zonos["speakers_cached"] == 1 and zonos["voice_store"] == "database"
    for node in ("head", "gpu"):  # nothing came through either node's disk (VOICES_DIR of its own)
        assert not list((cluster.ray.root / node).rglob("clone-*"))

    # 3. The Zonos replica's process dies: the CPU engines answer, then Serve replaces it.
    os.kill(replica["pid"], signal.SIGKILL)
    answered: list[httpx.Response] = []
    deadline = time.monotonic() + 180
    while True:
        response = cluster.speak("Answered while the GPU replica is gone.")
        answered.append(response)
        assert response.status_code == 200, response.text  # never a 5xx for an unpinned request
        replacement = [r for r in cluster.running_replicas(ZONOS) if r["replica_id"] != replica["replica_id"]]
        if replacement:
            break
        assert time.monotonic() < deadline, "Serve did not replace the killed Zonos replica"
    assert any(r.headers["x-tts-engine"] != "zonos" for r in answered)  # the fallbacks served the outage
    assert replacement[0]["node_id"] == gpu_node_id
    again = wait_for(
        "zonos speaking again",
        lambda: r if (r := cluster.speak("Back on the GPU node.", model=PINNED_ZONOS)).status_code == 200 else None,
        timeout_s=60,
        every_s=1.0,
    )
    assert again.headers["x-tts-engine"] == "zonos"

    # 4. The other order: the GPU node is there before the config is deployed. Same app.
    cluster.ray.cli("serve", "shutdown", "--yes", "--address", cluster.ray.dashboard_url)
    wait_for("serve gone", lambda: True if cluster.status() is None else None, 60)
    cluster.deploy()
    wait_for("the app running", lambda: True if cluster.status() == "RUNNING" else None, 180)
    assert set(cluster.deployments()) == shape_before
    (replica,) = cluster.running_replicas(ZONOS)
    assert replica["node_id"] == gpu_node_id
    wait_http(f"{cluster.url}/health", timeout_s=60)
    final = cluster.speak("Deployed with the GPU node already there.", model=PINNED_ZONOS)
    assert final.status_code == 200 and final.headers["x-tts-engine"] == "zonos", final.text
