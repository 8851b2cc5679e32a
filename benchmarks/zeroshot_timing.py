"""Zero-shot inference time per dataset against per-dataset CInA (Algorithm 1), same device, same run.

    python benchmarks/zeroshot_timing.py [--device cuda] [--n 500] [--count 64] [--cina 3]

Prints one JSON line: the shipped model's batched ``estimate_many`` time per dataset, the mean
time of one CInA (Alg. 1, estimand ate) fit + estimate on ``--cina`` of the same datasets, and
their ratio.  (benchmarks/eval_accuracy.py reports the same on the CPU inside the accuracy table.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cina_ext.data import sample_datasets  # noqa: E402
from cina_ext.estimators import (
    CInA,  # noqa: E402
    CInAZeroShot,  # noqa: E402
)
from cina_ext.models.checkpoint import model_from_checkpoint, pretrained_path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cina", type=int, default=3, help="datasets timed with per-dataset CInA")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    ds = list(sample_datasets("setoguchi", args.count, (args.n, args.n), seed=424242, setting="id"))
    model = model_from_checkpoint(pretrained_path()).to(dev)
    zs = CInAZeroShot(model=model, batch_size=args.batch_size)
    zs.estimate_many(ds[: args.batch_size])  # warm-up
    sync()
    t0 = time.perf_counter()
    zs.estimate_many(ds)
    sync()
    t_zs = (time.perf_counter() - t0) / len(ds)
    times = []
    for d in ds[: max(1, args.cina)]:
        est = CInA(estimand="ate", device=str(dev), random_state=0)
        sync()
        t0 = time.perf_counter()
        est.fit(d.X, d.T)
        est.ate(d.Y)
        sync()
        times.append(time.perf_counter() - t0)
    t_cina = sum(times[1:] or times) / len(times[1:] or times)  # the first fit warms up
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "device": name,
                "n": args.n,
                "count": args.count,
                "zero_shot_s_per_dataset": t_zs,
                "cina_s_per_dataset": t_cina,
                "speedup": t_cina / t_zs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
