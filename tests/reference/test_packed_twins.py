"""The packed twins of cina_ext.reference (a loop over datasets) agree with the packed operators
of cina_ext.ops (length buckets, one padded call each), on every device, including empty and
length-1 datasets."""

import pytest
import torch

from cina_ext import ops, reference
from cina_ext.reference.packed import check_offsets, offsets_from_lengths


def _inputs(lengths, D=5, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    K = torch.randn(total, D, generator=g, dtype=dtype)
    V = torch.randn(total, generator=g, dtype=dtype) / 10
    W = torch.where(torch.rand(total, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    b = torch.randn(len(lengths), generator=g, dtype=dtype) / 10
    off = offsets_from_lengths(lengths)
    return [t.to(device) for t in (K, V, W, b, off)]


@pytest.mark.parametrize("lengths", [[7, 0, 1, 12, 3], [1], [0, 0]])
def test_attention_packed_twin_matches_operator(lengths, device):
    K, V, W, b, off = _inputs(lengths, device=device)
    K.requires_grad_(True)
    ref = reference.attention_hinge_packed(K, V, W, b, 0.05, off)
    got = ops.attention_hinge_packed(K, V, W, b, 0.05, off, backend="auto")
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)
    if sum(lengths):
        (gr,) = torch.autograd.grad(ref[0].sum() + ref[1].sum(), K)
        (gg,) = torch.autograd.grad(got[0].sum() + got[1].sum(), K)
        torch.testing.assert_close(gg, gr, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("estimand", ["overlap", "ate", "att"])
def test_dual_solve_packed_twin_matches_operator(estimand, device):
    lengths = [9, 2, 14]
    X, _, _, _, off = _inputs(lengths, D=3, seed=1, device=device)
    W = torch.tensor(([1.0, -1.0] * 10)[:9] + [1.0, -1.0] + ([-1.0, 1.0, 1.0] * 5)[:14], dtype=X.dtype, device=device)
    ref = reference.dual_solve_packed(X, W, off, 0.1, estimand=estimand, tol=1e-9)
    got = ops.dual_solve_packed(X, W, off, 0.1, estimand=estimand, tol=1e-9)
    assert bool(ref.converged.all()) and bool(got.converged.all())
    torch.testing.assert_close(got.weights, ref.weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.objective, ref.objective, rtol=1e-7, atol=1e-9)


def test_qp_solve_packed_twin_matches_operator(device):
    lengths = [4, 0, 6]
    g = torch.Generator().manual_seed(2)
    blocks, ps = [], []
    for n in lengths:
        A = torch.randn(n, n, generator=g, dtype=torch.float64)
        blocks.append((A @ A.T + torch.eye(n, dtype=torch.float64)).reshape(-1))
        ps.append(torch.randn(n, generator=g, dtype=torch.float64))
    Q, p = torch.cat(blocks).to(device), torch.cat(ps).to(device)
    off = offsets_from_lengths(lengths, device=device)
    ref = reference.qp_solve_packed(Q, p, off, 0.0, 1.0, tol=1e-10)
    got = ops.qp_solve_packed(Q, p, off, 0.0, 1.0, tol=1e-10)
    torch.testing.assert_close(got.x, ref.x, rtol=1e-6, atol=1e-8)
    assert ref.x.shape == (sum(lengths),) and ref.objective.shape == (len(lengths),)


def test_offsets_are_checked():
    with pytest.raises(ValueError, match="must start at 0"):
        check_offsets(torch.tensor([1, 3]), 3)
    with pytest.raises(ValueError, match="non-decreasing"):
        check_offsets(torch.tensor([0, 3, 2, 4]), 4)
