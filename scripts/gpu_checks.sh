#!/usr/bin/env bash
# The GPU checks owed by issues 4 and 5, as one script for a machine with one CUDA GPU.
#
#   bash scripts/gpu_checks.sh                 # results (JSON + logs) under $OUT or results/gpu_checks
#   PYTHON=.venv/bin/python bash scripts/gpu_checks.sh
#
# 1. the distillation objective at the paper's shape in bf16: naive vs chunked memory and time;
# 2. one DFT step at real shapes (random weights from configs) for a small and the largest pair;
# 3. the tiny world's stages on CUDA through the CLI: SFT and DFT in bf16, then DFT under
#    DeepSpeed ZeRO-2 and ZeRO-3 (one process, NCCL), each checked to finish with finite losses.
# Wheels in .whl/ (transformers, deepspeed and their needs) are installed to /tmp/site first when present.
set -uo pipefail
OUT=${OUT:-results/gpu_checks}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
B="$PY -m llavakd.cli"
status=0
step() { echo "=== $1 ($(date +%T))"; shift; "$@" || { echo "FAILED: $*"; status=1; }; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" | tee -a "$OUT/gpu.txt"

step "distill objective, paper shape, bf16" sh -c "$PY -m benchmarks.distill_memory --device cuda --dtype bfloat16 > $OUT/distill_memory.json"
cat "$OUT/distill_memory.json"
step "DFT step Qwen2-0.5B <- Qwen2-1.5B" sh -c "$PY -m benchmarks.gpu_dft_step --student Qwen2-0.5B --teacher Qwen2-1.5B > $OUT/dft_step_qwen2.json"
step "DFT step Qwen1.5-1.8B <- Qwen1.5-4B" sh -c "$PY -m benchmarks.gpu_dft_step --student Qwen1.5-1.8B --teacher Qwen1.5-4B --steps 3 > $OUT/dft_step_qwen15.json"
grep -hE '"(student|teacher|step_s|tokens_per_s|peak_memory_gib|mfu_estimate)"' "$OUT"/dft_step_*.json

T=/tmp/llavakd_gpu; rm -rf $T; mkdir -p $T
common="data.images=$T/world/images train.precision=bf16 train.global_batch=16 train.per_device_batch=16 train.save_steps=10 train.max_steps=20 train.lr=1e-3"
inst="data.json=$T/world/train/instruct.json"
step "tiny world" $B synth-world --out $T/world --seed 0 --size tiny
step "tiny components" $B tiny-models --out $T/comp
step "build teacher" $B build --vision $T/comp/vision/siglip --llm $T/comp/llm/qwen1.5-1.8b --strategy full --out $T/teacher
step "build student" $B build --vision $T/comp/vision/siglip --llm $T/comp/llm/qwen1.5-0.5b --strategy full --out $T/student
step "SFT bf16 on CUDA" $B train --stage sft model=$T/student output_dir=$T/sft $inst $common
step "DFT bf16 on CUDA" $B train --stage dft model=$T/sft/final teacher=$T/teacher output_dir=$T/dft $inst $common
export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1
for z in 2 3; do
  MASTER_PORT=$((29500 + z)) step "DFT bf16 DeepSpeed ZeRO-$z" $B train --stage dft model=$T/sft/final teacher=$T/teacher \
    output_dir=$T/dft_zero$z $inst $common train.deepspeed=config/deepspeed/zero$z.json
done
for r in sft dft dft_zero2 dft_zero3; do
  [ -f $T/$r/final/COMPLETE ] || { echo "MISSING $r/final/COMPLETE"; status=1; continue; }
  cp $T/$r/metrics.jsonl "$OUT/tiny_$r.metrics.jsonl"
  $PY - "$T/$r" <<'PY' || status=1
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if '"loss"' in l]
meta = json.load(open(sys.argv[1] + "/metadata.json"))
bad = [r for r in rows if not all(math.isfinite(v) for k, v in r.items() if k.startswith("loss"))]
print(sys.argv[1].rsplit("/", 1)[1], "steps", len(rows), "loss", round(rows[0]["loss"], 4), "->", round(rows[-1]["loss"], 4),
      "device", meta.get("device"), "teacher", meta.get("teacher_placement"), "non-finite rows", len(bad))
sys.exit(1 if bad or not rows else 0)
PY
done
echo "gpu_checks status $status"
exit $status
