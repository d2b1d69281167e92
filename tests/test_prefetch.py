"""Offline benchmarks: which datasets the tasks load, an empty cache named before any model loads,
and evaluation with the offline switches set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavakd.eval.prefetch import benchmark_datasets
from llavakd.eval.registry import resolve

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "llavakd.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_every_task_dataset_is_listed_once_with_what_task_code_loads():
    found = {(d.path, d.name): d for d in benchmark_datasets(resolve("all"))}
    assert ("lmms-lab-encoder/GQA", "testdev_balanced_instructions") in found
    assert ("lmms-lab-encoder/GQA", "testdev_balanced_images") in found  # loaded by gqa_process_docs
    assert ("lmms-lab-encoder/POPE", "Full") in found  # three POPE tasks, one dataset
    assert len(found) == len(benchmark_datasets(resolve("all")))
    with_submission = benchmark_datasets(resolve("vqav2"), submission=True)
    assert len(with_submission) >= len(benchmark_datasets(resolve("vqav2")))


@pytest.mark.slow
def test_an_empty_cache_is_listed_offline(tmp_path):
    r = _cli("prefetch-benchmarks", "--benchmarks", "gqa,pope", "--hf-home", str(tmp_path / "empty"), "--check")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "missing: lmms-lab-encoder/GQA (testdev_balanced_images) (for gqa)" in r.stdout
    assert "0 of 3 datasets are in" in r.stdout


@pytest.mark.slow
def test_an_evaluation_with_an_empty_cache_fails_naming_the_dataset(tiny_student, tmp_path):
    r = _cli("eval", "--model", str(tiny_student), "--benchmarks", "gqa", "--out", str(tmp_path / "out"),
             "--hf-home", str(tmp_path / "empty"))
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("llavakd eval: error: not in the Hugging Face cache") and "lmms-lab-encoder/GQA" in line
    assert not list((tmp_path / "out").glob("*.json"))


@pytest.mark.slow
def test_the_stand_ins_evaluate_with_the_offline_switches_set(tiny_student, tmp_path):
    from llavakd.tiny.world import write_world

    write_world(tmp_path / "world", seed=0, size="tiny")
    r = _cli("eval", "--model", str(tiny_student), "--world", str(tmp_path / "world"), "--benchmarks", "pope",
             "--limit", "2", "--out", str(tmp_path / "out"), "--hf-home", str(tmp_path / "empty"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "pope.json").read_text())["request"]["hf_offline"] is True
