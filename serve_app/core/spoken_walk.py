"""NeMo's normaliser with its three grammar passes run by the C walker (`tagger_runtime`).

NeMo's `Normalizer.normalize` composes text with three FSTs: the tagger (markup for every semiotic
class), the verbaliser (markup to words, per token permutation) and the post-processor. Each is a
line of text through a grammar, so each can run in the walker. This module writes the three FSTs
next to the compiled grammars (`export`, at cache build time) and, at load, replaces the three
instance methods of a loaded `Normalizer` that compose (`attach`); everything else in NeMo (its
parser, permutations, punctuation passes) is unchanged. Where the walker gives up (its state
budget) a call composes with pynini as before, and where it finds no path the caller sees the
empty lattice pynini would have given, so NeMo's own fall-backs still apply.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from serve_app.core.tagger_runtime import NO_PATH, FstRuntime, build_library, export_fst

logger = logging.getLogger(__name__)

# Attribute of NeMo's Normalizer holding each grammar -> the file it is exported to.
GRAMMARS: Final = {"tagger": "tagger.ntg", "verbalizer": "verbalizer.ntg", "post_processor": "post_processing.ntg"}
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def _unescape(text: str) -> str:
    """Undo `pynini.escape` (a backslash before '[', ']' and '\\'): the walker reads plain bytes."""
    return _ESCAPED.sub(r"\1", text)


def export(backend: Any, directory: Path) -> dict[str, Any]:
    """Write the grammars and compile the walker into `directory`; returns what happened, for the
    cache's build.json (never raises).

    A machine without a C compiler still gets its grammars: NeMo then composes with pynini.
    """
    status: dict[str, Any] = {"ok": False}
    try:
        for attribute, name in GRAMMARS.items():
            export_fst(getattr(backend, attribute).fst, directory / name)
        status["library"] = build_library(directory).name
        status["ok"] = True
    except Exception as exc:
        status["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return status


@dataclass
class Walkers:
    """The loaded walkers of one grammar directory."""

    tagger: FstRuntime
    verbalizer: FstRuntime
    post_processor: FstRuntime


def load(directory: Path) -> Walkers:
    """The walkers of `directory`, compiling the C walker there first if its source changed since.

    Raises when the grammars were not exported or nothing can be loaded; the caller keeps pynini.
    """
    library = build_library(directory)
    runtimes = {attribute: FstRuntime(library, directory / name) for attribute, name in GRAMMARS.items()}
    return Walkers(**runtimes)


def _lattice(runtime: FstRuntime, escaped: str, fallback: Callable[[str], Any]) -> Any:
    """What pynini's `escaped @ grammar` gives, reduced to its best path (all NeMo reads of it)."""
    import pynini

    best = runtime.best_output(_unescape(escaped))
    if best is None:
        return fallback(escaped)
    if best is NO_PATH:
        return pynini.Fst()
    return pynini.accep(pynini.escape(str(best)))


def attach(backend: Any, walkers: Walkers) -> None:
    """Make a loaded NeMo `Normalizer` compose through `walkers` (instance attributes shadow its methods)."""
    find_tags = backend.find_tags
    find_verbalizer = backend.find_verbalizer
    post_process = backend.post_process

    def walked_find_tags(text: str) -> Any:
        return _lattice(walkers.tagger, text, find_tags)

    def walked_find_verbalizer(tagged_text: str) -> Any:
        return _lattice(walkers.verbalizer, tagged_text, find_verbalizer)

    def walked_post_process(normalized_text: str) -> str:
        text = normalized_text.strip()
        if not text:
            return text
        best = walkers.post_processor.best_output(text)
        if isinstance(best, str):
            return best
        return str(post_process(normalized_text))  # NeMo's own path, and its own error for no path

    backend.find_tags = walked_find_tags
    backend.find_verbalizer = walked_find_verbalizer
    backend.post_process = walked_post_process
