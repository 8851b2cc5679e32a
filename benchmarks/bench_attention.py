"""Benchmarks of the fused attention + hinge operator (docs/benchmarks.md).

Compares, per shape B x N x D (float32, all units valid):

* ``reference``  — cina_ext.reference.attention_hinge (materialises the N x N scores; autograd);
* ``fused[...]`` — cina_ext.ops.attention_hinge(backend="fused"); on CUDA one row per kernel
  variant (CINA_ATTENTION_KERNEL = simt | tf32x3 | tf32 | tf32x3p | tf32p), on the CPU the compiled CPU operator;
* ``sdpa-eff-fp32`` / ``sdpa-flash-bf16`` (CUDA only) — torch's scaled_dot_product_attention
  of the same tied-key attention alone (no hinge), memory-efficient backend in fp32 and flash
  backend in bf16; SDPA needs a value matrix, so the scalar value is zero-padded to the width the
  backend accepts (recorded per row).

Modes: ``fwd`` (no gradient: the forward-only path) and ``fwdbwd`` (forward + backward of
loss.sum() + out.sum()).  Reported per row: median time (CUDA events on a GPU, perf_counter on the
CPU), peak memory, and the achieved rates against the nominal work of the two-pass scheme
(docs/benchmarks.md): fwd = B N^2 exponentials and 2 B N^2 D flops (scores; plus 4 B N^2 D for the
auxiliaries when a gradient is needed), fwdbwd = 2 B N^2 exponentials and 12 B N^2 D flops.
Every method is charged the same nominal work, so the rates compare like with like.
``exp_frac`` = (nominal exponentials / 4e12 per s) / time: the fraction of the exponential-throughput
bound of an H100/H200 (docs/benchmarks.md measured exp2f at 4.05e12/s on an H200); on the CPU it is
reported against the same constant only for reference.

Timing: a first call (timed; on CUDA it also gives the peak memory), then, unless it took more
than 1 s, one warm-up and up to --reps timed calls; the median is reported.

Peak memory: on CUDA, torch.cuda.max_memory_allocated() above the inputs (the backward's
per-unit workspace of the fused kernel, B*N*16 bytes for fp32, comes from the stream-ordered CUDA
allocator and is not in torch's count: it is added to the fused rows).  On the CPU, tracemalloc
does not see torch's allocations, so each (shape, method, mode) is run once in a fresh
subprocess: after the inputs are built the resident-set high-water mark is reset
(``echo 5 > /proc/self/clear_refs``), and the peak is VmHWM - VmRSS after one call — the extra
resident memory the call needed (glibc/torch caching included; fallback without /proc: the
increase of getrusage's ru_maxrss, a lower bound).

Skips: the reference where its N x N matrices would need more than 40% of the device memory
(estimated 4.5 x B N^2 x 4 bytes for fwdbwd, measured ratio from docs/benchmarks.md), and any case whose
time, extrapolated quadratically from the same method at a smaller N, would exceed
--max-seconds.

Writes results.json, results.md and results.png (matplotlib, if installed) to --out
(default benchmarks/out).  ``--quick`` runs a small set (GPU check script, CI smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXP_RATE = 4.0e12  # exponentials per second of one H100/H200 (docs/benchmarks.md)
TF32_RATE = 409e12  # TF32 tensor-core matmul flop/s measured on the H200 (docs/benchmarks.md)

GPU_SHAPES_FULL = [
    (1, 4096, 32),
    (8, 4096, 32),
    (1, 16384, 32),
    (64, 1024, 32),
    (1, 32768, 16),
    (1, 65536, 16),
    (1, 131072, 16),
    (1, 262144, 16),
    (1, 1_000_000, 16),
    (4096, 256, 16),
]
GPU_SHAPES_QUICK = [(1, 4096, 32), (64, 1024, 32), (1, 32768, 16), (4096, 256, 16), (1, 131072, 16), (1, 1_000_000, 16)]
CPU_SHAPES_FULL = [(1, 1024, 16), (1, 4096, 16), (8, 1024, 32), (64, 256, 16)]
CPU_SHAPES_QUICK = [(1, 1024, 16), (8, 1024, 32), (64, 256, 16)]
VARIANTS = ("simt", "tf32x3", "tf32", "tf32x3p", "tf32p")


# ---------------------------------------------------------------------------------------------
# cases


def make_inputs(B, N, D, device, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    K = torch.randn(B, N, D, generator=g, dtype=dtype).to(device)
    V = (torch.randn(B, N, generator=g, dtype=dtype) / N).to(device)
    W = (torch.randint(0, 2, (B, N), generator=g) * 2 - 1).to(dtype).to(device)
    b = torch.zeros(B, dtype=dtype, device=device)
    return K, V, W, b


def nominal_work(B, N, D, mode):
    pairs = B * N * N
    if mode == "fwd":
        return pairs, 2.0 * pairs * D
    return 2.0 * pairs, 12.0 * pairs * D


def build_fn(method, mode, K, V, W, b, lam=1e-3):
    """A zero-argument callable running one forward (and backward) of ``method``."""
    import torch.nn.functional as F

    from cina_ext import ops, reference

    grad = mode == "fwdbwd"
    if method.startswith("sdpa"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        B, N, D = K.shape
        if method == "sdpa-flash-bf16":
            dtype, backend, widths = torch.bfloat16, SDPBackend.FLASH_ATTENTION, (8, D)
        else:
            dtype, backend, widths = torch.float32, SDPBackend.EFFICIENT_ATTENTION, (4, D)
        q0 = K.detach().to(dtype).unsqueeze(1)
        last_err = None
        for vw in sorted(set(max(w, 1) for w in widths)):
            v0 = torch.zeros(B, 1, N, vw, dtype=dtype, device=K.device)
            v0[..., 0] = V.detach().to(dtype).unsqueeze(1)
            q = q0.clone().requires_grad_(grad)
            v = v0.clone().requires_grad_(grad)

            def fn(q=q, v=v):
                with sdpa_kernel([backend]):
                    if grad:
                        o = F.scaled_dot_product_attention(q, q, v)
                        o[..., 0].sum().backward()
                    else:
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, q, v)

            try:
                fn()
                return fn, {"value_width": vw}
            except RuntimeError as exc:  # this backend refuses that width: try the next one
                last_err = exc
        raise RuntimeError(f"{method}: no value width accepted ({last_err})")

    if method.startswith("fused"):
        # fused[VARIANT] or fused[VARIANT/sN]: kernel variant and, optionally, the column splits
        # forced to at most N (CINA_ATTENTION_SPLITS; "auto" otherwise)
        spec = method[method.index("[") + 1 : -1] if "[" in method else ""
        variant, _, splits = spec.partition("/s")
        variant = variant or None

        def fn():
            if variant is not None:
                os.environ["CINA_ATTENTION_KERNEL"] = variant
            os.environ["CINA_ATTENTION_SPLITS"] = splits or "auto"
            Kx, Vx, bx = (t.detach().requires_grad_(grad) for t in (K, V, b))
            if grad:
                loss, out, _ = ops.attention_hinge(Kx, Vx, W, bx, lam, backend="fused")
                (loss.sum() + out.sum()).backward()
            else:
                with torch.no_grad():
                    ops.attention_hinge(Kx, Vx, W, bx, lam, backend="fused")

        return fn, {}

    if method == "reference":

        def fn():
            Kx, Vx, bx = (t.detach().requires_grad_(grad) for t in (K, V, b))
            if grad:
                loss, out, _ = reference.attention_hinge(Kx, Vx, W, bx, lam)
                (loss.sum() + out.sum()).backward()
            else:
                with torch.no_grad():
                    reference.attention_hinge(Kx, Vx, W, bx, lam)

        return fn, {}
    raise ValueError(method)


def time_fn(fn, device, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def cpu_peak_bytes(method, mode, B, N, D):
    """Resident-set high-water-mark increase of one call, in a fresh process (see module doc)."""
    spec = json.dumps({"method": method, "mode": mode, "shape": [B, N, D]})
    res = subprocess.run(
        [sys.executable, __file__, "--_measure-cpu-memory", spec], capture_output=True, text=True, timeout=900
    )
    if res.returncode != 0:
        return None
    return int(res.stdout.strip().splitlines()[-1])


def _proc_status_kib(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _measure_cpu_memory(spec_json):
    spec = json.loads(spec_json)
    B, N, D = spec["shape"]
    K, V, W, b = make_inputs(B, N, D, "cpu")
    fn, _ = build_fn(spec["method"], spec["mode"], K, V, W, b)
    try:
        # reset the resident-set high-water mark (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_status_kib("VmRSS")
        fn()
        print((_proc_status_kib("VmHWM") - before) * 1024)
    except (OSError, KeyError):  # no /proc: the process-lifetime high-water mark (a lower bound)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        fn()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)


def device_memory_bytes(device):
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 16 * 2**30


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return (
                    line.split(":", 1)[1].strip()
                    + f" ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"
                )
    except OSError:
        pass
    return platform.processor() or "cpu"


# ---------------------------------------------------------------------------------------------
# driver


def run(opts):
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from cina_ext import ops

    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but no CUDA device")
        shapes = GPU_SHAPES_QUICK if opts.quick else GPU_SHAPES_FULL
        fused = [f"fused[{v}]" for v in (opts.variants.split(",") if opts.variants else VARIANTS)]
        if not ops.has_cuda_kernels():
            print("warning: this build has no CUDA kernels; fused rows skipped", file=sys.stderr)
            fused = []
        methods = ["reference"] + fused + ["sdpa-eff-fp32", "sdpa-flash-bf16"]
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true fp32
    else:
        shapes = CPU_SHAPES_QUICK if opts.quick else CPU_SHAPES_FULL
        methods = ["reference"] + (["fused"] if ops.has_extension() else [])
    if opts.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in opts.shapes.split(",")]
    reps = opts.reps or (3 if opts.quick else 10)
    mem_total = device_memory_bytes(device)
    rows = []
    last_time = {}  # (method, mode) -> (N, B, seconds): quadratic extrapolation for skips
    t_start = time.time()
    # the split sweep (--splits): the tf32 kernel with the column splits forced, on one-dataset
    # shapes up to 65536 units (where a grid of ceil(N / 64) row tiles leaves SMs under-occupied)
    sweep = [f"fused[tf32/s{k}]" for k in opts.splits.split(",") if k] if device == "cuda" and fused else []
    for B, N, D in shapes:
        K, V, W, b = make_inputs(B, N, D, device)
        shape_methods = methods + (sweep if B == 1 and N <= 65536 else [])
        for mode in ("fwd", "fwdbwd"):
            exps, flops = nominal_work(B, N, D, mode)
            for method in shape_methods:
                row = {"B": B, "N": N, "D": D, "mode": mode, "method": method}
                est_mem = (4.5 if mode == "fwdbwd" else 2.5) * B * N * N * 4
                skip = None
                if method == "reference" and est_mem > 0.4 * mem_total:
                    skip = f"reference needs ~{est_mem / 2**30:.0f} GiB (> 40% of {mem_total / 2**30:.0f} GiB)"
                prev = last_time.get((method, mode))
                if skip is None and prev is not None:
                    pN, pB, pt = prev
                    predicted = pt * (N / pN) ** 2 * (B / pB)
                    if predicted > opts.max_seconds:
                        skip = f"predicted {predicted:.0f} s > --max-seconds {opts.max_seconds:g}"
                if skip is None and time.time() - t_start > opts.total_seconds:
                    skip = f"total time budget ({opts.total_seconds:g} s) spent"
                if skip:
                    row["skipped"] = skip
                    rows.append(row)
                    print(f"{B}x{N}x{D} {mode:6s} {method:16s} skipped: {skip}", flush=True)
                    continue
                try:
                    fn, extra = build_fn(method, mode, K, V, W, b)
                    row.update(extra)
                    # first call: timed, and (CUDA) the peak memory; a long case stops there
                    if device == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                    t_first, _ = time_fn(fn, device, reps=1, warmup=0)
                    if device == "cuda":
                        peak = torch.cuda.max_memory_allocated() - base
                        if method.startswith("fused") and mode == "fwdbwd":
                            peak += B * N * 16  # the backward workspace (stream-ordered allocator)
                        row["peak_mem_bytes"] = peak
                    if t_first > 1.0:
                        med, times = t_first, [t_first]
                    else:
                        n_rep = max(1, min(reps, int(opts.max_seconds / max(t_first, 1e-6) / 4)))
                        med, times = time_fn(fn, device, reps=n_rep, warmup=1)
                    row.update(time_ms=med * 1e3, times_ms=[t * 1e3 for t in times])
                    if device != "cuda" and not opts.no_cpu_memory:
                        row["peak_mem_bytes"] = cpu_peak_bytes(method, mode, B, N, D)
                    row["exp_per_s"] = exps / med
                    row["tflops"] = flops / med / 1e12
                    row["exp_frac"] = (exps / EXP_RATE) / med
                    row["tc_frac"] = (flops / TF32_RATE) / med
                    last_time[(method, mode)] = (N, B, med)
                    print(
                        f"{B}x{N}x{D} {mode:6s} {method:16s} {med * 1e3:10.3f} ms  "
                        f"peak {row.get('peak_mem_bytes') or 0:>14,d} B  {row['tflops']:7.2f} TFLOP/s  "
                        f"exp_frac {row['exp_frac']:.3f}",
                        flush=True,
                    )
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                    row["error"] = str(exc).splitlines()[0][:300]
                    print(f"{B}x{N}x{D} {mode:6s} {method:16s} error: {row['error']}", flush=True)
                    if device == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
        del K, V, W, b
        if device == "cuda":
            torch.cuda.empty_cache()
    # speed-ups against the reference of the same shape and mode
    ref = {
        (r["B"], r["N"], r["D"], r["mode"]): r["time_ms"] for r in rows if r["method"] == "reference" and "time_ms" in r
    }
    for r in rows:
        key = (r["B"], r["N"], r["D"], r["mode"])
        if "time_ms" in r and key in ref:
            r["speedup_vs_reference"] = ref[key] / r["time_ms"]
    return device, rows


def write_outputs(out_dir, device, rows, opts):
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from cina_ext import _build_info as bi

        build = {
            "torch_built": bi.TORCH_VERSION,
            "with_cuda": bi.WITH_CUDA,
            "cuda_arch": getattr(bi, "CUDA_ARCHITECTURES", ""),
        }
    except ImportError:
        build = {}
    meta = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "build": build,
        "quick": opts.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "constants": {"exp_rate": EXP_RATE, "tf32_rate": TF32_RATE},
    }
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Attention + hinge benchmarks — {meta['device_name']}",
        "",
        f"torch {meta['torch']} (CUDA {meta['cuda']}), {meta['date']}; float32, all units valid; "
        "median time; rates against the nominal two-pass work (see benchmarks/bench_attention.py).",
        "",
        "| B x N x D | mode | method | time (ms) | peak mem (MiB) | TFLOP/s | exp/s | exp-bound frac | vs reference |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        shape = f"{r['B']} x {r['N']} x {r['D']}"
        if "time_ms" not in r:
            why = r.get("skipped") or r.get("error", "")
            lines.append(f"| {shape} | {r['mode']} | {r['method']} | — | — | — | — | — | {why} |")
            continue
        mem = r.get("peak_mem_bytes")
        mem_s = f"{mem / 2**20:.1f}" if mem is not None else "n/a"
        sp = r.get("speedup_vs_reference")
        sp_s = f"{sp:.1f}x" if sp else ""
        lines.append(
            f"| {shape} | {r['mode']} | {r['method']} | {r['time_ms']:.3f} | {mem_s} | "
            f"{r['tflops']:.2f} | {r['exp_per_s']:.3g} | {r['exp_frac']:.3f} | {sp_s} |"
        )
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, mode in zip(axes, ("fwd", "fwdbwd")):
        methods = sorted({r["method"] for r in rows})
        for m in methods:
            pts = sorted(
                (r["N"], r["time_ms"])
                for r in rows
                if r["method"] == m and r["mode"] == mode and r["B"] == 1 and "time_ms" in r
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (B = 1)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"{mode} — {meta['device_name'][:40]}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "results.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Benchmarks of the fused attention + hinge operator")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output directory")
    ap.add_argument("--quick", action="store_true", help="small set of shapes, few repetitions")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--variants", default="", help="CUDA kernel variants, comma separated (default: all)")
    ap.add_argument("--shapes", default="", help="override shapes, e.g. 1x4096x32,8x1024x16")
    ap.add_argument(
        "--splits",
        default="",
        help="CUDA: also time the tf32 kernel with the column splits "
        "forced to each of these (comma separated, e.g. 1,2,4,8), on B = 1 shapes up to N = 65536",
    )
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions (default 10, quick 3)")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="skip a case whose extrapolated time exceeds this (default 60, quick 20)",
    )
    ap.add_argument(
        "--total-seconds",
        type=float,
        default=None,
        help="skip everything once this much time has passed (default 3600, quick 150)",
    )
    ap.add_argument("--no-cpu-memory", action="store_true", help="skip the subprocess memory measurement")
    ap.add_argument("--_measure-cpu-memory", dest="measure", default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.measure:
        _measure_cpu_memory(opts.measure)
        return 0
    if opts.max_seconds is None:
        opts.max_seconds = 20.0 if opts.quick else 60.0
    if opts.total_seconds is None:
        opts.total_seconds = 150.0 if opts.quick else 3600.0
    device, rows = run(opts)
    out = Path(opts.out)
    write_outputs(out, device, rows, opts)
    print(
        f"wrote {out / 'results.json'}, {out / 'results.md'}"
        + (", results.png" if (out / "results.png").exists() else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
