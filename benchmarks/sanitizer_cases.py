"""Tiny driver for compute-sanitizer (memcheck, racecheck, synccheck): run by benchmarks/gpu_check.sh.

Runs the CUDA kernels of cina::attention_hinge on small masked cases — forward with and without
the auxiliaries, backward — for float32 (every kernel variant: simt, tf32x3, tf32) and float64,
and checks the results against the compiled CPU operator (so a sanitizer run also says whether
the numbers were right).  Inputs are made on the CPU and copied, so that the only kernels launched
are ours plus a few of torch's fills.  Exit status 0 when every case matched, 1 otherwise.

    compute-sanitizer --tool memcheck python3 benchmarks/sanitizer_cases.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


def make_case(B, N, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(B, N, D, generator=g, dtype=torch.float64).to(dtype)
    V = (torch.randn(B, N, generator=g, dtype=torch.float64) / N).to(dtype)
    W = (torch.randint(0, 2, (B, N), generator=g) * 2 - 1).to(dtype)
    b = (torch.randn(B, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    lam = (torch.rand(B, generator=g, dtype=torch.float64) * 0.5 + 0.01).to(dtype)
    mask = torch.rand(B, N, generator=g) > 0.25
    mask[0, :] = False  # an empty dataset
    if B > 1:
        mask[1, :] = False
        mask[1, N // 2] = True  # a length-1 dataset
    if B > 2 and N > 64:
        mask[2, 1:65] = False  # a whole padded tile (when aligned) and more
    return K, V, W, b, lam, mask


def run_case(K, V, W, b, lam, mask, device, scale, loss_kind):
    args = [t.to(device) for t in (K, V, W, b, lam, mask)]
    op_f = torch.ops.cina.attention_hinge_fwd
    op_b = torch.ops.cina.attention_hinge_bwd
    plain = op_f(*args, scale, loss_kind, False)
    loss, out, lse, A, Bk = op_f(*args, scale, loss_kind, True)
    g = torch.Generator().manual_seed(99)
    B, N = V.shape
    gL = torch.randn(B, generator=g, dtype=torch.float64).to(K.dtype).to(device)
    gO = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype).to(device)
    gLse = torch.randn(B, N, generator=g, dtype=torch.float64).to(K.dtype).to(device)
    dK, dV, db = op_b(*args, out, lse, A, Bk, gL, gO, gLse, scale, loss_kind)
    res = [loss, out, lse, A, Bk, dK, dV, db, plain[0], plain[1], plain[2]]
    if device != "cpu":
        torch.cuda.synchronize()
    return [r.cpu() for r in res]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases (for racecheck)")
    opts = ap.parse_args()
    from cina_ext import ops  # noqa: F401  (registers the operators)

    if not (torch.cuda.is_available() and ops.has_cuda_kernels()):
        print("sanitizer_cases: no CUDA device or no CUDA kernels in this build", file=sys.stderr)
        return 1
    shapes = [(3, 70, 5), (3, 33, 40), (2, 130, 128)]
    if opts.quick:
        shapes = [(3, 70, 5), (2, 65, 128)]
    names = ("loss", "out", "lse", "A", "Bk", "dK", "dV", "db", "loss(plain)", "out(plain)", "lse(plain)")
    failures = 0
    runs = [(torch.float64, "simt")] + [(torch.float32, v) for v in ("simt", "tf32x3", "tf32")]
    # splits 1: the unsplit column pass; 3: split pass + combine kernel
    plan = [(dt, v, sp, i, shape) for dt, v in runs for sp in ("1", "3") for i, shape in enumerate(shapes)]
    for dtype, variant, splits, i, (B, N, D) in plan:
        os.environ["CINA_ATTENTION_KERNEL"] = variant
        os.environ["CINA_ATTENTION_SPLITS"] = splits
        case = make_case(B, N, D, dtype, seed=i)
        scale = D ** -0.5
        loss_kind = i % 2
        gpu = run_case(*case, "cuda", scale, loss_kind)
        cpu = run_case(*case, "cpu", scale, loss_kind)
        tol = {torch.float64: 1e-9, torch.float32: 2e-3 if variant == "tf32" else 1e-4}[dtype]
        tag = f"{str(dtype):14s} {variant:7s} splits<={splits} {B}x{N}x{D} loss_kind={loss_kind}"
        worst = 0.0
        for name, x, y in zip(names, gpu, cpu):
            if not torch.isfinite(x).all():
                print(f"FAIL {tag}: {name} not finite")
                failures += 1
                continue
            err = (x.double() - y.double()).abs().max().item() / max(1.0, y.abs().max().item()) if x.numel() else 0.0
            worst = max(worst, err)
            if err > tol:
                print(f"FAIL {tag}: {name} relative error {err:.3g} > {tol:g}")
                failures += 1
        print(f"case {tag}: worst relative error {worst:.3g}")
    print("sanitizer_cases:", "OK" if failures == 0 else f"{failures} FAILURES")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
