"""The CUDA kernels under sanitizers, on the CPU: a stand-in for compute-sanitizer where there is no GPU.

The emulator (tests/emulator/cuda_emulator/emulator.h) runs every CUDA thread of a block as a std::thread
and every barrier as a std::barrier, so the host sanitizers see the kernels' memory hazards:

* ThreadSanitizer: two threads of a block touching the same shared (or global) memory, one of
  them writing, with no barrier between them -- what racecheck reports on a GPU;
* AddressSanitizer: reads and writes past the dynamic shared memory (its guard bytes are
  poisoned), past any input, output or workspace (exactly sized heap blocks), and workspaces that
  are never freed (LeakSanitizer);
* UndefinedBehaviorSanitizer: misaligned loads and stores (double, float4, double2 carry the
  GPU's alignment in the emulator), which fault on a GPU.

The drivers (san_attention.cpp, san_qp.cpp) run tools/sanitizer_cases.py's cases -- every attention
variant with and without column splits, both QP algorithms -- and check their results against
float64 evaluations, so a clean run also says the numbers were right.  san_selftest.cpp holds one
deliberately faulty kernel per class of bug, and the tests check that each is reported: these
tests can fail.  What stays for the GPU: timing-dependent behaviour, the real memory model
(e.g. visibility without fences), and compute-sanitizer itself (tools/gpu_check.sh).
"""

from __future__ import annotations

import os
import subprocess
from functools import cache

import pytest

from _emulator import CSRC, CXX, EMU_DIR, build_executable, fma_flags

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler for the CUDA emulator")

SANITIZERS = {
    "thread": ("-fsanitize=thread",),
    "address": ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"),
}
# every report is fatal; the exit status says so
ENV = {
    "TSAN_OPTIONS": "halt_on_error=1 exitcode=66",
    "ASAN_OPTIONS": "halt_on_error=1 detect_leaks=1 exitcode=67",
    "UBSAN_OPTIONS": "halt_on_error=1 print_stacktrace=1",
}
REPORT_MARKERS = ("ThreadSanitizer", "AddressSanitizer", "LeakSanitizer", "runtime error:")

_ATT_DEPS = [CSRC / "attention_hinge" / "cuda.cu", CSRC / "attention_hinge" / "attention_hinge.h"]
_QP_DEPS = [CSRC / "qp_solve" / "cuda.cu", CSRC / "qp_solve" / "qp_solve.h"]


def _build(stem: str, main, deps, kind: str):
    return build_executable(
        f"{stem}_{kind}",
        main,
        deps,
        flags=(*SANITIZERS[kind], *(fma_flags() or ())),
        label=f"{stem} ({kind} sanitizer)",
    )


@cache
def _sanitizer_works(kind: str) -> bool:
    """Whether this compiler can build and run a program with the sanitizer (runtime installed):
    the self-test program's correct case, built as the tests below use it."""
    try:
        exe = _build("san_selftest", EMU_DIR / "san_selftest.cpp", [], kind)
    except RuntimeError:
        return False
    return _run(exe, "ok", timeout=120)[0] == 0


def _program(stem: str, main, deps, kind: str):
    if not _sanitizer_works(kind):
        pytest.skip(f"the {kind} sanitizer is not available with {CXX}")
    return _build(stem, main, deps, kind)


def _run(exe, *args, timeout=1800):
    res = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV})
    return res.returncode, res.stdout + res.stderr


# ---- the sanitizers do catch each class of bug ---------------------------------------------------


@pytest.mark.parametrize("case", ["ok", "async_ok"])
@pytest.mark.parametrize("kind", ["thread", "address"])
def test_correct_kernel_is_clean(kind, case):
    rc, out = _run(_program("san_selftest", EMU_DIR / "san_selftest.cpp", [], kind), case)
    assert rc == 0, out
    assert not any(m in out for m in REPORT_MARKERS), out


@pytest.mark.parametrize(
    "case, kind, marker",
    [
        ("race", "thread", "ThreadSanitizer: data race"),
        ("async_race", "thread", "ThreadSanitizer: data race"),  # cp.async read before its wait
        ("overflow", "address", "AddressSanitizer"),
        ("global_oob", "address", "AddressSanitizer: heap-buffer-overflow"),
        ("misaligned", "address", "misaligned address"),
        ("leak", "address", "LeakSanitizer: detected memory leaks"),
    ],
)
def test_faulty_kernel_is_reported(case, kind, marker):
    rc, out = _run(_program("san_selftest", EMU_DIR / "san_selftest.cpp", [], kind), case)
    assert rc != 0, f"the {kind} sanitizer did not stop the faulty case {case!r}:\n{out}"
    assert marker in out, out


def test_emulator_refuses_big_shared_memory_without_opt_in():
    """More than 48 KiB of dynamic shared memory needs cudaFuncSetAttribute on a GPU; so in the emulator."""
    rc, out = _run(_program("san_selftest", EMU_DIR / "san_selftest.cpp", [], "address"), "smem_optin")
    assert rc == 0, out
    assert "refused without the opt-in, run with it" in out, out


def test_emulator_refuses_unwaited_async_copies():
    """A thread that returns with cp.async copies it never waited for fails the launch."""
    rc, out = _run(_program("san_selftest", EMU_DIR / "san_selftest.cpp", [], "address"), "async_leak")
    assert rc == 0, out
    assert "reported: emulator: a thread returned with cp.async copies not waited for" in out, out


# ---- the kernels of csrc/ under the sanitizers ----------------------------------------------------


def _check_clean(rc, out, summary):
    reports = [line for line in out.splitlines() if any(m in line for m in REPORT_MARKERS)]
    assert not reports, "\n".join(reports[:20]) + "\n...\n" + out[-6000:]
    assert rc == 0, out[-6000:]
    assert summary in out, out[-3000:]
    assert "FAIL" not in out, out[-6000:]


@pytest.mark.slow
def test_attention_kernels_thread_sanitizer():
    """Every variant (simt float64 / float32, tf32x3, tf32, tf32x3p, tf32p), splits 1 and 3."""
    rc, out = _run(_program("san_attention", EMU_DIR / "san_attention.cpp", _ATT_DEPS, "thread"), "--quick")
    _check_clean(rc, out, "san_attention: 24 cases, OK")


@pytest.mark.slow
def test_attention_kernels_address_ub_sanitizer():
    rc, out = _run(_program("san_attention", EMU_DIR / "san_attention.cpp", _ATT_DEPS, "address"))
    _check_clean(rc, out, "san_attention: 38 cases, OK")


@pytest.mark.slow
def test_qp_kernels_thread_sanitizer():
    """Both algorithms (block, working set) on the overlap, ate (cina) and generic problems."""
    rc, out = _run(_program("san_qp", EMU_DIR / "san_qp.cpp", _QP_DEPS, "thread"), "--quick")
    _check_clean(rc, out, "san_qp: OK")
    assert "[ws ws=8]" in out and "[block]" in out, out


@pytest.mark.slow
def test_qp_kernels_address_ub_sanitizer():
    rc, out = _run(_program("san_qp", EMU_DIR / "san_qp.cpp", _QP_DEPS, "address"))
    _check_clean(rc, out, "san_qp: OK")
    assert "float32 (2-slot cache) [ws ws=5]" in out, out
