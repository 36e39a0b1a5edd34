"""serve_config.yaml and deploy/serve_config.gpu.yaml: valid for Serve, Zonos on a GPU with sane autoscaling
and batching, every other deployment exactly as in serve_config.yaml (so the two files cannot drift apart),
and a request timeout that fits the longest answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.engines.zonos import ZonosSettings

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)  # what `serve run` / `serve deploy` accept
    return raw


def deployments(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in raw["applications"][0]["deployments"]}


def test_gpu_config_adds_an_autoscaled_batched_zonos_deployment() -> None:
    gpu = load(ROOT / "deploy" / "serve_config.gpu.yaml")
    zonos = deployments(gpu)["ZonosEngine"]
    assert zonos["ray_actor_options"]["num_gpus"] >= 1
    scaling = zonos["autoscaling_config"]
    assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    assert 0 < scaling["target_ongoing_requests"] <= zonos["max_ongoing_requests"]
    env = gpu["applications"][0]["runtime_env"]["env_vars"]
    settings = ZonosSettings(_env_file=None, **{k.lower()[6:]: v for k, v in env.items() if k.startswith("ZONOS_")})
    assert settings.device == "cuda" and (settings.num_gpus or 0) >= 1
    # A replica must be allowed enough requests in flight to fill a batch and the engine's queue.
    assert zonos["max_ongoing_requests"] >= settings.max_batch_size + settings.max_queued


def test_gpu_config_matches_the_cpu_config_elsewhere() -> None:
    cpu = load(ROOT / "serve_config.yaml")
    gpu = load(ROOT / "deploy" / "serve_config.gpu.yaml")
    assert {k: v for k, v in gpu.items() if k != "applications"} == {
        k: v for k, v in cpu.items() if k != "applications"
    }
    cpu_app, gpu_app = cpu["applications"][0], gpu["applications"][0]
    for key in ("name", "route_prefix", "import_path", "args"):
        assert gpu_app[key] == cpu_app[key]
    gpu_deployments = deployments(gpu)
    assert gpu_deployments.pop("ZonosEngine")
    assert gpu_deployments == deployments(cpu)
    assert "ZonosEngine" not in deployments(cpu)  # a CPU-only cluster never has it in the app


def test_request_timeout_fits_the_longest_answer_played_in_real_time() -> None:
    from config.settings import load_settings

    longest_s = load_settings(_env_file=None).http.max_input_chars / 14.0  # characters per second of speech
    for path in (ROOT / "serve_config.yaml", ROOT / "deploy" / "serve_config.gpu.yaml"):
        timeout = load(path)["http_options"]["request_timeout_s"]
        assert timeout >= 1.5 * longest_s, (path, timeout, longest_s)
