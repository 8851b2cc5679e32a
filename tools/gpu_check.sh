#!/usr/bin/env bash
# One script for the GPU machine (docs/building.md): build, GPU tests, compute-sanitizer, benchmarks.
#
#   tools/gpu_check.sh OUTDIR
#
# Steps (each time-limited; a failed step does not stop the next ones):
#   env        nvidia-smi, versions                          -> OUTDIR/nvidia-smi.txt, env.log
#   build      pip install --no-build-isolation --no-deps -e . (CUDA kernels ON, sm_90a)
#   import     the build has CUDA kernels and sees the GPU
#   tests      pytest on the CUDA op tests (tests/**/test_*_cuda.py)   -> tests.log, tests.xml
#   memcheck   compute-sanitizer memcheck  tools/sanitizer_cases.py (attention + QP solver)
#   racecheck  compute-sanitizer racecheck tools/sanitizer_cases.py --quick
#   synccheck  compute-sanitizer synccheck tools/sanitizer_cases.py --quick
#   bench      benchmarks/bench_attention.py --quick          -> OUTDIR/bench/results.{json,md,png}
#   bench_solver  benchmarks/bench_solver.py --quick (sklearn, cpu, cuda; overlap; short cases)
#                                                             -> OUTDIR/solver/solver.{json,md,png}
#   breakdown  benchmarks/solver_breakdown.py: the working-set solver's rounds, steps and GPU time
#              per kernel (GPU_CHECK_BREAKDOWN_CASES / _CONFIGS) -> OUTDIR/solver/breakdown.{json,md}
#   profile    ncu (speed of light, occupancy, warp stalls) on tools/profile_cases.py:
#              attention fwd+bwd 1 x 32768 x 16 (tf32x3, tf32x3p, tf32, tf32p), solver N = 20000
#   suite      the rest of the test suite, minus slow tests (only if time is left)
#   train      (only when named in GPU_CHECK_STEPS) fine-tune the shipped zero-shot model on the GPU
#              for GPU_CHECK_TRAIN_SECONDS (default 240): bf16 encoder, the widened prior with the
#              semi-synthetic family (100-5,000 units drawn per step, 2-256 ER covariates), the
#              estimator's inputs, the median bandwidth, GPU_CHECK_TRAIN_WORKERS (default 12) processes
#              drawing the data ahead of the loop; resumes
#              GPU_CHECK_TRAIN_RESUME (a checkpoint carried in) if given -> OUTDIR/train/zs.pt, zs_export.pt
#   train_eval (only when named) eval_accuracy.py's zero-shot rows, shipped model against the new
#              one, every column                            -> OUTDIR/train/eval_accuracy.{json,md}
#   zs_vs_solver (only when named) benchmarks/zeroshot_vs_solver.py --device cuda: the batched
#              zero-shot model against KernelBalancing (lam auto and lam 0.01) on the GPU
#                                                           -> OUTDIR/zs_vs_solver/zeroshot_vs_solver.{json,md}
# then OUTDIR/report.md.  The whole run stays inside GPU_CHECK_SECONDS (default 540 s): a step
# gets at most what is left, and steps are skipped once the budget is spent.
# GPU_CHECK_STEPS=build,tests,... runs only the steps named (e.g. a rerun on a warm machine);
# a shorter run: GPU_CHECK_BENCH_SHAPES (e.g. 1x32768x16,4096x256x16), GPU_CHECK_BENCH_SPLITS
# ("" for no split sweep), GPU_CHECK_SOLVER_CASES / _PROBLEMS / _METHODS / _CUDA (bench_solver's
# --cases, --problems, --methods, --cuda-configs), GPU_CHECK_PROFILE_VARIANTS ("" profiles the solver only);
# PYTHON overrides the interpreter (default python3).
# Exit status: 0 when every selected step passed, else the number of steps that failed or were
# skipped for lack of time.
set -u

OUT=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-540}
STEPS=${GPU_CHECK_STEPS:-env,build,import,tests,memcheck,bench,bench_solver,breakdown,racecheck,synccheck,profile,suite}
START=$(date +%s)
# the test modules import the shared case modules of tests/ (tests/_attention_cases.py, ...)
export PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
export OUT ROOT PY

declare -a NAMES STATUS RCS SECS
elapsed() { echo $(( $(date +%s) - START )); }

# step NAME MAX_SECONDS FUNCTION  (an exported function, run by bash under timeout;
# stdout+stderr -> OUTDIR/NAME.log)
step() {
  local name=$1 max=$2 fn=$3
  if [[ ",$STEPS," != *",$name,"* ]]; then
    echo "[gpu_check] $name: not selected"
    return 0
  fi
  local left=$(( BUDGET - $(elapsed) ))
  if (( left < 15 )); then
    NAMES+=("$name"); STATUS+=("SKIPPED (time budget)"); RCS+=("-"); SECS+=(0)
    echo "[gpu_check] $name: skipped (budget spent)"
    return 0
  fi
  local t=$(( max < left ? max : left ))
  echo "[gpu_check] $name (limit ${t}s) ..."
  local t0
  t0=$(date +%s)
  STEP_LIMIT=$t timeout -k 10 "$t" bash -c "$fn" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local st=PASS
  if (( rc == 124 || rc == 137 )); then st="TIMEOUT (${t}s)"; elif (( rc != 0 )); then st=FAIL; fi
  NAMES+=("$name"); STATUS+=("$st"); RCS+=("$rc"); SECS+=("$dt")
  echo "[gpu_check] $name: $st (rc $rc, ${dt}s)"
  return 0
}

# compute-sanitizer: check only our kernels (namespace cina::cuda_detail) when the tool can filter
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
SAN_FILTER=""
if "$SAN" --help 2>&1 | grep -q -- "--kernel-name"; then
  SAN_FILTER="--kernel-name kns=cuda_detail"
elif "$SAN" --help 2>&1 | grep -q -- "--filter"; then
  SAN_FILTER="--filter kns=cuda_detail"
fi
export SAN SAN_FILTER

env_info() {
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1
  echo "--- python / torch"
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no device')"
  echo "--- nvcc / cmake / sanitizer"
  (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  "$SAN" --version 2>&1 | head -2
  echo "sanitizer filter: ${SAN_FILTER:-none}"
  echo "--- source"
  (git -C "$ROOT" rev-parse HEAD && git -C "$ROOT" status --short | head -30) 2>/dev/null || echo "(no git)"
  # the commit above can be stale on a copied tree: a hash of the files themselves identifies the
  # source (the same command on a checkout gives the same hash for the same files)
  (cd "$ROOT" && git ls-files -co --exclude-standard -- csrc cina_ext tests benchmarks tools CMakeLists.txt pyproject.toml \
     | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16 | sed 's/^/source tree sha256: /') 2>/dev/null
  nproc
}

build() {
  CINA_WITH_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps -v -e . \
    -Cbuild-dir=build/gpu -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a
}

import_check() {
  cd /tmp && "$PY" -c "
import torch, cina_ext.ops as o
assert o.has_extension(), o.extension_error()
assert o.has_cuda_kernels(), 'built without CUDA kernels'
assert torch.cuda.is_available(), 'no CUDA device'
print('cina_ext CUDA kernels loaded on', torch.cuda.get_device_name(0))"
}

# the CUDA op tests wherever they live under tests/ (test_ops_cuda.py, test_solver_cuda.py)
cuda_test_files() {
  (shopt -s globstar nullglob; cd "$ROOT" && printf '%s\n' tests/**/test_*_cuda.py)
}

tests() {
  local files
  mapfile -t files < <(cuda_test_files)
  (( ${#files[@]} > 0 )) || { echo "no tests/**/test_*_cuda.py found"; return 3; }
  "$PY" -m pytest -q -rfE --durations=15 -p no:cacheprovider --junitxml="$OUT/tests.xml" "${files[@]}"
  local rc=$?
  # all skipped (no device / no CUDA kernels) is a failure here, not a pass
  "$PY" -c "
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
s = r if r.tag == 'testsuite' else r.find('testsuite')
n, k = int(s.get('tests', 0)), int(s.get('skipped', 0))
print(f'junit: {n} tests, {k} skipped')
sys.exit(3 if n == 0 or k == n else 0)" "$OUT/tests.xml" || return 3
  return $rc
}

memcheck() {
  "$SAN" --tool memcheck --error-exitcode 99 $SAN_FILTER "$PY" tools/sanitizer_cases.py
}
racecheck() {
  "$SAN" --tool racecheck --error-exitcode 99 $SAN_FILTER "$PY" tools/sanitizer_cases.py --quick
}
synccheck() {
  "$SAN" --tool synccheck --error-exitcode 99 $SAN_FILTER "$PY" tools/sanitizer_cases.py --quick
}

bench() {
  # leave the script time to write its outputs before the step's own limit
  local total=$(( ${STEP_LIMIT:-170} - 25 ))
  (( total < 20 )) && total=20
  local shapes=()
  [[ -n "${GPU_CHECK_BENCH_SHAPES:-}" ]] && shapes=(--shapes "$GPU_CHECK_BENCH_SHAPES")
  "$PY" benchmarks/bench_attention.py --quick --device cuda --out "$OUT/bench" --total-seconds "$total" \
    --splits "${GPU_CHECK_BENCH_SPLITS-1,2,4,8}" "${shapes[@]}"
}

bench_solver() {
  # the spec's targets: one dataset of 2e4 units and a batch of 1024 x 1000, against sklearn
  "$PY" benchmarks/bench_solver.py --quick --out "$OUT/solver" --methods "${GPU_CHECK_SOLVER_METHODS:-sklearn,cpu,cuda}" \
    --problems "${GPU_CHECK_SOLVER_PROBLEMS:-overlap}" \
    --cases "${GPU_CHECK_SOLVER_CASES:-1x2000,1x20000,1x100000,64x1000,1024x1000}" --max-n 100000 --max-n-sklearn 20000 \
    --max-n-reference 0 --max-seconds 20 --cuda-configs "${GPU_CHECK_SOLVER_CUDA:-block,ws,ws/256}"
}

breakdown() {
  # the working-set solver's time split into rounds / steps / kernels (CINA_QP_WS_STATS)
  "$PY" benchmarks/solver_breakdown.py --out "$OUT/solver" \
    --cases "${GPU_CHECK_BREAKDOWN_CASES:-overlap:1x20000,ate:1x100000,overlap:1024x1000}" \
    --configs "${GPU_CHECK_BREAKDOWN_CONFIGS:-ws}"
}

profile() {
  # Nsight Compute on one call of each hot kernel (tools/profile_cases.py): the attention
  # pass kernels (forward with auxiliaries, backward; variants tf32x3, tf32x3p, tf32, tf32p) and a
  # few rounds of the working-set solver's kernels.  -k matches the kernel's function name
  # (attn_pass_tc_kernel, ws_select_kernel, ...).
  local NCU
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  local SECT="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis"
  for v in ${GPU_CHECK_PROFILE_VARIANTS-tf32x3 tf32x3p tf32 tf32p}; do
    echo "=== attention $v"
    "$NCU" --profile-from-start off $SECT -k regex:attn_pass -c 2 "$PY" tools/profile_cases.py attention --variant $v
  done
  echo "=== solver (working set)"
  "$NCU" --profile-from-start off $SECT -k regex:ws_ -c 8 "$PY" tools/profile_cases.py solver
}

train() {
  mkdir -p "$OUT/train"
  local ckpt="$OUT/train/zs.pt" init=(--init-from shipped)
  if [[ -n "${GPU_CHECK_TRAIN_RESUME:-}" ]]; then
    cp "$GPU_CHECK_TRAIN_RESUME" "$ckpt" && init=()
  fi
  # leave the step time to write the checkpoint and the export
  local limit=$(( ${GPU_CHECK_TRAIN_SECONDS:-240} ))
  (( limit > ${STEP_LIMIT:-300} - 30 )) && limit=$(( ${STEP_LIMIT:-300} - 30 ))
  (( limit < 10 )) && limit=10
  "$PY" -c "import sys; from cina_ext.cli import main; sys.exit(main(sys.argv[1:]))" train \
    --out "$ckpt" --export "$OUT/train/zs_export.pt" "${init[@]}" --device cuda --amp bf16 \
    --inputs normal-scores --balance-gamma median --families setoguchi er semi \
    --er-covariates 2 256 --er-covariates-log --treated-share 0.05 0.6 --binary-share 0 0.5 \
    --heavy-tails --assignment-strength 1 3 --propensity-clip 0.01 --n-min 100 --n-max 5000 \
    --n-draw step --unit-budget 40000 --batch-size 32 --steps "${GPU_CHECK_TRAIN_STEPS:-20000}" --lr 5e-4 --seed 7 \
    --data-workers "${GPU_CHECK_TRAIN_WORKERS:-12}" \
    --checkpoint-every 200 --time-limit "$limit" --json
}

train_eval() {
  local model="$OUT/train/zs_export.pt"
  [[ -f "$model" ]] || { echo "no $model (run the train step first)"; return 3; }
  "$PY" benchmarks/eval_accuracy.py --columns all --out "$OUT/train" --zs-s none \
    --zs-extra "CInA-ZS (GPU fine-tune)=$model" --refine 0 \
    --methods "KernelBalancing" "CInA-ZS" "CInA-ZS (GPU fine-tune)"
}

zs_vs_solver() {
  "$PY" benchmarks/zeroshot_vs_solver.py --device cuda --sizes 500 2000 5000 --counts 64 16 8 \
    --repeats 2 --out "$OUT/zs_vs_solver"
}

suite() {
  local ign=(--ignore=tests/emulator/test_cuda_emulator.py) f
  for f in $(cuda_test_files); do [[ $f == */test_ops_cuda.py ]] && ign+=("--ignore=$f"); done
  "$PY" -m pytest -q -x -p no:cacheprovider -m "not slow" tests "${ign[@]}"
}

export -f cuda_test_files env_info build import_check tests memcheck racecheck synccheck bench bench_solver breakdown profile suite train train_eval zs_vs_solver

step env 60 env_info
step build 300 build
step import 60 import_check
step tests 170 tests
step memcheck 110 memcheck
step racecheck 100 racecheck
step synccheck 60 synccheck
step bench 170 bench
step bench_solver 150 bench_solver
step breakdown 60 breakdown
step profile 90 profile
step suite 90 suite
step train 300 train
step train_eval 200 train_eval
step zs_vs_solver 150 zs_vs_solver

# ---- report ----------------------------------------------------------------------------------
REPORT="$OUT/report.md"
FAILED=0
{
  echo "# cina-ext GPU check"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), total $(elapsed) s (budget ${BUDGET} s)"
  echo
  echo '```'
  grep -v '^---' "$OUT/env.log" 2>/dev/null | head -12
  echo '```'
  echo
  echo "| step | status | rc | seconds | log |"
  echo "|---|---|---:|---:|---|"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${RCS[$i]} | ${SECS[$i]} | ${NAMES[$i]}.log |"
    [[ "${STATUS[$i]}" == PASS ]] || FAILED=$((FAILED + 1))
  done
  echo
  echo "## GPU tests (tests/test_ops_cuda.py, tests/test_solver_cuda.py)"
  echo '```'
  grep -E "^(FAILED|ERROR)|passed|failed|error|skipped" "$OUT/tests.log" 2>/dev/null | tail -40
  echo '```'
  echo
  echo "## compute-sanitizer"
  for s in memcheck racecheck synccheck; do
    echo "### $s"
    echo '```'
    grep -E "SUMMARY|sanitizer_cases:|FAIL|Invalid|Race|hazard|Barrier|^solver" "$OUT/$s.log" 2>/dev/null | head -24
    echo '```'
  done
  echo
  echo "## Benchmarks (quick)"
  if [[ -f "$OUT/bench/results.md" ]]; then
    sed 1d "$OUT/bench/results.md"
    [[ -f "$OUT/bench/results.png" ]] && echo && echo "Plot: bench/results.png"
  else
    echo "(no results; see bench.log)"
    tail -20 "$OUT/bench.log" 2>/dev/null
  fi
  echo
  echo "## Solver benchmark (quick)"
  if [[ -f "$OUT/solver/solver.md" ]]; then
    sed 1d "$OUT/solver/solver.md"
  else
    echo "(no results; see bench_solver.log)"
    tail -20 "$OUT/bench_solver.log" 2>/dev/null
  fi
  echo
  if [[ -f "$OUT/train.log" ]]; then
    echo "## Zero-shot fine-tune on the GPU (train, train_eval)"
    echo '```'
    tail -3 "$OUT/train.log"
    echo '```'
    [[ -f "$OUT/train/eval_accuracy.md" ]] && sed 1d "$OUT/train/eval_accuracy.md"
    echo
  fi
  if [[ -f "$OUT/zs_vs_solver/zeroshot_vs_solver.md" ]]; then
    echo "## Zero-shot against the exact solver on the GPU (zs_vs_solver)"
    cat "$OUT/zs_vs_solver/zeroshot_vs_solver.md"
    echo
  fi
  echo "## Build (tail)"
  echo '```'
  grep -E "error|warning: |cina_ext:|Successfully" "$OUT/build.log" 2>/dev/null | tail -15
  echo '```'
  echo
  echo "Exit status: $FAILED step(s) failed or skipped."
} >"$REPORT"
echo "[gpu_check] report: $REPORT ($FAILED step(s) failed or skipped, $(elapsed) s)"
exit "$FAILED"
