"""Training of the zero-shot model across many datasets (Algorithm 2)."""

from __future__ import annotations

from .zero_shot import ZeroShotConfig, train_zero_shot

__all__ = ["ZeroShotConfig", "train_zero_shot"]
