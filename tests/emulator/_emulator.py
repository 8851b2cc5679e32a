"""Build and load the CPU emulators of the CUDA kernels (tests/emulator/cuda_emulator/), for the
emulator tests (tests/emulator/test_cuda_emulator.py, tests/emulator/test_qp_cuda_emulator.py,
tests/emulator/test_emulator_sanitizers.py).

An emulator is one C++ file that includes tests/emulator/cuda_emulator/emulator.h and a kernel file
of csrc/ (an op's cuda.cu, which includes the .cuh files of its folder); it is compiled into a
shared library, cached in build/emulator/ under a hash of its sources (the file itself, the
emulator header, every file of the op folders it depends on and csrc/common), and loaded through
ctypes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[2]
EMU_DIR = ROOT / "tests" / "emulator" / "cuda_emulator"
CSRC = ROOT / "csrc"
# sources every emulator depends on: the CUDA vocabulary and runtime shim; csrc/common is added
# file by file at each build (source_files), so that a new shared header is part of the key too
COMMON_SOURCES = (EMU_DIR / "emulator.h",)
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def fma_flags() -> tuple[str, ...] | None:
    """Compiler flags that make the emulator round like the GPU (a*b+c contracted into fused
    multiply-adds), or None where this machine has no FMA instructions."""
    mach = platform.machine().lower()
    if mach in ("x86_64", "amd64"):
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return None
        return ("-mfma", "-ffp-contract=fast") if "fma" in flags else None
    if mach in ("aarch64", "arm64"):
        return ("-ffp-contract=fast",)
    return None


def source_files(main: Path, deps: Sequence[Path]) -> list[Path]:
    """The files an emulator build depends on: `main`, `deps`, COMMON_SOURCES, every file of the
    csrc/ op folders that `deps` lie in (a cuda.cu includes the .cuh files next to it) and every
    file of csrc/common."""
    files = {Path(p).resolve() for p in (main, *deps, *COMMON_SOURCES)}
    folders = {CSRC / "common"}
    folders.update(Path(p).resolve().parent for p in deps if Path(p).resolve().parent.parent == CSRC)
    for d in folders:
        files.update(f for f in d.iterdir() if f.is_file())
    return sorted(files)


def _compile(
    stem: str, main: Path, deps: Sequence[Path], *, label: str, flags: Sequence[str], shared: bool, opt: str = "-O2"
) -> Path:
    """Compile `main` into build/emulator/{stem}_{hash}[.so], cached under a hash of its
    source_files (names and contents) and the flags; returns the path."""
    # CINA_EMU_CXXFLAGS: extra compiler flags, e.g. "-mfma -ffp-contract=fast" to round like the
    # GPU, which contracts a*b+c into fused multiply-adds (part of the cache key)
    extra = [opt, *flags, *os.environ.get("CINA_EMU_CXXFLAGS", "").split()]
    h = hashlib.sha256()
    for f in source_files(main, deps):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(" ".join(extra).encode())
    digest = h.hexdigest()[:16]
    out_dir = ROOT / "build" / "emulator"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (f"{stem}_{digest}.so" if shared else f"{stem}_{digest}")
    if not out.exists():
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        cmd = [
            CXX,
            "-std=c++20",
            "-pthread",
            "-Wno-unknown-pragmas",
            *(["-shared", "-fPIC"] if shared else []),
            *extra,
            f"-I{CSRC}",
            f"-I{EMU_DIR}",
            str(main),
            "-o",
            str(tmp),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise RuntimeError(f"{label} build failed:\n{res.stderr[-4000:]}")
        os.replace(tmp, out)
    return out


def build(
    stem: str,
    main: Path,
    deps: Sequence[Path],
    entry_points: Iterable[str],
    *,
    label: str = "emulator",
    flags: Sequence[str] = (),
) -> ctypes.CDLL:
    """Compile `main` (cached as build/emulator/{stem}_{hash}.so, the hash over its source_files
    and the flags), load it and declare the C entry points as returning error
    strings.  `flags`: extra compiler flags of this library (e.g. fma_flags())."""
    lib = _compile(stem, main, deps, label=label, flags=flags, shared=True)
    dll = ctypes.CDLL(str(lib))
    for name in entry_points:
        getattr(dll, name).restype = ctypes.c_char_p
    return dll


def build_executable(
    stem: str,
    main: Path,
    deps: Sequence[Path],
    *,
    label: str = "emulator program",
    flags: Sequence[str] = (),
    opt: str = "-O1",
) -> Path:
    """Compile the program `main` (e.g. a sanitizer driver of tests/emulator/cuda_emulator/) into
    build/emulator/{stem}_{hash}, cached like the libraries; returns its path."""
    return _compile(stem, main, deps, label=label, flags=flags, shared=False, opt=opt)


def loader(
    stem: str,
    main: Path,
    deps: Sequence[Path],
    entry_points: Iterable[str],
    *,
    label: str = "emulator",
    flags: Sequence[str] = (),
) -> Callable[[], ctypes.CDLL]:
    """A function returning the emulator library, built on first use (then the same object)."""
    entry_points = tuple(entry_points)
    flags = tuple(flags)

    @cache
    def lib() -> ctypes.CDLL:
        return build(stem, main, deps, entry_points, label=label, flags=flags)

    return lib
