"""Pre-training the tiny components on the world: labels, loss decrease, the CLI path."""

from __future__ import annotations

import json

import pytest
import torch

from llavakd.cli import main
from llavakd.tiny.pretrain import CLASSES, cell_labels, pretrain_llm, pretrain_vision
from llavakd.tiny.world import write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("w")
    write_world(out, seed=3, size="tiny")
    return out


def test_cell_labels_parse_every_object():
    labels = cell_labels("a red circle at top left . the number 7 at bottom right .")
    assert labels == [CLASSES.index("red circle"), 0, 0, CLASSES.index("digit 7")]
    assert len(CLASSES) == 26


@pytest.mark.slow
def test_vision_pretraining_learns(world):
    from transformers import SiglipVisionModel

    from llavakd.tiny.components import tiny_vision_config

    torch.manual_seed(0)
    tower = SiglipVisionModel(tiny_vision_config())
    rep = pretrain_vision(tower, world, seed=0, steps=100, batch=32, progress=False)
    assert rep["loss_last"] < 0.7 * rep["loss_first"]
    assert rep["probe_cell_accuracy"] > 0.3  # 26 classes; chance is far lower


@pytest.mark.slow
def test_llm_pretraining_learns(world, tiny_components):
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    lm = Qwen2ForCausalLM.from_pretrained(tiny_components / "llm" / "qwen2.5-0.5b")
    tok = AutoTokenizer.from_pretrained(tiny_components / "llm" / "qwen2.5-0.5b")
    rep = pretrain_llm(lm, tok, world, seed=0, steps=40, batch=8, progress=False)
    assert rep["loss_last"] < 0.8 * rep["loss_first"]


@pytest.mark.slow
def test_cli_world_pretraining_records_the_probe(world, tmp_path, capsys):
    out = tmp_path / "comp"
    rc = main(["tiny-models", "--out", str(out), "--world", str(world), "--vision-steps", "20",
               "--llm-steps", "2", "--min-probe", "0"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["pretrained_on_world"] and "probe_cell_accuracy" in m["vision_pretraining"]
    assert all("pretraining" in v for v in m["llms"].values())
    rc = main(["tiny-models", "--out", str(tmp_path / "c2"), "--world", str(world), "--vision-steps", "2",
               "--llm-steps", "1", "--min-probe", "0.99"])
    assert rc == 2 and "raise --vision-steps" in capsys.readouterr().err
    assert not (tmp_path / "c2").exists()


def test_missing_world_is_a_clean_error(tmp_path, capsys):
    rc = main(["tiny-models", "--out", str(tmp_path / "c"), "--world", str(tmp_path / "nowhere")])
    assert rc == 2 and "not a synthetic world" in capsys.readouterr().err


def test_a_subset_of_the_llms_has_the_whole_familys_weights(tiny_components, tmp_path):
    """``tiny-models --llms`` (components.only_study_llms): each LLM is seeded by its name, so writing two
    of the six gives those two exactly the weights the whole family's run gives them."""
    from safetensors.torch import load_file

    from llavakd.tiny.components import write_tiny_components

    manifest = write_tiny_components(tmp_path, seed=0, llms=["qwen1.5-1.8b", "qwen1.5-0.5b"])
    assert sorted(manifest["llms"]) == ["qwen1.5-0.5b", "qwen1.5-1.8b"]
    assert sorted(p.name for p in (tmp_path / "llm").iterdir()) == ["qwen1.5-0.5b", "qwen1.5-1.8b"]
    for name in manifest["llms"]:
        a = load_file(tmp_path / "llm" / name / "model.safetensors")
        b = load_file(tiny_components / "llm" / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
