"""The modality-length grouped sampler: what a step draws, and how much of it is padding."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_pair

from llavakd.config import load_stage_config
from llavakd.data.sampler import ModalityLengthGroupedSampler, grouped_indices, modality_lengths, padding_fraction
from llavakd.train.run import run_stage


def _lengths(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(5, 500, (n,), generator=g).tolist()
    text_only = torch.rand(n, generator=g) < 0.2
    return [-s if t else s for s, t in zip(sizes, text_only.tolist())]


def test_grouped_order_is_a_permutation_of_one_modality_per_full_group():
    lengths = _lengths()
    order = grouped_indices(lengths, 16, torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(len(lengths)))
    n_img = sum(n > 0 for n in lengths)
    n_full = (n_img // 16) + ((len(lengths) - n_img) // 16)
    for k in range(n_full):
        group = order[16 * k:16 * (k + 1)]
        assert len({lengths[i] > 0 for i in group}) == 1, f"group {k} mixes images and text-only samples"


def test_grouping_cuts_padding():
    lengths = _lengths(3000)  # mega-batches of 37 groups: lengths sort well within each
    absolute = [abs(n) for n in lengths]
    grouped = grouped_indices(lengths, 16, torch.Generator().manual_seed(1))
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    pad_grouped = padding_fraction([absolute[i] for i in grouped], 16)
    pad_random = padding_fraction([absolute[i] for i in shuffled], 16)
    assert pad_grouped < 0.25 * pad_random, (pad_grouped, pad_random)


def test_padding_fraction_by_hand():
    assert padding_fraction([4, 2, 3, 3], 2) == pytest.approx(1 - 12 / 14)
    assert padding_fraction([], 2) == 0.0


def test_order_depends_on_seed_and_epoch_only():
    lengths = _lengths()
    a = ModalityLengthGroupedSampler(lengths, 16, seed=3)
    b = ModalityLengthGroupedSampler(lengths, 16, seed=3)
    assert list(a) == list(b)  # a resumed run draws the same batches
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(ModalityLengthGroupedSampler(lengths, 16, seed=4)) != list(a)


def test_lengths_count_tokens_and_mark_text_only(tiny_student):
    from llavakd.model.build import load_processor

    tok = load_processor(tiny_student).tokenizer
    records = [
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nwhat shape ?"},
                                             {"from": "gpt", "value": "circle"}]},
        {"conversations": [{"from": "human", "value": "图中三角形是什么颜色？"}, {"from": "gpt", "value": "红色"}]},
        "not a record",
    ]
    lengths = modality_lengths(records, tok)
    assert lengths[0] == len(tok("<image>\nwhat shape ? circle", add_special_tokens=False)["input_ids"])
    chinese = len(tok("图中三角形是什么颜色？ 红色", add_special_tokens=False)["input_ids"])
    assert lengths[1] == -chinese and chinese > len("图中三角形是什么颜色？ 红色")  # several tokens a character
    assert lengths[2] == -1


@pytest.fixture(scope="module")
def pair(tiny_components, tmp_path_factory):
    return build_pair(tiny_components, tmp_path_factory.mktemp("sampler"), "qwen1.5-0.5b", "qwen1.5-1.8b", world_seed=5)


@pytest.mark.slow
def test_a_grouped_run_logs_less_padding_than_an_ungrouped_one(pair, tmp_path):
    padding = {}
    for grouped in (True, False):
        out = tmp_path / f"grouped-{grouped}"
        cfg = load_stage_config(None, [
            f"model={pair / 'student'}", f"output_dir={out}", f"data.json={pair / 'world' / 'train' / 'instruct.json'}",
            f"data.images={pair / 'world' / 'images'}", "train.precision=fp32", "train.global_batch=8",
            "train.per_device_batch=8", "train.max_steps=6", "train.save_steps=6", "train.logging_steps=1",
            f"train.group_by_modality_length={str(grouped).lower()}"], stage="sft")
        run_stage(cfg)
        logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        per_step = [r["padding_fraction"] for r in logged if "loss" in r]
        assert len(per_step) == 6 and all(0 <= p < 1 for p in per_step)
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["group_by_modality_length"] is grouped
        padding[grouped] = meta["padding_fraction"]
    assert padding[True] < 0.5 * padding[False], padding
