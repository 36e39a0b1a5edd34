"""Overload through the real Serve application: every answer is served in full or refused before audio.

A small application ("flood", at /flood) runs the real Ingress over one real Flite replica with
deliberately little room: 2 router slots, 2 replica slots and a Serve queue of 2 in front of the
engine, and an ingress that holds 12 requests plus a queue of 4. Then 40 concurrent six-sentence
answers arrive at once (`bench.flood`, the same code as the benchmark). Each must be either a
200 whose body is exactly as long as the unloaded answer, or a 503 with Retry-After and no audio;
no stream may be cut, and Flite's breaker must not have counted a single strike (busy is not
broken).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.flood import FloodConfig, run_flood
from tests.conftest import wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def flood_url(serve_port: int) -> Iterator[str]:
    from ray import serve

    from serve_app.deployments import EngineDeployment
    from serve_app.ingress import Ingress

    flite = EngineDeployment.options(
        name="FloodFlite",
        num_replicas=1,
        max_ongoing_requests=2,
        max_queued_requests=2,
        ray_actor_options={"num_cpus": 0.05},
    ).bind("flite")
    ingress = Ingress.options(
        name="FloodIngress",
        max_ongoing_requests=12,
        max_queued_requests=4,
        ray_actor_options={"num_cpus": 0.05, "runtime_env": {"env_vars": {"FLITE_CONCURRENCY": "2"}}},
    ).bind({"flite": flite})
    serve.run(ingress, name="flood", route_prefix="/flood", blocking=False)
    url = f"http://127.0.0.1:{serve_port}/flood"
    wait_http(f"{url}/health")
    try:
        yield url
    finally:
        serve.delete("flood")


async def test_forty_long_answers_beyond_capacity_are_complete_or_refused_before_audio(
    flood_url: str, tmp_path: Path
) -> None:
    report = await run_flood(
        FloodConfig(base=flood_url, levels=(40,), unloaded_samples=2, report_dir=tmp_path, quiet=True)
    )
    level = report["levels"][0]
    assert level["cut"] == 0 and level["errors"] == 0, json.dumps(report)
    assert level["complete"] + level["refused"] == 40
    assert level["complete"] >= 2  # the service served what it could hold
    assert level["refused"] >= 1, level  # and refused the rest up front: this was an overload
    verdict = report["verdict"]
    assert verdict["breaker_closed"] and verdict["strikes_during_flood"] == 0, report["breaker"]
    assert verdict["passed"]
    assert (tmp_path / "flood.png").read_bytes().startswith(b"\x89PNG")
