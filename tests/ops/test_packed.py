"""Packed layout with offsets (cina_ext.ops.packed): conversions, bucketing, attention and solver parity."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from cina_ext import ops, reference
from cina_ext.ops.packed import (
    attention_hinge_packed,
    check_offsets,
    dual_solve_packed,
    length_buckets,
    offsets_from_lengths,
    pad_packed,
    qp_solve_packed,
    unpack_padded,
)

packed = importlib.import_module("cina_ext.ops.packed")
solver = importlib.import_module("cina_ext.ops.qp_solve")

F64 = torch.float64
ATT_BACKENDS = ["reference"] + (["fused"] if ops.has_extension() else [])
ODD_LENGTHS = [3, 0, 1, 7, 2, 0, 5, 1]
# log-uniform-ish lengths from 1 to 300: several buckets at the default ratio
WIDE_LENGTHS = [1, 2, 3, 5, 8, 9, 13, 20, 31, 33, 47, 70, 100, 101, 150, 220, 300, 4, 0, 64]


def _packed_inputs(lengths, D=4, seed=0, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    off = offsets_from_lengths(lengths, device=device)
    T = sum(lengths)
    K = torch.randn(T, D, generator=g, dtype=dtype).to(device)
    V = (torch.randn(T, generator=g, dtype=dtype) / 4).to(device)
    W = (torch.randint(0, 2, (T,), generator=g) * 2 - 1).to(dtype).to(device)
    b = (0.3 * torch.randn(len(lengths), generator=g, dtype=dtype)).to(device)
    lam = (0.05 + torch.rand(len(lengths), generator=g, dtype=dtype)).to(device)
    return off, K, V, W, b, lam


def _slices(lengths):
    s = 0
    for n in lengths:
        yield slice(s, s + n)
        s += n


# ------------------------------------------------------------------------------------------------
# offsets and conversions
# ------------------------------------------------------------------------------------------------


def test_offsets_from_lengths():
    assert offsets_from_lengths([3, 0, 1]).tolist() == [0, 3, 3, 4]
    off = offsets_from_lengths(torch.tensor([2, 5], dtype=torch.int32))
    assert off.dtype == torch.int64 and off.tolist() == [0, 2, 7]
    assert offsets_from_lengths([]).tolist() == [0]
    with pytest.raises(ValueError, match="non-negative"):
        offsets_from_lengths([2, -1])
    with pytest.raises(TypeError, match="integers"):
        offsets_from_lengths([1.5, 2])
    with pytest.raises(TypeError, match="integers"):
        offsets_from_lengths(torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "offsets, total, exc, msg",
    [
        ([0, 2, 5], 5, TypeError, "torch.Tensor"),
        (torch.tensor([0, 2, 5], dtype=torch.int32), 5, TypeError, "int64"),
        (torch.tensor([0.0, 2.0, 5.0]), 5, TypeError, "int64"),
        (torch.tensor([[0, 2, 5]]), 5, ValueError, "1-D"),
        (torch.zeros(0, dtype=torch.int64), 0, ValueError, "at least one"),
        (torch.tensor([1, 2, 5]), 5, ValueError, "start at 0"),
        (torch.tensor([0, 4, 3, 5]), 5, ValueError, "non-decreasing"),
        (torch.tensor([0, 2, 4]), 5, ValueError, r"offsets\[-1\] = 4 must equal .* \(5\)"),
        (torch.tensor([0, 2, 6]), 5, ValueError, "must equal"),
    ],
)
def test_bad_offsets(offsets, total, exc, msg):
    with pytest.raises(exc, match=msg):
        check_offsets(offsets, total, torch.device("cpu"))
    # every public entry point validates the same way
    x = torch.zeros(total, 3, dtype=F64)
    with pytest.raises(exc, match=msg):
        pad_packed(x, offsets)
    K = torch.zeros(total, 2, dtype=F64)
    with pytest.raises(exc, match=msg):
        attention_hinge_packed(K, K[:, 0], K[:, 0], torch.zeros(2, dtype=F64), 0.1, offsets)


def test_offsets_wrong_device():
    off = torch.tensor([0, 2, 5], device="meta")
    with pytest.raises(ValueError, match="offsets is on meta but the data are on cpu"):
        pad_packed(torch.zeros(5), off)
    with pytest.raises(ValueError, match="is on meta"):
        unpack_padded(torch.zeros(2, 3), off)


def test_pad_unpack_roundtrip_and_mask():
    lengths = ODD_LENGTHS
    off = offsets_from_lengths(lengths)
    T = sum(lengths)
    x = torch.arange(T * 2, dtype=F64).reshape(T, 2) + 1.0
    xp, mask = pad_packed(x, off, fill=-7.0)
    assert xp.shape == (len(lengths), max(lengths), 2) and mask.shape == (len(lengths), max(lengths))
    assert mask.sum(1).tolist() == lengths
    for i, sl in enumerate(_slices(lengths)):
        n = lengths[i]
        assert torch.equal(xp[i, :n], x[sl])
        assert bool((xp[i, n:] == -7.0).all())
        assert bool(mask[i, :n].all()) and not bool(mask[i, n:].any())
    assert torch.equal(unpack_padded(xp, off), x)
    # max_len pads further; too small is refused
    xp2, mask2 = pad_packed(x[:, 0], off, max_len=10)
    assert xp2.shape == (len(lengths), 10) and mask2.sum().item() == T
    assert torch.equal(unpack_padded(xp2, off), x[:, 0])
    with pytest.raises(ValueError, match="max_len"):
        pad_packed(x, off, max_len=3)
    with pytest.raises(ValueError, match="datasets but offsets describe"):
        unpack_padded(xp[:-1], off)
    with pytest.raises(ValueError, match="padded length"):
        unpack_padded(xp[:, :3], off)


def test_pad_unpack_gradients():
    lengths = [2, 0, 3, 1]
    off = offsets_from_lengths(lengths)
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: pad_packed(t, off)[0], (x,))
    xp = torch.randn(4, 3, 3, dtype=F64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: unpack_padded(t, off), (xp,))
    # the gradient of unpack is zero on padding
    unpack_padded(xp, off).sum().backward()
    _, mask = pad_packed(x.detach(), off)
    assert torch.equal(xp.grad != 0, mask.unsqueeze(-1).expand_as(xp))


def test_length_buckets_bound_and_cover():
    lens = torch.tensor(WIDE_LENGTHS)
    for ratio in (1.5, 2.0, 1.1):
        buckets = length_buckets(lens, ratio)
        ids = torch.cat([ds for ds, _ in buckets]).sort().values
        assert ids.tolist() == list(range(len(WIDE_LENGTHS)))  # each dataset exactly once
        for ds, nmax in buckets:
            assert nmax == int(lens[ds].max())
            # every dataset is padded to at most `ratio` times its length (empties to 0)
            assert bool((nmax <= ratio * lens[ds]).all()) or nmax == 0
            assert nmax * ds.numel() <= ratio * int(lens[ds].sum()) + 1e-9
        assert len(buckets) >= 4
    assert len(length_buckets(lens, None)) == 1
    assert len(length_buckets(torch.tensor([5, 5, 5, 0, 0]))) == 2
    assert length_buckets(torch.tensor([], dtype=torch.int64)) == []


# ------------------------------------------------------------------------------------------------
# attention + hinge
# ------------------------------------------------------------------------------------------------


def _loop_attention(K, V, W, b, lam, lengths, loss, backend):
    """Per-dataset loop over the padded operator (B = 1, no padding)."""
    losses, outs, lses = [], [], []
    for i, sl in enumerate(_slices(lengths)):
        lam_i = lam[i : i + 1] if isinstance(lam, torch.Tensor) and lam.dim() == 1 else lam
        l, o, s = ops.attention_hinge(
            K[sl][None], V[sl][None], W[sl][None], b[i : i + 1], lam_i, loss=loss, backend=backend
        )
        losses.append(l)
        outs.append(o[0])
        lses.append(s[0])
    return torch.cat(losses), torch.cat(outs), torch.cat(lses)


def _grads(fn, K, V, b, seed=1):
    K = K.detach().clone().requires_grad_()
    V = V.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    l, o, s = fn(K, V, b)
    g = torch.Generator().manual_seed(seed)
    wo = torch.randn(o.shape, generator=g, dtype=o.dtype)
    ws = torch.randn(s.shape, generator=g, dtype=s.dtype)
    (l.sum() + (wo * o).sum() + 0.1 * (ws * s).sum()).backward()
    return (l.detach(), o.detach(), s.detach()), (K.grad, V.grad, b.grad)


@pytest.mark.parametrize("backend", ATT_BACKENDS)
@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
@pytest.mark.parametrize(
    "lengths", [ODD_LENGTHS, WIDE_LENGTHS, [9], [1], [0, 0]], ids=["odd", "wide", "single", "one-unit", "all-empty"]
)
def test_attention_packed_matches_loop(lengths, loss, backend):
    off, K, V, W, b, lam = _packed_inputs(lengths, seed=len(lengths))
    packed_fn = lambda K_, V_, b_: attention_hinge_packed(K_, V_, W, b_, lam, off, loss=loss, backend=backend)
    loop_fn = lambda K_, V_, b_: _loop_attention(K_, V_, W, b_, lam, lengths, loss, backend)
    (lp, op, sp), gp = _grads(packed_fn, K, V, b)
    (ll, ol, sl), gl = _grads(loop_fn, K, V, b)
    assert lp.shape == (len(lengths),) and op.shape == (sum(lengths),) and sp.shape == (sum(lengths),)
    for a, e in zip((lp, op, sp) + gp, (ll, ol, sl) + gl):
        assert e is not None and a is not None
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    # empty datasets: loss 0 and a zero intercept gradient, like fully masked rows of ops
    empty = torch.tensor([n == 0 for n in lengths])
    assert bool((lp[empty] == 0).all()) and bool((gp[2][empty] == 0).all())


@pytest.mark.parametrize("backend", ATT_BACKENDS)
def test_attention_packed_matches_reference_and_padded(backend):
    lengths = WIDE_LENGTHS
    off, K, V, W, b, lam = _packed_inputs(lengths, seed=3)
    # float64 reference twin on the single padded batch
    ref_fn = lambda K_, V_, b_: _via_padded(reference.attention_hinge, K_, V_, W, b_, lam, off)
    (lr, orf, sr), gr = _grads(ref_fn, K, V, b)
    for bucket in (True, False, 3.0):
        fn = lambda K_, V_, b_: attention_hinge_packed(K_, V_, W, b_, lam, off, backend=backend, bucket=bucket)
        (lp, op, sp), gp = _grads(fn, K, V, b)
        for a, e in zip((lp, op, sp) + gp, (lr, orf, sr) + gr):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def _via_padded(fn, K, V, W, b, lam, off):
    Kp, mask = pad_packed(K, off)
    Vp, _ = pad_packed(V, off)
    Wp, _ = pad_packed(W, off)
    l, o, s = fn(Kp, Vp, Wp, b, lam, mask)
    return l, unpack_padded(o, off), unpack_padded(s, off)


def test_attention_packed_uses_several_buckets(monkeypatch):
    lengths = WIDE_LENGTHS
    off, K, V, W, b, lam = _packed_inputs(lengths, seed=4)
    shapes = []
    real = ops.attention_hinge

    def spy(Kp, *a, **k):
        shapes.append(tuple(Kp.shape[:2]))
        return real(Kp, *a, **k)

    monkeypatch.setattr(packed, "_attention_hinge", spy)
    attention_hinge_packed(K, V, W, b, lam, off, backend="reference")
    assert len(shapes) >= 4
    padded = sum(n * m for n, m in shapes)
    assert padded <= packed.DEFAULT_BUCKET_RATIO * sum(lengths)
    assert sum(n for n, _ in shapes) == len(lengths)
    shapes.clear()
    attention_hinge_packed(K, V, W, b, lam, off, backend="reference", bucket=False)
    assert shapes == [(len(lengths), max(lengths))]


@pytest.mark.parametrize("backend", ATT_BACKENDS)
def test_attention_packed_gradcheck(backend):
    lengths = [2, 0, 1, 3]
    off, K, V, W, b, _ = _packed_inputs(lengths, D=3, seed=5)
    K.requires_grad_()
    V.requires_grad_()
    b.requires_grad_()
    for loss in ("hinge", "squared_hinge"):

        def f(K_, V_, b_):
            return attention_hinge_packed(K_, V_, W, b_, 0.3, off, loss=loss, backend=backend, bucket=1.2)

        assert torch.autograd.gradcheck(f, (K, V, b), eps=1e-6, atol=1e-6)


def test_attention_packed_scalar_lam_and_float32():
    lengths = [4, 1, 0, 6]
    off, K, V, W, b, _ = _packed_inputs(lengths, seed=6, dtype=torch.float32)
    lp, op, sp = attention_hinge_packed(K, V, W, b, torch.tensor(0.2), off)
    ll, ol, sl = _loop_attention(K, V, W, b, 0.2, lengths, "hinge", "auto")
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op, ol, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sp, sl, rtol=1e-5, atol=1e-5)


def test_attention_packed_no_datasets():
    off = offsets_from_lengths([])
    K = torch.zeros(0, 3, dtype=F64)
    l, o, s = attention_hinge_packed(K, K[:, 0], K[:, 0], torch.zeros(0, dtype=F64), 0.1, off)
    assert l.shape == (0,) and o.shape == (0,) and s.shape == (0,)


def test_attention_packed_bad_inputs():
    off, K, V, W, b, lam = _packed_inputs([2, 3], seed=7)
    with pytest.raises(ValueError, match=r"K must have the packed shape \(total, D\)"):
        attention_hinge_packed(K[None], V, W, b, lam, off)
    with pytest.raises(ValueError, match=r"V must have the packed shape \(5,\)"):
        attention_hinge_packed(K, V[:4], W, b, lam, off)
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        attention_hinge_packed(K, V, W, b[:1], lam, off)
    with pytest.raises(ValueError, match=r"lam must be a float or a tensor of shape \(2,\)"):
        attention_hinge_packed(K, V, W, b, lam[:1], off)
    with pytest.raises(ValueError, match="bucket must be"):
        attention_hinge_packed(K, V, W, b, lam, off, bucket=0.5)
    with pytest.raises(TypeError, match="dtype"):
        attention_hinge_packed(K, V.float(), W, b, lam, off)


# ------------------------------------------------------------------------------------------------
# solvers
# ------------------------------------------------------------------------------------------------


def _solver_inputs(lengths, p=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    X = torch.randn(T, p, generator=g, dtype=F64)
    parts = []
    for n in lengths:  # both arms present in every dataset
        w = torch.ones(n, dtype=F64)
        w[torch.randperm(n, generator=g)[: max(1, n // 2)]] = -1.0
        parts.append(w)
    W = torch.cat(parts)
    X = X + 0.5 * W.unsqueeze(1)
    return offsets_from_lengths(lengths), X, W


SOLVER_LENGTHS = [2, 7, 3, 40, 11, 5, 25, 2, 60, 16]


@pytest.mark.parametrize("backend", ["reference", "fused"] if ops.has_extension() else ["reference"])
@pytest.mark.parametrize(
    "estimand, kernel", [("overlap", "rbf"), ("overlap", "cina"), ("ate", "linear"), ("att", "rbf")]
)
def test_dual_solve_packed_matches_loop(estimand, kernel, backend):
    lengths = SOLVER_LENGTHS
    off, X, W = _solver_inputs(lengths, seed=1)
    lam = torch.linspace(0.05, 0.5, len(lengths), dtype=F64)
    kw = dict(kernel=kernel, estimand=estimand, tol=1e-9, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = dual_solve_packed(X, W, off, lam, **kw)
        res_flat = dual_solve_packed(X, W, off, lam, bucket=False, **kw)
    assert len(length_buckets(torch.tensor(lengths))) >= 3
    assert res.weights.shape == (sum(lengths),) and res.alpha.shape == (sum(lengths),)
    assert res.intercept.shape == (len(lengths),) and res.converged.dtype == torch.bool
    assert bool(res.converged.all()) and res.estimand == estimand
    for i, sl in enumerate(_slices(lengths)):
        r = solver.dual_solve(X[sl][None], W[sl][None], lam[i : i + 1], **kw)
        torch.testing.assert_close(res.weights[sl], r.weights[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(res.alpha[sl], r.alpha[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(res.objective[i], r.objective[0], rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(res.intercept[i], r.intercept[0], rtol=1e-5, atol=1e-6)
        # weights sum to one per arm
        for arm in (1.0, -1.0):
            assert abs(float(res.weights[sl][W[sl] == arm].sum()) - 1.0) < 1e-9
    torch.testing.assert_close(res_flat.weights, res.weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(res_flat.objective, res.objective, rtol=1e-8, atol=1e-9)


def test_dual_solve_packed_matches_reference_qp():
    import importlib

    reference_qp = importlib.import_module("cina_ext.reference.qp_solve")

    lengths = [4, 9, 2, 13]
    off, X, W = _solver_inputs(lengths, seed=2)
    res = dual_solve_packed(X, W, off, 0.2, kernel="rbf", tol=1e-9, backend="auto")
    Xp, mask = pad_packed(X, off)
    Wp, _ = pad_packed(W, off, fill=1.0)
    ref = reference_qp.dual_solve(Xp, Wp, 0.2, kernel="rbf", mask=mask, tol=1e-9)
    torch.testing.assert_close(res.weights, unpack_padded(ref.weights, off), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.objective, ref.objective, rtol=1e-7, atol=1e-8)


def test_dual_solve_packed_errors_use_global_numbers():
    lengths = [4, 3, 5]
    off, X, W = _solver_inputs(lengths, seed=3)
    W2 = W.clone()
    W2[4:7] = 1.0  # dataset 1 has only treated units
    with pytest.raises(ValueError, match=r"dataset\(s\) \[1\] have an empty treatment arm"):
        dual_solve_packed(X, W2, off, 0.1)
    off0 = offsets_from_lengths([4, 0, 3, 1, 5])  # empty and length-1 datasets cannot be balanced
    with pytest.raises(ValueError, match=r"dataset\(s\) \[1, 3\] have an empty treatment arm"):
        dual_solve_packed(torch.cat([X, X[:1]]), torch.cat([W, W[:1]]), off0, 0.1)
    W3 = W.clone()
    W3[2] = 0.5
    with pytest.raises(ValueError, match="-1 .* or \\+1"):
        dual_solve_packed(X, W3, off, 0.1)
    with pytest.raises(ValueError, match="precomputed"):
        dual_solve_packed(X, W, off, 0.1, kernel="precomputed")
    with pytest.raises(ValueError, match=r"W must have the packed shape \(12,\)"):
        dual_solve_packed(X, W[:-1], off, 0.1)
    with pytest.raises(ValueError, match=r"lam must be a scalar or a tensor of shape \(3,\)"):
        dual_solve_packed(X, W, off, torch.ones(2, dtype=F64))


def _pack_blocks(blocks):
    return torch.cat([q.reshape(-1) for q in blocks]) if blocks else torch.zeros(0, dtype=F64)


@pytest.mark.parametrize("equality", [False, True])
def test_qp_solve_packed_matches_loop(equality):
    lengths = [3, 0, 1, 9, 4, 30, 2, 17]
    g = torch.Generator().manual_seed(8)
    blocks, ps, cs = [], [], []
    for n in lengths:
        A = torch.randn(n, n + 2, generator=g, dtype=F64)
        blocks.append(A @ A.T / n + 0.1 * torch.eye(n, dtype=F64))
        ps.append(torch.rand(n, generator=g, dtype=F64))
        cs.append(torch.ones(n, dtype=F64))
    off = offsets_from_lengths(lengths)
    Q, p, c = _pack_blocks(blocks), torch.cat(ps), torch.cat(cs)
    d = torch.tensor([1.0 if n else 0.0 for n in lengths], dtype=F64)  # empty dataset: 0 = 0
    upper = torch.full((sum(lengths),), 2.0, dtype=F64)
    kw = dict(tol=1e-10)
    if equality:
        res = qp_solve_packed(Q, p, off, 0.0, upper, c, d, **kw)
    else:
        res = qp_solve_packed(Q, p, off, 0.0, upper, **kw)
    assert res.x.shape == (sum(lengths),) and bool(res.converged.all())
    for i, sl in enumerate(_slices(lengths)):
        n = lengths[i]
        args = (blocks[i][None], ps[i][None], 0.0, upper[sl][None])
        if equality:
            r = solver.qp_solve(*args, cs[i][None], d[i : i + 1], **kw)
        else:
            r = solver.qp_solve(*args, **kw)
        torch.testing.assert_close(res.x[sl], r.x[0], rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(res.objective[i], r.objective[0], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(res.nu[i], r.nu[0], rtol=1e-6, atol=1e-7)
        if n == 0:
            assert float(res.objective[i]) == 0.0
    with pytest.raises(ValueError, match=r"Q must be packed .* shape \(" + str(sum(n * n for n in lengths))):
        qp_solve_packed(Q[:-1], p, off)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_packed_cuda_matches_cpu():
    lengths = WIDE_LENGTHS
    off, K, V, W, b, lam = _packed_inputs(lengths, seed=9)
    dev = "cuda"
    offc = off.to(dev)
    xp, mask = pad_packed(K.to(dev), offc)
    assert torch.equal(unpack_padded(xp, offc).cpu(), K)
    fn_cpu = lambda K_, V_, b_: attention_hinge_packed(K_, V_, W, b_, lam, off)
    (lc, oc, sc), gc = _grads(fn_cpu, K, V, b)
    Kc, Vc, bc = (t.to(dev).requires_grad_() for t in (K, V, b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        l, o, s = attention_hinge_packed(Kc, Vc, W.to(dev), bc, lam.to(dev), offc)
    gen = torch.Generator().manual_seed(1)
    wo = torch.randn(o.shape, generator=gen, dtype=o.dtype).to(dev)
    ws = torch.randn(s.shape, generator=gen, dtype=s.dtype).to(dev)
    (l.sum() + (wo * o).sum() + 0.1 * (ws * s).sum()).backward()
    for a, e in zip((l, o, s, Kc.grad, Vc.grad, bc.grad), (lc, oc, sc) + gc):
        torch.testing.assert_close(a.detach().cpu(), e, rtol=1e-8, atol=1e-8)
