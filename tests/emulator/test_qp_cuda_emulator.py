"""The CUDA kernels of csrc/qp_solve/cuda.cu (batched box-QP solver), run on the CPU by a
thread-level emulator.

No GPU is needed: tests/emulator/cuda_emulator/qp_emulator.cpp compiles the unmodified cuda.cu as
C++ on the vocabulary of tests/emulator/cuda_emulator/emulator.h (one std::thread per CUDA thread, barriers,
emulated shuffles, NaN-filled shared memory and workspace).  The solver kernel is driven through
the real front end (cina_ext.ops.qp_solve builds the problems; only the final operator call is routed to
the emulator) and compared with the pure-PyTorch reference, the compiled CPU solver and exact
facts (KKT violation of the returned point recomputed from scratch).  Emulation is slow (one host
thread per CUDA thread, several barriers per step): problems stay small and blocks are 32-96
threads (CINA_QP_THREADS).  The library is cached in build/emulator/ under a hash of its sources.
"""

from __future__ import annotations

import ctypes
import importlib
import math
import re
from functools import partial

import numpy as np
import pytest
import torch

from cina_ext._core.extension import extension_error, has_extension

import _solver_cases
from _emulator import CSRC, CXX, EMU_DIR, fma_flags, loader
from _solver_cases import kkt_pair

R = importlib.import_module("cina_ext.reference.qp_solve")
solver = importlib.import_module("cina_ext.ops.qp_solve")

F64, F32 = torch.float64, torch.float32
INF = math.inf

pytestmark = [
    pytest.mark.skipif(CXX is None, reason="no C++ compiler for the CUDA emulator"),
    pytest.mark.skipif(not has_extension(), reason=f"compiled extension missing: {extension_error()}"),
]

_QP_DEPS = [CSRC / "qp_solve" / "cuda.cu", CSRC / "qp_solve" / "qp_solve.h"]
_QP_ENTRIES = [name + suf for suf in ("f32", "f64") for name in ("emu_qp_solve_", "emu_qp_lse_", "emu_qp_rowsum_")]
lib = loader("libcina_qp_emu", EMU_DIR / "qp_emulator.cpp", _QP_DEPS, _QP_ENTRIES, label="QP emulator")
# the same kernels compiled to round like the GPU (a*b+c contracted into fused multiply-adds)
_FMA = fma_flags()
lib_fma = loader(
    "libcina_qp_emu_fma",
    EMU_DIR / "qp_emulator.cpp",
    _QP_DEPS,
    _QP_ENTRIES,
    label="QP emulator (FMA)",
    flags=_FMA or (),
)


_P = ctypes.c_void_p
_I = ctypes.c_int64
_D = ctypes.c_double


def _ptr(t):
    if t is None:
        return _P(0)
    assert t.is_contiguous() and t.device.type == "cpu"
    return _P(t.data_ptr())


def emu_qp_solve_batch(
    X,
    kind,
    gamma,
    scale,
    lse,
    src,
    mask,
    sign,
    qscale,
    diag_add,
    p,
    lo,
    up,
    c,
    d,
    x0,
    tol,
    max_iter,
    cache_bytes,
    shrinking,
    inner_min_units,
    *,
    emu=None,
):
    """Same arguments and results as torch.ops.cina.qp_solve_batch, run on the emulated kernel
    (`emu`: the emulator library, lib() by default)."""
    X = X.contiguous()
    S, N, D = X.shape
    P = mask.shape[0]
    dt = X.dtype
    keep = []

    def c_(t, dtype=None):
        if t is None:
            return None
        t = t.detach().contiguous() if dtype is None else t.detach().to(dtype).contiguous()
        keep.append(t)
        return t

    gamma = c_(gamma, F64) if gamma is not None and gamma.numel() else None
    lse = c_(lse, F64) if lse is not None and lse.numel() else None
    x = torch.full((P, N), float("nan"), dtype=dt)
    nu = torch.full((P,), float("nan"), dtype=dt)
    obj = torch.full((P,), float("nan"), dtype=dt)
    kkt = torch.full((P,), float("nan"), dtype=dt)
    it = torch.full((P,), -7, dtype=torch.int64)
    conv = torch.zeros(P, dtype=torch.bool)
    dll = lib() if emu is None else emu
    fn = dll.emu_qp_solve_f32 if dt == F32 else dll.emu_qp_solve_f64
    err = fn(
        _I(kind),
        _I(S),
        _I(N),
        _I(D),
        _ptr(X),
        _ptr(gamma),
        _D(scale),
        _ptr(lse),
        _I(P),
        _ptr(c_(src, torch.int64)),
        _ptr(c_(mask)),
        _ptr(c_(sign)),
        _ptr(c_(qscale, F64)),
        _ptr(c_(diag_add, F64)),
        _ptr(c_(p)),
        _ptr(c_(lo)),
        _ptr(c_(up)),
        _ptr(c_(c)),
        _ptr(c_(d)),
        _ptr(c_(x0)),
        _ptr(c_(tol, F64)),
        _ptr(c_(max_iter, torch.int64)),
        _I(cache_bytes),
        _ptr(x),
        _ptr(nu),
        _ptr(obj),
        _ptr(kkt),
        _ptr(it),
        _ptr(conv),
    )
    if err:
        raise RuntimeError(err.decode())
    return x, nu, obj, kkt, it, conv


def emu_lse(X, mask, scale):
    S, N, D = X.shape
    out = torch.full((S, N), float("nan"), dtype=F64)
    fn = lib().emu_qp_lse_f32 if X.dtype == F32 else lib().emu_qp_lse_f64
    err = fn(_ptr(X.contiguous()), _ptr(mask.contiguous()), _I(S), _I(N), _I(D), _D(scale), _ptr(out))
    if err:
        raise RuntimeError(err.decode())
    return out


def emu_rowsum(X, kind, gamma, scale, lse, rowmask, colmask):
    S, N, D = X.shape
    out = torch.full((S, N), float("nan"), dtype=F64)
    fn = lib().emu_qp_rowsum_f32 if X.dtype == F32 else lib().emu_qp_rowsum_f64
    g = gamma.contiguous() if gamma is not None and gamma.numel() else None
    ls = lse.contiguous() if lse is not None and lse.numel() else None
    err = fn(
        _I(kind),
        _I(S),
        _I(N),
        _I(D),
        _ptr(X.contiguous()),
        _ptr(g),
        _D(scale),
        _ptr(ls),
        _ptr(rowmask.contiguous()),
        _ptr(colmask.contiguous()),
        _ptr(out),
    )
    if err:
        raise RuntimeError(err.decode())
    return out


@pytest.fixture(params=["block", "ws"])
def emulated(request, monkeypatch):
    """Route the compiled front end's operator call to the emulated CUDA kernel, with each of the two
    algorithms: "block" (one block per problem, the CPU solver's iterates) and "ws" (working-set
    decomposition, the large-problem path) with a working set of 8 units, so that these small
    problems take many select / solve / update rounds."""
    real = solver._run
    calls = []

    def fake_run(*args):
        calls.append(args)
        return emu_qp_solve_batch(*args)

    monkeypatch.setattr(solver, "_run", fake_run)
    monkeypatch.setenv("CINA_QP_THREADS", "32")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", request.param)
    if request.param == "ws":
        monkeypatch.setenv("CINA_QP_WS_SIZE", "8")
    return {"calls": calls, "real": real, "algo": request.param}


def cpu_solve(fn, *args, **kw):
    """The compiled CPU solver on the same problem, without shrinking (the CUDA algorithm)."""
    return fn(*args, backend="fused", shrinking=False, **kw)


make_data = partial(_solver_cases.make_data, p=5)


def kkt_from_scratch(Q, p, x, lo, up, c=None):
    """KKT violation of x (reference_qp's measure), numpy float64, from the explicit Q."""
    if c is not None:
        return kkt_pair(Q, p, x, lo, up, c)
    Q, p, x, lo, up = (np.asarray(a, dtype=float) for a in (Q, p, x, lo, up))
    G = Q @ x - p
    pg = np.where(x > lo, G, np.minimum(G, 0))
    pg = np.where(x < up, pg, np.maximum(pg, 0))
    return float(np.abs(pg).max(initial=0.0))


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "linear", "laplace", "cina", "precomputed"])
@pytest.mark.parametrize("estimand", ["overlap", "ate"])
def test_emulated_dual_matches_cpu_and_reference(emulated, kernel, estimand):
    B, N, lam = 2, 24, 0.3
    X, W = make_data(B, N, seed=3)
    Xin = R.gram(X, "rbf", gamma=0.4) if kernel == "precomputed" else X
    got = solver.dual_solve(Xin, W, lam, kernel=kernel, estimand=estimand, tol=1e-9)
    assert emulated["calls"], "the emulator was not used"
    ref = R.dual_solve(Xin, W, lam, kernel=kernel, estimand=estimand, tol=1e-9)
    assert bool(got.converged.all()) and float(got.kkt.max()) <= 1e-9
    assert torch.allclose(got.objective, ref.objective, rtol=1e-8, atol=1e-12)
    if kernel != "linear":  # rank-deficient Gram: alpha not unique
        assert torch.allclose(got.weights, ref.weights, atol=1e-6)
    if estimand == "overlap":
        assert torch.allclose(got.intercept, ref.intercept, atol=1e-5)
        assert float((got.alpha * W).sum(-1).abs().max()) <= 1e-12 * N
    else:
        assert torch.allclose(got.alpha.sum(-1), torch.full((B,), 2.0, dtype=F64), atol=1e-12)
    # the compiled CPU solver (same algorithm without shrinking): same iterates up to rounding
    solver._run = emulated["real"]
    cpu = cpu_solve(solver.dual_solve, Xin, W, lam, kernel=kernel, estimand=estimand, tol=1e-9)
    assert torch.allclose(got.objective, cpu.objective, rtol=1e-10, atol=1e-13)
    if kernel != "linear":  # (cina: a nearly flat kernel, alpha determined to ~sqrt(tol) only)
        assert torch.allclose(got.alpha, cpu.alpha, atol=1e-4 if kernel == "cina" else 1e-6)
    if emulated["algo"] == "block":
        # iterations: equal up to rounding-level differences in the choice of pairs near the end
        # (the CPU solver and the reference differ from each other by as much)
        lim = 0.25 * torch.maximum(got.iterations, cpu.iterations).double() + 3
        assert bool(((got.iterations - cpu.iterations).abs().double() <= lim).all())
    else:
        # other iterates (sub-problems over 8 units), of the same order of steps
        assert bool((got.iterations <= 4 * cpu.iterations + 50).all()), (got.iterations, cpu.iterations)


@pytest.mark.parametrize("threads", ["32", "64", "96"])
def test_emulated_block_sizes_masks_and_att(emulated, monkeypatch, threads):
    """Scattered masks with garbage at padded units, more and fewer units than threads, the "att"
    arm problem (a mask subset of its source), several problems handled by one block."""
    monkeypatch.setenv("CINA_QP_THREADS", threads)
    B, N = 3, 45
    X, W = make_data(B, N, seed=10)
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(B, N, generator=g) > 0.35
    mask[:, :2] = True
    mask[2, 20:] = False  # a short dataset: fewer units than threads
    Xp = torch.where(mask.unsqueeze(-1), X, torch.full_like(X, float("nan")))
    Wp = torch.where(mask, W, torch.full_like(W, 7.0))
    for est in ("overlap", "att"):
        res = solver.dual_solve(Xp, Wp, 0.2, estimand=est, mask=mask, tol=1e-9)
        assert bool(res.converged.all()) and bool(torch.isfinite(res.alpha).all())
        assert (res.alpha[~mask] == 0).all() and (res.weights[~mask] == 0).all()
        for b in range(B):
            m = mask[b]
            one = R.dual_solve(X[b : b + 1, m], W[b : b + 1, m], 0.2, estimand=est, tol=1e-9)
            assert torch.allclose(res.weights[b, m], one.weights[0], atol=1e-6)
            assert torch.allclose(res.objective[b], one.objective[0], rtol=1e-8)


def test_emulated_results_do_not_depend_on_cache_or_grid(emulated, monkeypatch):
    X, W = make_data(2, 40, seed=13)
    big = solver.dual_solve(X, W, 0.05, tol=1e-8)
    # 2 cache slots (constant eviction, including the column in use being protected), 1 SM
    monkeypatch.setenv("CINA_EMU_FREE_BYTES", "4000")
    monkeypatch.setenv("CINA_EMU_SMS", "1")
    tiny = solver.dual_solve(X, W, 0.05, tol=1e-8, cache_mb=1e-6)
    assert torch.equal(big.alpha, tiny.alpha) and torch.equal(big.iterations, tiny.iterations)
    assert torch.equal(big.objective, tiny.objective) and torch.equal(big.intercept, tiny.intercept)
    again = solver.dual_solve(X, W, 0.05, tol=1e-8)  # deterministic
    assert torch.equal(big.alpha, again.alpha)
    K = R.gram(X, "rbf")
    for b in range(2):
        Q = (W[b, :, None] * W[b, None, :]) * K[b] / 0.05
        k = kkt_from_scratch(Q, np.ones(40), big.alpha[b], np.zeros(40), np.ones(40), W[b])
        assert abs(k - float(big.kkt[b])) <= 1e-9 and k < 1e-8


@pytest.mark.parametrize("dtype", [F32, F64])
def test_emulated_generic_qp_box_and_general_equality(emulated, dtype):
    """qp_solve: box only (coordinate descent, bounds of both signs, -inf / +inf) and a general
    equality with c of mixed signs, some c_i = 0 (single steps beside SMO steps)."""
    g = torch.Generator().manual_seed(21)
    B, N = 2, 16
    A = torch.randn(B, N, N, generator=g, dtype=F64)
    Q = (A @ A.transpose(1, 2) / N + 0.05 * torch.eye(N, dtype=F64)).to(dtype)
    p = torch.randn(B, N, generator=g, dtype=F64).to(dtype)
    lo = torch.full((B, N), -0.5, dtype=dtype)
    lo[:, :3] = -INF
    up = torch.full((B, N), 0.7, dtype=dtype)
    up[:, 3:6] = INF
    tol = 1e-9 if dtype == F64 else 1e-4
    res = solver.qp_solve(Q, p, lo, up, tol=tol)
    ref = R.qp_solve(Q.double(), p.double(), lo.double(), up.double(), tol=1e-11)
    assert bool(res.converged.all())
    assert torch.allclose(res.objective.double(), ref.objective, rtol=1e-8 if dtype == F64 else 1e-4)
    for b in range(B):
        assert kkt_from_scratch(Q[b], p[b], res.x[b], lo[b], up[b]) <= (1e-9 if dtype == F64 else 1e-3)
    c = torch.randn(B, N, generator=g, dtype=F64).to(dtype)
    c[:, 5:8] = 0.0
    d = torch.tensor([0.3, -0.2], dtype=dtype)
    lo2 = torch.full((B, N), -1.0, dtype=dtype)
    up2 = torch.full((B, N), 1.0, dtype=dtype)
    up2[:, 0] = INF
    res = solver.qp_solve(Q, p, lo2, up2, c=c, d=d, tol=tol)
    ref = R.qp_solve(Q.double(), p.double(), lo2.double(), up2.double(), c=c.double(), d=d.double(), tol=1e-11)
    assert bool(res.converged.all())
    assert torch.allclose(res.objective.double(), ref.objective, rtol=1e-8 if dtype == F64 else 1e-4)
    assert torch.allclose((c * res.x).sum(-1).double(), d.double(), atol=1e-12 if dtype == F64 else 1e-5)
    if dtype == F64:
        assert torch.allclose(res.nu, ref.nu, atol=1e-6)


@pytest.mark.parametrize("rounding", ["plain", "fma"])
def test_emulated_general_equality_small_c_converges(emulated, monkeypatch, rounding):
    """Regression (found on an H200): with fused multiply-adds the WSS2 choice took a coordinate
    with a small c_i as its own partner (a null step) and the solve ran to max_iter at kkt 4e-9.
    Through the emulated kernel, plain and compiled to round like the GPU (FMA contraction, where
    the GPU's iteration counts of problems 0 and 1 are reproduced exactly): every problem
    converges at tol=1e-9 to the reference's objective."""
    if rounding == "fma":
        if fma_flags() is None:
            pytest.skip("no FMA instructions on this machine")
        dll = lib_fma()
        monkeypatch.setattr(solver, "_run", lambda *a: emu_qp_solve_batch(*a, emu=dll))
    Q, p, lo, up, c, d = _solver_cases.small_c_equality_case()
    ref = R.qp_solve(Q, p, lo, up, c=c, d=d, tol=1e-9)
    res = solver.qp_solve(Q, p, lo, up, c, d, tol=1e-9, backend="fused")
    assert bool(res.converged.all()), (res.iterations, res.kkt)
    assert bool((res.kkt < 1e-9).all())
    assert bool((res.iterations < 5000).all()), res.iterations
    assert torch.allclose(res.objective, ref.objective, rtol=1e-12, atol=0.0)
    assert torch.allclose((c * res.x).sum(-1), d, atol=1e-12)
    if rounding == "fma" and emulated["algo"] == "block":
        assert res.iterations[:2].tolist() == [999, 394]  # the H200's counts


def test_emulated_feasible_start_general(emulated):
    """The in-kernel feasible start (bitonic sort + binary search) against the reference's."""
    g = torch.Generator().manual_seed(5)
    B, N = 3, 13
    lo = -torch.rand(B, N, generator=g, dtype=F64)
    up = torch.rand(B, N, generator=g, dtype=F64) * 2
    lo[0, 2] = -INF
    up[1, 4] = INF
    c = torch.randn(B, N, generator=g, dtype=F64)
    c[2, :4] = 0.0
    d = torch.tensor([0.4, -1.1, 0.0], dtype=F64)
    Q = torch.eye(N, dtype=F64).expand(B, N, N).contiguous()
    p = torch.zeros(B, N, dtype=F64)
    res = solver.qp_solve(Q, p, lo, up, c=c, d=d, max_iter=0)  # returns the start itself
    x_ref = R._feasible_start(lo, up, c, d, torch.ones(B, N, dtype=torch.bool))
    assert torch.allclose(res.x, x_ref, atol=1e-12)
    assert (res.iterations == 0).all()


def test_emulated_float32_dual(emulated):
    X, W = make_data(2, 30, seed=18, dtype=F32)
    res = solver.dual_solve(X, W, 0.1, tol=1e-4)
    ref = R.dual_solve(X.double(), W.double(), 0.1, tol=1e-10)
    assert res.alpha.dtype == F32 and bool(res.converged.all())
    assert torch.allclose(res.objective.double(), ref.objective, rtol=1e-4)
    bad = solver.dual_solve(X, W, 1e-3, tol=1e-12)  # below what float32 can certify
    assert not bool(bad.converged.any()) and bool((bad.iterations < 100_000).all())


def test_emulated_tiny_groups_duplicates_and_n2(emulated):
    X, W = make_data(1, 20, seed=7)
    W[0] = -1
    W[0, 0] = 1  # one treated unit
    X[0, 10:15] = X[0, 2:7]  # duplicated rows: singular Q (curvature floor)
    for est in ("overlap", "ate", "att"):
        res = solver.dual_solve(X, W, 0.5, estimand=est, tol=1e-9)
        ref = R.dual_solve(X, W, 0.5, estimand=est, tol=1e-9)
        assert bool(res.converged.all())
        assert torch.allclose(res.objective, ref.objective, rtol=1e-7)
        assert float(res.weights[0, 0]) == pytest.approx(1.0)
    X2 = torch.tensor([[[0.0, 1.0], [1.0, 0.5]]], dtype=F64)
    W2 = torch.tensor([[1.0, -1.0]], dtype=F64)
    res = solver.dual_solve(X2, W2, 0.5)
    ref = R.dual_solve(X2, W2, 0.5)
    assert bool(res.converged.all()) and torch.allclose(res.alpha, ref.alpha, atol=1e-12)
    assert torch.allclose(res.intercept, ref.intercept, atol=1e-9)


def test_emulated_max_iter_empty_and_fixed_problems(emulated):
    X, W = make_data(3, 30, seed=8)
    res = solver.dual_solve(X, W, 0.1, max_iter=3)
    assert not bool(res.converged.any()) and (res.iterations == 3).all() and bool((res.kkt > 1e-6).all())
    res2 = solver.dual_solve(X, W, 0.1, max_iter=torch.tensor([2, 100_000, 0]), tol=torch.tensor([1e-6, 1e-7, 1e-6]))
    assert res2.converged.tolist() == [False, True, False]
    assert res2.iterations.tolist()[0] == 2 and res2.iterations.tolist()[2] == 0 and float(res2.kkt[1]) <= 1e-7
    # an empty problem and a problem whose units are all fixed (lo == up)
    Q = torch.eye(3, dtype=F64).expand(2, 3, 3).contiguous()
    p = torch.ones(2, 3, dtype=F64)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    r = solver.qp_solve(Q, p, 0.0, INF, mask=mask)
    assert r.converged.tolist() == [True, True] and r.iterations.tolist() == [3, 0]
    assert torch.allclose(r.x[0], torch.ones(3, dtype=F64)) and (r.x[1] == 0).all()
    assert float(r.objective[0]) == pytest.approx(-1.5) and float(r.objective[1]) == 0.0
    fixed = solver.qp_solve(Q, p, 0.25, 0.25)
    assert fixed.converged.all() and torch.allclose(fixed.x, torch.full((2, 3), 0.25, dtype=F64))
    assert (fixed.iterations == 0).all()


def test_emulated_warm_start(emulated):
    X, W = make_data(2, 30, seed=14)
    cold = solver.dual_solve(X, W, 0.1, tol=1e-9)
    warm = solver.dual_solve(X, W, 0.1, tol=1e-9, x0=cold.alpha)
    assert (warm.iterations <= 1).all() and torch.allclose(warm.objective, cold.objective, rtol=1e-12)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("kernel", ["precomputed", "linear", "rbf", "cina", "laplace"])
def test_emulated_helper_kernels(dtype, kernel):
    """qp_kernel_lse and qp_kernel_rowsum kernels against the CPU operators."""
    X, _ = make_data(3, 37, p=5, seed=2, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(3, 37, generator=g) > 0.3
    mask[1] = False
    mask[1, 4] = True
    col = mask & (torch.rand(3, 37, generator=g) > 0.4)
    kind = {"precomputed": 0, "linear": 1, "rbf": 2, "cina": 3, "laplace": 4}[kernel]
    lse = torch.zeros(0, 0, dtype=F64)
    gamma = torch.zeros(0, dtype=F64)
    scale = 0.45
    if kernel == "cina":
        lse = torch.ops.cina.qp_kernel_lse(X, mask, scale)
        lse_e = emu_lse(X, mask, scale)
        assert torch.allclose(lse_e, lse, rtol=1e-13, atol=1e-13) and (lse_e[~mask] == 0).all()
    if kernel in ("rbf", "laplace"):
        gamma = torch.tensor([0.3, 0.7, 1.1], dtype=F64)
    Xk = R.gram(X, "rbf", gamma=0.5) if kernel == "precomputed" else X
    ref = torch.ops.cina.qp_kernel_rowsum(Xk.contiguous(), kind, gamma, scale, lse, mask, col)
    got = emu_rowsum(Xk, kind, gamma, scale, lse, mask, col)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert (got[~mask] == 0).all()


def test_emulated_working_set_stats(monkeypatch, capfd):
    """CINA_QP_WS_STATS=1 prints the rounds, steps and per-kernel times of the working-set solver
    (none without it); each round makes at most max(200, 20 |B|) sub-problem steps, so iterations
    <= rounds * that."""
    monkeypatch.setattr(solver, "_run", emu_qp_solve_batch)
    monkeypatch.setenv("CINA_QP_THREADS", "32")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    monkeypatch.setenv("CINA_QP_WS_SIZE", "4")
    X, W = make_data(2, 30, seed=35)
    capfd.readouterr()
    solver.dual_solve(X, W, 0.1, tol=1e-8)
    assert "working set" not in capfd.readouterr().err
    monkeypatch.setenv("CINA_QP_WS_STATS", "1")
    res = solver.dual_solve(X, W, 0.1, tol=1e-8)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if "working set" in ln]
    assert len(lines) == 1 and "problems 0..1 of 2" in lines[0] and "working set 4," in lines[0], lines
    rounds = int(lines[0].split(" rounds")[0].rsplit(" ", 1)[1])
    steps = int(lines[0].split(" steps")[0].rsplit(" ", 1)[1])
    assert bool(res.converged.all()) and rounds >= 2
    assert int(res.iterations.max()) <= rounds * max(200, 20 * 4)
    # the steps are those the solver reports, summed over the group; the kernel times are printed
    assert steps == int(res.iterations.sum())
    ms = re.search(r"GPU ms: select ([0-9.]+), solve ([0-9.]+), update ([0-9.]+);", lines[0])
    assert ms is not None and all(float(v) > 0 for v in ms.groups()), lines[0]


@pytest.mark.parametrize("size", ["2", "5", "64", "64/t32"])
def test_emulated_working_set_sizes(monkeypatch, size):
    """The working-set solver with the smallest working set (one pair per round), an odd size and
    one larger than the problem (a single round solves most), the last also with fewer threads in
    the sub-problem kernel than working-set units (CINA_QP_WS_THREADS), on scattered masks, the
    three estimands' problems and a general QP with single coordinates beside the pairs."""
    monkeypatch.setattr(solver, "_run", emu_qp_solve_batch)
    monkeypatch.setenv("CINA_QP_THREADS", "32")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    size, _, threads = size.partition("/t")
    monkeypatch.setenv("CINA_QP_WS_SIZE", size)
    if threads:
        monkeypatch.setenv("CINA_QP_WS_THREADS", threads)
    B, N = 2, 28
    X, W = make_data(B, N, seed=31)
    g = torch.Generator().manual_seed(32)
    mask = torch.rand(B, N, generator=g) > 0.3
    mask[:, :2] = True
    Xp = torch.where(mask.unsqueeze(-1), X, torch.full_like(X, float("nan")))
    for est in ("overlap", "ate", "att"):
        res = solver.dual_solve(Xp, W, 0.1, estimand=est, mask=mask, tol=1e-8)
        assert bool(res.converged.all()) and float(res.kkt.max()) < 1e-8
        assert (res.alpha[~mask] == 0).all()
        for b in range(B):
            m = mask[b]
            one = R.dual_solve(X[b : b + 1, m], W[b : b + 1, m], 0.1, estimand=est, tol=1e-10)
            assert torch.allclose(res.objective[b], one.objective[0], rtol=1e-8)
            assert torch.allclose(res.weights[b, m], one.weights[0], atol=1e-5)
    # box + general equality with some c_i = 0: pairs and single coordinates in one working set
    A = torch.randn(2, 18, 18, generator=g, dtype=F64)
    Q = A @ A.transpose(1, 2) / 18 + 0.05 * torch.eye(18, dtype=F64)
    p = torch.randn(2, 18, generator=g, dtype=F64)
    c = torch.randn(2, 18, generator=g, dtype=F64)
    c[:, 4:9] = 0.0
    d = torch.tensor([0.2, -0.4], dtype=F64)
    res = solver.qp_solve(Q, p, -1.0, 1.0, c=c, d=d, tol=1e-9)
    ref = R.qp_solve(Q, p, torch.full_like(p, -1.0), torch.full_like(p, 1.0), c=c, d=d, tol=1e-11)
    assert bool(res.converged.all())
    assert torch.allclose(res.objective, ref.objective, rtol=1e-9)
    assert torch.allclose((c * res.x).sum(-1), d, atol=1e-12)
    assert float(res.kkt.max()) <= 1e-9


@pytest.mark.parametrize("p", [3, 130])
def test_emulated_working_set_update_covariates(monkeypatch, p):
    """The update kernel stages the moved columns' features in shared memory up to 128
    covariates and reads them from the workspace beyond: both against the reference."""
    monkeypatch.setattr(solver, "_run", emu_qp_solve_batch)
    monkeypatch.setenv("CINA_QP_THREADS", "32")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    monkeypatch.setenv("CINA_QP_WS_SIZE", "6")
    X, W = _solver_cases.make_data(2, 40, p=p, seed=49)
    for kernel in ("rbf", "linear"):
        res = solver.dual_solve(X, W, 0.5, kernel=kernel, tol=1e-8)
        ref = R.dual_solve(X, W, 0.5, kernel=kernel, tol=1e-10)
        assert bool(res.converged.all()) and float(res.kkt.max()) < 1e-8
        assert torch.allclose(res.objective, ref.objective, rtol=1e-8)


def test_emulated_working_set_default_size(monkeypatch, capfd):
    """Without CINA_QP_WS_SIZE the working set has 512 units while the problems fit one per SM,
    256 beyond (CINA_EMU_SMS sets the emulated SM count); the stats line names the size used."""
    monkeypatch.setattr(solver, "_run", emu_qp_solve_batch)
    monkeypatch.setenv("CINA_QP_THREADS", "32")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    monkeypatch.delenv("CINA_QP_WS_SIZE", raising=False)
    monkeypatch.setenv("CINA_QP_WS_STATS", "1")
    X, W = make_data(3, 20, seed=47)
    sizes = []
    for sms in ("132", "2"):
        monkeypatch.setenv("CINA_EMU_SMS", sms)
        capfd.readouterr()
        res = solver.dual_solve(X, W, 0.5, tol=1e-8)
        assert bool(res.converged.all())
        line = [ln for ln in capfd.readouterr().err.splitlines() if "working set" in ln][0]
        sizes.append(int(line.split("(working set ")[1].split(",")[0]))
    assert sizes == [512, 256]


@pytest.mark.parametrize("ltol", ["0.1", "0.01"])
def test_emulated_working_set_multi_warp_subproblem(monkeypatch, ltol):
    """A working set of 96 units (3 warps in the sub-problem kernel): the step's units travel with
    the reductions from whichever warp owns them; two sub-problem tolerances (CINA_QP_WS_LTOL)."""
    monkeypatch.setattr(solver, "_run", emu_qp_solve_batch)
    monkeypatch.setenv("CINA_QP_THREADS", "64")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    monkeypatch.setenv("CINA_QP_WS_SIZE", "96")
    monkeypatch.setenv("CINA_QP_WS_LTOL", ltol)
    X, W = make_data(1, 150, seed=41)
    for est, lam in (("overlap", 1.0), ("ate", 0.05)):
        res = solver.dual_solve(X, W, lam, estimand=est, tol=1e-8)
        ref = R.dual_solve(X, W, lam, estimand=est, tol=1e-10)
        assert bool(res.converged.all()) and float(res.kkt.max()) < 1e-8
        assert torch.allclose(res.objective, ref.objective, rtol=1e-8)
        assert torch.allclose(res.weights, ref.weights, atol=1e-5)


def test_emulated_working_set_keys_in_shared_or_global_memory(monkeypatch):
    """The select kernel keeps its keys in shared memory when they fit, else in the workspace
    (CINA_QP_WS_SMEM_KEYS caps the shared-memory room; 0 forces the workspace, 40 fits one list of
    a 30-unit problem but not two): the same working sets, so bit-identical results."""
    monkeypatch.setattr(solver, "_run", emu_qp_solve_batch)
    monkeypatch.setenv("CINA_QP_THREADS", "32")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    monkeypatch.setenv("CINA_QP_WS_SIZE", "6")
    X, W = make_data(2, 30, seed=43)
    runs = []
    for room in (None, "0", "40"):
        if room is None:
            monkeypatch.delenv("CINA_QP_WS_SMEM_KEYS", raising=False)
        else:
            monkeypatch.setenv("CINA_QP_WS_SMEM_KEYS", room)
        runs.append(solver.dual_solve(X, W, 0.5, estimand="overlap", tol=1e-9))
    assert bool(runs[0].converged.all())
    for r in runs[1:]:
        assert torch.equal(r.alpha, runs[0].alpha) and torch.equal(r.iterations, runs[0].iterations)


@pytest.mark.parametrize(
    "var,value",
    [
        ("CINA_QP_CUDA_ALGO", "fast"),
        ("CINA_QP_WS_SIZE", "1"),
        ("CINA_QP_WS_SIZE", "4096"),
        ("CINA_QP_WS_LTOL", "0"),
        ("CINA_QP_WS_LTOL", "1.5"),
        ("CINA_QP_WS_LTOL", "x"),
        ("CINA_QP_WS_THREADS", "48"),
    ],
)
def test_emulated_bad_algorithm_settings_raise(monkeypatch, var, value):
    monkeypatch.setattr(solver, "_run", emu_qp_solve_batch)
    monkeypatch.setenv("CINA_QP_THREADS", "32")
    monkeypatch.setenv("CINA_QP_CUDA_ALGO", "ws")
    monkeypatch.setenv(var, value)
    X, W = make_data(1, 10, seed=1)
    with pytest.raises(RuntimeError, match=var):
        solver.dual_solve(X, W, 0.1)


def test_emulated_penalty_grid_is_the_repeated_datasets(emulated):
    # lam of shape (B, L): the CUDA kernels read each problem's dataset through the problem ->
    # dataset map; "ate" (two arms per problem, the map repeated twice) exercises all of it, and
    # one estimand keeps the slow suite's time down; the grid gives the bits of the repeated datasets
    estimand = "ate"
    B, N, L = 2, 20, 3
    X, W = make_data(B, N, seed=17)
    lam = torch.tensor([[0.03, 0.3, 1.0], [0.01, 0.1, 0.5]], dtype=F64)
    grid = solver.dual_solve(X, W, lam, estimand=estimand, tol=1e-9)
    assert emulated["calls"], "the emulator was not used"
    stacked = solver.dual_solve(
        X.repeat_interleave(L, 0), W.repeat_interleave(L, 0), lam.reshape(-1), estimand=estimand, tol=1e-9
    )
    assert grid.weights.shape == (B * L, N) and bool(grid.converged.all())
    assert torch.equal(grid.weights, stacked.weights) and torch.equal(grid.iterations, stacked.iterations)
    ref = R.dual_solve(X, W, lam, estimand=estimand, tol=1e-9)
    assert torch.allclose(grid.objective, ref.objective, rtol=1e-8, atol=1e-12)
