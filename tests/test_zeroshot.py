"""Zero-shot CInA (Algorithms 2-3): model shapes/masks, training, checkpoints, DDP, estimator."""
import os
import socket

import numpy as np
import pytest
import torch

from cina_ext.data import sample_datasets
from cina_ext.zeroshot import (
    CInAZeroShot,
    CInAZeroShotModel,
    ZeroShotConfig,
    collate_datasets,
    load_checkpoint,
    train_zero_shot,
)

TINY = dict(d_model=16, n_heads=2, n_layers=1, dim_feedforward=32, key_dim=8)


def _cfg(**kw):
    base = dict(families=("setoguchi",), n_range=(16, 28), batch_size=4, steps=6, lr=3e-3, warmup_steps=2,
                dtype="float64", backend="reference", model=dict(TINY))
    base.update(kw)
    return base


def _datasets(count=3, seed=0, n_range=(12, 30)):
    return list(sample_datasets("setoguchi", count, n_range, seed=seed))


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return CInAZeroShotModel(**{**TINY, **kw}).double().eval()


# ---- shapes and masks -------------------------------------------------------------------------

def test_shapes_and_padded_batch_matches_each_dataset_alone():
    m = _model()
    ds = _datasets(3)
    # give the datasets different covariate counts too (drop columns from the second)
    items = [(d.X, d.T) for d in ds]
    items[1] = (ds[1].X[:, :6], ds[1].T)
    X, W, mask, fm = collate_datasets(items, dtype=torch.float64)
    B, N, p = X.shape
    K, V, b = m(X, W, mask, fm)
    assert K.shape == (B, N, TINY["key_dim"]) and V.shape == (B, N) and b.shape == (B,)
    assert torch.all(V[~mask] == 0) and torch.all(K[~mask] == 0)
    wts = m.weights(X, W, mask, fm)
    with torch.no_grad():
        Lb = m.loss(X, W, mask, fm)
    per = []
    for i, (x, t) in enumerate(items):
        Xi, Wi, mi, fi = collate_datasets([(x, t)], dtype=torch.float64)
        n = x.shape[0]
        Ki, Vi, bi = m(Xi, Wi, mi, fi)
        torch.testing.assert_close(K[i, :n], Ki[0], atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(V[i, :n], Vi[0], atol=1e-8, rtol=1e-9)
        torch.testing.assert_close(b[i], bi[0], atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(wts[i, :n], m.weights(Xi, Wi, mi, fi)[0], atol=1e-10, rtol=1e-8)
        with torch.no_grad():
            per.append(m.loss(Xi, Wi, mi, fi))
    torch.testing.assert_close(Lb, torch.stack(per).mean(), atol=1e-10, rtol=1e-8)


def test_weights_nonnegative_sum_to_one_per_arm():
    m = _model(1)
    ds = _datasets(3, seed=1)
    X, W, mask, fm = collate_datasets(ds, dtype=torch.float64)
    w = m.weights(X, W, mask, fm)
    assert torch.all(w >= 0) and torch.all(w[~mask] == 0)
    for a in (1.0, -1.0):
        s = torch.where((W == a) & mask, w, torch.zeros_like(w)).sum(-1)
        torch.testing.assert_close(s, torch.ones_like(s))


def test_standardisation_is_affine_invariant():
    m = _model(2)
    d = _datasets(1, seed=2)[0]
    X, W, mask, fm = collate_datasets([(d.X, d.T)], dtype=torch.float64)
    X2, *_ = collate_datasets([(d.X * 3.0 + 5.0, d.T)], dtype=torch.float64)
    torch.testing.assert_close(m.weights(X, W, mask, fm), m.weights(X2, W, mask, fm), atol=1e-8, rtol=1e-6)


def test_bad_inputs_raise():
    m = _model()
    X = torch.randn(1, 10, 33, dtype=torch.float64)
    W = torch.tensor([[1.0, -1.0] * 5], dtype=torch.float64)
    with pytest.raises(ValueError, match="max_features"):
        m(X, W)
    with pytest.raises(ValueError, match="W must"):
        m(X[..., :3], W * 2)
    with pytest.raises(ValueError, match="shape"):
        m(X[..., :3], W[:, :5])
    Xn = X[..., :3].clone()
    Xn[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(Xn, W)
    with pytest.raises(TypeError):
        m(X[..., :3].numpy(), W)
    with pytest.raises(ValueError, match="lam"):
        CInAZeroShotModel(lam=0.0)
    with pytest.raises(ValueError, match="multiple of the world size"):
        train_zero_shot(_cfg(batch_size=0))
    with pytest.raises(ValueError, match="unknown"):
        train_zero_shot({"nope": 1})
    with pytest.raises(ValueError, match="no pretrained"):
        CInAZeroShot.from_pretrained()
    with pytest.raises(ValueError, match="trained model"):
        CInAZeroShot().fit(np.random.randn(10, 2), np.array([0, 1] * 5))
    est = CInAZeroShot(model=m)
    with pytest.raises(ValueError, match="max_features"):
        est.fit(np.random.randn(10, 40), np.array([0, 1] * 5))
    with pytest.raises(ValueError):
        est.fit(np.random.randn(10, 2), np.ones(10))  # one arm only
    with pytest.raises(ValueError, match="fit"):
        CInAZeroShot(model=m).ate(np.zeros(10))


# ---- training ----------------------------------------------------------------------------------

def test_loss_decreases_and_is_reproducible():
    cfg = _cfg(steps=30, batch_size=2, lr=1e-2, warmup_steps=3, n_range=(16, 24), dtype="float32",
               backend="auto")
    _, h1 = train_zero_shot(cfg)
    assert len(h1["loss"]) == 30 and all(np.isfinite(h1["loss"]))
    assert np.mean(h1["loss"][-5:]) < 0.5 * np.mean(h1["loss"][:5])
    _, h2 = train_zero_shot(cfg)
    assert h1["loss"] == h2["loss"]


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


def test_estimator_fit_ate_and_estimate_many_agree():
    m = _model(3)
    ds = _datasets(5, seed=7)
    est = CInAZeroShot(model=m, batch_size=2)
    many = est.estimate_many(ds)
    single = [est.fit(d.X, d.T).ate(d.Y) for d in ds]
    np.testing.assert_allclose(many, single, atol=1e-9)
    w = est.weights_
    assert w.min() >= 0
    assert abs(w[ds[-1].T == 1].sum() - 1) < 1e-9 and abs(w[ds[-1].T == 0].sum() - 1) < 1e-9


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
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    cfg = _cfg(steps=3, batch_size=4)
    single, h_single = train_zero_shot(cfg)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, out), nprocs=2, join=True)
    res = torch.load(out, weights_only=False)
    np.testing.assert_allclose(res["loss"], h_single["loss"], rtol=1e-9, atol=1e-12)
    for k, p in single.state_dict().items():
        torch.testing.assert_close(res["state"][k], p, rtol=1e-7, atol=1e-9, msg=k)
