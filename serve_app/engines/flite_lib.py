"""Which libflite the Flite engine loads: Debian's, or the same source built for this CPU.

Most of a sentence's CPU in libflite goes to clustergen's parameter generation and waveform
filters: floating-point loops that Debian compiles for the x86-64 baseline. The same upstream
source (Debian's own 2.2 tarball, pinned by hash) compiled for x86-64-v3, whose fused multiply-add
and AVX2 those loops use, speaks the same audio (same length; a sample at most one step apart) for
about 12% less CPU a sentence (docs/performance.md). Only the core library is rebuilt. Voices,
lexicon and language libraries stay Debian's and bind to the rebuilt core by its soname
(`libflite.so.1`) when the engine loads it first, which `FliteLibrary` does.

`python -m serve_app.engines.flite_lib --build` (run by `make install`) builds it into
`data/flite`. It checks the build by speaking a sentence with it and comparing the audio with the
system library's, and builds nothing (the system library is then used) when a compiler, the
source or a capable CPU is missing. `FLITE_LIBRARY` picks: `auto` (the build where present and the
CPU runs it, else the system's), `system`, or a path.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SOURCE_URL = "http://deb.debian.org/debian/pool/main/f/flite/flite_2.2.orig.tar.gz"
SOURCE_SHA256 = "ab1555fe5adc3f99f1d4a1a0eb1596d329fd6d74f1464a0097c81f53c0cf9e5c"
DEFAULT_DIR = "./data/flite"
LIBRARY_FILE = "libflite.so.1"
STAMP_FILE = "build.json"
TARGET = "x86-64-v3"
# What x86-64-v3 code needs of the CPU, as /proc/cpuinfo names it (`abm` is LZCNT).
TARGET_CPU_FLAGS = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave", "abm"})
CFLAGS = ("-O3", f"-march={TARGET}", "-fPIC")
# The core library's sources: every file of src/ except the audio drivers other than `none` (the
# engine never plays audio) and other platforms' file and mmap layers.
_LEFT_OUT = ("au_alsa", "au_oss", "au_pulseaudio", "au_sun", "au_win", "au_wince", "au_palmos",
             "au_command", "_palmos", "_wince", "_win32", "mmap_none")
_CHECK_TEXT = "The quick brown fox jumps over the lazy dog, 42 times."


@dataclass(frozen=True)
class Choice:
    """The library to load (None: the system's, found by name) and why."""

    path: str | None
    reason: str


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor listed in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def _this_cpu() -> frozenset[str]:
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def choose(setting: str, directory: str | Path = DEFAULT_DIR, cpu: frozenset[str] | None = None) -> Choice:
    """Resolve `FLITE_LIBRARY`. A named path that does not exist is an error (OSError): silently
    speaking with another library than the one asked for would hide a broken deployment."""
    if setting == "system":
        return Choice(None, "the system's libflite (FLITE_LIBRARY=system)")
    if setting != "auto":
        path = Path(setting)
        if not path.is_file():
            raise OSError(f"FLITE_LIBRARY={setting}: no such file")
        return Choice(str(path.resolve()), f"{path} (FLITE_LIBRARY)")
    built = Path(directory) / LIBRARY_FILE
    if not built.is_file():
        return Choice(None, f"the system's libflite (no build in {directory}: make flite-lib)")
    missing = TARGET_CPU_FLAGS - (_this_cpu() if cpu is None else cpu)
    if missing:
        lacks = ", ".join(sorted(missing))
        return Choice(None, f"the system's libflite (this CPU lacks {lacks} for the {TARGET} build)")
    return Choice(str(built.resolve()), f"{built} ({TARGET} build of flite 2.2)")


def _log(message: str) -> None:
    print(f"flite-lib: {message}", file=sys.stderr, flush=True)


def _download(url: str, sha256: str) -> bytes:
    _log(f"downloading {url}")
    with urllib.request.urlopen(url, timeout=120) as response:
        data: bytes = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{url}: sha256 {digest}, expected {sha256}")
    return data


def _extract(archive: bytes, into: Path) -> Path:
    """Unpack the tarball's include/ and src/ trees (the rest is voices, tools and docs)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/")[1:2] in (["include"], ["src"])]
        tar.extractall(into, members=members, filter="data")
    roots = {m.name.split("/")[0] for m in members}
    if len(roots) != 1:
        raise RuntimeError(f"unexpected layout of the flite source: {sorted(roots)}")
    return into / roots.pop()


def _sources(tree: Path) -> list[Path]:
    return sorted(p for p in (tree / "src").glob("*/*.c") if not any(part in p.stem for part in _LEFT_OUT))


def _compile(tree: Path, out: Path, compiler: str) -> None:
    sources = _sources(tree)
    objects = [out.parent / f"{src.parent.name}_{src.stem}.o" for src in sources]
    _log(f"compiling {len(sources)} files with {' '.join(CFLAGS)}")

    def one(pair: tuple[Path, Path]) -> None:
        src, obj = pair
        subprocess.run(  # an argument list: no shell
            [compiler, *CFLAGS, "-DCST_AUDIO_NONE", f"-I{tree / 'include'}", "-c", str(src), "-o", str(obj)],
            check=True, capture_output=True,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, zip(sources, objects, strict=True)))
    subprocess.run(
        [compiler, "-shared", "-Wl,--no-undefined", f"-Wl,-soname,{LIBRARY_FILE}", "-o", str(out),
         *map(str, objects), "-lm"],
        check=True, capture_output=True,
    )


_SPEAK = """
import sys, threading
from serve_app.engines.flite import FliteLibrary
pcm = bytearray()
def take(item):
    if isinstance(item, tuple):
        pcm.extend(item[1])
last = FliteLibrary(sys.argv[1] or None).speak(sys.argv[2], "slt", 1.0, take, threading.Event())
if last is not None:
    take(last)
sys.stdout.buffer.write(bytes(pcm))
"""


def speak_with(library: str | None, text: str = _CHECK_TEXT) -> bytes:
    """16-bit PCM of `text` in the `slt` voice, spoken by `library` (None: the system's) in a process of
    its own (one process can hold only one libflite)."""
    done = subprocess.run(
        [sys.executable, "-c", _SPEAK, library or "", text], check=True, capture_output=True, timeout=120
    )
    return done.stdout


def largest_difference(a: bytes, b: bytes) -> int | None:
    """The largest difference between two 16-bit PCM signals' samples; None when their lengths differ."""
    if len(a) != len(b):
        return None
    left, right = memoryview(a).cast("h"), memoryview(b).cast("h")
    return max((abs(x - y) for x, y in zip(left, right, strict=True)), default=0)


def build(directory: str | Path = DEFAULT_DIR, *, url: str = SOURCE_URL, sha256: str = SOURCE_SHA256) -> Path:
    """Build the library into `directory` (quick when a build of the same source and flags is there)."""
    directory = Path(directory)
    target = directory / LIBRARY_FILE
    stamp = {"source_sha256": sha256, "cflags": list(CFLAGS)}
    stamp_path = directory / STAMP_FILE
    if target.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        _log(f"{target} is up to date")
        return target
    missing = TARGET_CPU_FLAGS - _this_cpu()
    if missing:
        raise RuntimeError(f"this CPU lacks {', '.join(sorted(missing))}: {TARGET} code would not run here")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc)")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flite-build-") as work:
        tree = _extract(_download(url, sha256), Path(work))
        candidate = Path(work) / LIBRARY_FILE
        _compile(tree, candidate, compiler)
        ours, system = speak_with(str(candidate)), speak_with(None)
        difference = largest_difference(ours, system)
        if difference is None or difference > 2:
            raise RuntimeError(f"the build speaks differently from the system's libflite ({difference=}): not used")
        shutil.move(str(candidate), target)
    stamp_path.write_text(json.dumps(stamp))
    _log(f"built {target}: same audio as the system's libflite (largest sample difference {difference})")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="build the library (else: say which one loads)")
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where the build goes (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    if args.build:
        try:
            build(args.dir)
        except (OSError, RuntimeError, subprocess.CalledProcessError, tarfile.TarError) as exc:
            output = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else None
            detail = output.decode(errors="replace")[-500:] if output else ""
            _log(f"not built ({exc}){': ' + detail if detail else ''}; the engine uses the system's libflite")
            return 1
    print(choose(os.environ.get("FLITE_LIBRARY", "auto"), args.dir).reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
