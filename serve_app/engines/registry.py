"""The engine registry: finds every engine module's `ENGINE` declaration and builds from it.

Engines are discovered, not listed: each module of this package that defines `ENGINE` (an
`EngineSpec`) is an engine. Importing one must stay cheap and must not fail for a missing extra
(torch, the model package): heavy imports happen inside the engine's own code paths, and its
`check()` reports what is missing.

Besides registered names, a spec of the form "package.module:ClassName" builds any `Engine`
subclass by import path (with `ClassName.from_settings(settings)` when it has that classmethod,
else `ClassName()`): tests host fault-injecting engines in real Serve deployments that way.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from config.settings import Settings, SettingsError, load_section
from serve_app.core.imports import import_object, is_import_path
from serve_app.core.voices import Catalogue
from serve_app.engines.base import Engine
from serve_app.engines.spec import EngineContext, EngineSettings, EngineSpec


@functools.cache
def specs() -> dict[str, EngineSpec]:
    """Every engine declared in this package, by name (module order: alphabetical)."""
    import serve_app.engines as package

    found: dict[str, EngineSpec] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        spec = getattr(module, "ENGINE", None)
        if isinstance(spec, EngineSpec):
            if spec.name in found:
                raise RuntimeError(f"two engine modules declare the name {spec.name!r}")
            found[spec.name] = spec
    return found


def spec(name: str) -> EngineSpec:
    try:
        return specs()[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(specs())}") from None


@functools.cache
def catalogue() -> Catalogue:
    """The voice catalogue of every registered engine (static data, built once per process)."""
    return Catalogue({name: s.voices for name, s in specs().items()})


def engine_settings(name: str) -> EngineSettings:
    """An engine's own settings from the environment (`SettingsError` names a bad variable)."""
    return load_section(spec(name).settings)


def check_chain(settings: Settings) -> None:
    """Fail at start, with the variable named, when the chain lists an engine nobody declares."""
    unknown = [n for n in settings.router.engine_chain if n not in specs()]
    if unknown:
        raise SettingsError(
            f"invalid setting TTS_ENGINE_CHAIN: unknown engine(s) {unknown}; choose from {sorted(specs())}"
        )


def validate_all(settings: Settings) -> dict[str, EngineSettings]:
    """The chain and every engine's settings, checked together so all bad lines show at once."""
    problems: list[str] = []
    loaded: dict[str, EngineSettings] = {}
    try:
        check_chain(settings)
    except SettingsError as exc:
        problems.append(str(exc))
    for name in specs():
        try:
            loaded[name] = engine_settings(name)
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise SettingsError("\n".join(problems))
    return loaded


def build_engine(name: str, settings: Settings) -> Engine:
    """Instantiate engine `name` (a registered name or "package.module:ClassName")."""
    if ":" in name:
        return _build_from_import_path(name, settings)
    declared = spec(name)
    return declared.build(engine_settings(name), EngineContext(settings=settings, catalogue=catalogue()))


def prepare(engine: Engine) -> Engine:
    """Load the engine's model and warm it up (`load()`, `warmup()`, where it has them), before any
    request reaches it: no caller waits for weights or for kernels to compile."""
    for step in ("load", "warmup"):
        run = getattr(engine, step, None)
        if callable(run):
            run()
    return engine


def host_in_process(names: Sequence[str], settings: Settings) -> tuple[dict[str, Engine], dict[str, str]]:
    """The engines a caller hosts itself (`EnginePlan.in_process`), built and prepared, and those
    that failed to build, with the reason: one broken engine must not keep the caller from starting
    (the router reports it unavailable and uses the others)."""
    engines: dict[str, Engine] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            engines[name] = prepare(build_engine(name, settings))
        except Exception as exc:  # reported per engine; the caller serves with the rest
            failed[name] = f"could not start in this process: {type(exc).__name__}: {str(exc)[:200]}"
    return engines, failed


def _build_from_import_path(path: str, settings: Settings) -> Engine:
    if not is_import_path(path):
        raise ValueError(f"engine spec {path!r} is not of the form package.module:ClassName")
    try:
        cls = import_object(path)
    except AttributeError:
        cls = None
    if not isinstance(cls, type) or not issubclass(cls, Engine):
        raise ValueError(f"{path} is not an Engine subclass")
    factory = getattr(cls, "from_settings", None)
    engine = factory(settings) if callable(factory) else cls()
    if not isinstance(engine, Engine):
        raise ValueError(f"{path}.from_settings did not return an Engine")
    return engine


@dataclass(frozen=True)
class EnginePlan:
    """Which engines to deploy, which the callers host in-process, and which the router must not
    use (with the reason)."""

    deploy: tuple[str, ...]
    unusable: dict[str, str]
    in_process: tuple[str, ...] = ()


def placement_problem(spec: EngineSpec, own: EngineSettings, gpus: float) -> str | None:
    """Why the engine's replicas could not be scheduled on this cluster, or None."""
    _, wanted = own.resources(spec.deployment)
    if wanted > 0 and gpus < wanted:
        prefix = spec.env_prefix
        return (
            f"no GPU in the Ray cluster ({prefix}NUM_GPUS={wanted:g}, cluster GPUs={gpus:g}); "
            f"set {prefix}NUM_GPUS=0 (and a CPU device) to run it on CPU"
        )
    return spec.placement_problem(own, gpus) if spec.placement_problem else None


def plan(settings: Settings, engines: dict[str, EngineSettings], gpus: float) -> EnginePlan:
    """Every registered engine is deployed unless it cannot be placed here (e.g. no GPU) or its
    callers host it in-process (`EngineSpec.in_process`).

    Engines that are disabled or left out of the chain are still deployed when they can be placed,
    because `serve_config.yaml` configures them by name and Serve rejects configuration for
    deployments that are not in the application; a disabled engine costs one idle replica. An
    in-process engine has no deployment to configure: its callers build it only when it is usable.
    """
    deploy: list[str] = []
    local: list[str] = []
    unusable: dict[str, str] = {}
    for name, declared in specs().items():
        own = engines[name]
        prefix = declared.env_prefix
        in_process = declared.hosted_in_process(own)
        problem = placement_problem(declared, own, gpus)
        if in_process:
            problem = None  # wherever its callers run: nothing for the cluster to place
        elif problem is None or own.placement == "always":
            deploy.append(name)
            problem = None
        if not own.enabled:
            unusable[name] = f"disabled by {prefix}ENABLED=false"
        elif name not in settings.router.engine_chain:
            unusable[name] = "not in TTS_ENGINE_CHAIN"
        elif problem is not None:
            unusable[name] = problem
        elif in_process:
            local.append(name)
    return EnginePlan(tuple(deploy), unusable, tuple(local))


def pinned_models() -> dict[str, str]:
    """OpenAI `model` values that pin one engine, mapped to the engine's name."""
    return {s.model_id: name for name, s in specs().items()}


def describe(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """What each engine is and can do, for `/v1/engines` and `/v1/models`."""
    chosen = names if names is not None else list(specs())
    return [
        {
            "name": s.name,
            "title": s.title,
            "model": s.model_id,
            "word_timing": s.word_timing,
            "speed_range": list(s.speed_range),
            "honours": dict(s.honours),
        }
        for s in (spec(n) for n in chosen)
    ]
