"""Training the zero-shot model (Algorithm 2): loss, reproducibility, checkpoints, DDP, bf16."""

import dataclasses
import importlib
import os
import socket

import numpy as np
import pytest
import torch

from cina_ext.estimators import CInAZeroShot
from cina_ext.models.checkpoint import load_checkpoint
from cina_ext.models.zero_shot import CInAZeroShotModel, collate_datasets
from cina_ext.training import ZeroShotConfig, train_zero_shot

from _zero_shot_cases import BALANCE, OVERLAP, TINY, _cfg, _datasets, _model, _threads  # noqa: F401

# ---- training ----------------------------------------------------------------------------------


def test_overlap_loss_decreases_and_is_reproducible():
    cfg = _cfg(
        steps=30,
        batch_size=2,
        lr=1e-2,
        warmup_steps=3,
        n_range=(16, 24),
        dtype="float32",
        backend="auto",
        model=dict(TINY, estimands=OVERLAP),
    )
    _, h1 = train_zero_shot(cfg)
    assert len(h1["loss"]) == 30 and all(np.isfinite(h1["loss"]))
    assert np.mean(h1["loss"][-5:]) < 0.5 * np.mean(h1["loss"][:5])
    _, h2 = train_zero_shot(cfg)
    assert h1["loss"] == h2["loss"]


def _held_out_objective(model, estimand, datasets):
    X, W, mask, fm = collate_datasets(datasets, dtype=torch.float32)
    idx = model.estimand_index(estimand, X.shape[0], X.device)
    w = model.weights(X, W, mask, fm, estimand=estimand)
    uniform = _arm_uniform(W, mask)
    with torch.no_grad():
        return (
            float(model.balance_objective(X, W, mask, fm, w, idx).mean()),
            float(model.balance_objective(X, W, mask, fm, uniform, idx).mean()),
        )


def _arm_uniform(W, mask):
    t1, t0 = (W > 0) & mask, (W < 0) & mask
    n1, n0 = t1.sum(-1, keepdim=True), t0.sum(-1, keepdim=True)
    return torch.where(t1, 1.0 / n1, torch.where(t0, 1.0 / n0, torch.zeros_like(W)))


def test_balancing_training_beats_uniform_weights_on_held_out_data_and_is_reproducible():
    cfg = _cfg(
        steps=40,
        batch_size=4,
        lr=3e-3,
        warmup_steps=4,
        n_range=(40, 60),
        dtype="float32",
        backend="auto",
        model=dict(TINY, estimands=BALANCE, unroll=2),
    )
    torch.manual_seed(0)  # ZeroShotConfig.seed
    untrained = CInAZeroShotModel(**cfg["model"]).eval()  # the initial state of the run below
    model, h1 = train_zero_shot(cfg)
    assert len(h1["loss"]) == 40 and all(np.isfinite(h1["loss"]))
    held_out = _datasets(8, seed=123, n_range=(40, 60))
    for estimand in ("ate", "att"):
        trained, uniform = _held_out_objective(model, estimand, held_out)
        before, _ = _held_out_objective(untrained, estimand, held_out)
        # 40 tiny steps already lower the self-supervised objective on unseen datasets, below both
        # the untrained network and the naive (uniform) weights (measured: 0.87x / 0.84x for ate)
        assert trained < 0.92 * before and trained < 0.9 * uniform, (estimand, trained, before, uniform)
    _, h2 = train_zero_shot(cfg)
    assert h1["loss"] == h2["loss"]


def test_supervised_term_changes_training_and_uses_the_truth():
    from cina_ext.training.zero_shot import _collate_outcomes

    ds = _datasets(2, seed=3)
    Y, tau, sd = _collate_outcomes(ds, ("ate", "att"), [0, 1], max(d.n for d in ds), dtype=torch.float64, device="cpu")
    assert float(tau[0]) == pytest.approx(ds[0].truth("ate")) and float(tau[1]) == pytest.approx(ds[1].truth("att"))
    assert float(sd[1]) == pytest.approx(np.std(ds[1].Y))
    np.testing.assert_array_equal(Y[0, : ds[0].n].numpy(), ds[0].Y)
    base = _cfg(steps=3, model=dict(TINY, estimands=BALANCE, unroll=1))
    _, h0 = train_zero_shot(base)
    _, hs = train_zero_shot({**base, "supervised_weight": 1.0})
    assert h0["loss"][0] < hs["loss"][0]  # the |tau_hat - tau| term adds to the first loss


def test_checkpoint_resume_is_exact(tmp_path):
    ref, h_ref = train_zero_shot(_cfg(steps=6))
    path = str(tmp_path / "zs.pt")
    _, h_a = train_zero_shot(_cfg(steps=6, checkpoint_path=path, checkpoint_every=3, stop_after=3))
    assert len(h_a["loss"]) == 3 and load_checkpoint(path)["step"] == 3
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    resumed, h_b = train_zero_shot(_cfg(steps=6, checkpoint_path=path, checkpoint_every=3))
    assert h_b["loss"] == h_ref["loss"]
    for (k, p), (_, q) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), k
    # estimator from the checkpoint reproduces the in-memory model
    d = _datasets(1, seed=5)[0]
    e1 = CInAZeroShot.from_pretrained(path).fit(d.X, d.T)
    e2 = CInAZeroShot(model=resumed).fit(d.X, d.T)
    np.testing.assert_allclose(e1.weights_, e2.weights_, atol=1e-12)
    assert abs(e1.ate(d.Y) - e2.ate(d.Y)) < 1e-10


def test_time_limit_stops_with_a_checkpoint_and_the_same_command_resumes_exactly(tmp_path, monkeypatch):
    """time_limit: the run stops after the step that crosses the limit, checkpoints there, and
    the same configuration resumes to the uninterrupted run's result."""
    import cina_ext.training.zero_shot as tz

    ref, h_ref = train_zero_shot(_cfg(steps=6))
    path = str(tmp_path / "zs.pt")
    clock = iter(float(t) for t in range(1000))  # every reading of the clock is one second later
    monkeypatch.setattr(tz.time, "perf_counter", lambda: next(clock))
    _, h_a = train_zero_shot(_cfg(steps=6, checkpoint_path=path, checkpoint_every=0, time_limit=2.5))
    monkeypatch.undo()
    done = load_checkpoint(path)["step"]
    assert 1 <= done < 6 and len(h_a["loss"]) == done
    assert h_a["loss"] == h_ref["loss"][:done]
    resumed, h_b = train_zero_shot(_cfg(steps=6, checkpoint_path=path, time_limit=3600.0))
    assert h_b["loss"] == h_ref["loss"]
    for (k, p), (_, q) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), k
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="time_limit"):
            ZeroShotConfig(**_cfg(time_limit=bad)).validate(1)


# ---- DistributedDataParallel ---------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, hist = train_zero_shot(cfg)
        if rank == 0:
            torch.save({"state": model.state_dict(), "loss": hist["loss"]}, out)
        # both ranks leave together: a rank that tears gloo down while its peer is still busy
        # (here rank 0 saving) can abort the peer ("terminate called without an active
        # exception", seen once in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    # time_limit (far off) runs the ranks' agreement on stopping at every step, and changes nothing
    cfg = _cfg(steps=3, batch_size=4, time_limit=3600.0)
    single, h_single = train_zero_shot(cfg)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, out), nprocs=2, join=True)
    res = torch.load(out, weights_only=False)
    np.testing.assert_allclose(res["loss"], h_single["loss"], rtol=1e-9, atol=1e-12)
    for k, p in single.state_dict().items():
        torch.testing.assert_close(res["state"][k], p, rtol=1e-7, atol=1e-9, msg=k)


def test_bf16_autocast_training_tracks_float32():
    base = _cfg(steps=3, dtype="float32", backend="auto", model=dict(TINY, estimands=BALANCE, unroll=2))
    _, h32 = train_zero_shot(base)
    _, hbf = train_zero_shot({**base, "amp": "bf16"})
    assert all(np.isfinite(hbf["loss"]))
    # the encoder runs in bfloat16, the final layer and the loss in float32: close, not equal
    assert hbf["loss"] != h32["loss"]
    np.testing.assert_allclose(hbf["loss"], h32["loss"], rtol=2e-2)
    with pytest.raises(ValueError, match="amp"):
        train_zero_shot({**base, "amp": "fp8"})


def test_family_overrides_widen_the_prior_and_are_checked():
    """family_overrides reach the data stream (ER with 20-40 covariates), and an any-p model trains on it."""
    zs_train = importlib.import_module("cina_ext.training.zero_shot")
    cfg = ZeroShotConfig(**_cfg(families=("er",), family_overrides={"er": {"d": (20, 40)}}))
    ps = {zs_train._draw_dataset(cfg, step, i)[0].X.shape[1] for step in range(4) for i in range(4)}
    assert min(ps) >= 20 and max(ps) <= 40 and len(ps) > 3
    plain = ZeroShotConfig(**_cfg(families=("er",)))
    assert {zs_train._draw_dataset(plain, 0, i)[0].X.shape[1] for i in range(4)} == {10}
    with pytest.raises(ValueError, match="family_overrides"):
        ZeroShotConfig(**_cfg(families=("er",), family_overrides={"setoguchi": {}})).validate(1)
    model_cfg = dict(TINY, estimands=("ate", "att"), input_features="rff", rff_dim=16, max_features=64)
    cfg = ZeroShotConfig(**_cfg(families=("er",), family_overrides={"er": {"d": (20, 40)}}, steps=3, model=model_cfg))
    model, history = train_zero_shot(cfg)
    assert model.input_features == "rff" and len(history["loss"]) == 3 and np.isfinite(history["loss"]).all()


def test_semi_family_in_the_stream_and_its_overrides_must_match_on_resume(tmp_path):
    """The semi family reaches the data stream, capped at the model's covariates, and a resume with
    another prior (family_overrides) is refused, naming the field."""
    zs_train = importlib.import_module("cina_ext.training.zero_shot")
    overrides = {"semi": {"max_covariates": 6, "treated_share": (0.1, 0.2)}}
    cfg = ZeroShotConfig(**_cfg(families=("semi",), family_overrides=overrides))
    drawn = [zs_train._draw_dataset(cfg, step, i)[0] for step in range(3) for i in range(4)]
    assert all(ds.meta["family"] == "semi" and 2 <= ds.d <= 6 for ds in drawn)
    assert all(0.1 <= ds.meta["treated_share"] <= 0.2 for ds in drawn)
    assert [d.Y[0] for d in drawn] == [zs_train._draw_dataset(cfg, s, i)[0].Y[0] for s in range(3) for i in range(4)]
    ckpt = tmp_path / "semi.pt"
    mixed = dict(_cfg(families=("setoguchi", "semi"), family_overrides=overrides, steps=2, checkpoint_path=str(ckpt)))
    _, history = train_zero_shot(mixed)
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    wider = {**mixed, "steps": 3, "family_overrides": {"semi": {"max_covariates": 6, "treated_share": (0.05, 0.6)}}}
    with pytest.raises(ValueError, match="family_overrides"):
        train_zero_shot(wider)
    _, history = train_zero_shot({**mixed, "steps": 3})  # the same prior resumes
    assert len(history["loss"]) == 3


def test_network_inputs_in_training_are_what_the_estimator_gives_the_network():
    """inputs="normal-scores": each training dataset reaches the network as CInAZeroShot would give it
    (normal scores, standardised, projected onto max_features when wider); "raw" leaves it alone."""
    from cina_ext._core.covariates import network_inputs

    zs_train = importlib.import_module("cina_ext.training.zero_shot")
    cfg = ZeroShotConfig(**_cfg(families=("er",), family_overrides={"er": {"d": (8, 12)}}, inputs="normal-scores"))
    drawn, seen = zs_train._StepData(cfg, 0, 1, 1, 6, end=1).get(0)
    batch = [d for d, _ in drawn]
    assert len(batch) == cfg.batch_size and max(d.d for d in batch) > 6
    for i, (d, s) in enumerate(zip(batch, seen)):
        np.testing.assert_array_equal(d.X, zs_train._draw_dataset(cfg, 0, i)[0].X)
        np.testing.assert_array_equal(s.X, network_inputs(d.X, "normal-scores", 6)[0])
        assert s.X.shape[1] == min(d.d, 6)
        np.testing.assert_array_equal(s.T, d.T)
    raw = ZeroShotConfig(**_cfg(families=("er",)))
    drawn, seen = zs_train._StepData(raw, 0, 1, 1, 6, end=1).get(0)
    assert all(s is d for s, (d, _) in zip(seen, drawn))
    # a model of width 6 trains on 8-12 covariates (raw inputs would be refused)
    model_cfg = dict(TINY, estimands=("ate", "att"), max_features=6)
    wide = dict(_cfg(families=("er",), family_overrides={"er": {"d": (8, 12)}}, steps=2, model=model_cfg))
    _, history = train_zero_shot({**wide, "inputs": "normal-scores"})
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    with pytest.raises(ValueError, match="max_features"):
        train_zero_shot(wide)
    with pytest.raises(ValueError, match="inputs"):
        ZeroShotConfig(**_cfg(inputs="whitened")).validate(1)


def test_init_from_starts_from_the_weights_with_a_fresh_schedule(tmp_path):
    first = tmp_path / "first.pt"
    base = dict(_cfg(model=dict(TINY, estimands=BALANCE), steps=4, checkpoint_path=str(first)))
    trained, _ = train_zero_shot(base)
    # zero steps of learning (lr 0) from init_from: the weights are exactly the checkpoint's
    frozen, _ = train_zero_shot({**base, "checkpoint_path": None, "init_from": str(first), "lr": 0.0, "steps": 2})
    for (k, a), b in zip(trained.state_dict().items(), frozen.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # fine-tuning goes on from there: its first loss is the trained model's, not a fresh model's
    _, h_ft = train_zero_shot({**base, "checkpoint_path": None, "init_from": str(first), "steps": 2, "seed": 5})
    _, h_fresh = train_zero_shot({**base, "checkpoint_path": None, "steps": 2, "seed": 5})
    assert h_ft["loss"][0] != h_fresh["loss"][0]
    other = dict(TINY, estimands=BALANCE, d_model=8, n_heads=2, dim_feedforward=16)
    with pytest.raises(ValueError, match="init_from"):
        train_zero_shot({**base, "checkpoint_path": None, "init_from": str(first), "model": other})
    # another objective (the median bandwidth) on the same architecture: a fine-tune that starts
    # from the same weights and trains the new objective
    median = dict(TINY, estimands=BALANCE, balance_gamma="median")
    tuned, h_med = train_zero_shot(
        {**base, "checkpoint_path": None, "init_from": str(first), "model": median, "lr": 0.0, "steps": 2}
    )
    assert tuned.balance_gamma == "median" and tuned.config["balance_gamma"] == "median"
    for (k, a), b in zip(trained.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    _, h_scale = train_zero_shot({**base, "checkpoint_path": None, "init_from": str(first), "lr": 0.0, "steps": 2})
    assert h_med["loss"][0] != h_scale["loss"][0]  # the same weights, another objective


def test_step_sizes_are_log_uniform_and_the_unit_budget_bounds_each_step():
    """n_draw="step": one size per step, log-uniform on n_range (as many steps per decade), every
    dataset of the step within [size / 2, size]; unit_budget cuts the batch of the large steps to
    the budget (a multiple of the world size, at least one dataset per rank), never the small ones."""
    zs_train = importlib.import_module("cina_ext.training.zero_shot")
    cfg = ZeroShotConfig(**_cfg(families=("setoguchi", "er"), n_range=(100, 10000), n_draw="step", unit_budget=4000))
    cfg.validate(1)
    sizes = np.array([zs_train.step_size(cfg, s) for s in range(4000)])
    assert sizes.min() >= 100 and sizes.max() <= 10000
    # log-uniform: each decade holds half the steps (a uniform draw would put 91% above 1,000)
    assert 0.45 < np.mean(sizes < 1000) < 0.55, np.mean(sizes < 1000)
    assert [zs_train.step_size(cfg, s) for s in range(5)] == list(sizes[:5])  # a pure function
    other = ZeroShotConfig(**{**_cfg(n_range=(100, 10000), n_draw="step"), "seed": 1})
    assert [zs_train.step_size(other, s) for s in range(20)] != list(sizes[:20])
    for step in range(6):
        size = int(sizes[step])
        for i in range(3):
            n = zs_train._draw_dataset(cfg, step, i, 1, size)[0].n
            assert max(100, size // 2) <= n <= size, (step, size, n)
    for size in (100, 250, 1000, 2000, 9000):
        for world in (1, 2):
            b = zs_train.step_batch(cfg, size, world)
            assert b % world == 0 and world <= b <= cfg.batch_size
            assert b == cfg.batch_size or b * size <= 4000 or b == world, (size, world, b)
    assert zs_train.step_batch(cfg, 100, 1) == 4 and zs_train.step_batch(cfg, 2000, 1) == 2
    assert zs_train.step_batch(cfg, 9000, 2) == 2  # over the budget: still one dataset per rank
    plain = ZeroShotConfig(**_cfg())
    assert zs_train.step_size(plain, 0) is None and zs_train.step_batch(plain, None, 1) == plain.batch_size


def test_data_workers_train_the_same_run_as_the_loop_and_are_checked():
    """data_workers=2 draws the coming steps in worker processes: the same datasets, so the same
    losses and weights as drawing them in the loop (network inputs, step sizes, both families)."""
    cfg = _cfg(
        families=("setoguchi", "er"),
        n_range=(12, 48),
        n_draw="step",
        unit_budget=90,
        steps=4,
        inputs="normal-scores",
        model=dict(TINY, estimands=BALANCE),
    )
    loop_model, loop = train_zero_shot(cfg)
    work_model, work = train_zero_shot({**cfg, "data_workers": 2})
    assert loop["loss"] == work["loss"] and len(loop["loss"]) == 4
    for a, b in zip(loop_model.state_dict().values(), work_model.state_dict().values()):
        assert torch.equal(a, b)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="data_workers"):
            ZeroShotConfig(**_cfg(data_workers=bad)).validate(1)


def test_a_step_drawn_in_the_loop_and_by_a_worker_is_the_same_to_the_bit():
    """Wide covariates (projected onto the network's inputs: products large enough for a threaded
    BLAS): the loop's draw, with two BLAS threads offered, equals a worker's, which has one."""
    from threadpoolctl import threadpool_limits

    zs_train = importlib.import_module("cina_ext.training.zero_shot")
    cfg = ZeroShotConfig(
        families=("er",),
        n_range=(400, 500),
        batch_size=2,
        inputs="normal-scores",
        family_overrides={"er": {"d": (250, 256)}},
    )
    with threadpool_limits(limits=2, user_api="blas"):
        loop = zs_train._StepData(cfg, 0, 1, 1, 32, end=1).get(0)
    pool = zs_train._StepData(dataclasses.replace(cfg, data_workers=1), 0, 1, 1, 32, end=1)
    try:
        work = pool.get(0)
    finally:
        pool.close()
    for (a, _), (b, _), na, nb in zip(loop[0], work[0], loop[1], work[1]):
        assert a.d >= 250 and na.X.shape[1] == 32
        for key in ("X", "T", "Y", "mu0", "mu1"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        np.testing.assert_array_equal(na.X, nb.X)


def test_training_with_step_sizes_runs_each_step_on_its_batch():
    """The loop trains each step on step_batch datasets of the step's size; bad settings are refused."""
    zs_train = importlib.import_module("cina_ext.training.zero_shot")
    cfg = _cfg(n_range=(12, 48), n_draw="step", unit_budget=60, steps=5, model=dict(TINY, estimands=BALANCE))
    seen = []
    real = zs_train._draw_dataset

    def spy(c, step, index, n_estimands=1, size=None):
        out = real(c, step, index, n_estimands, size)
        seen.append((step, size, out[0].n))
        return out

    zs_train._draw_dataset = spy
    try:
        _, history = train_zero_shot(cfg)
    finally:
        zs_train._draw_dataset = real
    assert len(history["loss"]) == 5 and np.isfinite(history["loss"]).all()
    c = ZeroShotConfig(**cfg)
    for step in range(5):
        drawn = [(sz, n) for s, sz, n in seen if s == step]
        size = zs_train.step_size(c, step)
        assert len(drawn) == zs_train.step_batch(c, size, 1)
        assert all(sz == size and max(12, size // 2) <= n <= size for sz, n in drawn)
    # the budget of 60 units gives these five steps batches of 1 to 4 datasets
    assert len({len([1 for s, _, _ in seen if s == step]) for step in range(5)}) >= 3
    for bad, match in (
        (dict(n_draw="per-batch"), "n_draw"),
        (dict(unit_budget=100), "unit_budget"),
        (dict(n_draw="step", unit_budget=0), "unit_budget"),
        (dict(n_range=(30, 10)), "n_range"),
    ):
        with pytest.raises(ValueError, match=match):
            ZeroShotConfig(**_cfg(**bad)).validate(1)
