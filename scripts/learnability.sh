#!/usr/bin/env bash
# Is the synthetic world learnable? Train plain LLaVA models (PT -> SFT, no distillation) of
# several LLM sizes on one world and score each on every stand-in against its chance level.
#
#   bash scripts/learnability.sh WORLD COMPONENTS OUT LLM [LLM ...]
#   llavakd synth-world --out /tmp/L/world --seed 0 --size small
#   llavakd tiny-models --world /tmp/L/world --out /tmp/L/comp --seed 0
#   PT_STEPS=100 SFT_STEPS=1000 bash scripts/learnability.sh /tmp/L/world /tmp/L/comp /tmp/L/runs qwen1.5-0.5b qwen1.5-1.8b
#
# Step counts come from the environment (defaults in brackets): PT_STEPS [100], SFT_STEPS [1000];
# batch 32, lr 1e-3, fp32; EXTRA adds key=value overrides to both stages (EXTRA="train.seed=1" for
# another data order). The LLMs train in parallel, one process (and one core) each.
# Writes OUT/<llm>/{init,pt,sft}, OUT/<llm>.log and OUT/scores/<llm>.json, then prints a table.
set -euo pipefail
if [ $# -lt 4 ]; then sed -n 2,13p "$0"; exit 2; fi
world=$1; comp=$2; out=$3; shift 3
PT_STEPS=${PT_STEPS:-100}; SFT_STEPS=${SFT_STEPS:-1000}
B="${LLAVAKD:-.venv/bin/llavakd}"
export OMP_NUM_THREADS=1
common="data.images=$world/images train.precision=fp32 train.global_batch=32 train.per_device_batch=32 train.save_steps=100 train.lr=1e-3 ${EXTRA:-}"
mkdir -p "$out/scores"

one() {  # llm: build -> PT -> SFT -> score
  local m=$1
  $B build --vision "$comp/vision/siglip" --llm "$comp/llm/$m" --strategy full --out "$out/$m/init" --overwrite
  $B train --stage pt model="$out/$m/init" output_dir="$out/$m/pt" data.json="$world/train/captions.json" \
    $common train.max_steps="$PT_STEPS" --resume
  $B train --stage sft model="$out/$m/pt/final" output_dir="$out/$m/sft" data.json="$world/train/instruct.json" \
    $common train.max_steps="$SFT_STEPS" --resume
  $B score-standins --model "$out/$m/sft/final" --world "$world" --out "$out/scores/$m.json"
}
pids=()
for m in "$@"; do one "$m" > "$out/$m.log" 2>&1 & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done

"${PYTHON:-.venv/bin/python}" - "$out" "$@" <<'PY'
import json, sys
from pathlib import Path
out, llms = Path(sys.argv[1]), sys.argv[2:]
scores = {m: json.loads((out / "scores" / f"{m}.json").read_text()) for m in llms}
first = scores[llms[0]]
print(f"| stand-in | n | chance | {' | '.join(llms)} |")
print("|---|---|---|" + "---|" * len(llms))
for task, r in first.items():
    print(f"| {task} | {r['n']} | {r['chance']} | " + " | ".join(str(scores[m][task]["score"]) for m in llms) + " |")
margin = {m: sum(r["score"] - r["chance"] for r in scores[m].values()) / len(scores[m]) for m in llms}
worst = {m: min(r["score"] - r["chance"] for r in scores[m].values()) for m in llms}
print("| mean points above chance | | | " + " | ".join(f"{margin[m]:.1f}" for m in llms) + " |")
print("| fewest points above chance | | | " + " | ".join(f"{worst[m]:.1f}" for m in llms) + " |")
PY
