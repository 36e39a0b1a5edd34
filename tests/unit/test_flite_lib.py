"""Which libflite the engine loads, and the build of it for this CPU (the real library, real build)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from serve_app.engines import flite_lib
from serve_app.engines.flite import FliteEngine, FliteSettings
from serve_app.engines.flite_lib import (
    LIBRARY_FILE,
    TARGET_CPU_FLAGS,
    choose,
    cpu_flags,
    largest_difference,
    speak_with,
)
from serve_app.engines.flite_worker import FliteWorkers

REPO = Path(__file__).resolve().parents[2]
BUILT = REPO / "data" / "flite" / LIBRARY_FILE
CAPABLE = TARGET_CPU_FLAGS | {"sse2"}


def mapped_files(pid: int) -> str:
    """The files a process has mapped (its shared libraries among them)."""
    return Path(f"/proc/{pid}/maps").read_text()


def the_build() -> Path:
    """The library `make` built; CI must have it (a build that silently failed would leave the
    engine on the system library and these tests unrun)."""
    if not BUILT.is_file():
        message = f"{BUILT} is missing; run `make flite-lib`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    if TARGET_CPU_FLAGS - flite_lib._this_cpu():
        pytest.skip("this CPU cannot run the x86-64-v3 build")
    return BUILT


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert cpu_flags(text) == {"fpu", "avx2", "fma"}
    assert cpu_flags("no flags here") == frozenset()


def test_auto_takes_the_build_only_where_the_cpu_runs_it(tmp_path: Path) -> None:
    none = choose("auto", tmp_path, cpu=CAPABLE)
    assert none.path is None and "no build" in none.reason
    (tmp_path / LIBRARY_FILE).write_bytes(b"\x7fELF")
    chosen = choose("auto", tmp_path, cpu=CAPABLE)
    assert chosen.path == str((tmp_path / LIBRARY_FILE).resolve())
    old = choose("auto", tmp_path, cpu=CAPABLE - {"fma", "avx2"})
    assert old.path is None and "avx2, fma" in old.reason


def test_system_and_named_paths(tmp_path: Path) -> None:
    assert choose("system", tmp_path, cpu=CAPABLE).path is None
    named = tmp_path / "mine.so"
    named.write_bytes(b"\x7fELF")
    assert choose(str(named), tmp_path, cpu=frozenset()).path == str(named.resolve())
    with pytest.raises(OSError, match="no such file"):
        choose(str(tmp_path / "absent.so"))


async def test_a_named_library_that_is_missing_is_reported_and_the_binary_speaks() -> None:
    engine = FliteEngine(library="/nonexistent/libflite.so.1")
    check = await engine.check()
    assert check.available and engine.backend == "binary"


def test_a_source_whose_hash_differs_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"int main(void) { return 0; }\n"
        info = tarfile.TarInfo("flite-2.2/src/utils/x.c")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "source.tar.gz"
    archive.write_bytes(buffer.getvalue())
    assert gzip.decompress(archive.read_bytes())  # a real archive: only its hash is wrong
    monkeypatch.setattr(flite_lib, "_this_cpu", lambda: CAPABLE)
    with pytest.raises(RuntimeError, match="sha256"):
        flite_lib.build(tmp_path / "out", url=archive.as_uri(), sha256="0" * 64)
    assert not (tmp_path / "out" / LIBRARY_FILE).exists()


def test_largest_difference() -> None:
    assert largest_difference(b"\x01\x00\x02\x00", b"\x02\x00\x02\x00") == 1
    assert largest_difference(b"\x01\x00", b"\x01\x00\x00\x00") is None


def test_the_build_speaks_what_the_system_library_speaks() -> None:
    built = the_build()
    text = "On March 3rd, 2024, Dr. Smith paid $1,249.99 for 12 items; call 555-0100."
    ours, system = speak_with(str(built), text), speak_with(None, text)
    assert len(ours) > 32000  # seconds of audio
    assert largest_difference(ours, system) in (0, 1)  # same length, a sample at most one step apart


def test_the_build_is_up_to_date_after_make() -> None:
    built = the_build()
    before = built.stat().st_mtime_ns
    assert flite_lib.build(built.parent) == built  # nothing rebuilt, nothing downloaded
    assert built.stat().st_mtime_ns == before


async def test_the_engine_and_its_helpers_load_the_build() -> None:
    built = the_build()
    engine = FliteEngine(library=FliteSettings().library, overflow_processes=1)
    try:
        assert engine.library is not None and engine.library.path == str(built)
        check = await engine.check()
        assert check.details and "x86-64-v3" in check.details["library"]
        assert engine._helpers is not None and engine._helpers.workers.library == str(built)
        pieces = [p async for p in engine._helpers.workers.stream("Hello from a helper.", "slt", 1.0)]
        assert any(isinstance(p, tuple) and p[1] for p in pieces)
        (helper,) = engine._helpers.workers._idle
        maps = mapped_files(helper.proc.pid)
        assert str(built) in maps and "libflite.so.2.2" not in maps  # the system's core is not loaded
    finally:
        assert engine._helpers is not None
        engine.close()


async def test_helpers_default_to_the_system_library() -> None:
    workers = FliteWorkers(1)
    try:
        pieces = [p async for p in workers.stream("Hello.", "slt", 1.0)]
        assert any(isinstance(p, tuple) for p in pieces)
        (helper,) = workers._idle
        assert "libflite.so.2.2" in mapped_files(helper.proc.pid)
    finally:
        workers.close()
