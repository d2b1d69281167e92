"""Parity across ranks: 2-process torchrun, DeepSpeed ZeRO-2 and ZeRO-3 on 2 ranks (CPU, gloo).

Each run is a subprocess (as a user launches it), compared with one plain process at the same
global batch (per-device 4 x accumulation 2 x 1 process = per-device 4 x 1 x 2 processes) over
5 optimizer steps with no warm-up: every loss part, the grad norm and the learning rate of every
step, and the final weights, to 1e-4. AdamW normalises the update, so a gradient-scale error
would hide in the losses; the grad norm shows it, and the negative control (rank 1's loss
doubled) proves the comparison catches it. Multi-GPU parity on CUDA is owed to a machine with
several GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_pair, metrics_by_step
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test launches several training processes
STEPS = 5
KEYS = ("loss", "loss_ce", "loss_res", "loss_vis", "loss_rel", "grad_norm", "learning_rate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tiny_components, tmp_path_factory):
    return build_pair(tiny_components, tmp_path_factory.mktemp("dist"), "qwen2.5-0.5b", "qwen2.5-1.5b", world_seed=2)


def _torchrun(n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
            str(_free_port())]


def _train(setup, out: Path, *extra: str, launcher: list[str] | None = None, entry: list[str] | None = None):
    """One DFT run; returns ({step: logged record}, final weights)."""
    args = ["train", "--stage", "dft", f"model={setup / 'student'}", f"teacher={setup / 'teacher'}",
            f"output_dir={out}", f"data.json={setup / 'world' / 'train' / 'instruct.json'}",
            f"data.images={setup / 'world' / 'images'}", "train.precision=fp32", "train.global_batch=8",
            "train.per_device_batch=4", f"train.max_steps={STEPS}", "train.save_steps=100", "train.lr=1e-3",
            "train.warmup_ratio=0", *extra]
    cmd = (launcher or [sys.executable]) + (entry or ["-m", "llavakd.cli"]) + args
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return read_run(out)


def read_run(out: Path):
    """A finished run's ({step: logged record}, final weights)."""
    steps = metrics_by_step(out)
    weights = {}
    for f in sorted((out / "final").glob("*.safetensors")):
        weights.update(load_file(f))
    return steps, weights


def mismatches(a, b, tol: float = 1e-4, keys=KEYS) -> list[str]:
    """Every per-step value (of ``keys``) and weight tensor where run b differs from run a by more than tol."""
    (sa, wa), (sb, wb) = a, b
    out = [] if sorted(sa) == sorted(sb) == list(range(1, STEPS + 1)) else [f"steps {sorted(sa)} vs {sorted(sb)}"]
    for step in sorted(set(sa) & set(sb)):
        for key in keys:
            x, y = sa[step][key], sb[step][key]
            if abs(x - y) > tol * max(abs(x), 1e-2):
                out.append(f"step {step} {key}: {x} vs {y}")
    tied = "language_model.model.embed_tokens.weight"  # a tied head may be saved by one writer only
    for w, other in ((wa, wb), (wb, wa)):
        if "lm_head.weight" in w and "lm_head.weight" not in other and tied in other:
            other["lm_head.weight"] = other[tied]
    if set(wa) != set(wb):
        out.append(f"weights differ in names: {sorted(set(wa) ^ set(wb))[:4]}")
    for name in sorted(set(wa) & set(wb)):
        d = (wa[name].double() - wb[name].double()).abs().max().item()
        if d > tol:
            out.append(f"weight {name}: max difference {d:.3g}")
    return out


@pytest.fixture(scope="module")
def plain(setup, tmp_path_factory):
    return _train(setup, tmp_path_factory.mktemp("plain") / "run")


def _engine_args(engine: str) -> list[str]:
    return [] if engine == "ddp" else [f"train.deepspeed={ROOT / 'config' / 'deepspeed' / f'{engine}.json'}"]


_TWO_RANKS: dict = {}


def two_ranks(setup, tmp_path_factory, engine: str):
    """An uninterrupted 2-rank DFT run under torchrun (``ddp``) or DeepSpeed (``zero2``, ``zero3``), once
    per module: (its folder, its read_run)."""
    if engine not in _TWO_RANKS:
        out = tmp_path_factory.mktemp(engine) / "run"
        _TWO_RANKS[engine] = out, _train(setup, out, *_engine_args(engine), launcher=_torchrun())
    return _TWO_RANKS[engine]


def test_two_process_torchrun_matches_one_process(setup, plain, tmp_path_factory):
    out, two = two_ranks(setup, tmp_path_factory, "ddp")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["grad_accumulation"] == 1 and meta["global_batch"] == 8
    assert mismatches(plain, two) == []


def test_a_rank_with_a_doubled_loss_fails_the_comparison(setup, plain, tmp_path):
    """Negative control: a gradient-scale bug on one rank must not pass the parity check."""
    bad = _train(setup, tmp_path / "bad", launcher=_torchrun(), entry=[str(ROOT / "tests" / "_fault_double_loss.py")])
    found = mismatches(plain, bad)
    assert any("grad_norm" in m for m in found), found


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_on_two_ranks_matches_one_plain_process(setup, plain, tmp_path_factory, zero):
    out, ds = two_ranks(setup, tmp_path_factory, zero)
    assert mismatches(plain, ds) == []
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["world_size"] == 2
    assert meta["teacher_placement"] == {"zero2": "deepspeed-zero0-replicated", "zero3": "deepspeed-zero3-sharded"}[zero]
    part = meta["teacher_partition"]
    if zero == "zero2":
        assert part is None  # replicated: every rank holds the whole frozen teacher
    else:  # DeepSpeed's partition metadata: each rank holds its half, not a full copy
        assert [r["rank"] for r in part] == [0, 1]
        for r in part:
            assert 0 < r["partition_numel"] <= 0.51 * r["total_numel"]
            assert r["resident_numel"] < 0.5 * r["total_numel"]
        assert sum(r["partition_numel"] for r in part) >= part[0]["total_numel"]
    from transformers import LlavaForConditionalGeneration

    m = LlavaForConditionalGeneration.from_pretrained(out / "final")  # gathered, plain HF
    assert m.config.image_seq_length == 16 and isinstance(ds[1], dict)
    assert torch.isfinite(torch.stack([v.float().abs().max() for v in ds[1].values()])).all()


@pytest.mark.parametrize("zero", ["zero2", "zero3", None])
def test_an_inf_gradient_on_one_rank_stops_the_step_before_the_weights_change(setup, tmp_path, zero):
    """An inf planted in one projector gradient of step 3 on rank 1: under DeepSpeed ZeRO-2/3 (whose
    gradients live in DeepSpeed's buffers) and under DDP the guard stops the run at step 3, every
    rank's weights still those of step 2, and no checkpoint of step 3 is written."""
    out = tmp_path / "run"
    extra = [f"train.deepspeed={ROOT / 'config' / 'deepspeed' / f'{zero}.json'}"] if zero else []
    args = ["train", "--stage", "dft", f"model={setup / 'student'}", f"teacher={setup / 'teacher'}",
            f"output_dir={out}", f"data.json={setup / 'world' / 'train' / 'instruct.json'}",
            f"data.images={setup / 'world' / 'images'}", "train.precision=fp32", "train.global_batch=8",
            "train.per_device_batch=4", "train.max_steps=4", "train.save_steps=1", "train.lr=1e-3",
            "train.warmup_ratio=0", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLAVAKD_FAULT_OUT": str(tmp_path / "fault")}
    proc = subprocess.run(_torchrun() + [str(ROOT / "tests" / "_fault_inf_grad.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "step 3: non-finite gradient" in proc.stderr, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"fault.{r}.json").read_text()) for r in (0, 1)]
    assert all(r["unchanged"] and r["step"] == 2 for r in reports), reports
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "checkpoints" / "checkpoint-3").exists()


@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_on_policy_distillation_runs_on_two_ranks(setup, tmp_path, engine):
    """GKD on 2 ranks (torchrun, and DeepSpeed ZeRO-2): every step's micro-batches are the student's
    own samples (lambda 1), each rank on its own stream, saved per rank in the checkpoints; CE stays
    on the dataset's answers in a second student forward; the losses are finite and the samples are
    logged."""
    import math

    extra = [f"train.deepspeed={ROOT / 'config' / 'deepspeed' / 'zero2.json'}"] if engine == "zero2" else []
    out = tmp_path / engine
    steps, _ = _train(setup, out, "loss.on_policy=1.0", "loss.ce=true", "loss.vis=false", "loss.rel=false",
                      "loss.divergence=jsd", "loss.max_new_tokens=8", "train.save_steps=2", "train.logging_steps=1",
                      *extra, launcher=_torchrun())
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert all(math.isfinite(rec["loss_res"]) and rec["loss_res"] > 0 for rec in steps.values())
    assert all(math.isfinite(rec["loss_ce"]) and rec["loss_ce"] > 0 for rec in steps.values())
    assert all(rec.get("sampled") for rec in steps.values())
    from llavakd.train.onpolicy import SAMPLING_STATE

    ckpt = sorted((out / "checkpoints").glob("checkpoint-*"))[-1]
    states = [torch.load(ckpt / SAMPLING_STATE.format(rank=r), weights_only=True) for r in (0, 1)]
    assert not torch.equal(states[0], states[1])  # each rank has its own stream


def test_on_policy_under_zero3_is_refused_by_the_dry_run():
    import yaml

    from llavakd.errors import ConfigError
    from llavakd.plan import Study

    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["train"]["dft"]["train.deepspeed"] = "config/deepspeed/zero3.json"
    raw["methods"] = {"compare": ["gkd"]}
    with pytest.raises(ConfigError, match=r"dft@gkd: loss.on_policy under ZeRO-3 is refused"):
        Study.load(raw, source="paper.yaml")


LLAVADI = ("loss.vis=false", "loss.rel=false", "loss.feat=true")
LLAVADI_KEYS = ("loss", "loss_ce", "loss_res", "loss_feat", "grad_norm", "learning_rate")


@pytest.fixture(scope="module")
def plain_llavadi(setup, tmp_path_factory):
    return _train(setup, tmp_path_factory.mktemp("plain_llavadi") / "run", *LLAVADI)


@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_llavadi_with_its_learnable_projector_on_two_ranks_matches_one_process(setup, plain_llavadi, tmp_path, engine):
    """LLaVADI's projector trains beside the student (llavakd.distill.parts): on 2 ranks, under DDP
    and under DeepSpeed ZeRO-2, every logged part (L_feat's reflects the projector's updates), the
    grad norm (which counts the projector's gradient) and the final weights equal one process's."""
    plain = plain_llavadi
    extra = [f"train.deepspeed={ROOT / 'config' / 'deepspeed' / 'zero2.json'}"] if engine == "zero2" else []
    two = _train(setup, tmp_path / engine, *LLAVADI, *extra, launcher=_torchrun())
    assert all(rec["loss_feat"] > 0 for rec in plain[0].values())
    assert mismatches(plain, two, keys=LLAVADI_KEYS) == []
    assert not [k for k in two[1] if "loss_parts" in k]  # final/ holds the student only


def test_learnable_parts_under_zero3_are_refused_by_the_dry_run():
    """ZeRO-3 keeps parameters partitioned outside their module's forward, and the parts are used
    after the student's: the plan refuses the combination, naming the job and the terms."""
    import yaml

    from llavakd.errors import ConfigError
    from llavakd.plan import Study

    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["train"]["dft"]["train.deepspeed"] = "config/deepspeed/zero3.json"
    raw["methods"] = {"compare": ["llavadi"]}
    with pytest.raises(ConfigError, match=r"dft@llavadi: loss terms with learnable parts \(feat\) under ZeRO-3"):
        Study.load(raw, source="paper.yaml")
    raw["train"]["dft"]["train.deepspeed"] = "config/deepspeed/zero2.json"
    Study.load(raw, source="paper.yaml")  # ZeRO-2 plans


def test_an_attention_layer_the_llms_do_not_have_fails_the_dry_run():
    import yaml

    from llavakd.errors import ConfigError
    from llavakd.plan import Study

    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    deep = {"terms": ["ce", "attn"], "attn_layer": 40}  # Qwen1.5-0.5B has 24 layers, Qwen1.5-4B 40
    raw["methods"] = {"compare": ["deep_attn"], "define": {"deep_attn": deep}}
    with pytest.raises(ConfigError, match=r"dft@deep_attn: an attention term reads layer 40, and qwen1.5-0.5b has 24"):
        Study.load(raw, source="paper.yaml")
    deep["attn_layer"] = -24
    Study.load(raw, source="paper.yaml")  # the first layer, counted from the end of the 0.5B student


@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_a_warning_on_one_rank_mid_step_stops_both_at_that_step_and_the_resumed_run_matches(
        setup, tmp_path, tmp_path_factory, engine):
    """The scheduler's warning (SIGURG) reaches rank 1 only, mid-step 3, under torchrun (2 ranks) and
    DeepSpeed ZeRO-2, run through llavakd.launch as the workflow runs it: the ranks agree to stop
    after step 3, each writes its part of checkpoint-3 (ZeRO-2: its shard; rank 0 the marker), and
    launch exits with the "resume me" status although torchrun reports a failure. Resumed, the run
    equals the uninterrupted 2-rank run of the same engine over all 5 steps, to 1e-5 (the SIGKILL
    test's tolerance; the plain run resumed without its RNG state, tests/test_faults.py, is the
    negative control of that comparison)."""
    from llavakd.preempt import RESUME_EXIT
    from llavakd.train.trainer import complete_checkpoints

    extra = _engine_args(engine)
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "llavakd.launch", "--gpus", "0", "--"] + _torchrun()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLAVAKD_FAULT_SIGNAL_AT": "3", "LLAVAKD_FAULT_SIGNAL_RANK": "1"}
    args = ["train", "--stage", "dft", f"model={setup / 'student'}", f"teacher={setup / 'teacher'}",
            f"output_dir={out}", f"data.json={setup / 'world' / 'train' / 'instruct.json'}",
            f"data.images={setup / 'world' / 'images'}", "train.precision=fp32", "train.global_batch=8",
            "train.per_device_batch=4", f"train.max_steps={STEPS}", "train.save_steps=100", "train.lr=1e-3",
            "train.warmup_ratio=0", *extra]
    proc = subprocess.run(launch + [str(ROOT / "tests" / "_fault_signal.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == RESUME_EXIT, proc.stderr[-4000:]
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["checkpoint-3"]
    assert max(metrics_by_step(out)) == 3 and not (out / "final").exists()
    if engine == "zero2":  # every rank saved its optimizer shard
        assert len(list((out / "checkpoints" / "checkpoint-3").rglob("*optim_states.pt"))) == 2
    resumed = _train(setup, out, *extra, "--resume", launcher=_torchrun())
    assert json.loads((out / "metadata.json").read_text())["resumed_from"].endswith("checkpoint-3")
    assert mismatches(two_ranks(setup, tmp_path_factory, engine)[1], resumed, tol=1e-5) == []
