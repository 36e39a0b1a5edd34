"""Objects named by an import path, "package.module:name", as settings and test hooks give them.

One definition of the accepted form, so every setting that takes such a path (the engine registry's
"package.module:ClassName" engines, ZONOS_MODEL_FACTORY) validates it the same way.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_import_path(value: str) -> bool:
    return IMPORT_PATH.match(value) is not None


def import_object(path: str) -> Any:
    """The object `path` names; ValueError for a malformed path, ImportError/AttributeError if absent."""
    if not is_import_path(path):
        raise ValueError(f"{path!r} is not of the form package.module:name")
    module_name, name = path.split(":", 1)
    return getattr(importlib.import_module(module_name), name)
