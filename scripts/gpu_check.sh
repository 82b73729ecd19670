#!/usr/bin/env bash
# The GPU work in one command (#14): the GPU tests, then the one-device step benchmark of the
# base preset (ZeRO 1 and 2 x batch 128 and 256 x compile off and on, each beside the plain
# PyTorch loop), everything written under $OUT. Sized for <= 8 minutes on one H100/H200.
# Without a GPU it is a dry run on CPU: the same steps with the tiny preset and a few steps each,
# so a GPU window is not lost to a typo (tests/test_gpu.py runs it).
#
#   OUT=/some/dir bash scripts/gpu_check.sh
#
# With a wheel bundle in .whl/ (../shared/tools/device_wheels.sh) it installs from it first
# (GPU_CHECK_INSTALL=0 skips that). PYTHON picks the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
say() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

if [ -f .whl/install.sh ] && [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
  say "installing from .whl/"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # DeepSpeed's fused-Adam build fails on '9.0a'
  if ! bash .whl/install.sh > "$OUT/install.log" 2>&1; then say "install failed: $OUT/install.log"; exit 1; fi
  export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} PATH=/tmp/site/bin:$PATH
fi

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  MODE=gpu CONFIG=base BATCHES=128,256 STEPS=20 WARMUP=5 COMPILE="false true"
  DATA="--set data.synthrad_pretrain=2000 --set data.synthrad_train=1000 --set data.synthrad_val=100 --set data.synthrad_test=100"
  "$PY" -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__)" | tee -a "$OUT/gpu_check.log"
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
else
  MODE=cpu CONFIG=tiny BATCHES=4 STEPS=2 WARMUP=1 COMPILE="false"  # compile on CPU: tests/test_model.py
  DATA="--set data.loader_workers=0"
fi
say "mode $MODE: pytest -m gpu"
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests > "$OUT/gpu-tests.log" 2>&1
rc=$?
status=0
if [ $rc -ne 0 ]; then say "GPU tests failed (exit $rc): $OUT/gpu-tests.log"; status=1; fi
tail -n 3 "$OUT/gpu-tests.log" | tee -a "$OUT/gpu_check.log"

for compile in $COMPILE; do
  say "benchmark: $CONFIG, ZeRO 1,2 x batch $BATCHES, compile $compile, with the plain loop"
  # shellcheck disable=SC2086  # DATA is a list of flags
  if ! "$PY" jobs/benchmark.py --config "$CONFIG" --stage pretrain --zero-stages 1,2 --batch-sizes "$BATCHES" \
      --steps "$STEPS" --warmup "$WARMUP" --baseline plain --set "train.compile=$compile" $DATA \
      --out "$OUT/bench" --markdown "$OUT/BENCHMARKS.md" >> "$OUT/benchmark.log" 2>&1; then
    say "benchmark failed (compile $compile): $OUT/benchmark.log"
    status=1
  fi
done
say "done (exit $status); rows for BENCHMARKS.md in $OUT/BENCHMARKS.md"
exit $status
