"""The engine registry: every engine module found, and the deployment plan derived from settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings
from serve_app.engines import registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in registry.specs().values():
        for field in spec.settings.model_fields:
            monkeypatch.delenv(f"{spec.env_prefix}{field}".upper(), raising=False)
    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")


def test_every_engine_module_declares_itself() -> None:
    assert set(registry.specs()) == {"zonos", "edge", "piper", "flite"}
    for name, spec in registry.specs().items():
        assert (ROOT / "serve_app" / "engines" / f"{name}.py").exists()
        assert spec.deployment_name == f"{name.capitalize()}Engine"
        assert spec.env_prefix == f"{name.upper()}_"


def test_a_gpu_engine_is_left_out_of_a_cpu_cluster_with_the_reason() -> None:
    settings = load_settings(_env_file=None)
    plan = registry.plan(settings, registry.validate_all(settings), gpus=0)
    assert "zonos" not in plan.deploy and {"edge", "piper"} <= set(plan.deploy)
    assert plan.in_process == ("flite",)  # hosted by its callers, wherever they run
    assert "ZONOS_NUM_GPUS=1" in plan.unusable["zonos"]
    on_gpus = registry.plan(settings, registry.validate_all(settings), gpus=2)
    assert "zonos" in on_gpus.deploy and "zonos" not in on_gpus.unusable


def test_placement_always_deploys_before_the_gpu_node_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZONOS_PLACEMENT", "always")
    settings = load_settings(_env_file=None)
    plan = registry.plan(settings, registry.validate_all(settings), gpus=0)
    assert "zonos" in plan.deploy and "zonos" not in plan.unusable


def test_disabled_or_unchained_engines_are_deployed_but_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPER_ENABLED", "false")
    settings = load_settings(_env_file=None, tts_engine_chain="edge,piper")
    plan = registry.plan(settings, registry.validate_all(settings), gpus=0)
    assert {"edge", "piper"} <= set(plan.deploy)  # serve_config.yaml names them
    assert plan.unusable["piper"] == "disabled by PIPER_ENABLED=false"
    assert plan.unusable["flite"] == "not in TTS_ENGINE_CHAIN"
    assert plan.in_process == ()  # nothing configures it by name: not built at all


def test_an_in_process_engine_can_have_its_own_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLITE_IN_PROCESS", "false")
    settings = load_settings(_env_file=None)
    plan = registry.plan(settings, registry.validate_all(settings), gpus=0)
    assert "flite" in plan.deploy and plan.in_process == ()
    monkeypatch.setenv("FLITE_IN_PROCESS", "true")
    monkeypatch.setenv("EDGE_IN_PROCESS", "true")
    plan = registry.plan(settings, registry.validate_all(settings), gpus=0)
    assert set(plan.in_process) == {"flite", "edge"} and "edge" not in plan.deploy


def test_an_in_process_engine_that_fails_to_start_is_reported_not_fatal() -> None:
    settings = load_settings(_env_file=None)
    engines, failed = registry.host_in_process(["flite", "tests.nonexistent:Engine"], settings)
    assert set(engines) == {"flite"} and engines["flite"].name == "flite"
    assert "could not start in this process" in failed["tests.nonexistent:Engine"]


def test_bad_engine_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZONOS_MAX_BATCH_SIZE", "0")
    monkeypatch.setenv("FLITE_BACKEND", "shell")
    settings = load_settings(_env_file=None, tts_engine_chain="zonos,nope")
    with pytest.raises(SettingsError) as raised:
        registry.validate_all(settings)
    lines = str(raised.value).splitlines()
    assert any(line.startswith("invalid setting TTS_ENGINE_CHAIN") and "nope" in line for line in lines)
    assert any(line.startswith("invalid setting ZONOS_MAX_BATCH_SIZE") for line in lines)
    assert any(line.startswith("invalid setting FLITE_BACKEND") for line in lines)


def test_pinned_models_and_descriptions_come_from_the_modules() -> None:
    assert registry.pinned_models() == {"zonos-v0.1": "zonos", "edge-tts": "edge", "piper": "piper", "flite": "flite"}
    described = {d["name"]: d for d in registry.describe()}
    assert described["edge"]["word_timing"] == "exact" and described["zonos"]["speed_range"] == [0.25, 4.0]


def test_a_zonos_model_factory_must_be_an_import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZONOS_MODEL_FACTORY", "bench/zonos_random.py")
    settings = load_settings(_env_file=None)
    with pytest.raises(SettingsError) as raised:
        registry.validate_all(settings)
    assert "ZONOS_MODEL_FACTORY" in str(raised.value) and "package.module:callable" in str(raised.value)
