"""Builds engine objects by name from settings; the one place that knows every engine class."""

from __future__ import annotations

from config.settings import Settings
from serve_app.engines.base import Engine


def build_engine(name: str, settings: Settings) -> Engine:
    """Instantiate engine `name` ("zonos", "edge", "flite"); imports lazily so missing extras do not break others."""
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
