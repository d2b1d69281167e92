"""A training job on several nodes: the sbatch call the SLURM executor plugin builds for it, and two
torchrun agents meeting at a c10d rendezvous (two "nodes" on localhost, gloo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import build_pair, dry_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class _Resources(dict):
    """The job.resources the plugin reads: .get(key) and attribute access."""

    def __getattr__(self, key):
        return self[key]


def _train_job_of_dry_run(nodes: int):
    configs = ["config/paper.yaml"] + (["config/two-nodes.yaml"] if nodes == 2 else [])  # README's commands
    out = dry_run("--executor", "slurm", "--workflow-profile", "profiles/slurm", "reproduce_table1", "--configfile",
                  *configs)  # nodes=1: the plan test_workflow's slurm test reads (memoised)
    block = out.split("rule train:")[1].split("\n\n")[0]
    resources = _Resources()
    for item in re.search(r"resources: (.*)", block).group(1).split(", "):
        key, value = item.split("=", 1)
        resources[key] = int(value) if value.isdigit() else value
    threads = int(m.group(1)) if (m := re.search(r"threads: (\d+)", block)) else 1
    shell = next(line for line in out.splitlines() if "--config results/paper/configs/" in line)
    return SimpleNamespace(resources=resources, threads=threads), shell


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_sbatch_call_of_a_training_job(tmp_path, nodes):
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job, shell = _train_job_of_dry_run(nodes)
    params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "rule_train", "account": "-A acct",
              "partition": "-p gpu", "workdir": str(tmp_path)}
    call = get_submit_command(job, params) + set_gres_string(job)  # the plugin's own code
    if nodes == 1:
        assert "--gpus=8" in call and "--nodes" not in call
        assert "torch.distributed.run --standalone --nproc_per_node 8" in shell and "srun" not in shell
    else:
        assert "--nodes=2" in call and "--ntasks=2" in call and "--gres=gpu:8" in call
        assert "--gpus=" not in call and "--ntasks-per-gpu" not in call
        assert "srun --nodes 2 --ntasks-per-node 1" in shell
        assert "llavakd.multinode --nodes 2 --gpus-per-node 8 -- --config" in shell


@pytest.fixture(scope="module")
def setup(tiny_components, tmp_path_factory):
    return build_pair(tiny_components, tmp_path_factory.mktemp("nodes"), "qwen2.5-0.5b", "qwen2.5-1.5b", world_seed=3)


def test_two_agents_on_localhost_match_one_process(setup, tmp_path):
    from test_train_distributed import _free_port, _train, mismatches, read_run

    one = _train(setup, tmp_path / "one")
    port = _free_port()
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--stage", "dft", f"model={setup / 'student'}", f"teacher={setup / 'teacher'}", f"output_dir={out}",
            f"data.json={setup / 'world' / 'train' / 'instruct.json'}", f"data.images={setup / 'world' / 'images'}",
            "train.precision=fp32", "train.global_batch=8", "train.per_device_batch=4", "train.max_steps=5",
            "train.save_steps=100", "train.lr=1e-3", "train.warmup_ratio=0"]
    agent = [sys.executable, "-m", "llavakd.multinode", "--nodes", "2", "--gpus-per-node", "1",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", "--", *args]
    procs = [subprocess.Popen(agent, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["grad_accumulation"] == 1 and meta["global_batch"] == 8
    assert mismatches(one, read_run(out)) == []
