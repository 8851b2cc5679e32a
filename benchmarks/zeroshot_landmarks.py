"""Landmark attention (the zero-shot model's scalable path) against the exact forward pass.

For sizes where both run, the estimate of the landmark path and of the exact pass on the same
datasets (Setoguchi G and ER, ATE), their difference, the weight correlation and the times; then
the landmark path alone at large N (time and peak memory).

    python benchmarks/zeroshot_landmarks.py --out benchmarks/out/landmarks.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from cina_ext.data import make_er_dataset, make_setoguchi
from cina_ext.estimators import CInAZeroShot
from cina_ext.models.zero_shot import sample_landmarks


def _datasets(n: int, count: int):
    for s in range(count):
        yield "setoguchi-G", make_setoguchi(n, "G", seed=100 + s)
        yield "er", make_er_dataset(n, seed=200 + s)


def _weights(model, d, m):
    X = torch.as_tensor(d.X, dtype=torch.float32)[None]
    W = torch.as_tensor(2.0 * d.T - 1.0, dtype=torch.float32)[None]
    X = (X - X.mean(1, keepdim=True)) / X.std(1, keepdim=True).clamp_min(1e-8)
    t = time.perf_counter()
    if m is None:
        w = model.weights(X, W)
    else:
        lm = sample_landmarks(W, m=m, generator=torch.Generator().manual_seed(0))
        w = model.weights_landmarks(X, W, lm)
    return w[0].double().numpy(), time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,20000,50000")
    ap.add_argument("--large", default="100000,1000000")
    ap.add_argument("--landmarks", default="1024,2048,4096")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = CInAZeroShot.from_pretrained()._get_model().eval()
    ms = [int(v) for v in a.landmarks.split(",")]
    rows = []
    print(
        f"{'N':>8} {'family':>12} {'m':>6} {'exact':>8} {'landm.':>8} {'|diff|':>7} {'truth':>7} {'corr':>6} {'t_ex':>6} {'t_lm':>6}"
    )
    for n in [int(v) for v in a.sizes.split(",")]:
        for fam, d in _datasets(n, a.count):
            s = 2.0 * d.T - 1.0
            we, te = _weights(model, d, None)
            for m in ms:
                wl, tl = _weights(model, d, m)
                r = dict(
                    n=n,
                    family=fam,
                    m=m,
                    exact=float(np.sum(we * s * d.Y)),
                    landmarks=float(np.sum(wl * s * d.Y)),
                    truth=float(d.ate),
                    corr=float(np.corrcoef(we, wl)[0, 1]),
                    t_exact=te,
                    t_landmarks=tl,
                )
                rows.append(r)
                print(
                    f"{n:>8} {fam:>12} {m:>6} {r['exact']:>8.3f} {r['landmarks']:>8.3f} "
                    f"{abs(r['exact'] - r['landmarks']):>7.3f} {r['truth']:>7.3f} {r['corr']:>6.3f} {te:>6.2f} {tl:>6.2f}"
                )
    large = []
    for n in [int(v) for v in a.large.split(",") if v]:
        d = make_setoguchi(n, "G", seed=7)
        for m in ms:
            wl, tl = _weights(model, d, m)
            est = float(np.sum(wl * (2.0 * d.T - 1.0) * d.Y))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            large.append(dict(n=n, m=m, estimate=est, truth=float(d.ate), seconds=tl, peak_rss_gib=rss))
            print(f"large N={n} m={m}: {tl:.1f} s, estimate {est:.3f} (truth {d.ate:.3f}), peak RSS {rss:.2f} GiB")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(rows=rows, large=large, threads=torch.get_num_threads()), f, indent=1)


if __name__ == "__main__":
    main()
