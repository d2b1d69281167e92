"""Real faults: a training process killed with SIGKILL mid-step, a disk that fills while a checkpoint
is written, a checkpoint damaged after its completion marker, an evaluation killed mid-benchmark.

Each fault is produced for real (a signal to a subprocess, an ENOSPC raised inside the writer, bytes
flipped on disk) and each comparison has a negative control that must fail.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_pair, metrics_by_step
from safetensors.torch import load_file

from llavakd.config import load_stage_config
from llavakd.errors import LlavaKDError
from llavakd.train.run import run_stage
from llavakd.train.trainer import complete_checkpoints

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"sft": ("loss", "loss_ce", "learning_rate", "grad_norm"),
        "dft": ("loss", "loss_ce", "loss_res", "loss_vis", "loss_rel", "learning_rate", "grad_norm")}
STEPS = 8  # 24 records at global batch 8: 3 steps an epoch, so the run crosses two epoch boundaries


@pytest.fixture(scope="module")
def pair(tiny_components, tmp_path_factory):
    root = build_pair(tiny_components, tmp_path_factory.mktemp("faults"), "qwen1.5-0.5b", "qwen1.5-1.8b",
                      world_seed=7)
    cfg_path = root / "student" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["text_config"]["attention_dropout"] = 0.1  # dropout in the LLM: a lost RNG state changes the losses
    cfg_path.write_text(json.dumps(cfg, indent=2))
    records = json.loads((root / "world" / "train" / "instruct.json").read_text())
    (root / "small.json").write_text(json.dumps(records[:24]))
    return root


def _args(pair, stage, out, *extra):
    args = [f"model={pair / 'student'}", f"output_dir={out}", f"data.json={pair / 'small.json'}",
            f"data.images={pair / 'world' / 'images'}", "train.precision=fp32", "train.global_batch=8",
            "train.per_device_batch=4", f"train.max_steps={STEPS}", "train.save_steps=2", "train.logging_steps=1",
            "train.lr=1e-3", *extra]
    if stage == "dft":
        args.append(f"teacher={pair / 'teacher'}")
    return args


def _cli(pair, stage, out, *extra, resume=False, wait=True):
    cmd = [sys.executable, "-m", "llavakd.cli", "train", "--stage", stage, *_args(pair, stage, out, *extra)]
    cmd += ["--resume"] if resume else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _differences(stage, ref_dir, run_dir, tol=1e-5) -> list[str]:
    a, b = metrics_by_step(ref_dir), metrics_by_step(run_dir)
    out = [] if sorted(a) == sorted(b) == list(range(1, STEPS + 1)) else [f"steps {sorted(a)} vs {sorted(b)}"]
    for step in sorted(set(a) & set(b)):
        for key in KEYS[stage]:
            if abs(a[step][key] - b[step][key]) > tol * max(abs(a[step][key]), 1e-3):
                out.append(f"step {step} {key}: {a[step][key]} vs {b[step][key]}")
    wa, wb = load_file(ref_dir / "final" / "model.safetensors"), load_file(run_dir / "final" / "model.safetensors")
    for name in wa:
        d = (wa[name] - wb[name]).abs().max().item()
        if d > tol:
            out.append(f"weight {name}: {d:.3g}")
    return out


def _killed_and_control(pair, tmp_path, stage, *extra):
    """A run killed with SIGKILL mid-step (after step 3, checkpoint 2 complete) and a copy of it to
    spoil for a negative control (its stored config pointed at the copy)."""
    killed = tmp_path / "killed"
    _kill_mid_step(_cli(pair, stage, killed, *extra, wait=False), killed, after_step=3)
    control = tmp_path / "control"
    shutil.copytree(killed, control)
    stored = control / "config.yaml"
    stored.write_text(stored.read_text().replace(str(killed), str(control)))
    return killed, control


def _kill_mid_step(proc, run_dir, after_step: int):
    """SIGKILL once checkpoint-2 is complete and step ``after_step`` is logged: the next step is in flight."""
    t0 = time.time()
    while True:
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() - t0 < 600
        done = (run_dir / "metrics.jsonl").is_file() and any(
            json.loads(line).get("step", 0) >= after_step and "loss" in line
            for line in (run_dir / "metrics.jsonl").read_text().splitlines())
        if done and complete_checkpoints(run_dir / "checkpoints"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "final").exists()


_REFERENCES: dict = {}


def _reference(pair, stage, tmp_path_factory) -> Path:
    """The uninterrupted run of a stage, once per module (worker): the fault tests compare with it."""
    if stage not in _REFERENCES:
        ref = tmp_path_factory.mktemp(f"ref-{stage}") / "run"
        _cli(pair, stage, ref)
        _REFERENCES[stage] = ref
    return _REFERENCES[stage]


def _without_rng_state(run: Path) -> None:
    """A negative control: a run's checkpoints as if written without their RNG state (marked as such)."""
    from llavakd.io import write_marker

    for rng in run.glob("checkpoints/checkpoint-*/rng_state*.pth"):
        rng.unlink()
        write_marker(rng.parent)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dft"])
def test_sigkill_mid_step_then_resume_equals_an_uninterrupted_run(pair, tmp_path, tmp_path_factory, stage):
    ref = _reference(pair, stage, tmp_path_factory)
    killed, control = _killed_and_control(pair, tmp_path, stage)  # control: resumed without its RNG state
    _without_rng_state(control)
    _cli(pair, stage, killed, resume=True)
    meta = json.loads((killed / "metadata.json").read_text())
    assert meta["resumed_from"] and meta["grad_accumulation"] == 2
    assert _differences(stage, ref, killed) == []
    _cli(pair, stage, control, resume=True)
    assert _differences(stage, ref, control) != []  # negative control: the comparison sees a lost RNG state


def _cfg(pair, out, *extra):
    return load_stage_config(None, _args(pair, "sft", out, "train.max_steps=6", *extra), stage="sft")


@pytest.mark.slow
def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(pair, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # the optimizer state of checkpoint-4 hits a full disk half-way
        if "checkpoint-4" in str(f):
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(LlavaKDError) as err:
        run_stage(_cfg(pair, out))
    message = str(err.value)
    assert "\n" not in message and str(out / "checkpoints" / "checkpoint-4") in message
    assert "No space left on device" in message and "checkpoint-2 is intact" in message
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["checkpoint-2"]
    assert not list((out / "checkpoints").glob(".staging-*")) and not (out / "final").exists()
    from llavakd.io import marker_problem

    assert marker_problem(out / "checkpoints" / "checkpoint-2") is None
    monkeypatch.setattr(torch, "save", real_save)
    run_stage(_cfg(pair, out), resume=True)  # the rerun resumes from the intact checkpoint
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["resumed_from"].endswith("checkpoint-2") and meta["steps"] == 6


@pytest.mark.slow
def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(pair, tmp_path, capsys):
    out = tmp_path / "run"
    run_stage(_cfg(pair, out, "train.stop_after_steps=4"))
    ckpts = complete_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-2", "checkpoint-4"]
    weights = ckpts[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # bit rot after the marker was written: same size, other bytes
    weights.write_bytes(bytes(data))
    run_stage(_cfg(pair, out), resume=True)
    said = capsys.readouterr().out
    assert f"skipping damaged checkpoint {ckpts[-1]}: model.safetensors does not match its sha256" in said
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["resumed_from"].endswith("checkpoint-2")


def test_the_marker_catches_a_missing_or_resized_file(tmp_path):
    from llavakd.io import atomic_dir, marker_problem

    with atomic_dir(tmp_path / "m") as tmp:
        (tmp / "a.bin").write_bytes(b"abc")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    assert marker_problem(tmp_path / "m") is None
    (tmp_path / "m" / "a.bin").write_bytes(b"abcd")
    assert marker_problem(tmp_path / "m") == "a.bin has 4 bytes, its marker says 3"
    (tmp_path / "m" / "sub" / "b.txt").unlink()
    assert marker_problem(tmp_path / "m") == "a.bin has 4 bytes, its marker says 3"  # first problem in order
    (tmp_path / "m" / "a.bin").write_bytes(b"abc")
    assert marker_problem(tmp_path / "m") == "sub/b.txt is missing"


def _eval_cmd(pair, out, *extra):
    return [sys.executable, "-m", "llavakd.cli", "eval", "--model", str(pair / "student"), "--world",
            str(pair / "world"), "--benchmarks", "gqa,pope,mme", "--out", str(out), "--batch-size", "8", *extra]


@pytest.mark.slow
def test_an_evaluation_killed_mid_benchmark_recomputes_only_what_is_missing(pair, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_eval_cmd(pair, ref), cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_eval_cmd(pair, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out / "gqa.json").is_file():  # gqa done: pope is being generated
        assert proc.poll() is None and time.time() - t0 < 600
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (out / "gqa.json").is_file() and (out / "gqa.samples.jsonl").is_file()
    assert not any((out / f"{b}{s}").exists() for b in ("pope", "mme") for s in (".json", ".samples.jsonl"))
    assert not (out / "COMPLETE").exists()
    kept = (out / "gqa.json").stat().st_mtime_ns
    again = subprocess.run(_eval_cmd(pair, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing gqa" in again.stderr and "evaluating pope" in again.stderr and "reusing pope" not in again.stderr
    assert (out / "gqa.json").stat().st_mtime_ns == kept and (out / "COMPLETE").is_file()
    for name in ("gqa", "pope", "mme"):  # the resumed folder equals an uninterrupted run's
        for suffix in (".json", ".samples.jsonl"):
            assert (out / f"{name}{suffix}").read_bytes() == (ref / f"{name}{suffix}").read_bytes(), name
    # control: another request (here a --limit; MME needs its pairs whole) is not served from earlier files
    limited = subprocess.run(_eval_cmd(pair, out, "--limit", "6"), cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=900)
    assert limited.returncode == 0 and "reusing" not in limited.stderr
    assert (out / "gqa.json").stat().st_mtime_ns != kept


@pytest.mark.slow
def test_killed_after_the_last_checkpoint_writes_final_without_another_step(pair, tmp_path):
    """A job killed after its last checkpoint but before final/ (transformers alone would train one
    step past max_steps on resume)."""
    out = tmp_path / "run"
    run_stage(_cfg(pair, out))  # 6 steps, checkpoint-6 is the last step
    before = load_file(out / "final" / "model.safetensors")
    shutil.rmtree(out / "final")
    (out / "metadata.json").unlink()
    run_stage(_cfg(pair, out), resume=True)
    assert max(metrics_by_step(out)) == 6
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["steps"] == 6 and meta["resumed_from"].endswith("checkpoint-6")
    after = load_file(out / "final" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


GKD = ("loss.on_policy=0.5", "loss.ce=false", "loss.vis=false", "loss.rel=false", "loss.divergence=jsd",
       "loss.max_new_tokens=12")


@pytest.mark.slow
def test_on_policy_sigkill_then_resume_equals_an_uninterrupted_run(pair, tmp_path):
    """GKD's on-policy draws and samples come from a stream saved in each checkpoint: killed
    mid-step and resumed, the run equals the uninterrupted one; the negative control resumes the
    same killed run without that stream (its file removed, the marker rewritten) and differs."""
    ref = tmp_path / "ref"
    _cli(pair, "dft", ref, *GKD)
    sampled = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines() if '"sampled"' in x]
    assert sampled and all(isinstance(t, str) for rec in sampled for t in rec["sampled"])  # logged at logging steps
    killed, control = _killed_and_control(pair, tmp_path, "dft", *GKD)
    from llavakd.io import write_marker
    from llavakd.train.onpolicy import SAMPLING_STATE

    removed = list(control.glob("checkpoints/checkpoint-*/" + SAMPLING_STATE.format(rank=0)))
    assert removed
    for f in removed:
        f.unlink()
        write_marker(f.parent)
    _cli(pair, "dft", killed, *GKD, resume=True)
    keys = ("loss", "loss_res", "learning_rate", "grad_norm")
    assert _gkd_differences(ref, killed, keys) == []
    _cli(pair, "dft", control, *GKD, resume=True)
    assert _gkd_differences(ref, control, keys) != []


def _gkd_differences(ref_dir, run_dir, keys, tol=1e-5) -> list[str]:
    a, b = metrics_by_step(ref_dir), metrics_by_step(run_dir)
    out = [] if sorted(a) == sorted(b) == list(range(1, STEPS + 1)) else [f"steps {sorted(a)} vs {sorted(b)}"]
    for step in sorted(set(a) & set(b)):
        for key in keys:
            if abs(a[step][key] - b[step][key]) > tol * max(abs(a[step][key]), 1e-3):
                out.append(f"step {step} {key}: {a[step][key]} vs {b[step][key]}")
    return out


LLAVADI = ("loss.vis=false", "loss.rel=false", "loss.feat=true")  # CE + forward KL + the projected hidden states


def _drop_parts_optimizer_state(run_dir: Path, parts_shapes: list[tuple]) -> int:
    """Remove the optimizer state of the learnable parts from every checkpoint (the negative control).

    The parts are the student's last submodule, so their tensors are the last ones of each of the
    optimizer's parameter groups; their shapes are checked before anything is dropped."""
    from llavakd.io import write_marker

    dropped = 0
    for opt in run_dir.glob("checkpoints/checkpoint-*/optimizer.pt"):
        state = torch.load(opt, weights_only=False)
        tails = []
        for group in state["param_groups"]:
            ids = group["params"]
            shapes = [tuple(state["state"][i]["exp_avg"].shape) for i in ids]
            n = 0
            while n < len(ids) and shapes[len(ids) - 1 - n] in parts_shapes:
                n += 1
            tails += ids[len(ids) - n:]
        assert sorted(tuple(state["state"][i]["exp_avg"].shape) for i in tails) == sorted(parts_shapes)
        for i in tails:
            del state["state"][i]
            dropped += 1
        torch.save(state, opt)
        write_marker(opt.parent)
    return dropped


@pytest.mark.slow
def test_learnable_parts_sigkill_then_resume_equals_an_uninterrupted_run(pair, tmp_path):
    """LLaVADI's projector trains beside the student: killed mid-step and resumed, the run equals the
    uninterrupted one (weights, every logged part, the projector in the last checkpoint); final/ is a
    plain LLaVA without it. The negative control resumes the same killed run with the projector's
    optimizer state dropped from its checkpoints and differs."""
    from transformers import LlavaForConditionalGeneration

    from llavakd.layout import LOSS_PARTS

    ref = tmp_path / "ref"
    _cli(pair, "dft", ref, *LLAVADI)
    ckpt = complete_checkpoints(ref / "checkpoints")[-1]
    parts = load_file(ckpt / LOSS_PARTS)
    assert parts and all(k.startswith("feat.") for k in parts)
    model, info = LlavaForConditionalGeneration.from_pretrained(ref / "final", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert not (ref / "final" / LOSS_PARTS).exists()
    assert not [k for k in load_file(ref / "final" / "model.safetensors") if "loss_parts" in k]

    killed, control = _killed_and_control(pair, tmp_path, "dft", *LLAVADI)
    assert _drop_parts_optimizer_state(control, [tuple(v.shape) for v in parts.values()]) > 0
    _cli(pair, "dft", killed, *LLAVADI, resume=True)
    keys = ("loss", "loss_ce", "loss_res", "loss_feat", "learning_rate", "grad_norm")
    assert _gkd_differences(ref, killed, keys) == []
    assert _differences("sft", ref, killed) == []  # the student's final weights (and CE's log)
    again = load_file(complete_checkpoints(killed / "checkpoints")[-1] / LOSS_PARTS)
    assert all(torch.allclose(again[k], parts[k], rtol=1e-5, atol=1e-7) for k in parts)
    _cli(pair, "dft", control, *LLAVADI, resume=True)
    assert _gkd_differences(ref, control, keys) != []


def _logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    return max([json.loads(line).get("step", 0) for line in path.read_text().splitlines() if '"loss"' in line] or [0])


@pytest.mark.slow
def test_a_warning_signal_mid_step_checkpoints_that_step_and_the_resumed_run_equals_an_uninterrupted_one(
        pair, tmp_path, tmp_path_factory):
    """The scheduler's warning (SIGURG), twice, to llavakd.launch while a DFT step is in flight: launch
    passes it to the trainer, which finishes that step, writes its checkpoint and exits with the
    "resume me" status; resumed, the run equals an uninterrupted one (1e-5). Negative control: the
    stopped run resumed without its RNG state differs."""
    from llavakd.preempt import RESUME_EXIT

    ref = _reference(pair, "dft", tmp_path_factory)
    stopped = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "llavakd.launch", "--gpus", "0", "--", sys.executable, "-m", "llavakd.cli", "train",
           "--stage", "dft", *_args(pair, "dft", stopped, "train.save_steps=100")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLAVAKD_SESSION": "test"}  # as the workflow runs it: recorded
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while _logged_step(stopped) < 3:
        assert proc.poll() is None, "the run ended before it could be signalled: " + proc.stdout.read()[-3000:]
        assert time.time() - t0 < 600
        time.sleep(0.02)
    before = _logged_step(stopped)
    proc.send_signal(signal.SIGURG)
    after = _logged_step(stopped)
    time.sleep(0.3)
    if proc.poll() is None:
        proc.send_signal(signal.SIGURG)  # a second warning changes nothing
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == RESUME_EXIT, out[-3000:]
    ckpts = complete_checkpoints(stopped / "checkpoints")
    step = int(ckpts[-1].name.split("-")[1])
    assert len(ckpts) == 1 and before < step <= after + 1 < STEPS, (before, after, [c.name for c in ckpts])
    assert _logged_step(stopped) == step and not (stopped / "final").exists()  # nothing trained past it
    assert f"stopped on SIGURG after step {step} with checkpoint-{step} written" in out, out[-2000:]
    history = [json.loads(line) for line in (stopped / "attempts.jsonl").read_text().splitlines()]
    assert [r.get("outcome") for r in history] == [None, "stopped"]

    control = tmp_path / "control"
    shutil.copytree(stopped, control)
    stored = control / "config.yaml"
    stored.write_text(stored.read_text().replace(str(stopped), str(control)))
    _without_rng_state(control)
    _cli(pair, "dft", stopped, "train.save_steps=100", resume=True)
    assert _differences("dft", ref, stopped) == []
    _cli(pair, "dft", control, "train.save_steps=100", resume=True)
    assert _differences("dft", ref, control) != []  # negative control: the comparison sees a lost RNG state


GRANDCHILD = """
import signal, sys, time
from pathlib import Path
def got(signum, frame):
    Path(sys.argv[1], "grand").write_text(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGURG, got)
signal.signal(signal.SIGTERM, got)
Path(sys.argv[1], "ready").write_text("")
time.sleep(60)
"""
CHILD = """
import os, subprocess, sys
from pathlib import Path
grand = subprocess.Popen([sys.executable, "-c", sys.argv[3], sys.argv[1]], start_new_session=True)
grand.wait()
if sys.argv[2] == "note":
    Path(os.environ["LLAVAKD_STOP_NOTE"]).write_text("stopped")
sys.exit(1)
"""


@pytest.mark.parametrize("sent, torchrun, mode, expected, received", [
    (signal.SIGUSR1, False, "note", "RESUME_EXIT", "SIGURG"),  # a warning goes on as SIGURG
    (signal.SIGUSR1, False, "none", 1, "SIGURG"),  # no stop note: the child's failure stands
    (signal.SIGTERM, True, "note", "RESUME_EXIT", "SIGTERM"),  # torchrun's agent outlives SIGTERM
    (signal.SIGTERM, False, "note", 128 + signal.SIGTERM, "SIGTERM"),  # control: a plain child dies of it
])
def test_supervise_passes_stop_signals_to_every_descendant_and_turns_a_stop_note_into_resume_me(
        tmp_path, sent, torchrun, mode, expected, received):
    """llavakd.preempt.supervise, on a child that starts a grandchild in a session of its own (as torchrun
    starts its ranks) and exits 1 when the grandchild is done: the signal reaches the grandchild; after a
    stop note the supervisor exits RESUME_EXIT; started as torchrun, the child outlives SIGTERM."""
    from llavakd.preempt import RESUME_EXIT

    child = [sys.executable, "-c", CHILD, str(tmp_path), mode, GRANDCHILD]
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from llavakd.preempt import supervise; "
                             f"sys.exit(supervise({child!r}, torchrun={torchrun}))"], cwd=ROOT)
    t0 = time.time()
    while not (tmp_path / "ready").exists():
        assert time.time() - t0 < 60 and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(sent)
    assert proc.wait(timeout=60) == (RESUME_EXIT if expected == "RESUME_EXIT" else expected)
    t0 = time.time()
    while not (tmp_path / "grand").exists() and time.time() - t0 < 10:
        time.sleep(0.02)
    assert (tmp_path / "grand").read_text() == received
