"""`cina train`: trains, checkpoints atomically, resumes, and the checkpoint serves CInAZeroShot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cina_ext.cli import main
from cina_ext.data import make_setoguchi
from cina_ext.estimators import CInAZeroShot

SMALL = ["--batch-size", "2", "--n-min", "16", "--n-max", "24", "--warmup-steps", "1", "--json", "--quiet"]


def test_train_writes_checkpoint_and_resumes(tmp_path, capsys):
    ckpt = tmp_path / "zs.pt"
    assert main(["train", "--out", str(ckpt), "--steps", "4", "--checkpoint-every", "2", *SMALL]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ckpt.exists() and first["steps"] == 4 and math.isfinite(first["final_loss"])
    # a longer schedule from the same file resumes (the 4 finished steps are not redone)
    slim = tmp_path / "zs_slim.pt"
    assert main(["train", "--out", str(ckpt), "--steps", "6", "--export", str(slim), *SMALL]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["steps"] == 6 and second["first_loss"] == first["first_loss"]
    ds = make_setoguchi(80, scenario="A", seed=3)
    est = CInAZeroShot.from_pretrained(str(ckpt)).fit(ds.X, ds.T)
    w = est.weights_
    assert np.all(w >= 0)
    assert np.isclose(w[ds.T == 1].sum(), 1.0) and np.isclose(w[ds.T == 0].sum(), 1.0)
    assert math.isfinite(est.ate(ds.Y))
    assert est.estimand_ == "ate"  # the default model learns ate (first) and att
    # the slim export drops the optimizer state and serves the same weights
    assert slim.stat().st_size < 0.6 * ckpt.stat().st_size
    est2 = CInAZeroShot.from_pretrained(str(slim)).fit(ds.X, ds.T)
    np.testing.assert_allclose(est2.weights_, w, atol=1e-6)
    att = CInAZeroShot.from_pretrained(str(slim), estimand="att").fit(ds.X, ds.T)
    np.testing.assert_allclose(att.weights_[ds.T == 1], 1.0 / np.sum(ds.T == 1))


def test_train_supervised_overlap_and_bad_options(tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert (
        main(
            [
                "train",
                "--out",
                str(out),
                "--steps",
                "2",
                "--supervised-weight",
                "1",
                "--layers",
                "1",
                "--d-model",
                "16",
                "--heads",
                "2",
                *SMALL,
            ]
        )
        == 0
    )
    from cina_ext.models.checkpoint import load_checkpoint

    ck = load_checkpoint(str(out))
    assert ck["train_config"]["supervised_weight"] == 1.0 and ck["model_config"]["d_model"] == 16
    assert ck["train_seconds"] > 0
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "o.pt"), "--steps", "2", "--estimands", "overlap", *SMALL]) == 0
    capsys.readouterr()
    rc = main(["train", "--out", str(tmp_path / "b.pt"), "--steps", "1", "--estimands", "overlap", "ate"])
    assert rc == 1 and "overlap" in capsys.readouterr().err
    rc = main(
        [
            "train",
            "--out",
            str(tmp_path / "b.pt"),
            "--steps",
            "1",
            "--supervised-weight",
            "1",
            "--estimands",
            "overlap",
            *SMALL,
        ]
    )
    assert rc == 1 and "supervised" in capsys.readouterr().err


def test_train_rejects_bad_sizes(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "x.pt"), "--steps", "1", "--n-min", "30", "--n-max", "10"])
    assert rc == 1
    assert "--n-min" in capsys.readouterr().err


def test_train_prior_options_parse_into_family_overrides(tmp_path):
    from cina_ext.cli import CLIError, _family_overrides, build_parser

    def overrides(*argv, max_features=32):
        return _family_overrides(build_parser().parse_args(["train", "--out", "x.pt", *argv]), max_features)

    assert overrides() == {}
    got = overrides(
        "--families", "setoguchi", "er", "semi",
        "--er-covariates", "2", "24",
        "--treated-share", "0.05", "0.6",
        "--binary-share", "0", "0.5",
        "--heavy-tails",
        "--assignment-strength", "1", "3",
        "--propensity-clip", "0.01",
    )  # fmt: skip
    assert got == {
        "setoguchi": {"treated_share": (0.05, 0.6)},
        "er": {
            "d": (2, 24),
            "treated_share": (0.05, 0.6),
            "binary_share": (0.0, 0.5),
            "noise_dist": ["gaussian", "student_t"],
            "assignment_strength": (1.0, 3.0),
            "propensity_clip": 0.01,
        },
        "semi": {"treated_share": (0.05, 0.6), "max_covariates": 32},
    }
    assert overrides("--families", "semi", max_features=1024) == {"semi": {"max_covariates": 1024}}
    for bad in (
        ["--binary-share", "0", "0.5", "--families", "setoguchi"],
        ["--heavy-tails", "--families", "semi"],
        ["--treated-share", "0", "0.5"],
        ["--treated-share", "0.5", "0.2"],
        ["--assignment-strength", "0", "2"],
        ["--propensity-clip", "0.5"],
    ):
        with pytest.raises(CLIError):
            overrides(*bad)


def test_train_time_limit_stops_early_and_the_same_command_resumes(tmp_path, capsys):
    out = tmp_path / "limited.pt"
    argv = ["train", "--out", str(out), "--steps", "3", "--layers", "1", "--d-model", "16", "--heads", "2", *SMALL]
    assert main([*argv, "--time-limit", "1e-6"]) == 0  # every step ends past the limit: one step
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["last_step"] == 1 and first["steps"] == 1
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["last_step"] == 3 and second["first_loss"] == first["first_loss"]
    assert main([*argv, "--time-limit", "0"]) != 0
    assert "time_limit" in capsys.readouterr().err


def test_train_with_the_semi_family(tmp_path, capsys):
    out = tmp_path / "semi.pt"
    argv = ["train", "--out", str(out), "--steps", "2", "--families", "er", "semi", "--treated-share", "0.1", "0.5"]
    argv += ["--binary-share", "0", "0.5", "--heavy-tails", "--layers", "1", "--d-model", "16", "--heads", "2"]
    assert main([*argv, *SMALL]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["steps"] == 2 and math.isfinite(payload["final_loss"])


def test_train_fine_tunes_the_shipped_model_on_network_inputs(tmp_path, capsys):
    """--init-from shipped --inputs normal-scores: the run starts at the shipped weights (lr 0
    keeps them), records both options, and takes datasets wider than the model (projected)."""
    import torch

    from cina_ext.models.checkpoint import load_checkpoint, pretrained_path

    out = tmp_path / "ft.pt"
    argv = ["train", "--out", str(out), "--steps", "1", "--lr", "0", "--init-from", "shipped"]
    argv += ["--inputs", "normal-scores", "--families", "er", "--er-covariates", "40", "40", *SMALL]
    assert main(argv) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["final_loss"])
    ckpt = load_checkpoint(str(out))
    shipped = load_checkpoint(pretrained_path())
    assert ckpt["train_config"]["inputs"] == "normal-scores"
    assert ckpt["train_config"]["init_from"] == pretrained_path()
    for k, v in shipped["model_state"].items():
        torch.testing.assert_close(ckpt["model_state"][k], v, rtol=0, atol=0, msg=k)
    # raw inputs keep the cap: 40 covariates do not fit the 32-wide model
    assert (
        main(["train", "--out", str(tmp_path / "raw.pt"), "--er-covariates", "40", "40", "--families", "er", *SMALL])
        != 0
    )
    assert "--max-features" in capsys.readouterr().err
    # another architecture cannot start from the shipped weights
    assert main(["train", "--out", str(tmp_path / "x.pt"), "--init-from", "shipped", "--d-model", "32", *SMALL]) != 0
    assert "init_from" in capsys.readouterr().err
    # another objective can: --balance-gamma median fine-tunes the shipped weights on the median bandwidth
    med = tmp_path / "med.pt"
    argv = ["train", "--out", str(med), "--steps", "1", "--lr", "0", "--init-from", "shipped"]
    assert main([*argv, "--balance-gamma", "median", "--families", "er", *SMALL]) == 0
    capsys.readouterr()
    ckpt = load_checkpoint(str(med))
    assert ckpt["model_config"]["balance_gamma"] == "median"
    assert ckpt["model_config"] == {**shipped["model_config"], "balance_gamma": "median"}
    for k, v in shipped["model_state"].items():
        torch.testing.assert_close(ckpt["model_state"][k], v, rtol=0, atol=0, msg=k)


def test_train_step_sizes_unit_budget_and_log_spaced_covariates(tmp_path, capsys):
    """--n-draw step --unit-budget reach the configuration the checkpoint records, and
    --er-covariates-log turns the covariate range into a geometric choice; misuse is refused."""
    from cina_ext.cli import CLIError, _family_overrides, build_parser
    from cina_ext.models.checkpoint import load_checkpoint

    out = tmp_path / "steps.pt"
    argv = ["train", "--out", str(out), "--steps", "2", "--layers", "1", "--d-model", "16", "--heads", "2"]
    argv += ["--n-draw", "step", "--unit-budget", "40", "--batch-size", "2", "--n-min", "16", "--n-max", "40"]
    assert main([*argv, "--data-workers", "1", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    cfg = load_checkpoint(str(out))["train_config"]
    assert cfg["n_draw"] == "step" and cfg["unit_budget"] == 40 and list(cfg["n_range"]) == [16, 40]
    assert cfg["data_workers"] == 1

    def overrides(*more):
        return _family_overrides(build_parser().parse_args(["train", "--out", "x.pt", "--families", "er", *more]), None)

    d = overrides("--er-covariates", "2", "256", "--er-covariates-log")["er"]["d"]
    assert isinstance(d, list) and d[0] == 2 and d[-1] == 256 and len(d) == 16
    ratios = np.array(d[1:]) / np.array(d[:-1])
    assert ratios.max() < 1.6 and ratios.min() > 1.2  # geometric, not even, steps
    assert overrides("--er-covariates", "2", "256")["er"]["d"] == (2, 256)
    with pytest.raises(CLIError, match="--er-covariates"):
        overrides("--er-covariates-log")
    for bad in (["--unit-budget", "100"], ["--n-draw", "step", "--unit-budget", "0"], ["--data-workers", "-1"]):
        assert main(["train", "--out", str(tmp_path / "bad.pt"), *bad, *SMALL]) != 0
        assert bad[-2] in capsys.readouterr().err
