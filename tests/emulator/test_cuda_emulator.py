"""The CUDA kernels of csrc/attention_hinge/cuda.cu, run on the CPU by a thread-level emulator.

No GPU is needed: tests/emulator/cuda_emulator/emulator.cpp compiles cuda.cu as C++ (one std::thread per
CUDA thread, barriers for __syncthreads/__syncwarp, shuffles and mma.sync emulated) and the
results are compared with the PyTorch reference (values, and gradients through autograd).  This
checks the kernels' index logic, masking, tiling and formulas; timing, coalescing and races are
left to the GPU run (tools/gpu_check.sh: the CUDA op tests + compute-sanitizer).
Skipped when no C++20 compiler is found.  Emulation is slow (256 host threads per block): sizes
stay small, and the larger cases are marked slow.  The emulator library is cached in
build/emulator/ under a hash of its sources (first build ~20 s).
"""

from __future__ import annotations

import ctypes
import math

import pytest
import torch

from cina_ext import reference

from _attention_cases import make_attention_case
from _emulator import CSRC, CXX, EMU_DIR, loader

lib = loader(
    "libcina_emu",
    EMU_DIR / "emulator.cpp",
    [CSRC / "attention_hinge" / "cuda.cu", CSRC / "attention_hinge" / "attention_hinge.h"],
    ["emu_fwd_f32", "emu_fwd_f64", "emu_bwd_f32", "emu_bwd_f64"],
)


pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler for the CUDA emulator")

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _ptr(t: torch.Tensor):
    assert t.is_contiguous() and t.device.type == "cpu"
    return _P(t.data_ptr())


def emu_forward(K, V, W, b, lam, mask, scale, loss_kind, need_aux):
    B, N, D = K.shape
    dt = K.dtype
    loss = torch.full((B,), float("nan"), dtype=dt)
    out = torch.full((B, N), float("nan"), dtype=dt)
    lse = torch.full((B, N), float("nan"), dtype=dt)
    A = torch.full((B, N, D), float("nan"), dtype=dt) if need_aux else torch.empty(0, dtype=dt)
    Bk = torch.full((B, N, D), float("nan"), dtype=dt) if need_aux else torch.empty(0, dtype=dt)
    fn = lib().emu_fwd_f32 if dt == torch.float32 else lib().emu_fwd_f64
    err = fn(
        _ptr(K),
        _ptr(V),
        _ptr(W),
        _ptr(b),
        _ptr(lam),
        _ptr(mask),
        _I(B),
        _I(N),
        _I(D),
        ctypes.c_double(scale),
        _I(loss_kind),
        ctypes.c_int(int(need_aux)),
        _ptr(loss),
        _ptr(out),
        _ptr(lse),
        _ptr(A) if need_aux else _P(0),
        _ptr(Bk) if need_aux else _P(0),
    )
    if err:
        raise RuntimeError(err.decode())
    return loss, out, lse, A, Bk


def emu_backward(K, V, W, b, lam, mask, out, lse, A, Bk, gL, gO, gLse, scale, loss_kind):
    B, N, D = K.shape
    dt = K.dtype
    dK = torch.full((B, N, D), float("nan"), dtype=dt)
    dV = torch.full((B, N), float("nan"), dtype=dt)
    db = torch.full((B,), float("nan"), dtype=dt)
    fn = lib().emu_bwd_f32 if dt == torch.float32 else lib().emu_bwd_f64
    err = fn(
        _ptr(K),
        _ptr(V),
        _ptr(W),
        _ptr(b),
        _ptr(lam),
        _ptr(mask),
        _ptr(out),
        _ptr(lse),
        _ptr(A),
        _ptr(Bk),
        _ptr(gL),
        _ptr(gO),
        _ptr(gLse),
        _I(B),
        _I(N),
        _I(D),
        ctypes.c_double(scale),
        _I(loss_kind),
        _ptr(dK),
        _ptr(dV),
        _ptr(db),
    )
    if err:
        raise RuntimeError(err.decode())
    return dK, dV, db


def make_case(B, N, D, dtype, *, garbage_padding=True, **kw):
    # padded units hold NaN / Inf by default: they must take no part, whatever they hold
    return make_attention_case(B, N, D, dtype, garbage_padding=garbage_padding, **kw)


def reference_all(K, V, W, b, lam, mask, scale, loss, wL, wO, wLse):
    """float64 reference values and gradients of sum(wL*loss) + sum(wO*out) + sum(wLse*lse)."""
    clean = lambda t, fill: torch.where(mask.reshape(mask.shape + (1,) * (t.dim() - 2)), t, torch.full_like(t, fill))
    K64 = clean(K.double(), 0.0).requires_grad_()
    V64 = clean(V.double(), 0.0).requires_grad_()
    W64 = clean(W.double(), 1.0)
    b64 = b.double().requires_grad_()
    res = reference.attention_hinge(K64, V64, W64, b64, lam.double(), mask, scale=scale, loss=loss)
    obj = (res[0] * wL.double()).sum() + (res[1] * wO.double()).sum() + (res[2] * wLse.double()).sum()
    grads = torch.autograd.grad(obj, (K64, V64, b64))
    return [r.detach() for r in res] + list(grads)


def run_emulated(case, loss="hinge", seed=1):
    K, V, W, b, lam, mask = case
    B, N, D = K.shape
    scale = 1.0 / math.sqrt(D)
    lk = 0 if loss == "hinge" else 1
    g = torch.Generator().manual_seed(seed)
    wL = torch.randn(B, generator=g, dtype=torch.float64).to(K.dtype)
    wO = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype)
    wLse = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype)
    loss_t, out, lse, A, Bk = emu_forward(K, V, W, b, lam, mask, scale, lk, True)
    dK, dV, db = emu_backward(K, V, W, b, lam, mask, out, lse, A, Bk, wL, wO, wLse, scale, lk)
    ref = reference_all(K, V, W, b, lam, mask, scale, loss, wL, wO, wLse)
    return [loss_t, out, lse, dK, dV, db], ref, (A, Bk)


NAMES = ("loss", "out", "lse", "dK", "dV", "db")


def check_close(got, ref, mask, rtol):
    for name, x, r in zip(NAMES, got, ref):
        assert torch.isfinite(x).all(), f"{name} not finite"
        scale = max(1.0, r.abs().max().item())
        err = (x.double() - r).abs().max().item()
        assert err <= rtol * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"
    loss_t, out, lse, dK, dV, db = got
    assert (out[~mask] == 0).all() and (lse[~mask] == 0).all()
    assert (dK[~mask] == 0).all() and (dV[~mask] == 0).all()


@pytest.mark.parametrize(
    "B,N,D,loss",
    [
        (2, 1, 1, "hinge"),
        (3, 7, 3, "squared_hinge"),
        (2, 70, 16, "hinge"),  # two column tiles, partial
        (1, 130, 33, "hinge"),  # three tiles, DP = 64
        (2, 65, 128, "squared_hinge"),
    ],
)
def test_emulated_float64_matches_reference(B, N, D, loss):
    case = make_case(B, N, D, torch.float64, seed=B * 1000 + N * 10 + D)
    got, ref, _ = run_emulated(case, loss=loss)
    check_close(got, ref, case[5], 1e-11)


@pytest.mark.parametrize("B,N,D", [(2, 97, 5), (1, 129, 65)])
def test_emulated_float32_matches_reference(B, N, D):
    case = make_case(B, N, D, torch.float32, seed=N + D)
    got, ref, _ = run_emulated(case)
    check_close(got, ref, case[5], 2e-5)


def test_emulated_auxiliaries_and_forward_only_path():
    K, V, W, b, lam, mask = make_case(2, 40, 6, torch.float64, seed=5)
    scale = 0.4
    plain = emu_forward(K, V, W, b, lam, mask, scale, 0, False)
    aux = emu_forward(K, V, W, b, lam, mask, scale, 0, True)
    for x, y in zip(plain[:3], aux[:3]):
        assert torch.equal(x, y)
    Kc = torch.where(mask[..., None], K, torch.zeros_like(K))
    Vc = torch.where(mask, V, torch.zeros_like(V))
    S = scale * Kc @ Kc.transpose(1, 2)
    pair = mask[:, :, None] & mask[:, None, :]
    P = torch.softmax(S.masked_fill(~pair, -math.inf), dim=-1).nan_to_num(0.0)
    assert torch.allclose(aux[3], P @ (Vc[..., None] * Kc) * mask[..., None], atol=1e-13)
    assert torch.allclose(aux[4], P @ Kc * mask[..., None], atol=1e-13)


def test_emulated_fully_padded_tiles_and_length_one():
    # dataset 0 empty, dataset 1 a single unit in the middle of a padded tile, dataset 2 a
    # scattered mask with whole padded column tiles (units 64..127 all padded)
    K, V, W, b, lam, mask = make_case(3, 150, 4, torch.float64, seed=9, pad_frac=0.0)
    mask[0] = False
    mask[1] = False
    mask[1, 100] = True
    mask[2, 64:128] = False
    mask[2, ::7] = False
    K[~mask] = float("nan")
    got, ref, _ = run_emulated((K, V, W, b, lam, mask))
    check_close(got, ref, mask, 1e-11)
    assert got[0][0].item() == 0.0 and got[5][0].item() == 0.0
    assert torch.allclose(got[2][1, 100], (K[1, 100] @ K[1, 100]) / 2.0)  # lse = s_ii (scale 1/2)
    assert torch.allclose(got[1][1, 100], V[1, 100])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_large_scores(dtype):
    K, V, W, b, lam, mask = make_case(1, 80, 4, dtype, seed=7, garbage_padding=False)
    K = K * (math.sqrt(200.0) / K.norm(dim=-1, keepdim=True))  # s_ii = 100: exp overflows fp32
    lam = torch.full_like(lam, 1e-35)  # the penalty c v o stays finite
    got, ref, _ = run_emulated((K, V, W, b, lam, mask))
    assert got[2].max().item() > 99
    for name, x, r in zip(NAMES, got, ref):
        assert torch.isfinite(x).all(), name
    tol = 1e-10 if dtype == torch.float64 else 2e-3
    assert torch.allclose(got[1].double(), ref[1], rtol=tol, atol=tol * 1e-2)
    assert torch.allclose(got[2].double(), ref[2], rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_emulated_d_above_128_refused():
    K, V, W, b, lam, mask = make_case(1, 3, 129, torch.float32, seed=1, garbage_padding=False)
    with pytest.raises(RuntimeError, match="D <= 128"):
        emu_forward(K, V, W, b, lam, mask, 0.1, 0, False)


def test_emulated_deterministic():
    case = make_case(1, 100, 8, torch.float32, seed=3)
    a, _, _ = run_emulated(case)
    b2, _, _ = run_emulated(case)
    for x, y in zip(a, b2):
        assert torch.equal(x, y)


# ---- the tensor-core variants (float32 only; CINA_ATTENTION_KERNEL is read at every call) ------


@pytest.fixture
def kernel_variant(request, monkeypatch):
    monkeypatch.setenv("CINA_ATTENTION_KERNEL", request.param)
    return request.param


def reference_fp32_errors(case, loss="hinge", seed=1):
    """max |ref32 - ref64| per output: the yardstick of the parity rule (docs/ops/attention_hinge.md)."""
    K, V, W, b, lam, mask = case
    B, N, D = K.shape
    scale = 1.0 / math.sqrt(D)
    g = torch.Generator().manual_seed(seed)
    wL = torch.randn(B, generator=g, dtype=torch.float64).to(K.dtype)
    wO = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype)
    wLse = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype)
    clean = lambda t, fill: torch.where(mask.reshape(mask.shape + (1,) * (t.dim() - 2)), t, torch.full_like(t, fill))
    K32 = clean(K, 0.0).requires_grad_()
    V32 = clean(V, 0.0).requires_grad_()
    b32 = b.clone().requires_grad_()
    res = reference.attention_hinge(K32, V32, clean(W, 1.0), b32, lam, mask, scale=scale, loss=loss)
    obj = (res[0] * wL).sum() + (res[1] * wO).sum() + (res[2] * wLse).sum()
    grads = torch.autograd.grad(obj, (K32, V32, b32))
    return [r.detach() for r in res] + list(grads)


@pytest.mark.parametrize("kernel_variant", ["simt", "tf32x3"], indirect=True)
@pytest.mark.parametrize("B,N,D", [(2, 97, 5), (1, 150, 40), pytest.param(2, 70, 128, marks=pytest.mark.slow)])
def test_emulated_float32_parity_rule(kernel_variant, B, N, D):
    case = make_case(B, N, D, torch.float32, seed=N * 7 + D)
    got, ref64, _ = run_emulated(case)
    ref32 = reference_fp32_errors(case)
    for name, f, r32, r64 in zip(NAMES, got, ref32, ref64):
        assert torch.isfinite(f).all(), name
        err_fused = (f.double() - r64).abs().max().item()
        err_ref = (r32.double() - r64).abs().max().item()
        floor = 1e-5 * max(1.0, r64.abs().max().item())
        assert err_fused <= 2 * err_ref + floor, f"{name}: fused {err_fused:.3g} vs reference {err_ref:.3g}"


@pytest.mark.parametrize("kernel_variant", ["tf32x3", "tf32"], indirect=True)
@pytest.mark.parametrize("B,N,D", [(2, 1, 1), (3, 7, 3), (2, 70, 16), (1, 130, 33), (1, 65, 128)])
def test_emulated_tensor_core_matches_reference(kernel_variant, B, N, D):
    case = make_case(B, N, D, torch.float32, seed=B * 1000 + N * 10 + D)
    got, ref, (A, Bk) = run_emulated(case)
    check_close(got, ref, case[5], 3e-5 if kernel_variant == "tf32x3" else 1e-2)


@pytest.mark.parametrize("kernel_variant", ["tf32x3", "tf32"], indirect=True)
def test_emulated_tensor_core_masks_and_aux(kernel_variant):
    K, V, W, b, lam, mask = make_case(3, 150, 12, torch.float32, seed=9, pad_frac=0.0)
    mask[0] = False
    mask[1] = False
    mask[1, 100] = True
    mask[2, 64:128] = False
    mask[2, ::7] = False
    K[~mask] = float("nan")
    got, ref, _ = run_emulated((K, V, W, b, lam, mask))
    check_close(got, ref, mask, 3e-5 if kernel_variant == "tf32x3" else 1e-2)
    plain = emu_forward(K, V, W, b, lam, mask, 0.3, 0, False)
    aux = emu_forward(K, V, W, b, lam, mask, 0.3, 0, True)
    for x, y in zip(plain[:3], aux[:3]):
        assert torch.equal(x, y)
    Kc = torch.where(mask[..., None], K, torch.zeros_like(K)).double()
    Vc = torch.where(mask, V, torch.zeros_like(V)).double()
    S = 0.3 * Kc @ Kc.transpose(1, 2)
    pair = mask[:, :, None] & mask[:, None, :]
    P = torch.softmax(S.masked_fill(~pair, -math.inf), dim=-1).nan_to_num(0.0)
    tol = 1e-5 if kernel_variant == "tf32x3" else 5e-3
    assert torch.allclose(aux[3].double(), P @ (Vc[..., None] * Kc) * mask[..., None], atol=tol)
    assert torch.allclose(aux[4].double(), P @ Kc * mask[..., None], atol=tol)


def test_emulated_unknown_variant_refused(monkeypatch):
    monkeypatch.setenv("CINA_ATTENTION_KERNEL", "bogus")
    K, V, W, b, lam, mask = make_case(1, 3, 2, torch.float32, seed=1, garbage_padding=False)
    with pytest.raises(RuntimeError, match="CINA_ATTENTION_KERNEL"):
        emu_forward(K, V, W, b, lam, mask, 0.1, 0, False)


# ---- column splits (CINA_ATTENTION_SPLITS; the heuristic splits small grids on a GPU) ----------


@pytest.mark.parametrize("variant", ["simt", "tf32x3"])
@pytest.mark.parametrize(
    "splits", ["1", pytest.param("2", marks=pytest.mark.slow), "3", pytest.param("6", marks=pytest.mark.slow)]
)
def test_emulated_column_splits(monkeypatch, variant, splits):
    """N = 330: 6 column tiles, split 2, 3 or 6 ways (one tile per block)."""
    monkeypatch.setenv("CINA_ATTENTION_KERNEL", variant)
    monkeypatch.setenv("CINA_ATTENTION_SPLITS", splits)
    dtype = torch.float64 if variant == "simt" else torch.float32
    K, V, W, b, lam, mask = make_case(2, 330, 12, dtype, seed=41, pad_frac=0.1)
    mask[0, 128:256] = False  # with 3 splits, split 1 sees only padding (its running max stays -inf)
    mask[1, :200] = False
    got, ref, _ = run_emulated((K, V, W, b, lam, mask))
    check_close(got, ref, mask, 1e-11 if dtype == torch.float64 else 3e-5)
    if splits != "1":  # same numbers as without splits, up to rounding
        monkeypatch.setenv("CINA_ATTENTION_SPLITS", "1")
        plain, _, _ = run_emulated((K, V, W, b, lam, mask))
        for name, x, y in zip(NAMES, got, plain):
            tol = 1e-13 if dtype == torch.float64 else 1e-6
            assert (x - y).abs().max().item() <= tol * max(1.0, y.abs().max().item()), name


def test_emulated_bad_splits_refused(monkeypatch):
    monkeypatch.setenv("CINA_ATTENTION_SPLITS", "-3")
    K, V, W, b, lam, mask = make_case(1, 3, 2, torch.float32, seed=1, garbage_padding=False)
    with pytest.raises(RuntimeError, match="CINA_ATTENTION_SPLITS"):
        emu_forward(K, V, W, b, lam, mask, 0.1, 0, False)


@pytest.mark.parametrize("plain,prefetch", [("tf32", "tf32p"), ("tf32x3", "tf32x3p")])
@pytest.mark.parametrize("splits", ["1", "3"])
def test_emulated_prefetch_variants_are_bit_identical(monkeypatch, plain, prefetch, splits):
    """The pipelined ("p") variants copy the next streamed tile into a second buffer (cp.async)
    while the current one is computed: the same values reach shared memory, so every output is
    the same bits as without.  Garbage padding, a column tile with no valid unit (skipped after
    its copy was issued), a dataset whose last tile is partial, D = 16, 11 and 20 (DP = 32)."""
    monkeypatch.setenv("CINA_ATTENTION_SPLITS", splits)
    for B, N, D in [(2, 330, 16), (1, 150, 11), (1, 70, 20)]:
        K, V, W, b, lam, mask = make_case(B, N, D, torch.float32, seed=N + D, pad_frac=0.1)
        if N >= 256:
            mask[0, 64:128] = False
            mask[1, 250:] = False
        monkeypatch.setenv("CINA_ATTENTION_KERNEL", plain)
        a, ref, aux_a = run_emulated((K, V, W, b, lam, mask))
        monkeypatch.setenv("CINA_ATTENTION_KERNEL", prefetch)
        p, _, aux_p = run_emulated((K, V, W, b, lam, mask))
        for name, x, y in zip(NAMES + ("A", "Bk"), a + list(aux_a), p + list(aux_p)):
            assert torch.equal(x, y), (name, B, N, D)
        check_close(p, ref, mask, 3e-5 if plain == "tf32x3" else 1e-2)
