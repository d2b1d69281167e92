"""LLaVA JSON datasets: lazy loading, per-sample visual masks, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llavakd.data.dataset import BadRecord, Collator, LlavaDataset
from llavakd.errors import LlavaKDError


@pytest.fixture(scope="module")
def processor(tiny_student):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_student)


def _img(folder, name, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)


def _conv(q, a, image=True):
    return [{"from": "human", "value": ("<image>\n" if image else "") + q}, {"from": "gpt", "value": a}]


@pytest.fixture()
def world(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        _img(tmp_path / "img", f"{i}.png", i)
    records = [
        {"id": "a", "image": "0.png", "conversations": _conv("what color ?", "red")},
        {"id": "b", "conversations": _conv("say yes", "yes", image=False)},
        {"id": "c", "image": "1.png", "conversations": _conv("how many ?", "two")
            + [{"from": "human", "value": "and shapes ?"}, {"from": "gpt", "value": "circle"}]},
    ]
    return tmp_path, records


def _write(tmp_path, records, name="data.json"):
    p = tmp_path / name
    p.write_text(json.dumps(records))
    return p


def test_mixed_batch_has_per_sample_visual_masks(world, processor):
    tmp, records = world
    ds = LlavaDataset(_write(tmp, records), tmp / "img", processor)
    batch = Collator(processor.tokenizer)([ds[0], ds[1], ds[2]])
    vm, ids, att = batch["visual_mask"], batch["input_ids"], batch["attention_mask"]
    assert vm.shape == ids.shape and vm.dtype == torch.bool
    assert vm.sum(-1).tolist() == [16, 0, 16]
    lengths = att.sum(-1).tolist()
    assert len(set(lengths)) == 3  # different lengths, right padded
    for b in range(3):
        assert att[b, : lengths[b]].all() and not att[b, lengths[b]:].any()
        assert (batch["labels"][b, lengths[b]:] == -100).all()
        pos = vm[b].nonzero().flatten().tolist()
        if pos:  # one contiguous run right after the system prompt and " USER: "
            assert pos == list(range(pos[0], pos[0] + 16))
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["sample_ids"] == ["a", "b", "c"]


def test_opening_is_lazy(world, processor, monkeypatch):
    tmp, records = world
    path = _write(tmp, records * 1000)
    opened = []
    import PIL.Image

    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    calls = []
    tok = processor.tokenizer
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: calls.append(a))
    ds = LlavaDataset(path, tmp / "img", processor)
    assert len(ds) == 3000 and not opened and not calls


def test_malformed_json_names_the_file(tmp_path, processor):
    p = tmp_path / "bad.json"
    p.write_text('[{"id": 1,}]')
    with pytest.raises(LlavaKDError, match=r"bad.json: malformed JSON at line 1"):
        LlavaDataset(p, tmp_path, processor)
    with pytest.raises(LlavaKDError, match="does not exist"):
        LlavaDataset(tmp_path / "none.json", tmp_path, processor)


@pytest.mark.parametrize("record,reason", [
    ({"id": "m", "image": "missing.png", "conversations": _conv("q", "a")}, r"image .*missing.png does not exist"),
    ({"id": "u", "image": "junk.png", "conversations": _conv("q", "a")}, r"image .*junk.png is unreadable"),
    ({"id": "g", "conversations": [{"from": "human", "value": "q"}]}, "no gpt turn"),
    ({"id": "t", "image": "0.png", "conversations": _conv("q", "a", image=False)}, r"0 <image> tag\(s\) but 1 image"),
    ({"id": "x", "conversations": _conv("q", "a")}, r"1 <image> tag\(s\) but 0 image"),
    ({"id": "l", "image": "0.png", "conversations": _conv("q " * 3000, "a")}, "no supervised token left within max_length"),
    ({"id": "f", "conversations": [{"from": "robot", "value": "q"}]}, "turn 0 must be"),
])
def test_bad_records_are_named_or_counted(world, processor, record, reason):
    tmp, records = world
    (tmp / "img" / "junk.png").write_bytes(b"not an image")
    data = records + [record]
    ds = LlavaDataset(_write(tmp, data), tmp / "img", processor)
    with pytest.raises(BadRecord, match=reason) as err:
        ds[3]
    assert "data.json: record 3" in str(err.value) and repr(record["id"]) in str(err.value)
    skipping = LlavaDataset(_write(tmp, data), tmp / "img", processor, skip_bad=True)
    got = skipping[3]
    assert got["id"] == "a"  # replaced by the next good record (wrapping around)
    assert sum(skipping.skipped.values()) == 1 and skipping.skipped_ids == [record["id"]]
    assert "skipped 1 bad record" in skipping.skip_report()


def test_pretrain_template_reads_the_caption(world, processor):
    tmp, _ = world
    recs = [{"id": "p", "image": "2.png", "conversations": _conv("", "a blue square at top right .")}]
    ds = LlavaDataset(_write(tmp, recs), tmp / "img", processor, template="pretrain")
    s = ds[0]
    assert (s["labels"][:16] == -100).all()
    sup = s["labels"][s["labels"] != -100]
    assert processor.tokenizer.decode(sup) == "a blue square at top right .\n"


def test_a_subset_is_deterministic_and_keeps_file_order(world, processor):
    tmp_path, records = world
    many = [dict(records[1], id=f"r{i}") for i in range(40)]  # text-only records need no image
    path = _write(tmp_path, many)
    full = LlavaDataset(path, tmp_path / "img", processor)
    half = LlavaDataset(path, tmp_path / "img", processor, subset=(0.25, 7))
    again = LlavaDataset(path, tmp_path / "img", processor, subset=(0.25, 7))
    other = LlavaDataset(path, tmp_path / "img", processor, subset=(0.25, 8))
    ids = [r["id"] for r in half.records]
    assert len(full) == 40 and len(half) == 10 and half.records_in_file == 40
    assert ids == [r["id"] for r in again.records] != [r["id"] for r in other.records]
    assert ids == sorted(ids, key=lambda x: int(x[1:]))  # file order kept
    assert len(LlavaDataset(path, tmp_path / "img", processor, subset=(0.001, 0))) == 1
