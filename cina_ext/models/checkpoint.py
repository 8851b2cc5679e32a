"""Checkpoint files of the zero-shot model: atomic save, load, slim export, the shipped models.

A checkpoint is a dict saved with :func:`torch.save`; :func:`load_checkpoint` checks it holds a
model (``model_state`` + ``model_config``), :func:`model_from_checkpoint` builds the
:class:`~cina_ext.models.zero_shot.CInAZeroShotModel` from it, and :func:`pretrained_path` locates
the models that ship inside the package (``cina_ext/pretrained/``, see docs/model_card.md).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Union

import numpy as np
import torch

from .zero_shot import CInAZeroShotModel

__all__ = ["PRETRAINED_FILE", "PRETRAINED_FILES", "pretrained_path", "load_checkpoint", "export_checkpoint",
           "model_from_checkpoint", "save_atomic"]

PRETRAINED_FILE = "cina_zs_ate.pt"  # the default: self-supervised (CInA-ZS)
PRETRAINED_FILES = {"zs": PRETRAINED_FILE, "zs-s": "cina_zs_s_ate.pt"}  # zs-s: the supervised variant


def pretrained_path(variant: str = "zs") -> str:
    """Path of a model shipped inside the package (see docs/model_card.md).

    Parameters
    ----------
    variant : {"zs", "zs-s"}, default "zs"
        "zs": the self-supervised model (CInA-ZS, the default); "zs-s": the supervised variant.

    Returns
    -------
    str
        The file path (next to the package: the source tree for an editable install,
        site-packages for a wheel).

    Raises
    ------
    ValueError
        An unknown variant.
    """
    if variant not in PRETRAINED_FILES:
        raise ValueError(f"variant must be one of {tuple(PRETRAINED_FILES)}, got {variant!r}")
    # next to this module: the source tree for an editable install, site-packages for a wheel
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained",
                        PRETRAINED_FILES[variant])



def save_atomic(obj: Dict[str, Any], path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, *, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`train_zero_shot` (or :func:`export_checkpoint`).

    Parameters
    ----------
    path : str
        The file.
    map_location : str or torch.device, default "cpu"
        Passed to :func:`torch.load`.

    Returns
    -------
    dict
        The checkpoint (at least ``model_state`` and ``model_config``).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a CInA zero-shot checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no zero-shot checkpoint at {path!r}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path!r} is not a CInA zero-shot checkpoint (missing model_state/model_config)")
    return ckpt


def export_checkpoint(src: str, dst: str) -> Dict[str, Any]:
    """Write a slim, inference-only copy of a training checkpoint (the shipped-model format).

    Keeps the weights (float32), the model and training configurations, the step count, the
    training time and a summary of the loss history; drops the optimizer, scheduler and RNG
    states.  Returns the dict written.

    Parameters
    ----------
    src : str
        A training checkpoint.
    dst : str
        Where to write the slim copy (atomically).

    Returns
    -------
    dict
        The dict written.

    Raises
    ------
    FileNotFoundError, ValueError
        ``src`` missing or not a checkpoint (see :func:`load_checkpoint`).
    """
    ckpt = load_checkpoint(src)
    hist = ckpt.get("history", {}).get("loss", [])
    slim = {
        "kind": "cina_ext.zeroshot", "model_config": ckpt["model_config"], "dtype": "float32",
        "model_state": {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model_state"].items()},
        "step": int(ckpt.get("step", 0)), "train_config": ckpt.get("train_config"),
        "train_seconds": ckpt.get("train_seconds"), "world_size": ckpt.get("world_size"),
        "torch": ckpt.get("torch"),
        "loss_summary": {"first_100": float(np.mean(hist[:100])) if hist else None,
                         "last_100": float(np.mean(hist[-100:])) if hist else None},
    }
    save_atomic(slim, dst)
    return slim


def model_from_checkpoint(ckpt: Union[str, Dict[str, Any]], *, map_location="cpu") -> CInAZeroShotModel:
    """Build the :class:`CInAZeroShotModel` of a checkpoint, in eval mode.

    Parameters
    ----------
    ckpt : str, path-like or dict
        A checkpoint path or an already loaded checkpoint dict.
    map_location : str or torch.device, default "cpu"
        Passed to :func:`load_checkpoint` for a path.

    Returns
    -------
    CInAZeroShotModel
        The model, in the checkpoint's dtype (float32 by default).

    Raises
    ------
    FileNotFoundError, ValueError
        A path that is missing or not a checkpoint.

    Examples
    --------
    >>> from cina_ext.models import model_from_checkpoint, pretrained_path
    >>> model = model_from_checkpoint(pretrained_path())
    >>> model.estimands
    ('ate', 'att')
    """
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(str(ckpt), map_location=map_location)
    model = CInAZeroShotModel(**ckpt["model_config"])
    dtype = getattr(torch, ckpt.get("dtype", "float32"))
    model.to(dtype)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model

