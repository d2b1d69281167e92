"""DeepSpeed (ZeRO-2, ZeRO-3 with a sharded teacher) and 2-process torchrun on the CPU (gloo).

Each run is a subprocess (as a user launches it), compared with one plain process at the same
global batch: per-device 4 x accumulation 2 x 1 process = per-device 4 x 1 x 2 processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_pair

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test launches several training processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tiny_components, tmp_path_factory):
    return build_pair(tiny_components, tmp_path_factory.mktemp("dist"), "qwen2.5-0.5b", "qwen2.5-1.5b", world_seed=2)


def _train(setup, out: Path, *extra: str, launcher: list[str] | None = None, env: dict | None = None):
    args = ["train", "--stage", "dft", f"model={setup / 'student'}", f"teacher={setup / 'teacher'}",
            f"output_dir={out}", f"data.json={setup / 'world' / 'train' / 'instruct.json'}",
            f"data.images={setup / 'world' / 'images'}", "train.precision=fp32", "train.global_batch=8",
            "train.per_device_batch=4", "train.max_steps=3", "train.save_steps=100", "train.lr=1e-3", *extra]
    cmd = (launcher or [sys.executable]) + ["-m", "llavakd.cli"] + args
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            steps[rec["step"]] = rec
    return steps


def _single_process_env() -> dict:
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port())}


@pytest.fixture(scope="module")
def plain(setup, tmp_path_factory):
    return _train(setup, tmp_path_factory.mktemp("plain") / "run")


def _assert_same(a: dict, b: dict, rel: float):
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        for key in ("loss", "loss_ce", "loss_res", "loss_vis", "loss_rel"):
            assert b[step][key] == pytest.approx(a[step][key], rel=rel, abs=1e-6), (step, key)


def test_two_process_torchrun_matches_one_process(setup, plain, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(_free_port())]
    two = _train(setup, tmp_path / "ddp", launcher=launcher)
    meta = json.loads((tmp_path / "ddp" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["grad_accumulation"] == 1 and meta["global_batch"] == 8
    _assert_same(plain, two, rel=1e-4)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_matches_one_plain_process(setup, plain, tmp_path, zero):
    ds = _train(setup, tmp_path / zero, f"train.deepspeed={ROOT / 'config' / 'deepspeed' / f'{zero}.json'}",
                env=_single_process_env())
    _assert_same(plain, ds, rel=1e-4)
    meta = json.loads((tmp_path / zero / "metadata.json").read_text())
    assert meta["teacher_placement"] == {"zero2": "deepspeed-zero0-replicated", "zero3": "deepspeed-zero3-sharded"}[zero]
    from transformers import LlavaForConditionalGeneration

    m = LlavaForConditionalGeneration.from_pretrained(tmp_path / zero / "final")  # gathered, plain HF
    assert m.config.image_seq_length == 16
