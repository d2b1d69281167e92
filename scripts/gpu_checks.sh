#!/usr/bin/env bash
# The GPU checks owed by the issues, as one script for a machine with one CUDA GPU.
#
#   bash scripts/gpu_checks.sh                 # results (JSON + logs) under $OUT or results/gpu_checks
#   PYTHON=.venv/bin/python bash scripts/gpu_checks.sh
#   CHECKS="profile tiny eval" bash scripts/gpu_checks.sh   # a subset (default: objective dft tiny zero)
#
# objective: the distillation objective at the paper's shape in bf16: naive vs chunked memory and time;
# dft:       one DFT step at real shapes (random weights from configs) for a small and the largest pair;
# profile:   the DFT step's parts over 3 synchronised steps, and a torch.profiler table of one step;
# tiny:      the tiny world's stages on CUDA through the CLI: SFT and DFT in bf16, each checked to
#            finish with finite losses;
# zero:      (with tiny) DFT under DeepSpeed ZeRO-2 and ZeRO-3 (one process, NCCL), checked the same way;
# eval:      (with tiny) the lmms-eval runner on CUDA (fp32 and bf16) against the CPU on the tiny SFT
#            model (200 SFT steps): headline scores and the share of identical per-sample answers.
# Wheels in .whl/ (transformers, deepspeed, lmms-eval and their needs) are installed to /tmp/site first when present.
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
CHECKS=${CHECKS:-objective dft tiny zero}
want() { [[ " $CHECKS " == *" $1 "* ]]; }
status=0
step() { echo "=== $1 ($(date +%T))"; shift; "$@" || { echo "FAILED: $*"; status=1; }; }
finish() { echo "gpu_checks status $status"; exit $status; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" | tee -a "$OUT/gpu.txt"

if want objective; then
  step "distill objective, paper shape, bf16" sh -c "$PY -m benchmarks.distill_memory --device cuda --dtype bfloat16 > $OUT/distill_memory.json"
  cat "$OUT/distill_memory.json"
fi
if want dft; then
  step "DFT step Qwen2-0.5B <- Qwen2-1.5B" sh -c "$PY -m benchmarks.gpu_dft_step --student Qwen2-0.5B --teacher Qwen2-1.5B > $OUT/dft_step_qwen2.json"
  step "DFT step Qwen1.5-1.8B <- Qwen1.5-4B" sh -c "$PY -m benchmarks.gpu_dft_step --student Qwen1.5-1.8B --teacher Qwen1.5-4B --steps 3 > $OUT/dft_step_qwen15.json"
  grep -hE '"(student|teacher|step_s|tokens_per_s|peak_memory_gib|mfu_estimate)"' "$OUT"/dft_step_*.json
fi
if want profile; then
  step "DFT step parts + profile, Qwen2-0.5B <- Qwen2-1.5B" \
    sh -c "$PY -m benchmarks.gpu_dft_step --breakdown 3 --profile $OUT > $OUT/breakdown_Qwen2-0.5B.json"
  cat "$OUT/breakdown_Qwen2-0.5B.json"
  head -45 "$OUT/profile_Qwen2-0.5B.txt"
fi
want tiny || finish

T=/tmp/llavakd_gpu; rm -rf $T; mkdir -p $T
common="data.images=$T/world/images train.precision=bf16 train.global_batch=16 train.per_device_batch=16 train.save_steps=10 train.max_steps=20 train.lr=1e-3"
inst="data.json=$T/world/train/instruct.json"
step "tiny world" $B synth-world --out $T/world --seed 0 --size tiny
step "tiny components" $B tiny-models --out $T/comp
step "build teacher" $B build --vision $T/comp/vision/siglip --llm $T/comp/llm/qwen1.5-1.8b --strategy full --out $T/teacher
step "build student" $B build --vision $T/comp/vision/siglip --llm $T/comp/llm/qwen1.5-0.5b --strategy full --out $T/student
step "SFT bf16 on CUDA" $B train --stage sft model=$T/student output_dir=$T/sft $inst $common
step "DFT bf16 on CUDA" $B train --stage dft model=$T/sft/final teacher=$T/teacher output_dir=$T/dft $inst $common
runs="sft dft"
if want zero; then
  export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1
  for z in 2 3; do
    MASTER_PORT=$((29500 + z)) step "DFT bf16 DeepSpeed ZeRO-$z" $B train --stage dft model=$T/sft/final teacher=$T/teacher \
      output_dir=$T/dft_zero$z $inst $common train.deepspeed=config/deepspeed/zero$z.json
  done
  runs="$runs dft_zero2 dft_zero3"
fi
for r in $runs; do
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
if want eval; then
  step "SFT bf16 on CUDA, 200 steps (the model evaluated)" $B train --stage sft model=$T/student \
    output_dir=$T/sft_eval $inst $common train.max_steps=200 train.save_steps=200
  ev="$B eval --model $T/sft_eval/final --benchmarks all --world $T/world --batch-size 16"
  step "eval on CUDA, fp32" $ev --device cuda --dtype float32 --out $T/eval_cuda_fp32
  step "eval on CUDA, bf16" $ev --device cuda --dtype bfloat16 --out $T/eval_cuda_bf16
  step "eval on CPU, fp32" $ev --device cpu --dtype float32 --out $T/eval_cpu_fp32
  $PY - $T "$OUT/eval_compare.json" <<'PY' || status=1
import json, sys
from pathlib import Path
t, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = ("eval_cpu_fp32", "eval_cuda_fp32", "eval_cuda_bf16")
report = {}
for f in sorted((t / runs[0]).glob("*.json")):
    heads = {r: json.loads((t / r / f.name).read_text())["headline"] for r in runs}
    preds = {r: [json.loads(line)["prediction"] for line in (t / r / f.name.replace(".json", ".samples.jsonl")).open()]
             for r in runs}
    same = {r: sum(a == b for a, b in zip(preds[runs[0]], preds[r])) / len(preds[runs[0]]) for r in runs[1:]}
    report[f.stem] = {"headline": heads, "same_answers_as_cpu": same, "n": len(preds[runs[0]])}
    print(f.stem, heads, {k: round(v, 3) for k, v in same.items()})
out.write_text(json.dumps(report, indent=1))
PY
fi
finish
