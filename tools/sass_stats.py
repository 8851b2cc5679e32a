"""Static cost of the CUDA kernels, without a GPU: registers, spills and the instructions of each
attention pass kernel's main loop (one 64-column tile), read from the SASS that nvcc generates.

The tile loop is the largest backward-branching loop of a kernel that contains its tensor-core
(HMMA) or fused multiply-add work; its instructions are what one thread issues per streamed tile
(64 columns x 32 scores per thread for the tensor-core kernels).  Loops nested in it (e.g. the
copies that stage a tile) are reported separately with their static size.  With the measured time
of a pass (benchmarks/bench_attention.py on a GPU), this gives the achieved issue rate; with the
registers, the resident blocks per SM.

Needs nvcc (CUDA_HOME/bin, /usr/local/cuda/bin or PATH) and cuobjdump (PATH, the CUDA bin folder,
or the pip package nvidia-cuda-cuobjdump) with nvdisasm beside it (pip package
nvidia-cuda-nvdisasm).  No GPU.

    python tools/sass_stats.py [--arch sm_90a] [--dp 16] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FILE = ROOT / "csrc" / "attention_hinge" / "cuda.cu"
# the flags of the extension build (CMakeLists.txt: torch's CUDA flags plus ours)
NVCC_FLAGS = ["-std=c++20", "--expt-relaxed-constexpr", "--expt-extended-lambda", "-O3", "-lineinfo", "-DNDEBUG"]
MODES = {0: "fwd", 1: "fwd+aux", 2: "bwd"}


def find_tool(name: str) -> str | None:
    cands = [shutil.which(name)]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", name))
    site = sysconfig.get_paths()["purelib"]
    cands += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "bin", name)))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def kernel_label(name: str) -> str | None:
    m = re.search(r"attn_pass_tc_kernelILi(\d+)ELi(\d)ELi(\d)ELb(\d)", name)
    if m:
        dp, mode, nsplit, pf = (int(x) for x in m.groups())
        variant = ("tf32x3" if nsplit == 3 else "tf32") + ("p" if pf else "")
        return f"{variant} DP={dp} {MODES[mode]}"
    m = re.search(r"attn_pass_kernelI([fd])Li(\d+)ELi(\d)E", name)
    if m:
        t, dp, mode = m.groups()
        return f"simt {'f32' if t == 'f' else 'f64'} DP={dp} {MODES[int(mode)]}"
    return None


def ptxas_resources(text: str) -> dict[str, tuple[int, int]]:
    """mangled name -> (registers, spill store bytes) from nvcc -Xptxas -v output."""
    out = {}
    for block in re.split(r"ptxas info\s+: Compiling entry function '", text)[1:]:
        name = block.split("'")[0]
        regs = re.search(r"Used (\d+) registers", block)
        spill = re.search(r"(\d+) bytes spill stores", block)
        out[name] = (int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else 0)
    return out


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def tile_loop(sass: str, work_ops: tuple[str, ...]) -> dict | None:
    """Instruction counts of the backward-branching loop holding the most `work_ops` instructions
    (HMMA for the tensor-core kernels, FFMA / DFMA for the SIMT ones); the outermost such loop."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in map(_INSTR.search, sass.splitlines()) if m]
    branches = []
    for line in sass.splitlines():
        m = re.search(r"/\*([0-9a-f]{4,})\*/.*\bBRA\b.*?(0x[0-9a-f]+)", line)
        if m:
            src, dst = int(m.group(1), 16), int(m.group(2), 16)
            if dst < src:
                branches.append((dst, src))
    best = None
    for lo, hi in branches:
        body = [op for a, op in ins if lo <= a <= hi]
        key = (sum(op.startswith(work_ops) for op in body), len(body))
        if key[0] and (best is None or key > best[2]):
            best = (lo, hi, key)
    if best is None:
        return None
    lo, hi, _ = best
    inner = [(a, b) for a, b in branches if lo < a and b <= hi and (a, b) != (lo, hi)]
    body = [(a, op) for a, op in ins if lo <= a <= hi]
    in_inner = [op for a, op in body if any(x <= a <= y for x, y in inner)]
    outer = [op for a, op in body if not any(x <= a <= y for x, y in inner)]
    counts = collections.Counter(op.split(".")[0] for op in outer)
    return {
        "instructions": len(outer),
        "inner_loops": len(inner),
        "inner_instructions": len(in_inner),
        "HMMA": counts["HMMA"],
        "LDS": counts["LDS"],
        "MUFU": counts["MUFU"],
        "FFMA": counts["FFMA"],
        "LDG+LDGSTS": counts["LDG"] + counts["LDGSTS"],
        "BAR": counts["BAR"],
        # spill traffic inside the loop (what a spill costs per tile; spills outside it are rare)
        "LDL": sum(op.startswith("LDL") for op in in_inner + outer),
        "STL": sum(op.startswith("STL") for op in in_inner + outer),
        "top": counts.most_common(8),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--dp", type=int, default=None, help="only kernels with this padded feature width")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "sass_stats.json"))
    args = ap.parse_args()
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        print(
            f"sass_stats: needs nvcc ({nvcc}) and cuobjdump ({cuobjdump}; pip install nvidia-cuda-cuobjdump)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "attention.cubin")
        res = subprocess.run(
            [
                nvcc,
                *NVCC_FLAGS,
                f"-arch={args.arch}",
                "-cubin",
                f"-I{ROOT / 'csrc'}",
                "-Xptxas",
                "-v",
                str(KERNEL_FILE),
                "-o",
                cubin,
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            print(res.stderr[-4000:], file=sys.stderr)
            return 1
        resources = ptxas_resources(res.stdout + res.stderr)
        # cuobjdump runs nvdisasm, which the pip packages install beside it
        env = dict(os.environ, PATH=os.path.dirname(cuobjdump) + os.pathsep + os.environ.get("PATH", ""))
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True, env=env).stdout
    rows = []
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        label = kernel_label(name)
        if label is None or (args.dp is not None and f"DP={args.dp} " not in label):
            continue
        loop = tile_loop(chunk, ("HMMA",) if "tf32" in label else ("FFMA", "DFMA"))
        regs, spill = resources.get(name, (-1, 0))
        threads = 128 if "tf32" in label else 256
        per_sm = 65536 // (((regs + 7) // 8 * 8) * threads) if regs > 0 else None
        rows.append(
            {
                "kernel": label,
                "registers": regs,
                "spill_bytes": spill,
                "blocks_per_sm_by_registers": per_sm,
                **(loop or {}),
            }
        )
    rows.sort(key=lambda r: r["kernel"])
    print(
        f"SASS of {KERNEL_FILE.relative_to(ROOT)} for {args.arch} ({os.path.basename(nvcc)}: "
        f"{subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout.strip().splitlines()[-1]})"
    )
    print(
        "\n| kernel | registers | spills (B) | blocks/SM (regs) | tile loop instrs | HMMA | LDS | MUFU | FFMA | "
        "nested loops (instrs) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['kernel']} | {r['registers']} | {r['spill_bytes']} | {r['blocks_per_sm_by_registers']} | "
            f"{r.get('instructions', '-')} | {r.get('HMMA', '-')} | {r.get('LDS', '-')} | {r.get('MUFU', '-')} | "
            f"{r.get('FFMA', '-')} | {r.get('LDL', '-')} / {r.get('STL', '-')} | "
            f"{r.get('inner_loops', 0)} ({r.get('inner_instructions', 0)}) |"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"arch": args.arch, "nvcc_flags": NVCC_FLAGS, "kernels": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
