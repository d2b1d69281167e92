"""The objective benchmarks run end to end at a small shape and print what the docs quote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--vocab", "512", "--visual", "8", "--answer", "8", "--student-hidden", "16", "--teacher-hidden", "24"]


@pytest.mark.slow
def test_distill_memory_prints_every_ratio_in_one_json_line():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.distill_memory", *SMALL], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for impl in ("chunked", "fused", "fused_chunks"):
        assert report[f"{impl}_over_naive_memory"] >= 0
        assert report[f"{impl}_over_naive_time"] > 0
    # every implementation computes the same objective on the same inputs
    assert report["max_part_abs_diff"] < 1e-4
    assert set(report["naive"]["parts"]) == {"ce", "res", "vis", "rel"}
    assert report["shape"]["malloc_mmap_threshold"] == 1 << 20


@pytest.mark.slow
def test_the_micro_benchmarks_run():
    """make bench's pytest-benchmark suite runs (timing off: a smoke run, so it cannot rot unseen)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/micro", "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 passed" in proc.stdout


@pytest.mark.slow
def test_distill_precision_smoke():
    """benchmarks/distill_precision.py at a small shape: bf16 inputs within the bounds of float64."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.distill_precision", "--vocab", "2000", "--visual", "16",
                           "--answer", "16", "--student-hidden", "64", "--teacher-hidden", "96"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and report["meets_bounds"], report
    assert set(report["relative_difference"]) == {"ce", "res", "vis", "rel"}
    assert 0 < report["gradient_relative_norm_difference"]["head"] < 0.02  # bf16 rounding, not zero, not broken
