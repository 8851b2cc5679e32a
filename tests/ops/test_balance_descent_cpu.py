"""The compiled CPU balancing descent (cina_ext.ops.balance_descent, backend="fused").

Expected values come from the pure-PyTorch twin (cina_ext.reference.balance_descent) run on the
float64 Gram matrices, and from the objective evaluated directly by its definition; never from the
kernel under test.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cina_ext import ops
from cina_ext._core.extension import extension_error, has_extension

ref_descent = importlib.import_module("cina_ext.reference.balance_descent")

pytestmark = pytest.mark.skipif(not has_extension(), reason=f"compiled extension missing: {extension_error()}")

F64 = torch.float64
STEPS, STEP, MOM = 32, 32.0, 0.9


def make_problems(B, L, N, *, att=False, pad=0, seed=0, p=5, treated_share=0.4):
    """B RBF Gram matrices (float32), L rows each; units beyond N - pad are padding."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(B, N, p, generator=g, dtype=F64)
    K = torch.exp(-(torch.cdist(Z, Z) ** 2) / p).float()
    R = B * L
    arm = (torch.rand(R, N, generator=g) < treated_share).to(torch.int8)
    arm[:, 0], arm[:, min(1, N - 1)] = 1, 0  # both arms present (unless N == 1)
    if pad:
        arm[:, N - pad :] = -1
    valid = arm >= 0
    t1, t0 = (arm == 1).to(F64), (arm == 0).to(F64)
    if att:
        target = t1 / t1.sum(-1, keepdim=True)
        moving = arm == 0
    else:
        target = valid.to(F64) / valid.sum(-1, keepdim=True)
        moving = valid
    w = torch.rand(R, N, generator=g, dtype=F64) * valid
    w1 = w / (w * t1).sum(-1, keepdim=True).clamp_min(1e-300)
    w0 = w / (w * t0).sum(-1, keepdim=True).clamp_min(1e-300)
    w = torch.where(arm == 1, w1, w0) * valid
    if att:
        w = torch.where(arm == 1, target, w)
    lam = torch.rand(R, generator=g, dtype=F64) * 0.05 + 1e-3
    return K, w, arm, target, moving, lam


def objective(K, w, arm, target, moving, lam):
    """The objective by its definition, in float64."""
    R, N = w.shape
    L = R // K.shape[0]
    Kr = K.double().repeat_interleave(L, 0)
    out = lam * (w * w * moving).sum(-1)
    for a in (1, 0):
        d = w * (arm == a) - target
        out = out + (d.unsqueeze(-2) @ Kr @ d.unsqueeze(-1)).reshape(-1)
    return out


def check_against_float64_twin(args, steps=STEPS, **kw):
    K, w, arm, target, moving, lam = args
    wf, of = ops.balance_descent(K, w, arm, target, moving, lam, steps, STEP, MOM, backend="fused", **kw)
    wr, orf = ref_descent.balance_descent(K.double(), w, arm, target, moving, lam, steps, STEP, MOM)
    scale = wr.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    # float32 products against the float64 twin: the steps amplify the rounding a little
    assert float(((wf - wr).abs() / scale).max()) < 2e-4
    torch.testing.assert_close(of, orf, rtol=2e-5, atol=1e-12)
    # the objective returned is that of the weights returned
    torch.testing.assert_close(of, objective(K, wf, arm, target, moving, lam), rtol=1e-5, atol=1e-12)
    return wf, of


@pytest.mark.parametrize(
    "B,L,N,att,pad",
    [
        (3, 1, 50, False, 0),
        (2, 3, 37, True, 0),  # a penalty grid: 3 rows per Gram matrix
        (4, 2, 101, False, 7),  # odd size, padding
        (1, 1, 300, False, 0),  # fewer rows than threads: the products split across threads
        (1, 2, 513, True, 5),
        (5, 1, 2, False, 0),  # the smallest dataset with both arms
    ],
)
def test_matches_the_float64_twin(B, L, N, att, pad):
    check_against_float64_twin(make_problems(B, L, N, att=att, pad=pad, seed=B * 100 + N))


def test_steps_lower_the_objective_and_zero_steps_return_the_start():
    args = make_problems(3, 1, 80, seed=7)
    K, w, arm, target, moving, lam = args
    start = objective(*args)
    w0, o0 = ops.balance_descent(K, w, arm, target, moving, lam, 0, STEP, MOM, backend="fused")
    torch.testing.assert_close(w0, w, rtol=0, atol=0)
    torch.testing.assert_close(o0, start, rtol=1e-6, atol=1e-12)
    _, o = check_against_float64_twin(args)
    assert bool((o < 0.5 * start).all())
    # each arm's moving weights stay a distribution; the fixed ones (ATT treated) do not move
    K, w, arm, target, moving, lam = args = make_problems(2, 1, 60, att=True, seed=8)
    wf, _ = check_against_float64_twin(args)
    assert bool((wf >= 0).all())
    torch.testing.assert_close((wf * (arm == 0)).sum(-1), torch.ones(2, dtype=F64))
    torch.testing.assert_close(wf[arm == 1], w[arm == 1], rtol=0, atol=0)


def test_padding_does_not_change_a_dataset():
    """The same dataset alone and padded inside a batch gives the same steps (the sums skip the
    trailing padding, so even the rounding agrees)."""
    K, w, arm, target, moving, lam = make_problems(1, 1, 90, seed=9)
    P = 130
    Kp = torch.zeros(2, P, P)
    Kp[0, :90, :90] = K[0]
    Kp[1] = make_problems(1, 1, P, seed=10)[0][0]
    pad = lambda t, v: torch.cat([t, torch.full((1, P - 90), v, dtype=t.dtype)], 1)  # noqa: E731
    other = make_problems(1, 1, P, seed=10)
    wp = torch.cat([pad(w, 0.0), other[1]])
    ap = torch.cat([pad(arm, -1), other[2]])
    tp = torch.cat([pad(target, 0.0), other[3]])
    mp = torch.cat([pad(moving, False), other[4]])
    lp = torch.cat([lam, other[5]])
    alone = ops.balance_descent(K, w, arm, target, moving, lam, STEPS, STEP, MOM, backend="fused")
    batch = ops.balance_descent(Kp, wp, ap, tp, mp, lp, STEPS, STEP, MOM, backend="fused")
    assert torch.equal(batch[0][0, :90], alone[0][0]) and bool((batch[0][0, 90:] == 0).all())
    assert torch.equal(batch[1][:1], alone[1])


def test_empty_batch_one_unit_and_an_empty_arm():
    K, w, arm, target, moving, lam = make_problems(2, 1, 10, seed=11)
    e = ops.balance_descent(K[:0], w[:0], arm[:0], target[:0], moving[:0], lam[:0], 5, STEP, MOM, backend="fused")
    assert e[0].shape == (0, 10) and e[1].shape == (0,)
    # one unit (treated only): nothing can move, the start comes back
    one = make_problems(1, 1, 1, seed=12)
    w1, o1 = ops.balance_descent(*one, 5, STEP, MOM, backend="fused")
    torch.testing.assert_close(w1, one[1], rtol=0, atol=0)
    assert bool(torch.isfinite(o1).all())
    # no control unit at all: finite weights, the treated still a distribution
    arm2 = torch.ones_like(arm)
    w2 = torch.full_like(w, 0.1)
    wf, of = ops.balance_descent(K, w2, arm2, target, moving, lam, 5, STEP, MOM, backend="fused")
    assert bool(torch.isfinite(wf).all() and torch.isfinite(of).all())
    torch.testing.assert_close(wf.sum(-1), torch.ones(2, dtype=F64))


def test_auto_uses_the_kernel_and_float64_K_runs_the_twin():
    args = make_problems(2, 1, 40, seed=13)
    K = args[0]
    a = ops.balance_descent(*args, 8, STEP, MOM)
    f = ops.balance_descent(*args, 8, STEP, MOM, backend="fused")
    assert torch.equal(a[0], f[0])
    d = ops.balance_descent(K.double(), *args[1:], 8, STEP, MOM)
    r = ref_descent.balance_descent(K.double(), *args[1:], 8, STEP, MOM)
    assert torch.equal(d[0], r[0])
    with pytest.raises(RuntimeError, match="float32 K on the CPU"):
        ops.balance_descent(K.double(), *args[1:], 8, STEP, MOM, backend="fused")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.balance_descent(*args, 8, STEP, MOM, backend="cuda")


def test_bad_inputs_raise_clear_errors():
    K, w, arm, target, moving, lam = make_problems(2, 1, 12, seed=14)
    call = lambda *a, **k: ops.balance_descent(*a, **k, backend="fused")  # noqa: E731
    with pytest.raises(ValueError, match="shape \\(B, N, N\\)"):
        call(K[:, :5], w, arm, target, moving, lam, 3, STEP, MOM)
    with pytest.raises(ValueError, match="whole number of rows"):
        call(
            K,
            w[:1].expand(3, -1).contiguous(),
            arm[:1].expand(3, -1),
            target[:1].expand(3, -1),
            moving[:1].expand(3, -1),
            lam[:1].expand(3),
            3,
            STEP,
            MOM,
        )
    with pytest.raises(TypeError, match="w must be float64"):
        call(K, w.float(), arm, target, moving, lam, 3, STEP, MOM)
    with pytest.raises(TypeError, match="arm must be int8"):
        call(K, w, arm.long(), target, moving, lam, 3, STEP, MOM)
    with pytest.raises(ValueError, match="arm must hold"):
        call(K, w, arm * 3, target, moving, lam, 3, STEP, MOM)
    with pytest.raises(ValueError, match="lam must be finite and > 0"):
        call(K, w, arm, target, moving, -lam, 3, STEP, MOM)
    with pytest.raises(ValueError, match="w and target must be finite"):
        call(K, w.masked_fill(w > 0.2, float("nan")), arm, target, moving, lam, 3, STEP, MOM)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            call(K, w, arm, target, moving, lam, bad, STEP, MOM)
    with pytest.raises(ValueError, match="step_size"):
        call(K, w, arm, target, moving, lam, 3, 0.0, MOM)
    with pytest.raises(ValueError, match="momentum"):
        call(K, w, arm, target, moving, lam, 3, STEP, 1.0)
    Kn = K.clone()
    Kn[0, 3, 4] = float("nan")
    with pytest.raises(RuntimeError, match="not finite"):
        call(Kn, w, arm, target, moving, lam, 3, STEP, MOM)


def test_opcheck_and_fake_shapes():
    args = make_problems(2, 2, 17, seed=15)
    torch.library.opcheck(torch.ops.cina.balance_descent.default, (*args, 4, STEP, MOM))


def test_baseline_variant_matches_the_twin():
    """The instruction-set baseline (CINA_CPU_BASELINE=1) in a fresh process."""
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, %r)
        import torch
        from test_balance_descent_cpu import check_against_float64_twin, make_problems
        check_against_float64_twin(make_problems(3, 2, 77, att=True, pad=4, seed=16))
        check_against_float64_twin(make_problems(1, 1, 300, seed=17))
        print("OK")
        """
        % os.path.dirname(__file__)
    )
    env = dict(os.environ, CINA_CPU_BASELINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


def test_one_and_two_threads_agree_bitwise():
    args = make_problems(3, 1, 400, seed=18)  # one row per thread
    one_row = make_problems(1, 1, 400, seed=19)  # one row, its products split across threads
    big = make_problems(3, 1, 1100, seed=20)  # large matrices: the rows in turn, products split
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = ops.balance_descent(*args, 10, STEP, MOM, backend="fused")
        a1 = ops.balance_descent(*one_row, 10, STEP, MOM, backend="fused")
        a2 = ops.balance_descent(*big, 3, STEP, MOM, backend="fused")
        torch.set_num_threads(2)
        b = ops.balance_descent(*args, 10, STEP, MOM, backend="fused")
        b1 = ops.balance_descent(*one_row, 10, STEP, MOM, backend="fused")
        b2 = ops.balance_descent(*big, 3, STEP, MOM, backend="fused")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a[0], b[0]) and torch.equal(a1[0], b1[0]) and torch.equal(a2[0], b2[0])
    check_against_float64_twin(big, steps=3)


def make_grid(B, L, N, *, att=False, pad=0, seed=0):
    """B datasets with L penalties each: the L rows of a dataset share its matrix, arms, target
    and start and differ only in lam (what the zero-shot estimator's lam="auto" passes)."""
    K, w, arm, target, moving, _ = make_problems(B, 1, N, att=att, pad=pad, seed=seed)
    rep = [t.repeat_interleave(L, 0) for t in (w, arm, target, moving)]
    lam = torch.tensor([1e-4, 3e-3, 0.1, 1.0, 2e-2, 5e-4, 0.3, 7e-3, 1e-2][:L], dtype=F64).repeat(B)
    return (K, *rep, lam)


@pytest.mark.parametrize(
    "B,L,N,att,pad",
    [
        (3, 9, 60, False, 0),  # a grid per dataset, one group per thread
        (2, 5, 45, True, 3),  # ATT, padding, a tail of the 8-lane sums
        (1, 9, 301, False, 0),  # one group: its products split across the threads
        (2, 3, 1030, True, 0),  # large matrices: the groups in turn
    ],
)
def test_a_grid_steps_together_and_each_row_gets_its_own_steps(B, L, N, att, pad):
    args = make_grid(B, L, N, att=att, pad=pad, seed=B * 10 + N)
    steps = 3 if N > 1000 else STEPS
    wf, of = check_against_float64_twin(args, steps=steps)
    K, w, arm, target, moving, lam = args
    # every row alone (its matrix, one row): bit for bit the row of the grid
    for r in range(B * L):
        b = r // L
        wa, oa = ops.balance_descent(
            K[b : b + 1],
            *(t[r : r + 1] for t in (w, arm, target, moving, lam)),
            steps,
            STEP,
            MOM,
            backend="fused",
        )
        assert torch.equal(wa[0], wf[r]) and torch.equal(oa[0], of[r])
    # and the threads do not change a grid either
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.balance_descent(*args, steps, STEP, MOM, backend="fused")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], wf) and torch.equal(one[1], of)
