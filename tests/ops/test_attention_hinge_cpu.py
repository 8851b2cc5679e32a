"""Parity of the compiled CPU attention + hinge operator with the PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch

from cina_ext import ops, reference

pytestmark = pytest.mark.skipif(not ops.has_extension(), reason=f"compiled extension missing: {ops.extension_error()}")


def make_case(B, N, D, dtype, *, seed=0, key_scale=1.0, pad_frac=0.2, lam=None, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    K = (torch.randn(B, N, D, generator=g, dtype=torch.float64) * key_scale).to(dtype)
    V = (torch.randn(B, N, generator=g, dtype=torch.float64) / max(N, 1)).to(dtype)
    W = (torch.randint(0, 2, (B, N), generator=g) * 2 - 1).to(dtype)
    b = torch.randn(B, generator=g, dtype=torch.float64).to(dtype) * 0.1
    mask = torch.rand(B, N, generator=g) >= pad_frac
    if lam is None:
        lam = torch.rand(B, generator=g, dtype=torch.float64).to(dtype) * 0.5 + 0.01
    for t in (K, V, b):
        t.requires_grad_(requires_grad)
    return K, V, W, b, lam, mask


def run_both(K, V, W, b, lam, mask, loss="hinge", upstream_seed=1):
    """Forward + backward of a random linear functional of (loss, out, lse) through both paths."""
    g = torch.Generator().manual_seed(upstream_seed)
    B, N = V.shape
    w_loss = torch.randn(B, generator=g, dtype=torch.float64).to(K.dtype)
    w_out = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype)
    w_lse = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype)
    results = {}
    for backend in ("fused", "reference"):
        outs = ops.attention_hinge(K, V, W, b, lam, mask, loss=loss, backend=backend)
        obj = (outs[0] * w_loss).sum() + (outs[1] * w_out).sum() + (outs[2] * w_lse).sum()
        grads = torch.autograd.grad(obj, (K, V, b))
        results[backend] = [o.detach() for o in outs] + list(grads)
    return results


def to64(case):
    K, V, W, b, lam, mask = case
    lam64 = lam.double() if isinstance(lam, torch.Tensor) else lam
    return (
        K.detach().double().requires_grad_(),
        V.detach().double().requires_grad_(),
        W.double(),
        b.detach().double().requires_grad_(),
        lam64,
        mask,
    )


NAMES = ("loss", "out", "lse", "dK", "dV", "db")


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
@pytest.mark.parametrize("N,D", [(1, 1), (2, 3), (7, 16), (97, 65), (1025, 3), (200, 1)])
def test_float64_parity(N, D, loss):
    case = make_case(3, N, D, torch.float64, seed=N * 100 + D)
    res = run_both(*case, loss=loss)
    for name, f, r in zip(NAMES, res["fused"], res["reference"]):
        assert torch.isfinite(f).all(), name
        tol = 1e-10 * max(1.0, r.abs().max().item())
        assert (f - r).abs().max().item() <= tol, f"{name}: {(f - r).abs().max().item()}"


@pytest.mark.parametrize("N,D", [(7, 16), (97, 65), (1025, 16), (300, 1)])
def test_float32_parity_rule(N, D):
    """docs/ops/attention_hinge.md parity rule: |fused32 - ref64| <= 2 |ref32 - ref64| + floor."""
    case32 = make_case(2, N, D, torch.float32, seed=N + D)
    res32 = run_both(*case32)
    res64 = run_both(*to64(case32))["reference"]
    for name, f, r32, r64 in zip(NAMES, res32["fused"], res32["reference"], res64):
        err_fused = (f.double() - r64).abs().max().item()
        err_ref = (r32.double() - r64).abs().max().item()
        floor = 1e-5 * max(1.0, r64.abs().max().item())
        assert err_fused <= 2 * err_ref + floor, f"{name}: fused {err_fused:.3g} vs reference {err_ref:.3g}"


def test_fully_padded_rows_and_empty_datasets():
    K, V, W, b, lam, mask = make_case(4, 9, 4, torch.float64, seed=3)
    mask[0] = False  # an empty dataset
    mask[1] = False
    mask[1, 4] = True  # a length-1 dataset
    res = run_both(K, V, W, b, lam, mask)
    loss, out, lse, dK, dV, db = res["fused"]
    assert loss[0].item() == 0.0 and db[0].item() == 0.0
    assert (out[~mask] == 0).all() and (lse[~mask] == 0).all()
    assert (dK[~mask] == 0).all() and (dV[~mask] == 0).all()
    for name, f, r in zip(NAMES, res["fused"], res["reference"]):
        assert torch.allclose(f, r, atol=1e-12, rtol=1e-10), name
    # length-1 dataset: lse = s_ii = |k|^2 / sqrt(D), out = v
    i = 4
    assert torch.allclose(lse[1, i], (K[1, i] @ K[1, i]).detach() / 2.0)
    assert torch.allclose(out[1, i], V[1, i].detach())


def test_padding_does_not_change_valid_results():
    """A dataset padded with garbage units gives exactly the results of the dataset alone."""
    K, V, W, b, lam, mask = make_case(1, 50, 8, torch.float64, seed=5, pad_frac=0.0)
    keep = torch.zeros(50, dtype=torch.bool)
    keep[::3] = True
    full = ops.attention_hinge(K, V, W, b, lam, keep[None], backend="fused")
    alone = ops.attention_hinge(K[:, keep], V[:, keep], W[:, keep], b, lam, None, backend="fused")
    assert torch.allclose(full[0], alone[0], rtol=1e-12)
    assert torch.allclose(full[1][:, keep], alone[1], rtol=1e-12)
    assert torch.allclose(full[2][:, keep], alone[2], rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_scores_no_overflow(dtype):
    # every key has norm sqrt(200), so s_ii = 100 (scale 1/2): exp(S) alone would overflow float32
    # (limit ~88); the log-space path must not.  lam is small enough that the penalty is finite.
    K, V, W, b, _, mask = make_case(2, 64, 4, dtype, seed=7)
    with torch.no_grad():
        K.mul_(math.sqrt(200.0) / K.norm(dim=-1, keepdim=True))
    lam = 1e-35
    outs = ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")
    assert outs[2].max().item() > 99
    obj = outs[0].sum() + outs[1].sum()
    grads = torch.autograd.grad(obj, (K, V, b))
    for t in list(outs) + list(grads):
        assert torch.isfinite(t).all()
    ref = reference.attention_hinge(K.double(), V.double(), W.double(), b.double(), lam, mask)
    assert torch.allclose(outs[1].double(), ref[1], rtol=1e-4, atol=1e-6)
    assert torch.allclose(outs[2].double(), ref[2], rtol=1e-5)


def test_gradcheck_float64():
    K, V, W, b, lam, mask = make_case(2, 6, 3, torch.float64, seed=11)

    # keep every hinge residual away from the kink so the finite differences are meaningful
    def f(K, V, b):
        loss, out, lse = ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")
        return loss, out, lse

    b0 = b.detach().clone()
    b0[:] = 3.0  # r = 1 - W (o + b) stays far from 0 for both signs of W
    assert torch.autograd.gradcheck(f, (K, V, b0.requires_grad_()), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda K, V, b: ops.attention_hinge(K, V, W, b, lam, mask, loss="squared_hinge", backend="fused"),
        (K, V, b),
        eps=1e-6,
        atol=1e-7,
    )


def test_opcheck():
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


def test_forward_only_path_skips_gradient_work():
    K, V, W, b, lam, mask = make_case(2, 10, 4, torch.float64, seed=17, requires_grad=False)
    fwd = torch.ops.cina.attention_hinge_fwd(K, V, W, b, lam, mask, 0.5, 0, False)
    assert fwd[3].numel() == 0 and fwd[4].numel() == 0
    with_aux = torch.ops.cina.attention_hinge_fwd(K, V, W, b, lam, mask, 0.5, 0, True)
    for x, y in zip(fwd[:3], with_aux[:3]):
        assert torch.equal(x, y)
    # auxiliaries are what the contract says: A_i = sum_j P_ij v_j k_j, Bk_i = sum_j P_ij k_j
    S = 0.5 * K @ K.transpose(1, 2)
    pair = mask[:, :, None] & mask[:, None, :]
    P = torch.softmax(S.masked_fill(~pair, -math.inf), dim=-1).nan_to_num(0.0)
    assert torch.allclose(with_aux[3], P @ (V[..., None] * K) * mask[..., None], atol=1e-12)
    assert torch.allclose(with_aux[4], P @ K * mask[..., None], atol=1e-12)


def test_results_independent_of_thread_count():
    case = make_case(3, 300, 16, torch.float32, seed=19)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        r1 = run_both(*case)["fused"]
        torch.set_num_threads(2)
        r2 = run_both(*case)["fused"]
    finally:
        torch.set_num_threads(before)
    for name, x, y in zip(NAMES, r1, r2):
        assert torch.equal(x, y), name


def test_fake_impl_shapes():
    K, V, W, b, lam, mask = make_case(2, 12, 4, torch.float32, seed=23, requires_grad=False)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        f = [mode.from_tensor(t) for t in (K, V, W, b, lam, mask)]
        res = torch.ops.cina.attention_hinge_fwd(*f, 0.5, 0, True)
        assert [tuple(r.shape) for r in res] == [(2,), (2, 12), (2, 12), (2, 12, 4), (2, 12, 4)]
        res = torch.ops.cina.attention_hinge_fwd(*f, 0.5, 0, False)
        assert res[3].numel() == 0


def test_torch_compile_matches_eager():
    """The wrapper traces under torch.compile (fake impl + autograd registration, no graph break)."""
    case = make_case(2, 20, 4, torch.float64, seed=31)
    K, V, W, b, lam, mask = case

    def f(K, V, b):
        loss, out, lse = ops.attention_hinge(K, V, W, b, lam, mask, backend="fused")
        return loss.sum() + out.square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager_val = f(K, V, b)
    eager_grads = torch.autograd.grad(eager_val, (K, V, b))
    comp_val = compiled(K, V, b)
    comp_grads = torch.autograd.grad(comp_val, (K, V, b))
    assert torch.allclose(eager_val, comp_val)
    for x, y in zip(eager_grads, comp_grads):
        assert torch.allclose(x, y)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(K=a["K"][0]), ValueError, "K must have shape"),
        (lambda a: a.update(V=a["V"][:, :-1]), ValueError, "V must have shape"),
        (lambda a: a.update(K=a["K"].to(torch.int64)), TypeError, "float32, float64 or bfloat16"),
        (lambda a: a.update(V=a["V"].float()), TypeError, "dtype"),
        (lambda a: a.update(mask=a["mask"].float()), TypeError, "mask"),
        (lambda a: a.update(lam=-1.0), ValueError, "lam"),
        (lambda a: a.update(lam=float("nan")), ValueError, "lam"),
        (lambda a: a.update(loss="l2"), ValueError, "loss"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, exc, match):
    K, V, W, b, lam, mask = make_case(2, 5, 3, torch.float64, seed=29, requires_grad=False)
    args = dict(K=K, V=V, W=W, b=b, lam=lam, mask=mask, loss="hinge")
    mutate(args)
    with pytest.raises(exc, match=match):
        ops.attention_hinge(
            args["K"], args["V"], args["W"], args["b"], args["lam"], args["mask"], loss=args["loss"], backend="fused"
        )


def test_d_zero_refused_by_operator():
    K = torch.zeros(1, 3, 0, dtype=torch.float64)
    V = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="D >= 1"):
        torch.ops.cina.attention_hinge_fwd(
            K,
            V,
            V,
            torch.zeros(1, dtype=torch.float64),
            torch.ones(1, dtype=torch.float64),
            torch.ones(1, 3, dtype=torch.bool),
            1.0,
            0,
            False,
        )


def test_baseline_cpu_variant_matches_reference():
    """The SSE2 baseline build (used on CPUs without AVX2) passes the float64 parity check too."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import torch
        from cina_ext import ops, reference
        g = torch.Generator().manual_seed(0)
        K = torch.randn(2, 133, 5, generator=g, dtype=torch.float64, requires_grad=True)
        V = torch.randn(2, 133, generator=g, dtype=torch.float64, requires_grad=True)
        W = torch.randint(0, 2, (2, 133), generator=g).double() * 2 - 1
        b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        mask = torch.rand(2, 133, generator=g) > 0.1
        for dt in (torch.float64, torch.float32):
            args = [t.detach().to(dt).requires_grad_(t.requires_grad) for t in (K, V, W, b)]
            f = ops.attention_hinge(*args, 0.1, mask, backend="fused")
            r = reference.attention_hinge(*args, 0.1, mask)
            gf = torch.autograd.grad(f[0].sum() + f[1].sum(), (args[0], args[1], args[3]))
            gr = torch.autograd.grad(r[0].sum() + r[1].sum(), (args[0], args[1], args[3]))
            tol = 1e-10 if dt == torch.float64 else 2e-4
            for x, y in zip(list(f) + list(gf), list(r) + list(gr)):
                assert (x - y).abs().max() <= tol * max(1.0, y.abs().max()), (dt, (x - y).abs().max())
        print("OK")
        """
    )
    env = dict(os.environ, CINA_CPU_BASELINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


def test_bfloat16_inputs_compute_in_float32_with_gradients():
    torch.manual_seed(3)
    B, N, D = 2, 37, 8
    K = torch.randn(B, N, D).bfloat16().requires_grad_()
    V = (torch.randn(B, N) / N).bfloat16().requires_grad_()
    W = (torch.randint(0, 2, (B, N)) * 2 - 1).bfloat16()
    b = torch.zeros(B).bfloat16().requires_grad_()
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 30:] = False
    loss, out, lse = ops.attention_hinge(K, V, W, b, 1e-2, mask)
    assert loss.dtype == out.dtype == lse.dtype == torch.float32
    K32, V32, b32 = (t.detach().float().requires_grad_() for t in (K, V, b))
    ref = reference.attention_hinge(K32, V32, W.float(), b32, 1e-2, mask)
    for got, want in zip((loss, out, lse), ref):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    (loss.sum() + out.sum()).backward()
    (ref[0].sum() + ref[1].sum()).backward()
    assert K.grad.dtype == torch.bfloat16
    for g, g32 in ((K.grad, K32.grad), (V.grad, V32.grad), (b.grad, b32.grad)):
        torch.testing.assert_close(g.float(), g32.bfloat16().float(), atol=1e-2, rtol=2e-2)
    with pytest.raises(TypeError, match="share a dtype"):
        ops.attention_hinge(K.detach(), V.detach().float(), W, b.detach(), 1e-2)


def test_opcheck_forward_only_variant():
    """need_aux=False (the forward-only call) is still differentiable: the backward recomputes the
    auxiliaries."""
    K, V, W, b, lam, mask = make_case(2, 10, 4, torch.float64, seed=19, requires_grad=False)
    args = (K.requires_grad_(), V.requires_grad_(), W, b.requires_grad_(), lam, mask, 0.5, 1, False)
    torch.library.opcheck(torch.ops.cina.attention_hinge_fwd.default, args)


@pytest.mark.parametrize("need_aux", [True, False])
def test_opcheck_without_mask(need_aux):
    """mask is optional in the schema (Tensor? mask): None means every unit is real, and gives the
    same values and gradients as an all-true mask."""
    K, V, W, b, lam, mask = make_case(2, 9, 3, torch.float64, seed=29, requires_grad=False)
    full = torch.ones_like(mask)
    args = (K.requires_grad_(), V.requires_grad_(), W, b.requires_grad_(), lam, None, 0.5, 0, need_aux)
    torch.library.opcheck(torch.ops.cina.attention_hinge_fwd.default, args)
    got = torch.ops.cina.attention_hinge_fwd(*args)
    want = torch.ops.cina.attention_hinge_fwd(K, V, W, b, lam, full, 0.5, 0, need_aux)
    for g, w in zip(got[:3], want[:3]):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    (dk,) = torch.autograd.grad(got[0].sum() + got[1].sum(), K)
    (dk_full,) = torch.autograd.grad(want[0].sum() + want[1].sum(), K)
    torch.testing.assert_close(dk, dk_full, rtol=0, atol=0)
    # and the public op with mask=None agrees with the reference twin
    loss, out, lse = ops.attention_hinge(K, V, W, b, lam, None, scale=0.5, backend="fused")
    rl, ro, rs = reference.attention_hinge(K, V, W, b, lam, None, scale=0.5)
    torch.testing.assert_close(loss, rl)
    torch.testing.assert_close(out, ro)
    torch.testing.assert_close(lse, rs)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_double_backward_is_right_or_refused(backend):
    """A Hessian-vector product is either correct (gradgradcheck) or a clear error, never a silent 0."""
    K, V, W, b, lam, mask = make_case(2, 40, 6, torch.float64, seed=23, requires_grad=True)

    def f(K, V, b):
        loss, out, lse = ops.attention_hinge(K, V, W, b, lam, mask, loss="squared_hinge", backend=backend)
        return loss.sum() + (out * out).sum() + lse.sum()

    if backend == "reference":
        assert torch.autograd.gradgradcheck(f, (K, V, b), eps=1e-6, atol=1e-6)
        return
    (gK,) = torch.autograd.grad(f(K, V, b), K)  # first derivatives still work
    ref = torch.autograd.grad(
        ops.attention_hinge(K, V, W, b, lam, mask, loss="squared_hinge", backend="reference")[0].sum()
        + (ops.attention_hinge(K, V, W, b, lam, mask, loss="squared_hinge", backend="reference")[1] ** 2).sum()
        + ops.attention_hinge(K, V, W, b, lam, mask, loss="squared_hinge", backend="reference")[2].sum(),
        K,
    )[0]
    torch.testing.assert_close(gK, ref, rtol=1e-9, atol=1e-11)
    with pytest.raises(RuntimeError, match="double backward .* backend='reference'"):
        (g,) = torch.autograd.grad(f(K, V, b), K, create_graph=True)
        torch.autograd.grad((g * torch.ones_like(g)).sum(), K)
