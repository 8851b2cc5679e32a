"""Networks: the key network of per-dataset CInA and the zero-shot CInA model, with its checkpoints."""

from __future__ import annotations

from .checkpoint import export_checkpoint, load_checkpoint, model_from_checkpoint, pretrained_path
from .key_net import KeyNet
from .zero_shot import CInAZeroShotModel, collate_datasets

__all__ = [
    "KeyNet",
    "CInAZeroShotModel",
    "collate_datasets",
    "load_checkpoint",
    "export_checkpoint",
    "model_from_checkpoint",
    "pretrained_path",
]
