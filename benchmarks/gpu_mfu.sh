#!/usr/bin/env bash
# The DFT step at real shapes on one GPU: per-device batch 1, 4 and 8, fused and chunked objective,
# for Qwen2-0.5B <- Qwen2-1.5B and Qwen1.5-1.8B <- Qwen1.5-4B (random weights, bf16, gradient
# checkpointing). About 5 minutes on an H100/H200; each pair has 200 s at most.
#
#   bash benchmarks/gpu_mfu.sh                    # writes benchmarks/measured/gpu-mfu/
#   OUT=/somewhere bash benchmarks/gpu_mfu.sh
#
# mfu.json (both pairs' reports) is what config/paper.yaml's cost.mfu_file points at: once it is
# committed, the dry run's cost estimate uses the MFU measured there instead of the configured one.
set -euo pipefail
OUT=${OUT:-benchmarks/measured/gpu-mfu}
PY=${PY:-python}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
reports=()
for pair in "Qwen2-0.5B Qwen2-1.5B" "Qwen1.5-1.8B Qwen1.5-4B"; do
    read -r student teacher <<< "$pair"
    timeout 200 "$PY" -m benchmarks.gpu_dft_step --student "$student" --teacher "$teacher" \
        --per-device-batch 1,4,8 --implementation fused,chunked --steps 3 \
        --out "$OUT/mfu_$student.json" > /dev/null 2>> "$OUT/log.txt" || echo "$student <- $teacher: exit $?" >> "$OUT/log.txt"
    [ -f "$OUT/mfu_$student.json" ] && reports+=("$OUT/mfu_$student.json")
done
"$PY" - "$OUT/mfu.json" "${reports[@]}" <<'PYEOF'
import json, sys
out, files = sys.argv[1], sys.argv[2:]
reports = [json.load(open(f)) for f in files]
json.dump(reports, open(out, "w"), indent=2)
for r in reports:
    for run in r["runs"]:
        print(r["student"], "<-", r["teacher"], run.get("implementation"), "batch", run.get("per_device_batch"),
              "OOM" if run.get("oom") else f"mfu {run['mfu']:.3f} tokens/s {run['tokens_per_s']:.0f} peak {run['peak_memory_gib']} GiB")
PYEOF
