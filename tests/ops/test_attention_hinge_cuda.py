"""The CUDA kernels of the fused attention + hinge operator (csrc/attention_hinge/cuda.cu).

Skipped cleanly without a CUDA device or without a build that holds the CUDA kernels.  Run on the
GPU machine by tools/gpu_check.sh.  Tests taking the ``variant`` fixture run for each kernel
variant, chosen through the environment variable CINA_ATTENTION_KERNEL that the operator reads
at each call: "simt" (the SIMT kernels), "tf32x3" (tensor cores, 3xTF32 split: held to the fp32
parity rule) and "tf32" (tensor cores, plain TF32: held to TF32-level tolerances, like torch's
allow_tf32).  The tensor-core variants apply to float32; float64 always runs the SIMT kernels.
"""

from __future__ import annotations

import math

import pytest
import torch

from cina_ext import ops, reference

from _attention_cases import make_attention_case

CUDA_OK = torch.cuda.is_available() and ops.has_cuda_kernels()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA device and a cina_ext build with CUDA kernels"),
]
DEV = "cuda"
NAMES = ("loss", "out", "lse", "dK", "dV", "db")


VARIANTS = ["simt", "tf32x3", "tf32"]
TF32_TOL = 2e-2  # plain TF32: relative to max |value| (10-bit operands, errors amplified by exp)


@pytest.fixture(params=VARIANTS)
def variant(request, monkeypatch):
    monkeypatch.setenv("CINA_ATTENTION_KERNEL", request.param)
    return request.param


def make_case(B, N, D, dtype, *, requires_grad=True, device=DEV, **kw):
    K, V, W, b, lam, mask = (t.to(device) for t in make_attention_case(B, N, D, dtype, **kw))
    for t in (K, V, b):
        t.requires_grad_(requires_grad)
    return K, V, W, b, lam, mask


def upstream(B, N, dtype, seed=1, device=DEV):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).to(device) for s in ((B,), (B, N), (B, N)))


def run(case, backend, loss="hinge", seed=1):
    """Values and gradients of a random linear functional of (loss, out, lse)."""
    K, V, W, b, lam, mask = case
    wL, wO, wLse = upstream(*V.shape, K.dtype, seed=seed, device=K.device)
    outs = ops.attention_hinge(K, V, W, b, lam, mask, loss=loss, backend=backend)
    obj = (outs[0] * wL).sum() + (outs[1] * wO).sum() + (outs[2] * wLse).sum()
    grads = torch.autograd.grad(obj, (K, V, b))
    return [o.detach() for o in outs] + [g.detach() for g in grads]


def to64(case):
    K, V, W, b, lam, mask = case
    f = lambda t: t.detach().double().requires_grad_(t.requires_grad)
    return f(K), f(V), W.double(), f(b), lam.double(), mask


def assert_parity(case32, loss="hinge", variant="simt", floor_rel=1e-5, factor=2.0):
    """docs/ops/attention_hinge.md parity rule: |fused32 - ref64| <= 2 |ref32 - ref64| + floor (plain TF32: a
    TF32-level bound instead)."""
    fused = run(case32, "fused", loss)
    ref32 = run(case32, "reference", loss)
    ref64 = run(to64(case32), "reference", loss)
    for name, f, r32, r64 in zip(NAMES, fused, ref32, ref64):
        assert torch.isfinite(f).all(), name
        err_fused = (f.double() - r64).abs().max().item()
        err_ref = (r32.double() - r64).abs().max().item()
        scale = max(1.0, r64.abs().max().item())
        if variant == "tf32":
            assert err_fused <= TF32_TOL * scale, f"{name}: tf32 error {err_fused:.3g} (scale {scale:.3g})"
            continue
        floor = floor_rel * scale
        assert err_fused <= factor * err_ref + floor, f"{name}: fused {err_fused:.3g} vs reference {err_ref:.3g}"


SIZES_N = [1, 2, 7, 97, 1025]
SIZES_D = [1, 3, 16, 65, 128]


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
@pytest.mark.parametrize("D", SIZES_D)
@pytest.mark.parametrize("N", SIZES_N)
def test_float64_parity(N, D, loss):
    case = make_case(3, N, D, torch.float64, seed=N * 1000 + D)
    fused = run(case, "fused", loss)
    ref = run(case, "reference", loss)
    for name, f, r in zip(NAMES, fused, ref):
        assert torch.isfinite(f).all(), name
        tol = 1e-10 * max(1.0, r.abs().max().item())
        assert (f - r).abs().max().item() <= tol, f"{name}: {(f - r).abs().max().item():.3g}"


@pytest.mark.parametrize("D", SIZES_D)
@pytest.mark.parametrize("N", SIZES_N)
def test_float32_parity_rule(variant, N, D):
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true fp32
    assert_parity(make_case(2, N, D, torch.float32, seed=N + D), variant=variant)


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
def test_float32_parity_larger(variant, loss):
    torch.backends.cuda.matmul.allow_tf32 = False
    assert_parity(make_case(4, 3000, 32, torch.float32, seed=5, pad_frac=0.3), loss=loss, variant=variant)


def test_cuda_matches_cpu_operator():
    case = make_case(3, 300, 20, torch.float64, seed=8)
    gpu = run(case, "fused")
    cpu_case = tuple(t.detach().cpu().requires_grad_(t.requires_grad) for t in case)
    cpu = run(cpu_case, "fused")
    for name, x, y in zip(NAMES, gpu, cpu):
        assert torch.allclose(x.cpu(), y, rtol=1e-10, atol=1e-12), name


def test_arbitrary_masks_and_padding_garbage(variant):
    """Scattered masks, whole padded tiles, empty and length-1 datasets; padding holds NaN/inf."""
    K, V, W, b, lam, mask = make_case(5, 300, 16, torch.float32, seed=9, pad_frac=0.0, requires_grad=False)
    mask[0] = False  # empty dataset
    mask[1] = False
    mask[1, 137] = True  # length-1 dataset
    mask[2, 64:192] = False  # two whole padded tiles
    mask[3, ::3] = False  # scattered
    mask[4, 250:] = False  # a prefix (variable length)
    Kg, Vg, Wg = K.clone(), V.clone(), W.clone()
    Kg[~mask] = float("nan")
    Vg[~mask] = float("inf")
    Wg[~mask] = float("nan")
    leaf = lambda t: t.clone().requires_grad_()
    got = run((leaf(Kg), leaf(Vg), Wg, leaf(b), lam, mask), "fused")
    clean = run((leaf(K), leaf(V), W, leaf(b), lam, mask), "fused")
    for name, x, y in zip(NAMES, got, clean):
        assert torch.isfinite(x).all(), name
        assert torch.equal(x, y), name  # what the padding holds never matters, bit for bit
    loss, out, lse, dK, dV, db = got
    assert loss[0].item() == 0.0 and db[0].item() == 0.0
    assert (out[~mask] == 0).all() and (lse[~mask] == 0).all()
    assert (dK[~mask] == 0).all() and (dV[~mask] == 0).all()
    k = K[1, 137].double()
    # scale 1/sqrt(16); plain TF32 rounds the operands to 10 mantissa bits (measured 2e-4 on an H200)
    assert math.isclose(lse[1, 137].item(), (k @ k).item() / 4.0, rel_tol=2e-3 if variant == "tf32" else 1e-5)
    assert math.isclose(out[1, 137].item(), V[1, 137].item(), rel_tol=1e-6)
    ref64 = run(to64((leaf(K), leaf(V), W, leaf(b), lam, mask)), "reference")
    tol = TF32_TOL if variant == "tf32" else 1e-4
    for name, x, r in zip(NAMES, got, ref64):
        assert (x.double() - r).abs().max().item() <= tol * max(1.0, r.abs().max().item()), name


def test_padding_does_not_change_valid_results():
    K, V, W, b, lam, _ = make_case(1, 200, 8, torch.float64, seed=5, requires_grad=False)
    keep = torch.zeros(200, dtype=torch.bool, device=DEV)
    keep[::3] = True
    full = ops.attention_hinge(K, V, W, b, lam, keep[None], backend="fused")
    alone = ops.attention_hinge(
        K[:, keep].contiguous(), V[:, keep].contiguous(), W[:, keep].contiguous(), b, lam, None, backend="fused"
    )
    assert torch.allclose(full[0], alone[0], rtol=1e-12)
    assert torch.allclose(full[1][:, keep], alone[1], rtol=1e-12)
    assert torch.allclose(full[2][:, keep], alone[2], rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_scores_no_overflow(variant, dtype):
    K, V, W, b, _, mask = make_case(2, 300, 4, dtype, seed=7)
    with torch.no_grad():
        K.mul_(math.sqrt(200.0) / K.norm(dim=-1, keepdim=True))  # s_ii = 100 > log(FLT_MAX)
    lam = 1e-35
    outs = ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")
    assert outs[2].max().item() > 99
    obj = outs[0].sum() + outs[1].sum()
    grads = torch.autograd.grad(obj, (K, V, b))
    for t in list(outs) + list(grads):
        assert torch.isfinite(t).all()
    ref = reference.attention_hinge(K.double(), V.double(), W.double(), b.double(), lam, mask)
    if variant == "tf32" and dtype == torch.float32:
        # |s| ~ 100 with 10-bit operands: scores off by ~0.05, so only the scale of lse is checked
        assert torch.allclose(outs[2].double(), ref[2], rtol=2e-3)
        return
    assert torch.allclose(outs[1].double(), ref[1], rtol=1e-3, atol=1e-6)
    assert torch.allclose(outs[2].double(), ref[2], rtol=1e-5)


def test_gradcheck_float64():
    K, V, W, b, lam, mask = make_case(2, 9, 3, torch.float64, seed=11)
    with torch.no_grad():
        b.fill_(3.0)  # residuals far from the hinge kink

    def f(K, V, b):
        return ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")

    assert torch.autograd.gradcheck(f, (K, V, b), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda K, V, b: ops.attention_hinge(K, V, W, b, lam, mask, loss="squared_hinge", backend="fused"),
        (K, V, b),
        eps=1e-6,
        atol=1e-7,
    )


def test_opcheck_cuda():
    K, V, W, b, lam, mask = make_case(2, 10, 4, torch.float64, seed=13, requires_grad=False)
    args = (K.requires_grad_(), V.requires_grad_(), W, b.requires_grad_(), lam, mask, 0.5, 0, True)
    torch.library.opcheck(torch.ops.cina.attention_hinge_fwd.default, args)
    args32 = tuple(
        a.detach().float().requires_grad_(a.requires_grad)
        if isinstance(a, torch.Tensor) and a.is_floating_point()
        else a
        for a in args
    )
    torch.library.opcheck(torch.ops.cina.attention_hinge_fwd.default, args32)
    plain = args[:-1] + (False,)
    torch.library.opcheck(
        torch.ops.cina.attention_hinge_fwd.default,
        tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in plain),
    )


def test_forward_only_path(variant):
    K, V, W, b, lam, mask = make_case(2, 150, 24, torch.float32, seed=17, requires_grad=False)
    fwd = torch.ops.cina.attention_hinge_fwd(K, V, W, b, lam, mask, 0.3, 0, False)
    assert fwd[3].numel() == 0 and fwd[4].numel() == 0
    aux = torch.ops.cina.attention_hinge_fwd(K, V, W, b, lam, mask, 0.3, 0, True)
    for x, y in zip(fwd[:3], aux[:3]):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-7)
    K64, V64 = K.double(), V.double()
    S = 0.3 * K64 @ K64.transpose(1, 2)
    pair = mask[:, :, None] & mask[:, None, :]
    P = torch.softmax(S.masked_fill(~pair, -math.inf), dim=-1).nan_to_num(0.0)
    Vm = torch.where(mask, V64, torch.zeros_like(V64))
    tol = 5e-3 if variant == "tf32" else 1e-5
    assert torch.allclose(aux[3].double(), P @ (Vm[..., None] * K64) * mask[..., None], atol=tol)
    assert torch.allclose(aux[4].double(), P @ K64 * mask[..., None], atol=tol)
    with torch.no_grad():  # the wrapper takes the forward-only path
        outs = ops.attention_hinge(K, V, W, b, lam, mask, scale=0.3, backend="fused")
    assert torch.equal(outs[1], fwd[1])


def test_deterministic_and_stream_safe(variant):
    case = make_case(3, 700, 32, torch.float32, seed=19)
    a = run(case, "fused")
    b = run(case, "fused")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        c = run(case, "fused")
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    for name, x, y, z in zip(NAMES, a, b, c):
        assert torch.equal(x, y), name
        assert torch.equal(x, z), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_splits_agree(variant, dtype, monkeypatch):
    """Split and unsplit column passes (CINA_ATTENTION_SPLITS) give the same numbers up to
    rounding; the automatic choice splits this small grid (1 x 3000: 47 row tiles)."""
    case = make_case(1, 3000, 24, dtype, seed=23, pad_frac=0.1)
    results = {}
    for splits in ("1", "auto", "5", "47"):
        monkeypatch.setenv("CINA_ATTENTION_SPLITS", splits)
        results[splits] = run(case, "fused")
    # tensor-core variants: another split changes which products are rounded together (measured
    # on an H200: 1.9e-5 tf32x3, 9.6e-6 tf32 for dK); SIMT float32 stays at 2e-6
    tol = 1e-12 if dtype == torch.float64 else (2e-6 if variant == "simt" else 1e-4)
    for splits in ("auto", "5", "47"):
        for name, x, y in zip(NAMES, results[splits], results["1"]):
            err = (x - y).abs().max().item() / max(1.0, y.abs().max().item())
            assert err <= tol, f"splits={splits} {name}: {err:.3g}"
    ref = run(to64(case), "reference")
    for name, x, r in zip(NAMES, results["auto"], ref):
        lim = TF32_TOL if (variant == "tf32" and dtype == torch.float32) else 1e-4
        assert (x.double() - r).abs().max().item() <= lim * max(1.0, r.abs().max().item()), name


def test_many_small_datasets(variant):
    torch.backends.cuda.matmul.allow_tf32 = False
    assert_parity(make_case(256, 50, 16, torch.float32, seed=21, pad_frac=0.3), variant=variant)


def test_d_above_128_refused():
    K = torch.zeros(1, 3, 129, device=DEV)
    V = torch.zeros(1, 3, device=DEV)
    with pytest.raises(RuntimeError, match=r"D <= 128"):
        ops.attention_hinge(K, V, V + 1, torch.zeros(1, device=DEV), 0.1, backend="fused")


def test_empty_dataset_axis():
    K = torch.zeros(2, 0, 4, device=DEV, dtype=torch.float64, requires_grad=True)
    V = torch.zeros(2, 0, device=DEV, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, device=DEV, dtype=torch.float64, requires_grad=True)
    loss, out, lse = ops.attention_hinge(K, V, V.detach() + 1, b, 0.1, backend="fused")
    assert loss.tolist() == [0.0, 0.0] and out.shape == (2, 0)
    (g,) = torch.autograd.grad(loss.sum(), (b,))
    assert g.tolist() == [0.0, 0.0]


def test_torch_compile_cuda():
    K, V, W, b, lam, mask = make_case(2, 40, 8, torch.float32, seed=31)

    def f(K, V, b):
        loss, out, lse = ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")
        return loss.sum() + out.square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    e = f(K, V, b)
    c = compiled(K, V, b)
    assert torch.allclose(e, c)
    for x, y in zip(torch.autograd.grad(e, (K, V, b)), torch.autograd.grad(c, (K, V, b))):
        assert torch.allclose(x, y)


def test_long_sequence_linear_memory(variant):
    """1 x 200000 x 16 forward + backward with O(N) memory (N^2 fp32 scores would be 160 GB)."""
    N, D = 200_000, 16
    g = torch.Generator(device=DEV).manual_seed(0)
    K = torch.randn(1, N, D, device=DEV, generator=g).requires_grad_()
    V = (torch.randn(1, N, device=DEV, generator=g) / N).requires_grad_()
    W = torch.randint(0, 2, (1, N), device=DEV, generator=g).float() * 2 - 1
    b = torch.zeros(1, device=DEV, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss, out, lse = ops.attention_hinge(K, V, W, b, 1e-6, backend="fused")
    (loss.sum() + out.sum()).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 64 * N * D * 4, f"peak {peak / 2**20:.1f} MiB is not O(N D)"
    assert peak < 1e-3 * N * N * 4
    for t in (loss, out, lse, K.grad, V.grad, b.grad):
        assert torch.isfinite(t).all()
    # a few rows against a direct float64 evaluation (one row of scores at a time)
    K64 = K.detach().double()[0]
    rel_lse, rel_out = (2e-3, 5e-2) if variant == "tf32" else (1e-5, 1e-3)
    for i in (0, 12345, N - 1):
        s = (K64 @ K64[i]) / math.sqrt(D)
        p = torch.softmax(s, 0)
        assert math.isclose(lse[0, i].item(), torch.logsumexp(s, 0).item(), rel_tol=rel_lse, abs_tol=1e-4)
        ref_out = (p @ V.detach().double()[0]).item()
        assert abs(out[0, i].item() - ref_out) <= rel_out * (V.detach().abs().max().item()), (
            i,
            out[0, i].item(),
            ref_out,
        )


def test_unknown_variant_refused(monkeypatch):
    monkeypatch.setenv("CINA_ATTENTION_KERNEL", "no-such-kernel")
    K, V, W, b, lam, mask = make_case(1, 10, 4, torch.float32, seed=2, requires_grad=False)
    with pytest.raises(RuntimeError, match="CINA_ATTENTION_KERNEL"):
        ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")
    monkeypatch.setenv("CINA_ATTENTION_KERNEL", "simt")
    monkeypatch.setenv("CINA_ATTENTION_SPLITS", "many")
    with pytest.raises(RuntimeError, match="CINA_ATTENTION_SPLITS"):
        ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")


@pytest.mark.parametrize("plain,prefetch", [("tf32", "tf32p"), ("tf32x3", "tf32x3p")])
@pytest.mark.parametrize("splits", ["1", "auto"])
def test_prefetch_variants_bit_identical(monkeypatch, plain, prefetch, splits):
    """The pipelined ("p") variants stage the same values, one tile earlier (cp.async into a second
    buffer): the same bits everywhere (forward, auxiliaries, gradients), with masks, partial and
    skipped tiles, column splits, D = 16, 12 and 48."""
    monkeypatch.setenv("CINA_ATTENTION_SPLITS", splits)
    for B, N, D in [(1, 5000, 16), (3, 700, 12), (2, 300, 48)]:
        K, V, W, b, lam, mask = make_case(B, N, D, torch.float32, requires_grad=False, seed=N + D)
        mask[0, 64:192] = False
        outs = []
        for v in (plain, prefetch):
            monkeypatch.setenv("CINA_ATTENTION_KERNEL", v)
            Kg, Vg, bg = (t.clone().requires_grad_(True) for t in (K, V, b))
            loss, out, lse = ops.attention_hinge(Kg, Vg, W, bg, lam, mask, backend="fused")
            (loss.sum() + (out * 0.5).sum() + (lse * 0.25).sum()).backward()
            outs.append((loss, out, lse, Kg.grad, Vg.grad, bg.grad))
        for name, x, y in zip(NAMES, *outs):
            assert torch.equal(x, y), (name, B, N, D)
