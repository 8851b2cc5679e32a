"""Checkpoint files of the zero-shot model: atomic save, load, slim export, the shipped models.

A checkpoint is a dict saved with :func:`torch.save` that holds only tensors and plain Python data
(numbers, strings, lists, tuples, dicts), so that :func:`load_checkpoint` can read it with
``torch.load(weights_only=True)``: a file whose pickle asks for anything else (an object that could
run code when unpickled) is refused, never executed.  It must hold a model (``model_state`` +
``model_config``); :func:`model_from_checkpoint` builds the
:class:`~cina_ext.models.zero_shot.CInAZeroShotModel` from it, and :func:`pretrained_path` locates
the models that ship inside the package (``cina_ext/pretrained/``, see docs/model_card.md).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Dict, Union

import numpy as np
import torch

from .zero_shot import CInAZeroShotModel

__all__ = [
    "PRETRAINED_FILE",
    "PRETRAINED_FILES",
    "pretrained_path",
    "load_checkpoint",
    "export_checkpoint",
    "model_from_checkpoint",
    "save_atomic",
    "check_writable_target",
]

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
    return os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained", PRETRAINED_FILES[variant]
    )


def check_writable_target(path: str) -> None:
    """Refuse a checkpoint path that cannot be written as a file (before any work is done)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; give the checkpoint a file name (e.g. {path}/zs.pt)")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(f"cannot write {path!r}: {parent!r} is not a directory")


def save_atomic(obj: Dict[str, Any], path: str) -> None:
    """Write ``obj`` to ``path`` through a temporary file beside it, renamed into place: a reader
    never sees a half-written file, and the temporary file is removed if the write fails."""
    check_writable_target(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, *, map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`train_zero_shot` (or :func:`export_checkpoint`).

    Loads with ``weights_only=True``: tensors and plain Python data only, so a file whose pickle
    asks for anything else is refused, never executed.

    Parameters
    ----------
    path : str or os.PathLike
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
        The file is truncated or corrupt, needs objects other than tensors and plain data to
        unpickle, or is not a CInA zero-shot checkpoint (the message names the path).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no zero-shot checkpoint at {path!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"refusing to load {path!r}: it needs objects other than tensors and plain Python data to "
            f"unpickle, and such a file can run code when loaded ({str(exc).splitlines()[-1][:200]}). "
            "cina_ext checkpoints never need them; re-export a trusted old checkpoint with a version "
            "that wrote it, or train again"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(
            f"{path!r} is truncated or corrupt and cannot be read as a checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
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
        "kind": "cina_ext.zeroshot",
        "model_config": ckpt["model_config"],
        "dtype": "float32",
        "model_state": {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt["model_state"].items()},
        "step": int(ckpt.get("step", 0)),
        "train_config": ckpt.get("train_config"),
        "train_seconds": ckpt.get("train_seconds"),
        "world_size": ckpt.get("world_size"),
        "torch": None if ckpt.get("torch") is None else str(ckpt.get("torch")),
        "loss_summary": {
            "first_100": float(np.mean(hist[:100])) if hist else None,
            "last_100": float(np.mean(hist[-100:])) if hist else None,
        },
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
