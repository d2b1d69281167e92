#!/usr/bin/env bash
# The full LLaVA-KD chain on the tiny world, from the CLI (until the Snakemake DAG lands):
#   teacher PT -> SFT;  baseline student PT -> SFT;  KD student DPT -> SFT -> DFT;  then scores.
#
#   bash scripts/tiny_chain.sh WORLD COMPONENTS OUT [teacher_llm] [student_llm]
#   bash scripts/tiny_chain.sh results/demo/world results/demo/components results/chain qwen1.5-1.8b qwen1.5-0.5b
#
# Step counts come from the environment (defaults in brackets): PT_STEPS [50], SFT_STEPS [150],
# DFT_STEPS [100]; batch 32, lr 1e-3 (5e-4 for DFT), as docs/world.md records for
# tiny LLMs. Teacher and baseline train in parallel (one core each).
set -euo pipefail
world=$1; comp=$2; out=$3; teacher=${4:-qwen1.5-1.8b}; student=${5:-qwen1.5-0.5b}
PT_STEPS=${PT_STEPS:-50}; SFT_STEPS=${SFT_STEPS:-150}; DFT_STEPS=${DFT_STEPS:-100}
B="${LLAVAKD:-.venv/bin/llavakd}"
export OMP_NUM_THREADS=1
common="data.images=$world/images train.precision=fp32 train.global_batch=32 train.per_device_batch=32 train.save_steps=50"
caps="data.json=$world/train/captions.json"; inst="data.json=$world/train/instruct.json"

$B build --vision "$comp/vision/siglip" --llm "$comp/llm/$teacher" --strategy full --out "$out/teacher/init" --overwrite
$B build --vision "$comp/vision/siglip" --llm "$comp/llm/$student" --strategy full --out "$out/student/init" --overwrite

two_stage() {  # name init -> PT -> SFT
  $B train --stage pt model="$out/$1/init" output_dir="$out/$1/pt" $caps $common train.max_steps=$PT_STEPS train.lr=1e-3 --resume
  $B train --stage sft model="$out/$1/pt/final" output_dir="$out/$1/sft" $inst $common train.max_steps=$SFT_STEPS train.lr=1e-3 --resume
}
two_stage teacher > "$out/teacher.log" 2>&1 &
tp=$!
mkdir -p "$out/baseline"; [ -d "$out/baseline/init" ] || cp -r "$out/student/init" "$out/baseline/init"
two_stage baseline > "$out/baseline.log" 2>&1
wait $tp

kd() { $B train "$@" $common --resume; }
kd --stage dpt model="$out/student/init" teacher="$out/teacher/sft/final" output_dir="$out/kd/dpt" $caps train.max_steps=$PT_STEPS train.lr=1e-3
kd --stage sft model="$out/kd/dpt/final" output_dir="$out/kd/sft" $inst train.max_steps=$SFT_STEPS train.lr=1e-3
kd --stage dft model="$out/kd/sft/final" teacher="$out/teacher/sft/final" output_dir="$out/kd/dft" $inst train.max_steps=$DFT_STEPS train.lr=5e-4

"${PYTHON:-.venv/bin/python}" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for run in ("teacher/pt", "teacher/sft", "baseline/pt", "baseline/sft", "kd/dpt", "kd/sft", "kd/dft"):
    rows = [json.loads(l) for l in (out / run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    keys = [k for k in rows[0] if k.startswith("loss_")]
    n = max(1, len(rows) // 10)
    first = {k: sum(r[k] for r in rows[:n]) / n for k in keys}
    last = {k: sum(r[k] for r in rows[-n:]) / n for k in keys}
    trend = ", ".join(f"{k[5:]} {first[k]:.4f} -> {last[k]:.4f}{'' if last[k] < first[k] else ' (NOT decreasing)'}" for k in keys)
    print(f"{run:13s} {trend}")
PY
for m in teacher/sft baseline/sft kd/dft; do
  $B score-standins --model "$out/$m/final" --world "$world" --out "$out/scores/${m//\//_}.json" | sed "s|^|$m  |"
done
