"""The GPU check's CPU smoke run: benchmarks/gpu_mfu.py at tiny shapes, every factor but compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_mfu_smoke_run_measures_every_setting_and_the_trainer(tmp_path):
    """The one command, ``bash benchmarks/gpu_mfu.sh``, with the smoke run's arguments."""
    out = tmp_path / "mfu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_mfu.sh", "--shrink", "--device", "cpu", "--seq", "64", "--batches", "1,2",
         "--factors", "batch,implementation,vision,checkpointing,liger", "--steps", "1", "--trainer-steps", "3",
         "--min-trainer-ratio", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "log.txt").read_text() if (tmp_path / "log.txt").is_file() else ""
    # every setting ran, the trainer ran at the chosen one (its speed is not gated on a CPU: --min-trainer-ratio 0)
    assert proc.returncode == 0, proc.stdout[-2000:] + log[-3000:]
    report = json.loads(out.read_text())
    assert report["failures"] == 0
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
    assert trainer["within_10_percent"] == (trainer["ratio"] >= 0.9)


def test_the_gpu_checks_exit_status_gates_on_failures_and_the_trainers_speed(monkeypatch):
    """The GPU run's exit (what the smoke run above cannot assert on a CPU): non-zero when a setting
    failed, nothing was chosen, the trainer failed, or its tokens/s fell below the ratio asked for."""
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is a folder of the repository, not of the package
    from benchmarks.gpu_mfu import MIN_TRAINER_RATIO, exit_status

    good = {"failures": 0, "chosen": {"tokens_per_s": 100.0}, "trainer": {"ratio": 0.95}}
    assert MIN_TRAINER_RATIO == 0.9 and exit_status(good) == 0
    assert exit_status({**good, "trainer": {"ratio": 0.85}}) == 1  # more than 10% below the sweep
    assert exit_status({**good, "trainer": {"ratio": 0.85}}, min_trainer_ratio=0) == 0  # the smoke run's setting
    assert exit_status({**good, "failures": 1}) == 1
    assert exit_status({**good, "trainer": {"error": "Traceback ..."}}, min_trainer_ratio=0) == 1
    assert exit_status({"failures": 0, "runs": []}, min_trainer_ratio=0) == 1  # nothing fit the memory budget
