"""Random attention + hinge inputs shared by the CUDA tests and the CUDA-emulator tests."""

from __future__ import annotations

import torch


def make_attention_case(B, N, D, dtype, *, seed=0, key_scale=1.0, pad_frac=0.2, garbage_padding=False):
    """``(K, V, W, b, lam, mask)`` on the CPU, drawn in a fixed order from one seeded generator.

    ``garbage_padding``: padded units get NaN / Inf, which the kernels must never read.
    """
    g = torch.Generator().manual_seed(seed)
    K = (torch.randn(B, N, D, generator=g, dtype=torch.float64) * key_scale).to(dtype)
    V = (torch.randn(B, N, generator=g, dtype=torch.float64) / max(N, 1) * 4).to(dtype)
    W = (torch.randint(0, 2, (B, N), generator=g) * 2 - 1).to(dtype)
    b = (torch.randn(B, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    lam = (torch.rand(B, generator=g, dtype=torch.float64) * 0.5 + 0.01).to(dtype)
    mask = torch.rand(B, N, generator=g) >= pad_frac
    if garbage_padding:
        K[~mask] = float("nan")
        V[~mask] = float("inf")
        W[~mask] = float("nan")
    return K, V, W, b, lam, mask
