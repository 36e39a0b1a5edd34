"""Builds engine objects by name from settings; the one place that knows every engine class.

Besides the built-in names ("zonos", "edge", "flite"), a spec of the form
"package.module:ClassName" builds any `Engine` subclass by import path. Operators can host a
custom engine in an `EngineHost` deployment that way, and tests host fault-injecting engines in
real Serve deployments (`EngineDeployment.bind("tests.fakes.faulty:FaultyEngine")`). The class is
built with `ClassName.from_settings(settings)` when it has that classmethod, else `ClassName()`.
"""

from __future__ import annotations

import importlib
import re

from config.settings import Settings
from serve_app.engines.base import Engine

_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def build_engine(name: str, settings: Settings) -> Engine:
    """Instantiate engine `name` (a built-in name or "package.module:ClassName").

    Built-ins import lazily so a missing extra (torch for Zonos) does not break the others.
    """
    if ":" in name:
        return _build_from_spec(name, settings)
    if name == "flite":
        from serve_app.engines.flite import FliteEngine

        return FliteEngine(
            binary=settings.flite_binary, default_voice=settings.flite_default_voice, backend=settings.flite_backend
        )
    if name == "edge":
        from serve_app.engines.edge import EdgeEngine

        return EdgeEngine.from_settings(settings)
    if name == "zonos":
        from serve_app.engines.zonos import ZonosEngine

        return ZonosEngine.from_settings(settings)
    raise ValueError(f"unknown engine {name}")


def _build_from_spec(spec: str, settings: Settings) -> Engine:
    if not _IMPORT_SPEC.match(spec):
        raise ValueError(f"engine spec {spec!r} is not of the form package.module:ClassName")
    module_name, class_name = spec.split(":", 1)
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Engine):
        raise ValueError(f"{spec} is not an Engine subclass")
    factory = getattr(cls, "from_settings", None)
    engine = factory(settings) if callable(factory) else cls()
    if not isinstance(engine, Engine):
        raise ValueError(f"{spec}.from_settings did not return an Engine")
    return engine
