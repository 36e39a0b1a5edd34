"""NeMo's compiled grammars run by a small C walker instead of pynini's general composition.

Why: spoken-form text spends ~90% of its time composing a short line of text with NeMo's tagger FST
(161k states, 138k arcs that insert markup without reading input). pynini's composition expands
every branch those markup arcs open at each token start; most of them die one character later.
`tagger_runtime.c` walks the text position by position and only enters a grammar state that can
read the next character (a 256-bit set per state of the bytes it can read through markup arcs,
computed once at load). It is the same grammar, the same weights and the same best path: the
tests compare it with pynini on the spoken-form corpus, and `bench.normalize` measures both. On
the corpus' windows it is about 20x faster than pynini, and ctypes drops the GIL while it runs.

What lives where:
- `export_fst` writes a pynini FST as flat arrays (at cache build time, ~0.5 s for the tagger);
- `build_library` compiles the C file into a shared object with the system's C compiler;
- `FstRuntime` loads both (milliseconds) and answers `best_output(text)`: the output string of the
  lowest-cost path, `NO_PATH` when the grammar accepts no path, or None when the walker gave up
  (over its state budget or out of memory): the caller then composes with pynini as before.

Without a C compiler the cache is still built and the grammars run through pynini, only slower.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

SOURCE: Final = Path(__file__).with_name("tagger_runtime.c")
_MAGIC: Final = b"NTG1"
# Far above any window's walk (a 16-token window of numbers visits tens of thousands of states); a
# pathological input stops here and takes pynini's path rather than growing without bound.
DEFAULT_MAX_STATES: Final = 4_000_000


class _NoPath:
    """The grammar accepts no path for the text (pynini would give an empty lattice)."""

    def __repr__(self) -> str:
        return "NO_PATH"


NO_PATH: Final = _NoPath()


def library_name() -> str:
    """The shared object's file name: tied to the C source, so a changed walker is never loaded stale."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return f"tagger_runtime-{digest}-{sys.platform}.so"


def export_fst(fst: Any, path: str | Path) -> None:
    """Write a pynini FST (byte labels, tropical weights) in the walker's flat format.

    Raises ValueError for an FST the walker cannot run (labels above 255, no start state).
    """
    sorted_fst = fst.copy().arcsort("ilabel")
    start = sorted_fst.start()
    if start < 0:
        raise ValueError("FST has no start state")
    num_states = sorted_fst.num_states()
    offsets = array.array("i", [0])
    ilabels, olabels, nexts = array.array("i"), array.array("i"), array.array("i")
    weights, finals = array.array("f"), array.array("f")
    for state in range(num_states):
        for arc in sorted_fst.arcs(state):
            if not (0 <= arc.ilabel < 256 and 0 <= arc.olabel < 256):
                raise ValueError(f"label outside bytes ({arc.ilabel}:{arc.olabel})")
            ilabels.append(arc.ilabel)
            olabels.append(arc.olabel)
            weights.append(float(arc.weight))
            nexts.append(arc.nextstate)
        offsets.append(len(ilabels))
        finals.append(float(sorted_fst.final(state)))  # the semiring's zero (not final) is +inf
    if sys.byteorder != "little":
        for part in (offsets, ilabels, olabels, weights, nexts, finals):
            part.byteswap()
    header = array.array("i", [num_states, len(ilabels), start])
    if sys.byteorder != "little":
        header.byteswap()
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    with open(tmp, "wb") as out:
        out.write(_MAGIC)
        out.write(header.tobytes())
        for part in (offsets, ilabels, olabels, weights, nexts, finals):
            out.write(part.tobytes())
    os.replace(tmp, target)


def build_library(directory: str | Path, compiler: str | None = None) -> Path:
    """Compile the walker into `directory` (kept if already there); raises RuntimeError without a compiler."""
    target = Path(directory) / library_name()
    if target.is_file():
        return target
    wanted = compiler or os.environ.get("CC") or "cc"
    cc = shutil.which(wanted) or (None if compiler else shutil.which("gcc"))
    if not cc:
        raise RuntimeError(f"no C compiler ({wanted} not found)")
    fd, tmp = tempfile.mkstemp(prefix=".tagger-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        cmd = [cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-lm", "-lpthread"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"compiling the grammar walker failed: {tail[0][:200]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class FstRuntime:
    """One exported FST loaded into the C walker; thread-safe, and each call runs without the GIL."""

    def __init__(self, library: str | Path, fst_file: str | Path, *, max_states: int = DEFAULT_MAX_STATES) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._lib.tg_load.restype = ctypes.c_void_p
        self._lib.tg_load.argtypes = [ctypes.c_char_p]
        self._lib.tg_free.restype = None
        self._lib.tg_free.argtypes = [ctypes.c_void_p]
        self._lib.tg_tag.restype = ctypes.c_int32
        self._lib.tg_tag.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_int32),
        ]
        handle = self._lib.tg_load(os.fsencode(fst_file))
        if not handle:
            raise RuntimeError(f"could not load {fst_file} (missing, truncated or not an exported FST)")
        self._handle: int | None = handle
        self.max_states = max_states

    def best_output(self, text: str) -> str | _NoPath | None:
        """The output of the lowest-cost path for `text`; NO_PATH if none; None if the walker gave up."""
        handle = self._handle
        if handle is None:
            return None
        data = text.encode("utf-8")
        if b"\0" in data:
            return None
        # NeMo's markup makes the output a few times longer than the text; a longer one is asked again.
        capacity = 64 + 16 * len(data)
        needed = ctypes.c_int32(0)
        for _ in range(2):
            out = ctypes.create_string_buffer(capacity)
            length = self._lib.tg_tag(handle, data, len(data), out, capacity, self.max_states, ctypes.byref(needed))
            if length >= 0:
                return out.raw[:length].decode("utf-8", errors="replace")
            if length == -1:
                return NO_PATH
            if length != -2:
                return None
            capacity = needed.value
        return None

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.tg_free(handle)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
