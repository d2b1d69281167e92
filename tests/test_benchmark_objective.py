"""The objective benchmarks run end to end at a small shape and print what the docs quote."""

from __future__ import annotations

import json

from benchmarks import distill_memory

SMALL = ["--vocab", "512", "--visual", "8", "--answer", "8", "--student-hidden", "16", "--teacher-hidden", "24"]


def test_distill_memory_prints_every_ratio_in_one_json_line(capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert distill_memory.main(SMALL) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for impl in ("chunked", "fused", "fused_chunks"):
        assert report[f"{impl}_over_naive_memory"] >= 0
        assert report[f"{impl}_over_naive_time"] > 0
    # every implementation computes the same objective on the same inputs
    assert report["max_part_abs_diff"] < 1e-4
    assert set(report["naive"]["parts"]) == {"ce", "res", "vis", "rel"}
    assert report["shape"]["malloc_mmap_threshold"] == 1 << 20
