#!/usr/bin/env bash
# The GPU work in one command (#28), sized for one call of a lent GPU machine: it ends inside
# GPU_CHECK_BUDGET_S seconds (default 560: the device tool's 600 s limit less a margin) and keeps
# every result it measured when a step runs out of time. Steps, in the order of what a minute buys:
#   1. install from .whl/ when present (../shared/tools/device_wheels.sh builds it; GPU_CHECK_INSTALL=0 skips it)
#   2. the base pre-training step, eager: the plain PyTorch loop and ZeRO 2, 0, 1 at base's batch 128, then
#      the plain loop and ZeRO 2 at batch 256                              (at most GPU_CHECK_EAGER_S, 180 s)
#   3. pytest -m gpu: the tiny pipeline in bf16 with NCCL and ZeRO-2, the bf16 momentum check, compiled =
#      eager on CUDA, perturbations on CUDA (at most GPU_CHECK_TESTS_S, 200 s; its Ray in a temp dir of its own)
#   4. the step compiled: the plain loop, then the fastest eager DeepSpeed configuration of step 2, each
#      profiled for a few more steps into $OUT/profile.txt (the ops that took the most GPU time; the time left)
# Every benchmark row lands in $OUT/BENCHMARKS.md and $OUT/bench/*.json as soon as it is measured.
# $OUT holds 8 files at most (what a device call brings back): gpu_check.log (nvidia-smi in it),
# install.log, benchmark.log, gpu-tests.log, BENCHMARKS.md, profile.txt and bench/ (two JSON files).
# Without a GPU it is a dry run on CPU: the same steps with the tiny preset and a few steps each (and
# compile left off: tests/test_model.py covers it on CPU), so a GPU window is not lost to a typo;
# tests/test_benchmark.py runs it.
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#
# PYTHON picks the interpreter (default: python3, the one holding PyTorch on the lent machines).
# RAYMMR_COMMIT names the commit in the rows where the tree has no .git (a copy sent to a GPU machine).
# Exit 0 only when every step ran and passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-560}
say() { echo "[gpu_check $(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/gpu_check.log"; }
left() { echo $((BUDGET - SECONDS)); }
# within CAP seconds and the budget's remainder (less MARGIN kept for the steps after it)
capped() { local cap=$1 margin=${2:-0} l; l=$(($(left) - margin)); echo $((cap < l ? cap : l)); }
status=0

if [ -f .whl/install.sh ] && [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
  say "installing from .whl/"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # DeepSpeed's fused-Adam build fails on '9.0a'
  if ! bash .whl/install.sh > "$OUT/install.log" 2>&1; then say "install failed: $OUT/install.log"; exit 1; fi
  export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} PATH=/tmp/site/bin:$PATH
fi

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  MODE=gpu CONFIG=base STEPS=10 WARMUP=3 COMPILE=true
  EAGER=plain:128,2:128,0:128,1:128,plain:256,2:256 SMALL=128
  DATA=(--set data.synthrad_pretrain=1000 --set data.synthrad_train=200 --set data.synthrad_val=50
        --set data.synthrad_test=50)
  "$PY" -c "import torch; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee -a "$OUT/gpu_check.log"
  nvidia-smi >> "$OUT/gpu_check.log" 2>&1
else
  MODE=cpu CONFIG=tiny STEPS=2 WARMUP=1 COMPILE=false
  EAGER=plain:4,0:4,2:4 SMALL=4
  DATA=(--set data.loader_workers=0)
fi
say "mode $MODE, budget ${BUDGET}s"

bench() {  # bench SECONDS LABEL CONFIGS COMPILE [FLAGS]: one benchmark job, cut at SECONDS (its rows so far are kept)
  local secs=$1 label=$2 configs=$3 compile=$4; shift 4
  if [ "$secs" -lt 20 ]; then say "benchmark $label: skipped, ${secs}s left of the budget"; status=1; return; fi
  say "benchmark $label: $CONFIG pretrain, $configs, compile $compile (at most ${secs}s)"
  timeout --kill-after=10 "$secs" "$PY" jobs/benchmark.py --config "$CONFIG" --stage pretrain --configs "$configs" \
    --steps "$STEPS" --warmup "$WARMUP" --set "train.compile=$compile" "${DATA[@]}" \
    --out "$OUT/bench" --markdown "$OUT/BENCHMARKS.md" "$@" >> "$OUT/benchmark.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then say "benchmark $label: exit $rc ($([ $rc -ge 124 ] && echo "out of time, " )rows so far kept): $OUT/benchmark.log"; status=1; fi
}

# 2. eager grid; the GPU tests (3) keep their share of the budget
bench "$(capped "${GPU_CHECK_EAGER_S:-180}" 60)" eager "$EAGER" false

# 3. the GPU tests
secs=$(capped "${GPU_CHECK_TESTS_S:-200}" 20)
if [ "$secs" -lt 20 ]; then
  say "pytest -m gpu: skipped, ${secs}s left of the budget"; status=1
else
  say "pytest -m gpu (at most ${secs}s)"
  # The tests' Ray in a temp dir of its own: what a cut-short run leaves (its daemons start sessions of
  # their own, out of timeout's reach) is found by that path and ended, holding no GPU memory for step 4.
  # Never `ray stop`: it would end every Ray on the machine (a test runner's own included).
  ray_tmp=$(mktemp -d /tmp/gpu_check_ray.XXXXXX)
  RAY_TMPDIR=$ray_tmp timeout --kill-after=10 "$secs" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests \
    > "$OUT/gpu-tests.log" 2>&1
  rc=$?
  if pkill -9 -f "$ray_tmp"; then say "ended the Ray processes the GPU tests left"; sleep 2; fi
  if [ $rc -ne 0 ]; then say "GPU tests failed (exit $rc$([ $rc -ge 124 ] && echo ", out of time")): $OUT/gpu-tests.log"; status=1; fi
  tail -n 3 "$OUT/gpu-tests.log" | tee -a "$OUT/gpu_check.log"
fi

# 4. compiled: the plain loop and the fastest eager DeepSpeed configuration, at its batch size
best=$("$PY" - "$OUT/bench" "$SMALL" <<'PY'
import glob, json, sys
rows = [r for f in sorted(glob.glob(sys.argv[1] + "/benchmark-*.json")) for r in json.load(open(f))]
ds = [r for r in rows if "error" not in r and r["zero_stage"] != "plain" and not r.get("compile")]
best = max(ds, key=lambda r: r["samples_per_s"], default={"zero_stage": 2, "batch_size": int(sys.argv[2])})
print(f"{best['zero_stage']}:{best['batch_size']}")
PY
)
bench "$(capped 100000 0)" compiled "plain:${best#*:},$best" "$COMPILE" --profile "$OUT/profile.txt"

say "done (exit $status) in ${SECONDS}s; rows for BENCHMARKS.md in $OUT/BENCHMARKS.md"
exit $status
