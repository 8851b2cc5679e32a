"""`cina train`: trains, checkpoints atomically, resumes, and the checkpoint serves CInAZeroShot."""
from __future__ import annotations

import json
import math

import numpy as np

from cina_ext.cli import main
from cina_ext.data import make_setoguchi
from cina_ext.zeroshot import CInAZeroShot

SMALL = ["--batch-size", "2", "--n-min", "16", "--n-max", "24", "--warmup-steps", "1", "--json", "--quiet"]


def test_train_writes_checkpoint_and_resumes(tmp_path, capsys):
    ckpt = tmp_path / "zs.pt"
    assert main(["train", "--out", str(ckpt), "--steps", "4", "--checkpoint-every", "2", *SMALL]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ckpt.exists() and first["steps"] == 4 and math.isfinite(first["final_loss"])
    # a longer schedule from the same file resumes (the 4 finished steps are not redone)
    assert main(["train", "--out", str(ckpt), "--steps", "6", *SMALL]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["steps"] == 6 and second["first_loss"] == first["first_loss"]
    ds = make_setoguchi(80, scenario="A", seed=3)
    est = CInAZeroShot.from_pretrained(str(ckpt)).fit(ds.X, ds.T)
    w = est.weights_
    assert np.all(w >= 0)
    assert np.isclose(w[ds.T == 1].sum(), 1.0) and np.isclose(w[ds.T == 0].sum(), 1.0)
    assert math.isfinite(est.ate(ds.Y))


def test_train_rejects_bad_sizes(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "x.pt"), "--steps", "1", "--n-min", "30", "--n-max", "10"])
    assert rc == 1
    assert "--n-min" in capsys.readouterr().err
