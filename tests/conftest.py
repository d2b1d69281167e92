"""Shared fixtures: the tiny component family (once per test session and xdist worker) and the micro
study's finished tree (once per run: the first worker to need it builds it under a file lock, the
other waits and reads the same tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The demo config as it was until 2026-12-06 (two families, four students, both ablation tables): the
# tests of planning and of finished-tree job files read this frozen copy, so config/config.yaml, the
# demo, is free to change.
FROZEN_DEMO = REPO / "tests" / "golden" / "demo-config-2026-12-05.yaml"


_DRY_RUNS: dict[tuple[str, ...], str] = {}


def dry_run(*args: str) -> str:
    """``snakemake -n <args>`` in the repository (stdout and stderr), run once per argument list and
    session: the tests that read the same plan share one subprocess."""
    if args not in _DRY_RUNS:
        r = subprocess.run(SNAKEMAKE + ["-n", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        _DRY_RUNS[args] = r.stdout + r.stderr
    return _DRY_RUNS[args]


def pytest_collection_modifyitems(config, items):
    """Modules that read the micro tree first, then modules with slow tests, then the rest (a stable
    sort, each module kept together so its module fixtures are set up once): under xdist the long
    tests start at once instead of trailing the run on one worker."""
    def rank(item):
        if "micro_tree" in getattr(item, "fixturenames", ()):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    by_module: dict = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        by_module[path] = min(rank(item), by_module.get(path, 2))
    items.sort(key=lambda item: by_module[item.nodeid.split("::")[0]])


def metrics_by_step(run_dir) -> dict:
    """{step: logged record} of a run's metrics.jsonl; a resumed run logs the steps after its
    checkpoint again, and the last record of a step counts."""
    import json
    from pathlib import Path

    steps = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            steps[rec["step"]] = rec
    return steps


@pytest.fixture(scope="session")
def standin_world(tmp_path_factory):
    """A tiny synthetic world (seed 7): the stand-ins the evaluation tests score."""
    from llavakd.tiny.world import write_world

    out = tmp_path_factory.mktemp("standin_world")
    write_world(out, seed=7, size="tiny")
    return out


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    from llavakd.tiny.components import write_tiny_components

    out = tmp_path_factory.mktemp("components")
    write_tiny_components(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_student(tiny_components, tmp_path_factory):
    """A tiny LLaVA (qwen1.5-0.5b student) saved as a HF checkpoint."""
    from llavakd.model.build import build_llava, save_llava

    model, proc, prov = build_llava(
        tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen1.5-0.5b", strategy="full"
    )
    out = tmp_path_factory.mktemp("student") / "model"
    save_llava(model, proc, out, prov)
    return out


def build_pair(components, root, student_llm: str, teacher_llm: str, world_seed: int, teacher_hook=None):
    """A world plus a student and a teacher LLaVA built from the tiny components, under ``root``."""
    from llavakd.model.build import build_llava, save_llava
    from llavakd.tiny.world import write_world

    write_world(root / "world", seed=world_seed, size="tiny")
    vision = components / "vision" / "siglip"
    for name, llm in (("student", student_llm), ("teacher", teacher_llm)):
        m, p, prov = build_llava(vision, components / "llm" / llm, strategy="full")
        if name == "teacher" and teacher_hook is not None:
            teacher_hook(m)
        save_llava(m, p, root / name, prov)
    return root


# -- the micro study: the whole DAG at the smallest sizes that still train and score -------------------
MICRO = {
    "run": "micro", "mode": "tiny", "seeds": [0],
    "world": {"seed": 0, "size": "tiny"},
    "components": {"seed": 0, "vision_steps": 3, "llm_steps": 2, "min_probe": 0.0},
    "families": {"qwen1.5": {"teacher": "qwen1.5-1.8b", "students": ["qwen1.5-0.5b"]}},
    "variants": {"baseline": "pt--sft", "llava_kd": "dpt--sft--dft"},
    "train": {"common": {"train.precision": "fp32", "train.global_batch": 4, "train.per_device_batch": 4,
                         "train.save_steps": 2, "train.max_steps": 2, "data.max_length": 256},
              "teacher": {"sft": {"train.max_steps": 40}}, "dft": {"loss.rel_weight": 0.5}},
    "ablations": {"students": ["qwen1.5-0.5b"], "stages": {"PT+SFT+DFT": "pt--sft--dft"}},
    "eval": {"benchmarks": "pope,mme", "limit": 2, "batch_size": 4},
    "agreement": {"limit": 2},
    "resources": {"default": {"gpus": 0, "threads": 1, "mem_mb": 2000, "runtime": 10}},
}
MICRO_TARGETS = ("reproduce_table1", "ablation_stages")  # what the shared micro tree is built with


def micro_cmd(root: Path, cfg: Path, *targets: str) -> list[str]:
    """``snakemake <targets>`` on the micro config in ``root`` (2 cores)."""
    return SNAKEMAKE + [*targets, "--snakefile", str(REPO / "Snakefile"), "--directory", str(root), "--cores", "2",
                        "--configfile", str(cfg)]


def micro_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")


def write_micro_config(root: Path, cfg: dict | None = None) -> Path:
    import yaml

    path = Path(root) / "micro.yaml"
    path.write_text(yaml.safe_dump(MICRO if cfg is None else cfg))
    return path


@pytest.fixture(scope="session")
def micro_tree(tmp_path_factory):
    """The micro study run once, uninterrupted, with ``MICRO_TARGETS``: world, components, every
    training job, the evaluations, agreement and the reports. Tests read it and never write to it; a
    test that kills, changes or reruns a tree works on ``copy_micro_tree``. Under xdist the workers
    share one tree: it lives in the run's common temporary folder, and a file lock lets the first
    worker build it while the other waits (a failed build is not retried: the others fail too)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder above every worker's own
    root, done = shared / "micro_tree", shared / "micro_tree.done"
    with FileLock(str(shared / "micro_tree.lock")):
        if not done.exists():
            if root.exists():
                raise AssertionError(f"the shared micro tree {root} failed to build in another worker")
            root.mkdir()
            cfg = write_micro_config(root)
            r = subprocess.run(micro_cmd(root, cfg, *MICRO_TARGETS), cwd=root, env=micro_env(), capture_output=True,
                               text=True, timeout=1500)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            done.touch()
    return root


def copy_micro_tree(tree: Path, dest: Path, parts: tuple[str, ...] | None = None) -> Path:
    """A copy of the micro tree (modification times kept, so Snakemake sees what the original holds):
    all of it, with Snakemake's metadata, or only ``parts`` (paths under the tree) and no metadata."""
    if parts is None:
        shutil.copytree(tree, dest, symlinks=True)
    else:
        dest.mkdir(parents=True)
        for part in parts:
            shutil.copytree(tree / part, dest / part, symlinks=True)
    write_micro_config(dest)
    return dest


def frozen_demo() -> dict:
    """A fresh copy of the frozen demo config (see FROZEN_DEMO)."""
    import yaml

    return yaml.safe_load(FROZEN_DEMO.read_text())


def fabricate_method_job(study, model: str, headlines: dict, cost: float = 1.0, replicates: dict | None = None) -> None:
    """A methods-table job's files without running it: its evaluation (``headlines`` per column, with
    ``replicates`` per column when given), its agreement with the teacher, and its run's metadata
    (``cost`` seconds per step and 100 x ``cost`` MB peak memory)."""
    import json

    from llavakd.layout import parse_model

    folder = Path(study.layout.eval_dir(model, study.protocols[0]))
    folder.mkdir(parents=True)
    for c, value in headlines.items():
        rec = {"headline": value}
        if replicates is not None:
            rec["interval95"] = {"replicates": replicates[c]}
        (folder / f"{c}.json").write_text(json.dumps(rec))
    agree = Path(study.layout.agreement_dir(model))
    agree.mkdir(parents=True)
    (agree / "gqa.json").write_text(json.dumps({"answer_agreement": 0.5, "answer_kl": 1.0, "visual_kl": 2.0}))
    p = parse_model(model)
    run = Path(study.layout.run_dir(p.llm, p.seed, p.chain))
    run.mkdir(parents=True)
    (run / "metadata.json").write_text(json.dumps({"steps": 10, "wall_time_s": 10 * cost, "peak_memory_mb": 100 * cost}))
