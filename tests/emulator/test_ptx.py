"""Checks on the PTX nvcc makes of the CUDA kernels (no GPU needed; skipped without nvcc).

A kernel that loads from its by-value argument past the argument's end has been miscompiled (see
tests/emulator/_ptx.py): nvcc 13.0 did this to copies of the solver's BlockSolver struct, and the working-set
solver read a shared-memory address from an unrelated argument field on the H200.
"""

from __future__ import annotations

import pytest

import _ptx

NVCC = _ptx.find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit)")

SYNTHETIC = """
.visible .entry k_ok(
\t.param .align 8 .b8 k_ok_param_0[16]
)
{
\tmov.b64 \t%rd1, k_ok_param_0;
\tadd.s64 \t%rd2, %rd1, 8;
\tld.param.u64 \t%rd3, [%rd2];
\tld.param.u64 \t%rd4, [k_ok_param_0+8];
\tld.param.u64 \t%rd5, [%rd2+-8];
}
.visible .entry k_bad(
\t.param .align 8 .b8 k_bad_param_0[16]
)
{
\tmov.b64 \t%rd1, k_bad_param_0;
\tadd.s64 \t%rd2, %rd1, 8;
\tld.param.u64 \t%rd3, [%rd2+8];
\tld.param.f64 \t%fd1, [k_bad_param_0+24];
\tld.param.v2.u32 \t{%r1, %r2}, [%rd2+-16];
}
"""


def test_param_check_flags_out_of_range_loads():
    reps = {r.name: r for r in _ptx.check_param_loads(SYNTHETIC)}
    assert reps["k_ok"].param_loads == 3 and reps["k_ok"].out_of_range == []
    assert reps["k_bad"].param_loads == 3
    assert sorted(reps["k_bad"].out_of_range) == [-8, 16, 24]


@pytest.mark.slow  # (nvcc: about a minute per file)
@needs_nvcc
@pytest.mark.parametrize("source", _ptx.CUDA_SOURCES, ids=lambda p: p.parent.name)
def test_kernels_load_only_inside_their_arguments(source, tmp_path):
    ptx = _ptx.compile_ptx(source, tmp_path / "k.ptx", NVCC)
    reports = _ptx.check_param_loads(ptx)
    assert reports, "no kernel entries found in the PTX"
    assert sum(r.param_loads for r in reports) > 0, "no parameter loads recognised: the parser is stale"
    bad = {r.name: sorted(set(r.out_of_range)) for r in reports if r.out_of_range}
    assert not bad, f"kernels loading past the end of their by-value argument (miscompile): {bad}"
