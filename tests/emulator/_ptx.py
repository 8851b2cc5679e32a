"""PTX of the CUDA kernels (nvcc -ptx, the build's flags) and a check of the kernel parameter
loads in it, for tests/emulator/test_ptx.py.

Why: nvcc 13.0 once compiled a copy of a device-side struct (`BlockSolver<T> loc = s`, whose first
fields had been copied from the kernel's by-value argument) into loads from the *parameter*
space: fields past the argument's end were read from beyond it, and a shared-memory pointer was
taken from an unrelated argument field (an illegal address on the H200; the CPU emulator, built
by g++, cannot see it). A load from a kernel parameter at an offset at or beyond the parameter's
declared size is the trace such a miscompile leaves in the PTX.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
# the CUDA translation units of the extension and the flags CMakeLists.txt gives them
CUDA_SOURCES = (CSRC / "attention_hinge" / "cuda.cu", CSRC / "qp_solve" / "cuda.cu")
NVCC_FLAGS = ("-std=c++17", "--expt-relaxed-constexpr", "-O3", "-arch=sm_90a")


def find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and (Path(cand) / "bin" / "nvcc").is_file():
            return str(Path(cand) / "bin" / "nvcc")
    return shutil.which("nvcc")


def compile_ptx(source: Path, out: Path, nvcc: str) -> str:
    subprocess.run(
        [nvcc, *NVCC_FLAGS, "-I", str(CSRC), "-ptx", str(source), "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.read_text()


@dataclass
class EntryReport:
    name: str
    param_sizes: dict[str, int]
    param_loads: int = 0  # loads from a by-value (.b8 array) parameter
    out_of_range: list[int] = field(default_factory=list)  # offsets at or past the parameter's end


_ENTRY = re.compile(r"\n(?=\.(?:visible |weak )?\.entry )")
_NAME = re.compile(r"\.entry\s+(\S+?)\s*\(")
_PARAM = re.compile(r"\.param\s+\.align\s+\d+\s+\.b8\s+(\S+?)\[(\d+)\]")
_BASE = re.compile(r"mov\.(?:b|u)64\s+(%rd\d+),\s*(\S+?_param_\d+);")
_ADD = re.compile(r"add\.(?:s|u)64\s+(%rd\d+),\s*(%rd\d+),\s*(-?\d+);")
_LOAD = re.compile(r"ld\.param(?:\.\w+)+\s+[^\[]*\[\s*([%\w$.]+?)\s*(?:\+\s*(-?\d+))?\s*\]")


def check_param_loads(ptx: str) -> list[EntryReport]:
    """For every kernel entry of `ptx`: the loads from its by-value struct parameters, and those
    at an offset outside the parameter (followed through `mov` of the parameter's address and
    constant `add`s)."""
    reports = []
    for chunk in _ENTRY.split(ptx)[1:]:
        m = _NAME.search(chunk)
        if not m:
            continue
        sizes = {p: int(n) for p, n in _PARAM.findall(chunk)}
        rep = EntryReport(m.group(1), sizes)
        base: dict[str, tuple[str, int]] = {r: (p, 0) for r, p in _BASE.findall(chunk)}
        adds = _ADD.findall(chunk)
        grown = True
        while grown:  # registers derived from a parameter's address by constant offsets
            grown = False
            for dst, src, off in adds:
                if src in base and dst not in base:
                    p, o = base[src]
                    base[dst] = (p, o + int(off))
                    grown = True
        for where, off in _LOAD.findall(chunk):
            off_i = int(off or 0)
            if where in base:
                p, o = base[where]
                off_i += o
            else:
                p = where
            if p not in sizes:
                continue
            rep.param_loads += 1
            if off_i < 0 or off_i >= sizes[p]:
                rep.out_of_range.append(off_i)
        reports.append(rep)
    return reports
