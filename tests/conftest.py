"""Shared fixtures: the tiny component family is written once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


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
