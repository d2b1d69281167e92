"""Shared fixtures: the tiny component family is written once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    from llavakd.model.tiny import write_tiny_components

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
