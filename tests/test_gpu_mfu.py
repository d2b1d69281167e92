"""The GPU check's CPU smoke run: benchmarks/gpu_mfu.py at tiny shapes, every factor but compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_mfu_smoke_run_measures_every_setting_and_the_trainer(tmp_path):
    """The one command, ``bash benchmarks/gpu_mfu.sh``, with the smoke run's arguments."""
    out = tmp_path / "mfu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_mfu.sh", "--shrink", "--device", "cpu", "--seq", "64", "--batches", "1,2",
         "--factors", "batch,implementation,vision,checkpointing,liger", "--steps", "1", "--trainer-steps", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["failures"] == 0, (tmp_path / "log.txt").read_text()[-3000:]
    # the start is config/paper.yaml's DFT job of the 1.8B student, as the planner writes it
    start = report["start"]
    assert (start["student"], start["teacher"], start["implementation"]) == ("qwen1.5-1.8b", "qwen1.5-4b", "fused")
    assert start["checkpointing"] in (0, 1, 2, 3, 4) and start["vision"] == 1
    runs = {(r["factor"], r["per_device_batch"], r["implementation"], r["vision"], r["checkpointing"], r["liger"]): r
            for r in report["runs"]}
    measured = [r for r in report["runs"] if "tokens_per_s" in r]
    assert {r["factor"] for r in measured} == {"start", "batch", "implementation", "vision", "checkpointing"}
    assert any(r["implementation"] == "chunked" for r in measured) and any(r["vision"] == 2 for r in measured)
    assert {r["checkpointing"] for r in measured} >= {1, 2}
    for r in measured:
        assert r["tokens_per_s"] > 0 and r["flops_per_sample"] > 0 and set(r["loss_parts"]) == {"ce", "res", "vis", "rel"}
    one = next(r for r in measured if r["vision"] == 1)
    two = next(r for r in measured if r["vision"] == 2)
    assert one["flops_per_sample"] == two["flops_per_sample"]  # model FLOPs: the tower once per image either way
    liger = [r for r in runs.values() if r["liger"]]
    assert liger and all(r["not_run"].startswith("liger-kernel is Triton") for r in liger)  # said, not skipped silently
    trainer = report["trainer"]
    assert trainer["engine"] == "plain" and trainer["tokens_per_s"] > 0
    # the trainer runs at the chosen setting (the fastest here, which timing noise decides between 1 and 2 passes)
    assert (trainer["vision_pass"] == "shared") == (report["chosen"]["vision"] == 1), trainer["vision_pass"]
    assert trainer["ratio"] == round(trainer["tokens_per_s"] / report["chosen"]["tokens_per_s"], 3)
    assert proc.returncode == (0 if trainer["within_10_percent"] else 1)
