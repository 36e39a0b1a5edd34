"""Install PyPI's torchaudio without its compiled extension, where that extension cannot load.

    .venv/bin/python tools/zonos-cpu/torchaudio_python_only.py [--version 2.11.0]

Why: upstream Zonos imports torchaudio (resample in `zonos.autoencoder`, Resample and
MelSpectrogram in `zonos.speaker_cloning`). PyPI's newest torchaudio, 2.11.0, is built against
CUDA torch 2.11: with the CPU torch 2.13.0 that the test machines use, loading its native
library fails (`libc10_cuda.so: cannot open shared object file`) and so does `import torchaudio`.
Everything Zonos uses from torchaudio is pure torch code (`functional.resample`, `transforms`),
and torchaudio itself supports running without its native library: when `torchaudio/lib` holds
no library it sets `_IS_TORCHAUDIO_EXT_AVAILABLE = False` and the pure-torch functions work.

So this downloads the real wheel, rewrites it without `torchaudio/lib/*.so` (and their RECORD
lines, so pip's bookkeeping stays exact) and installs that: the real torchaudio Python code,
unchanged. Run only where `torchaudio` is not installed; GPU images install the matching
CUDA torchaudio with `pip install '.[gpu]'` and never run this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def is_native(name: str) -> bool:
    return name.startswith("torchaudio/lib/") and ".so" in name.rsplit("/", 1)[-1]


def strip_wheel(source: Path, target_dir: Path) -> Path:
    """Copy of `source` (same file name) without the native libraries."""
    target = target_dir / source.name
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if is_native(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not is_native(line.split(",", 1)[0])).encode()
            out.writestr(info, data)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="2.11.0")
    args = parser.parse_args()
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        download, stripped = Path(tmp) / "download", Path(tmp) / "stripped"
        stripped.mkdir()
        subprocess.run(
            [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", f"torchaudio=={args.version}", "-d", download],
            check=True,
        )
        (wheel,) = download.glob("torchaudio-*.whl")
        subprocess.run([*pip, "install", "-q", "--no-deps", strip_wheel(wheel, stripped)], check=True)
    check = "import torch, torchaudio; torchaudio.functional.resample(torch.zeros(1, 160), 16000, 44100)"
    subprocess.run([sys.executable, "-c", check], check=True)


if __name__ == "__main__":
    main()
