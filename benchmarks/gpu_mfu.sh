#!/usr/bin/env bash
# The GPU check of the training step, as one command on a machine with one CUDA GPU and python3
# with torch >= 2.11 and transformers >= 5.17 (wheels in .whl/ are installed to /tmp/site first:
# liger-kernel, deepspeed, when carried). About 5 minutes on an H100/H200; 330 s at most.
#
#   bash benchmarks/gpu_mfu.sh              # writes benchmarks/measured/gpu-mfu/mfu.json (+ log.txt, gpu.txt)
#   OUT=/somewhere bash benchmarks/gpu_mfu.sh
#
# What it measures: benchmarks/gpu_mfu.py (config/paper.yaml's Qwen1.5-1.8B <- 4B DFT job, one
# factor at a time, then KDTrainer at the best setting). Each measurement is in mfu.json as soon
# as it exists; the exit status is non-zero when a setting failed or the trainer's tokens/s is
# more than 10% below the sweep's. Once mfu.json is committed, config/paper.yaml's cost.mfu_file
# points at it and the dry run's price uses the measured MFU.
set -uo pipefail
OUT=${OUT:-benchmarks/measured/gpu-mfu}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
timeout 330 "$PY" -m benchmarks.gpu_mfu --out "$OUT/mfu.json" "$@" 2> "$OUT/log.txt"
status=$?
grep -E '^\{' "$OUT/log.txt" || tail -20 "$OUT/log.txt"
exit $status
