"""The Snakemake DAG: config validation, planning, the paper dry-run, and a micro study end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    FROZEN_DEMO,
    MICRO,
    REPO,
    SNAKEMAKE,
    copy_micro_tree,
    dry_run,
    frozen_demo,
    metrics_by_step,
    micro_cmd,
    micro_env,
    write_micro_config,
)

from llavakd.errors import ConfigError
from llavakd.layout import model_name, parse_model
from llavakd.plan import Study, train_jobs
from llavakd.stages import Chain, Step
from llavakd.tiny.family import LLM_NAMES


def load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


def test_shipped_configs_validate():
    for name in ("config.yaml", "tiny-study.yaml", "paper.yaml", "speedrun.yaml", "methods-study.yaml"):
        Study.load(load(name), source=name)
    Study.load(frozen_demo(), source=str(FROZEN_DEMO))  # the tests' frozen copy of the old demo still loads


def test_every_config_problem_is_listed_at_once():
    bad = frozen_demo()
    bad["colour"] = "red"
    bad["seeds"] = [0, "one"]
    bad["train"]["pt"]["trian.lr"] = 1
    bad["eval"]["batch_size"] = 0
    bad["resources"]["train"] = {"gpus": -1, "vram": 3}
    with pytest.raises(ConfigError) as e:
        Study.load(bad)
    text = str(e.value)
    for part in ("colour: unknown key", "seeds.1: expected an integer, got 'one'",
                 "train.pt: 'trian.lr' is not a dotted train./data./loss. key", "eval.batch_size: must be >= 1, got 0",
                 "resources.train.gpus: must be >= 0, got -1", "resources.train.vram: unknown key"):
        assert part in text, part
    assert "6 problem(s)" in text


def test_semantic_problems_are_listed_too():
    bad = frozen_demo()
    bad["families"]["qwen2.5"]["students"].append("qwen1.5-0.5b")
    bad["variants"]["llava_kd"] = "sft--dft"
    bad["families"]["qwen1.5"]["students"].append("qwen9-1b")
    bad.setdefault("ablations", {})["losses"] = {"one stage": {"chain": "dpt~kl--sft"}}
    with pytest.raises(ConfigError) as e:
        Study.load(bad, tiny_llms=LLM_NAMES)
    text = str(e.value)
    assert "qwen1.5-0.5b appears in more than one family" in text
    assert "variants.llava_kd: chain 'sft--dft' must start with pt or dpt" in text
    assert "qwen9-1b is not a tiny LLM" in text
    assert "ablations.losses.one stage.chain: stage token 'dpt~kl'" in text
    bad = frozen_demo()
    bad.setdefault("ablations", {})["losses"] = {"both": {"chain": "dpt~res--sft", "dft": ["res"]}}
    with pytest.raises(ConfigError, match="ablations.losses.both.chain: give a chain or dpt/dft terms, not both"):
        Study.load(bad, tiny_llms=LLM_NAMES)


def test_a_loss_ablation_row_may_distil_in_one_stage_only():
    study = Study.load(load("paper.yaml"))
    chains = {n: {parse_model(m).chain for m in ms} for n, ms in study.ablation_loss_models().items()}
    assert chains["DPT res"] == {"dpt~res--sft"} and chains["DFT res+vis"] == {"pt--sft--dft~res+vis"}
    assert chains["res"] == {"dpt~res--sft--dft~res"}  # the two-stage rows keep their meaning


def test_chains_and_shared_prefixes():
    assert Step.parse("dpt~res+vis").terms == ("res", "vis") and Step.parse("dft").terms == ("res", "vis", "rel")
    for bad in ("sft~res", "dpt~kl", "xyz"):
        with pytest.raises(ValueError):
            Step.parse(bad)
    with pytest.raises(ValueError):
        Chain.parse("pt--sft--dpt")
    study = Study.load(frozen_demo())
    jobs = train_jobs(study, study.table1_models())
    # 2 teachers x (pt, sft) + 4 students x (pt, sft, pt--sft--cft) + 4 x (dpt, dpt--sft, dpt--sft--dft): each once
    assert len(jobs) == 2 * 2 + 4 * 3 + 4 * 3 and len(set(jobs)) == len(jobs)
    # the stage ablation reuses the baseline and LLaVA-KD prefixes: only pt--sft--dft is new
    new = set(train_jobs(study, [m for ms in study.ablation_stage_models().values() for m in ms])) - set(jobs)
    assert new == {("qwen1.5-0.5b", 0, Chain.parse("pt--sft--dft"))}
    cfg = study.stage_config("qwen1.5-0.5b", 0, "dpt~res--sft--dft~res+rel")
    assert cfg.loss.res and not cfg.loss.vis and cfg.loss.rel
    assert cfg.data.json.endswith("train/instruct.json")


def test_baseline_plus_is_the_baseline_then_ce_only_fine_tuning_as_long_as_dft():
    """The step-matched control: every study has it; its last stage takes DFT's data, steps and lr, no teacher."""
    for name in ("config.yaml", "tiny-study.yaml", "paper.yaml", "speedrun.yaml"):
        study = Study.load(load(name))
        assert str(study.variants["baseline_plus"]) == f"{study.variants['baseline']}--cft", name
        s, seed = study.students()[0], study.seeds[0]
        cft = study.stage_config(s, seed, study.variants["baseline_plus"])
        dft = study.stage_config(s, seed, study.variants["llava_kd"])
        assert (cft.train.max_steps, cft.train.lr, cft.train.global_batch) == (
            dft.train.max_steps, dft.train.lr, dft.train.global_batch), name
        assert cft.data.json == dft.data.json and cft.teacher is None and dft.teacher is not None
        assert cft.model == study.model_dir(model_name(s, seed, study.variants["baseline"]))  # starts from the baseline
    study = Study.load(_with_dft_overrides(**{"train.max_steps": 33}))
    assert study.stage_config("qwen1.5-0.5b", 0, "pt--sft--cft").train.max_steps == 33  # follows DFT's settings


def _with_dft_overrides(**overrides):
    cfg = frozen_demo()
    cfg["train"]["dft"].update(overrides)
    return cfg


@pytest.mark.slow
def test_a_typo_in_a_stage_override_fails_the_plan_naming_the_key_and_the_jobs(tmp_path):
    bad = _with_dft_overrides(**{"loss.rel_wieght": 0.5, "train.lr_schedule": "cosin", "train.lr": "fast"})
    with pytest.raises(ConfigError) as e:
        Study.load(bad)
    text = str(e.value)
    for student in ("qwen1.5-0.5b", "qwen1.5-1.8b", "qwen2.5-0.5b", "qwen2.5-1.5b"):
        job = f"job {student}/s0/dpt--sft--dft"
        for problem in ("loss.rel_wieght: unknown key", "train.lr_schedule: unknown key",
                        "train.lr: expected a number, got 'fast'"):
            assert f"{job}: {problem}" in text, (job, problem)
    assert "pt--sft:" not in text  # the override is DFT's: no other job is blamed
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = subprocess.run(SNAKEMAKE + ["-n", "reproduce_table1", "--configfile", str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "loss.rel_wieght: unknown key" in r.stdout + r.stderr
    assert "train.lr_schedule: unknown key" in r.stdout + r.stderr


def test_a_study_loss_override_reaches_the_job_as_one_typed_config(tmp_path):
    from llavakd.config import load_stage_config

    study = Study.load(_with_dft_overrides(**{"loss.rel_weight": 0.5}))
    cfg = study.stage_config("qwen1.5-0.5b", 0, "dpt--sft--dft")
    assert cfg.loss.rel_weight == 0.5 and study.stage_config("qwen1.5-0.5b", 0, "dpt").loss.rel_weight == 1.0
    path = tmp_path / "job.yaml"  # the file the job_config rule writes and `llavakd train --config` reads
    path.write_text(study.stage_config_text("qwen1.5-0.5b", 0, "dpt--sft--dft"))
    assert load_stage_config(path) == cfg
    assert study.train_inputs("qwen1.5-0.5b", 0, "dpt--sft--dft")["config"] == (
        "results/demo/configs/qwen1.5-0.5b/s0/dpt--sft--dft.yaml")


_dry_run = dry_run  # memoised per session (conftest)
DATA_TARGETS = ("prefetch_benchmarks", "prepare_data", "validate_data")  # one plan for the two tests below


def _job_counts(text):
    block = text.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


@pytest.mark.slow
@pytest.mark.parametrize("config", ["methods-study.yaml", "paper.yaml"])
def test_benchmark_methods_plans_every_method_and_its_price(config):
    out = _dry_run("benchmark_methods", "--configfile", f"config/{config}")
    counts = _job_counts(out)
    study = Study.load(load(config), source=config)
    models = [m for ms in study.method_models().values() for m in ms]
    assert len(study.compared_methods()) >= 7 and counts["methods_table"] == 1
    for method in ("kd", "reverse_kl", "skew_kl", "jsd", "gkd"):
        assert f"pt--sft--dft@{method}" in out
    assert "pt--sft--cft" in out  # ce, the control
    if config == "paper.yaml":
        assert "pt--sft--dft@llava_kd_dft_rel_half" in out  # defined in the YAML only
        for method in ("llavadi", "align_kd", "bild"):  # the field's feature, attention and logit-difference methods
            assert f"pt--sft--dft@{method}" in out
        assert re.search(r"benchmark_methods \(jobs not shared with the targets above\):\n\s+train\[dft\]\s+9 jobs", out)
        assert re.search(r"qwen1\.5-0\.5b <- qwen1\.5-4b \+\d+\.\dM loss parts", out)  # their memory, priced
    else:
        assert len(study.seeds) >= 5 and counts["train"] == 2 + len(study.seeds) * 9  # teacher 2; per seed pt, sft, 7
        assert counts["evaluate"] == len(models)


@pytest.mark.slow
def test_paper_dry_run_plans_everything_and_prints_the_cost():
    out = _dry_run("reproduce_table1", "--configfile", "config/paper.yaml")
    counts = _job_counts(out)
    assert counts["train"] == 28 and counts["evaluate"] == 14 and counts["init_model"] == 6
    assert counts["evaluate_paper"] == 14  # config/paper.yaml scores both protocols
    assert counts["agreement"] == 12 and counts["agreement_report"] == 1  # 4 students x 3 variants, one seed
    assert "pt--sft--cft" in out and re.search(r"train\[cft\]\s+4 jobs", out)  # the step-matched control
    assert re.search(r"agreement\s+12 jobs\s+[\d.]+ GPU-h", out)
    assert "world" not in counts and "components" not in counts  # real mode: no tiny world
    assert "llavakd cost estimate (run paper)" in out and re.search(r"all targets\s+[\d.]+ GPU-h", out)
    assert "--nproc_per_node 8" in out and "--config results/paper/configs/" in out
    assert counts["prefetch_benchmarks_data"] == 1 and "--hf-home /data/hf" in out  # eval.hf_home: offline jobs
    study = Study.load(load("paper.yaml"))  # the DeepSpeed config travels in each job's config file
    assert study.stage_config("qwen1.5-0.5b", 0, "dpt--sft--dft").train.deepspeed.endswith("deepspeed/zero2.json")
    assert "llavakd memory estimate per GPU" in out and "DOES NOT FIT" not in out  # printed by every dry run


@pytest.mark.slow
def test_prefetch_benchmarks_plans_with_nothing_present():
    counts = _job_counts(_dry_run(*DATA_TARGETS, "--configfile", "config/paper.yaml"))
    assert counts["prefetch_benchmarks_data"] == 1 and "evaluate" not in counts


@pytest.mark.slow
def test_prepare_and_validate_data_plan_with_nothing_present():
    counts = _job_counts(_dry_run(*DATA_TARGETS, "--configfile", "config/paper.yaml"))
    assert counts["prepare_data_files"] == 1 and counts["validate_data_file"] == 2 and "train" not in counts


@pytest.mark.slow
def test_the_speedrun_plans_within_eight_gpu_hours():
    out = _dry_run("reproduce_table1", "--configfile", "config/speedrun.yaml")
    total = float(re.search(r"reproduce_table1:.*?total\s+([\d.]+) GPU-h", out, re.S).group(1))
    assert 0 < total <= 8, total
    counts = _job_counts(out)
    assert counts["train"] == 8 and counts["evaluate"] == 4  # teacher, baseline, baseline+ and LLaVA-KD of one pair
    study = Study.load(load("speedrun.yaml"))
    cfg = study.stage_config("qwen2.5-0.5b", 1234, "dpt--sft--dft")
    assert (cfg.data.subset_fraction, cfg.data.subset_seed) == (0.2, 0)
    assert "0.2 of the training records" in out


@pytest.mark.slow
def test_paper_slurm_dry_run_requests_gpus():
    out = _dry_run("--executor", "slurm", "--workflow-profile", "profiles/slurm", "reproduce_table1",
                   "--configfile", "config/paper.yaml")
    train = out.split("rule train:")[1].split("\n\n")[0]
    assert re.search(r"resources:.*gpu=8", train), train
    ev = out.split("rule evaluate:")[1].split("\n\n")[0]
    assert re.search(r"resources:.*gpu=1", ev), ev


TEACHER_SFT = "results/micro/runs/qwen1.5-1.8b/s0/pt--sft"


def _job_processes(root_pid: int, needle: str) -> list[int]:
    """The processes of one job under ``root_pid``: the one whose command line holds ``needle`` (the job's
    shell) and everything below it."""
    from llavakd.preempt import descendants

    for pid in descendants(root_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            return [pid] + descendants(pid)
    return []


def _signal_when_past(proc, run: Path, step: int, targets, sig=signal.SIGURG) -> list[int]:
    """Once the run has logged ``step``, send ``sig`` to every process ``targets()`` lists (as SLURM signals
    every process of a job step); returns them."""
    t0 = time.time()
    while not ((run / "metrics.jsonl").is_file() and max(metrics_by_step(run), default=0) >= step):
        assert proc.poll() is None, "the run ended before it could be signalled"
        assert time.time() - t0 < 600
        time.sleep(0.02)
    pids = targets()
    assert pids, "no process of the job found"
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def _priced_over_the_cap(cfg: dict) -> dict:
    """The micro study with a price and a 14-minute cap that some of its training jobs do not fit: they
    run in segments, and the training rule retries once per segment beyond the first of the longest
    (llavakd.schedule)."""
    import copy

    from llavakd.plan import Study, job_samples, sample_flops
    from llavakd.tiny.tokenizer import catalogue

    cfg = copy.deepcopy(cfg)
    cfg["cost"] = {"samples": {"pt": 1000, "sft": 1000}, "tokens_per_sample": {"pt": 64, "sft": 64},
                   "cpu": {"gflops": 1.0, "eval_seconds": 0, "agreement_seconds": 0}}
    # a CPU rate at which the teacher's SFT is 3 minutes of work: 1.5 x 3 + 10 + 1 is over the 14-minute cap
    study = Study.load(copy.deepcopy(cfg), tiny_llms=catalogue())
    flops = sample_flops(study, "qwen1.5-1.8b", "pt--sft")["total"] * job_samples(study, "qwen1.5-1.8b", "pt--sft")
    cfg["cost"]["cpu"]["gflops"] = flops / 180 / 1e9
    cfg["resources"].update({"max_runtime": 14, "startup_minutes": 10, "stop_warning": 60, "checkpoint_gbps": 100.0})
    return cfg


@pytest.mark.slow
def test_micro_study_over_its_time_cap_is_warned_mid_job_and_finishes_by_itself(micro_tree, tmp_path):
    """The whole DAG on the micro config, priced over a 14-minute cap: the teacher's SFT runs in 2
    segments. Mid-run its job's processes get SLURM's warning (SIGURG); the trainer stops at a
    checkpoint with exit 75, Snakemake's retry (one per segment, from the price) resumes it, and the DAG
    finishes by itself with the same tables as the uninterrupted micro tree. It starts from a copy of the
    shared tree without the teacher's SFT and what follows it (the distilled students' runs, every score,
    agreement and report): Snakemake does not remake a missing file that up-to-date outputs downstream
    were made from."""
    root = copy_micro_tree(micro_tree, tmp_path / "tree")
    runs = root / "results/micro/runs"
    for gone in [runs / "qwen1.5-1.8b/s0/pt--sft", *runs.glob("qwen1.5-0.5b/s0/dpt*"),
                 runs / "qwen1.5-0.5b/s0/pt--sft--dft", root / "results/micro/eval", root / "results/micro/agreement",
                 root / "reports"]:
        shutil.rmtree(gone)
    cfg = write_micro_config(root, _priced_over_the_cap(MICRO))
    cmd = micro_cmd(root, cfg, "reproduce_table1", "ablation_stages")
    env = micro_env()
    run = root / TEACHER_SFT
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _signal_when_past(proc, run, 4, lambda: _job_processes(proc.pid, "configs/qwen1.5-1.8b/s0/pt--sft.yaml"))
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"train qwen1\.5-1\.8b\s+pt--sft\s.*runs in 2 segments of 14 min", out), out[:6000]
    history = [json.loads(x) for x in (run / "attempts.jsonl").read_text().splitlines()]
    assert [h.get("outcome") for h in history] == [None, "stopped", None, "finished"]
    stopped_at = history[1]["progress"]  # Snakemake clears a job's log before its retry: the history keeps it
    assert int(stopped_at.split("-")[1]) >= 5 and history[2]["progress"] == stopped_at
    log = (root / "results/micro/logs/train/qwen1.5-1.8b/s0/pt--sft.log").read_text()
    assert f"resuming from {TEACHER_SFT}/checkpoints/{stopped_at}" in log, log[-2000:]
    for name in ("table1.csv", "table1.md", "ablation_stages.csv"):
        assert (root / "reports/micro" / name).read_text() == (micro_tree / "reports/micro" / name).read_text(), name
    for fig in ("benchmarks", "overview", "training_curves"):
        assert (root / f"reports/micro/figures/{fig}.png").stat().st_size > 10_000
    # a study's loss override reached the trainer through the job's one config file
    job = root / "results/micro/configs/qwen1.5-0.5b/s0/dpt--sft--dft.yaml"
    kd_run = root / "results/micro/runs/qwen1.5-0.5b/s0/dpt--sft--dft"
    assert yaml.safe_load(job.read_text()) == yaml.safe_load((kd_run / "config.yaml").read_text())
    assert json.loads((kd_run / "metadata.json").read_text())["loss"]["rel_weight"] == 0.5
    for rule_dir in ("logs", "benchmarks"):
        assert list((root / "results/micro" / rule_dir / "train").rglob("*"))
    # the HTML report with every table and figure
    rep = subprocess.run(cmd + ["--report", str(tmp_path / "report.html")], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 100_000
    # nothing left to do
    again = subprocess.run(cmd + ["-n"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def _jobstep(root: Path, fake: Path, *extra: str) -> subprocess.Popen:
    """The teacher's SFT through SLURM's jobstep plugin (what runs inside the sbatch job): Snakemake's
    ``slurm-jobstep`` executor, whose ``srun`` is tests/_fake_srun.py."""
    bin_dir = fake / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / '_fake_srun.py'} \"$@\"\n")
    srun.chmod(0o755)
    env = dict(micro_env(), PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SRUN_DIR=str(fake))
    cmd = SNAKEMAKE + [f"{TEACHER_SFT}/final/COMPLETE", "--snakefile", str(REPO / "Snakefile"), "--directory",
                       str(root), "--configfile", str(root / "micro.yaml"), "--executor", "slurm-jobstep", "--jobs",
                       "1", *extra]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _step(fake: Path) -> list[int]:
    """Every process of the job's step: the fake srun's task and all below it (slurmstepd's container)."""
    from llavakd.preempt import descendants

    pid = int((fake / "step.pid").read_text())
    return [pid] + descendants(pid)


@pytest.mark.slow
def test_the_warning_reaches_the_trainer_through_the_slurm_jobstep_process_tree(micro_tree, tmp_path):
    """The teacher's SFT run as the SLURM executor runs a job: srun -> Snakemake's jobstep process -> bash
    -> llavakd.launch -> the trainer. SIGTERM (a pre-emption), then in the retry SIGURG (the time
    limit's warning), sent to every process of that step mid-run: nothing dies of either, the trainer
    stops at a checkpoint each time, the step's Snakemake exits 1 for the job's 75 (not killed by the
    signal), and the last retry finishes the job with the weights of the uninterrupted run. Negative
    control first: SIGUSR1 to the same step kills Snakemake's jobstep process (exit 128 + 10), which
    is why the workflow asks SLURM for SIGURG."""
    from safetensors.torch import load_file

    root = copy_micro_tree(micro_tree, tmp_path / "tree")
    shutil.rmtree(root / TEACHER_SFT)
    run, fake = root / TEACHER_SFT, tmp_path / "srun"
    proc = _jobstep(root, fake, "--retries", "0")
    _signal_when_past(proc, run, 3, lambda: _step(fake), signal.SIGUSR1)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode != 0 and (fake / "codes").read_text().split() == [str(128 + signal.SIGUSR1)], out[-3000:]

    (fake / "codes").unlink()
    done = max(metrics_by_step(run))  # the USR1 run's last logged step; it resumes from a checkpoint before
    proc = _jobstep(root, fake, "--retries", "2")
    _signal_when_past(proc, run, done + 3, lambda: _step(fake), signal.SIGTERM)  # a pre-emption: bash traps it
    t0 = time.time()
    while not (fake / "codes").is_file():
        assert time.time() - t0 < 300 and proc.poll() is None
        time.sleep(0.05)
    stopped = int(json.loads((run / "attempts.jsonl").read_text().splitlines()[-1])["progress"].split("-")[1])
    _signal_when_past(proc, run, stopped + 3, lambda: _step(fake))  # the time limit's warning, in the retry
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    assert (fake / "codes").read_text().split() == ["1", "1", "0"], out[-3000:]
    history = [json.loads(x) for x in (run / "attempts.jsonl").read_text().splitlines()]
    # killed under USR1; stopped under TERM, then under URG, each resumed where it stopped; done
    assert [h.get("outcome") for h in history] == [None, None, "stopped", None, "stopped", None, "finished"]
    assert history[3]["progress"] == history[2]["progress"] and history[5]["progress"] == history[4]["progress"]
    assert "resuming from" in (root / "results/micro/logs/train/qwen1.5-1.8b/s0/pt--sft.log").read_text()
    want, got = load_file(micro_tree / TEACHER_SFT / "final/model.safetensors"), load_file(run / "final/model.safetensors")
    assert max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-5


@pytest.mark.slow
def test_a_training_job_failing_twice_the_same_way_stops_naming_itself_and_its_log(micro_tree, tmp_path):
    """A training job whose only checkpoint is damaged fails the same way on every attempt: with three
    retries it runs twice, the third attempt stops at once naming the job and its log, and Snakemake
    gives up."""
    from llavakd.io import write_marker

    root = copy_micro_tree(micro_tree, tmp_path / "tree")
    shutil.rmtree(root / TEACHER_SFT)
    ckpt = root / TEACHER_SFT / "checkpoints/checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    write_marker(ckpt)
    (ckpt / "trainer_state.json").write_text('{"global_step": 2}')  # changed after its marker: damaged
    r = subprocess.run(micro_cmd(root, root / "micro.yaml", f"{TEACHER_SFT}/final/COMPLETE") + ["--retries", "3"],
                       cwd=root, env=micro_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    log = root / "results/micro/logs/train/qwen1.5-1.8b/s0/pt--sft.log"
    line = re.search(r"llavakd train: error: (training job .*failed twice the same way.*)", log.read_text())
    assert line and "every checkpoint is damaged" in line.group(1), log.read_text()[-3000:]
    assert f"see its log {os.path.realpath(log)}" in line.group(1) and TEACHER_SFT in line.group(1)
    history = [json.loads(x) for x in (root / TEACHER_SFT / "attempts.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["begin", "end", "begin", "end"]  # two ran; the others stopped at once
    assert (r.stdout + r.stderr).count("Trying to restart job") == 3


@pytest.mark.slow
def test_released_checkpoints_get_the_protocol_offset_figure(tmp_path):
    cfg = load("paper.yaml")
    cfg["released"] = {"llava-kd-1b": {"checkpoint": "/ckpt/llava-kd-1b-hf", "method": "LLaVA-KD",
                                       "llm": "Qwen1.5-0.5B"}}
    path = tmp_path / "paper_released.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = _dry_run("figures", "--configfile", str(path))
    counts = _job_counts(out)
    assert counts["protocol_offset"] == 1 and counts["evaluate"] == 15  # 14 of Table 1 + the released one
    assert "--model /ckpt/llava-kd-1b-hf" in out


def test_cost_estimate_follows_the_flops_model():
    """The price of a training job is the shared FLOP count (llavakd.flops) of one record times the
    stage's records, from the transformers configs' shapes; PT trains the projector only (4N through
    the frozen LLM)."""
    from llavakd.flops import llm_shape, step_flops, vision_shape
    from llavakd.model.shapes import PAPER_IMAGE_TOKENS, llm_config, siglip_config
    from llavakd.plan import cost_report

    cfg = load("paper.yaml")
    cfg["families"] = {"qwen1.5": {"teacher": "qwen1.5-4b", "students": ["qwen1.5-0.5b"]}}
    cfg["ablations"] = {}
    cfg["cost"].pop("mfu_file", None)
    study = Study.load(cfg)
    c = cfg["cost"]
    rate = c["peak_tflops"] * 1e12 * c["mfu"] * 3600
    s, t = (llm_shape(llm_config(n)) for n in ("Qwen1.5-0.5B", "Qwen1.5-4B"))
    v = vision_shape(siglip_config())
    kw = dict(visual_tokens=PAPER_IMAGE_TOKENS, vision=v)
    dft = step_flops(student=s, teacher=t, seq=c["tokens_per_sample"]["sft"], **kw)["total"] * c["samples"]["sft"] / rate
    pt = sum(step_flops(student=m, teacher=None, seq=c["tokens_per_sample"]["pt"], student_trains_llm=False,
                        **kw)["total"] for m in (s, t)) * c["samples"]["pt"] / rate  # the student's and the teacher's PT
    text = cost_report(study, ["gqa"])
    assert re.search(rf"train\[dft\]\s+1 jobs\s+{dft:.1f} GPU-h", text), text
    assert re.search(rf"train\[pt \]\s+2 jobs\s+{pt:.1f} GPU-h", text), text


@pytest.mark.slow
def test_lmms_tasks_command_writes_the_rule_only_mmbench_cn(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llavakd.cli", "lmms-tasks", "--out", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--tasks mmbench_cn_dev_static" in r.stdout
    text = (tmp_path / "t" / "mmbench_cn_dev_static.yaml").read_text()
    assert "mmbench_cn_dev.yaml" in text and "llavakd_task_hooks.mmbench_cn_dev_static" in text


def _micro_cmd(root, cfg):
    return micro_cmd(root, cfg, "reproduce_table1") + ["--rerun-incomplete"]


@pytest.mark.slow
def test_the_dag_killed_at_three_moments_reports_what_an_uninterrupted_run_does(micro_tree, tmp_path):
    """SIGKILL to snakemake and its jobs while the components are built, while a training job is
    between checkpoints and while a model is being evaluated; rerun after each: the reports equal a
    run that was never interrupted (the shared micro tree; tables byte-identical, every step's metrics
    to 1e-5)."""
    ref, hit = micro_tree, tmp_path / "hit"
    hit.mkdir()
    cfg = write_micro_config(hit)
    env = micro_env()
    res = hit / "results/micro"
    moments = [
        lambda: (res / "world/COMPLETE").exists(),  # the components are being pre-trained
        lambda: any(res.glob("runs/qwen1.5-1.8b/s0/pt--sft/checkpoints/checkpoint-*/COMPLETE")),  # mid-training
        lambda: any(res.glob("eval/**/pope.json")),  # a model is being evaluated
    ]
    for moment in moments:
        proc = subprocess.Popen(_micro_cmd(hit, cfg), cwd=hit, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        while not moment() and proc.poll() is None:
            assert time.time() - t0 < 900
            time.sleep(0.05)
        assert proc.poll() is None, "the DAG finished before the moment to kill it"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        subprocess.run(SNAKEMAKE + ["--unlock", "--snakefile", str(REPO / "Snakefile"), "--directory", str(hit),
                                    "--configfile", str(cfg)], cwd=hit, env=env, capture_output=True, timeout=300)
    r = subprocess.run(_micro_cmd(hit, cfg), cwd=hit, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("table1.md", "table1.csv", "table1.tex", "seeds.md", "seeds.csv"):
        assert (hit / "reports/micro" / name).read_bytes() == (ref / "reports/micro" / name).read_bytes(), name
    runs = sorted(p.parent.relative_to(hit) for p in hit.glob("results/micro/runs/**/metrics.jsonl"))
    assert len(runs) == 8  # teacher pt, pt--sft; student pt, pt--sft, pt--sft--cft, dpt, dpt--sft, dpt--sft--dft
    for run in runs:
        a, b = metrics_by_step(ref / run), metrics_by_step(hit / run)
        assert sorted(a) == sorted(b), run
        for step in a:
            for key in ("loss", "loss_ce", "loss_res", "loss_vis", "loss_rel", "learning_rate", "grad_norm"):
                if key in a[step]:
                    assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (run, step, key)


@pytest.mark.slow
def test_validate_data_on_the_tiny_world_fails_on_a_planted_bad_record_or_leaves_it_out(micro_tree, tmp_path):
    """The world, components and initial models copied from the shared micro tree (no Snakemake
    metadata: validation and training are planned afresh)."""
    env = micro_env()
    tmp_path = copy_micro_tree(micro_tree, tmp_path / "tree",
                               parts=("results/micro/world", "results/micro/components", "results/micro/models"))

    def smk(cfg: dict, *targets):
        path = write_micro_config(tmp_path, cfg)
        return subprocess.run(micro_cmd(tmp_path, path, *targets), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)

    r = smk(MICRO, "validate_data")
    assert r.returncode == 0, r.stderr[-3000:]
    data = tmp_path / "results/micro/data"
    assert json.loads((data / "captions.report.json").read_text())["bad_records"] == []
    assert "tokens" in (data / "instruct.report.md").read_text()
    captions = tmp_path / "results/micro/world/train/captions.json"
    records = json.loads(captions.read_text())
    records.insert(7, {"id": "planted", "image": "train/missing.png", "conversations": records[0]["conversations"]})
    captions.write_text(json.dumps(records))
    r = smk(MICRO, "validate_data", "--forcerun", "validate_data_file")
    assert r.returncode != 0  # default data.max_bad_fraction 0: the DAG stops before any training
    log = (tmp_path / "results/micro/logs/validate_data/captions.log").read_text()
    assert f"{captions.relative_to(tmp_path)}: 1 of {len(records)} records are bad" in log
    lenient = {**MICRO, "data": {"max_bad_fraction": 0.01}}
    r = smk(lenient, "results/micro/runs/qwen1.5-0.5b/s0/pt/final/COMPLETE")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((data / "captions.report.json").read_text())["bad_records"] == [7]
    meta = json.loads((tmp_path / "results/micro/runs/qwen1.5-0.5b/s0/pt/metadata.json").read_text())
    assert meta["dataset"]["listed_bad_left_out"] == 1 and meta["dataset"]["records"] == len(records) - 1


@pytest.mark.slow
def test_planning_imports_no_plotting_library_nor_torch():
    """`snakemake -n` of the paper plans and prices without matplotlib, seaborn, torch or transformers
    (-X importtime lists every module imported; pandas comes with the SLURM executor plugin)."""
    out = subprocess.run([*SNAKEMAKE[:1], "-X", "importtime", *SNAKEMAKE[1:], "-n", "reproduce_table1",
                          "--configfile", "config/paper.yaml"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {ln.rsplit("|", 1)[1].strip() for ln in out.stderr.splitlines() if ln.startswith("import time:")}
    assert "llavakd.plan" in imported and "snakemake" in imported  # the listing is real
    assert not imported & {"matplotlib", "seaborn", "torch", "transformers", "lmms_eval"}, sorted(
        imported & {"matplotlib", "seaborn", "torch", "transformers", "lmms_eval"})


def test_new_config_fields_leave_finished_jobs_config_files_as_they_were():
    """The demo's job config files as 2fafe22 wrote them (tests/golden/job-configs): planning writes
    the same bytes today, so a finished demo tree does not look stale. A field added since is
    declared with config.added (written only when set away from its default)."""
    study = Study.load(frozen_demo(), tiny_llms=LLM_NAMES)
    golden = REPO / "tests" / "golden" / "job-configs"
    for llm, chain in (("qwen1.5-0.5b", "dpt--sft--dft"), ("qwen1.5-4b", "pt")):
        want = (golden / f"demo-{llm}-s0-{chain}.yaml").read_text()
        assert study.stage_config_text(llm, 0, chain) == want, (llm, chain)


def test_an_added_field_is_written_only_away_from_its_default():
    import dataclasses

    from llavakd.config import added, to_dict

    @dataclasses.dataclass
    class Section:
        old: int = 1
        new: str = added("off")

    assert to_dict(Section()) == {"old": 1}
    assert to_dict(Section(new="on")) == {"old": 1, "new": "on"}
    assert dataclasses.asdict(Section()) != to_dict(Section())  # negative control: asdict writes it


def test_a_caption_placeholder_that_does_not_exist_fails_the_plan():
    bad = frozen_demo()
    bad["report"] = {"caption": "steps {steps}, batch {batch}, teacher {teacher_steps}, and {nope}"}
    with pytest.raises(ConfigError, match=r"report.caption: unknown placeholder \{nope\}"):
        Study.load(bad)
    bad["report"] = {"caption": "a lone } brace"}
    with pytest.raises(ConfigError, match=r"report.caption: Single '\}' encountered"):
        Study.load(bad)


def test_the_demo_caption_says_its_step_counts():
    """The demo's tables say what it can and cannot show, with the step counts its jobs are planned with."""
    from llavakd.report.render import table_caption

    study = Study.load(load("config.yaml"), tiny_llms=LLM_NAMES)
    text = table_caption(study)
    (teacher,) = [f.teacher for f in study.families.values()]
    student = study.students()[0]
    assert f"SFT {study.stage_config(teacher, 0, 'pt--sft').train.max_steps} steps" in text
    assert f"DFT {study.stage_config(student, 0, 'dpt--sft--dft').train.max_steps} steps" in text
    assert "{" not in text and "MME and POPE" in text.replace("MME's and POPE's", "MME and POPE")


@pytest.mark.slow
def test_only_the_studys_llms_are_pre_trained_when_asked_and_the_old_command_is_kept_otherwise():
    """components.only_study_llms: the demo's components job names its two LLMs; a study without the key
    (the frozen old demo) plans the very command it had, so its finished components job stays finished."""
    demo = _dry_run("components", "--forcerun", "components")
    line = next(ln for ln in demo.splitlines() if "llavakd.cli tiny-models" in ln)
    assert "--llms qwen1.5-1.8b,qwen1.5-0.5b --overwrite" in line
    old = _dry_run("components", "--forcerun", "components", "--configfile", str(FROZEN_DEMO))
    line = next(ln for ln in old.splitlines() if "llavakd.cli tiny-models" in ln)
    assert line.rstrip().endswith("--min-probe 0.9 --overwrite > results/demo/logs/components.log 2>&1"), line
    assert "--llms" not in old
