"""convert-upstream: a TinyLLaVA-layout checkpoint becomes our HF LLaVA with identical logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from llavakd.cli import main
from llavakd.errors import LlavaKDError
from llavakd.model.chat import render_prompt
from llavakd.model.convert import convert_upstream


@pytest.fixture(scope="module")
def upstream_parts(tiny_components):
    from transformers import AutoTokenizer, Qwen2ForCausalLM, SiglipVisionModel

    lm = Qwen2ForCausalLM.from_pretrained(tiny_components / "llm" / "qwen1.5-1.8b")  # untied lm_head
    tower = SiglipVisionModel.from_pretrained(tiny_components / "vision" / "siglip")
    tok = AutoTokenizer.from_pretrained(tiny_components / "llm" / "qwen1.5-1.8b")
    torch.manual_seed(7)
    connector = torch.nn.Sequential(
        torch.nn.Linear(64, lm.config.hidden_size), torch.nn.GELU(),
        torch.nn.Linear(lm.config.hidden_size, lm.config.hidden_size),
    )
    return lm, tower, connector, tok


def _config(lm, tower):
    return {
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "model_type": "tinyllava",
        "llm_model_name_or_path": "Qwen/Qwen1.5-1.8B",
        "vision_model_name_or_path": "google/siglip-so400m-patch14-384",
        "connector_type": "mlp2x_gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "text_config": lm.config.to_dict(),
        "vision_config": tower.config.to_dict(),
    }


def write_split(dst, lm, tower, connector, tok):
    (dst / "language_model").mkdir(parents=True)
    (dst / "vision_tower").mkdir()
    (dst / "connector").mkdir()
    torch.save(lm.state_dict(), dst / "language_model" / "pytorch_model.bin")
    torch.save({f"_vision_tower.{k}": v for k, v in tower.state_dict().items()},
               dst / "vision_tower" / "pytorch_model.bin")
    torch.save({f"_connector.{k}": v for k, v in connector.state_dict().items()},
               dst / "connector" / "pytorch_model.bin")
    (dst / "config.json").write_text(json.dumps(_config(lm, tower)))
    tok.save_pretrained(dst)
    return dst


def write_single(dst, lm, tower, connector, tok, extra=None):
    dst.mkdir(parents=True)
    sd = {f"language_model.{k}": v.clone() for k, v in lm.state_dict().items()}
    sd |= {f"vision_tower._vision_tower.{k}": v.clone() for k, v in tower.state_dict().items()}
    sd |= {f"connector._connector.{k}": v.clone() for k, v in connector.state_dict().items()}
    sd |= extra or {}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps(_config(lm, tower)))
    tok.save_pretrained(dst)
    return dst


def reference_logits(lm, tower, connector, input_ids, pixel_values, image_token_id):
    """The upstream forward written out by hand: layer -2, first patch dropped, scatter, LLM."""
    with torch.no_grad():
        hs = tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        feats = connector(hs).reshape(-1, lm.config.hidden_size)
        emb = lm.model.embed_tokens(input_ids).clone()
        emb[input_ids == image_token_id] = feats
        return lm(inputs_embeds=emb).logits


@pytest.mark.parametrize("layout", ["split", "single"])
def test_converted_logits_equal_reference(layout, upstream_parts, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    lm, tower, connector, tok = upstream_parts
    writer = write_split if layout == "split" else write_single
    src = writer(tmp_path / "upstream", lm, tower, connector, tok)
    assert main(["convert-upstream", str(src), str(tmp_path / "hf")]) == 0

    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    proc = AutoProcessor.from_pretrained(tmp_path / "hf")
    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    enc = proc(text=render_prompt("what shape is red ?"), images=img, return_tensors="pt")
    assert (enc["input_ids"] == model.config.image_token_id).sum().item() == 15  # 16 patches - 1
    with torch.no_grad():
        got = model(**enc).logits
    ref = reference_logits(lm, tower, connector, enc["input_ids"], enc["pixel_values"],
                           model.config.image_token_id)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_missing_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlavaKDError, match="no config.json"):
        convert_upstream(tmp_path / "empty")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(LlavaKDError, match="does not exist"):
        convert_upstream(tmp_path / "absent")


def test_unsupported_connector(upstream_parts, tmp_path):
    src = write_split(tmp_path / "u", *upstream_parts)
    cfg = json.loads((src / "config.json").read_text())
    cfg["connector_type"] = "qformer"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlavaKDError, match="connector_type 'qformer'"):
        convert_upstream(src)


def test_stray_weights_are_refused(upstream_parts, tmp_path):
    src = write_single(tmp_path / "u", *upstream_parts, extra={"mystery.weight": torch.zeros(2)})
    with pytest.raises(LlavaKDError, match="mystery.weight"):
        convert_upstream(src)


def test_missing_weights_are_refused(upstream_parts, tmp_path):
    lm, tower, connector, tok = upstream_parts
    src = write_split(tmp_path / "u", lm, tower, connector, tok)
    sd = torch.load(src / "language_model" / "pytorch_model.bin", weights_only=True)
    del sd["model.norm.weight"]
    torch.save(sd, src / "language_model" / "pytorch_model.bin")
    with pytest.raises(LlavaKDError, match="missing weights.*norm"):
        convert_upstream(src)


def test_no_tokenizer_asks_for_one(upstream_parts, tmp_path, tiny_components):
    src = write_split(tmp_path / "u", *upstream_parts)
    for f in src.glob("tokenizer*"):
        f.unlink()
    (src / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(LlavaKDError, match="--tokenizer"):
        convert_upstream(src)
    model, _ = convert_upstream(src, tokenizer=tiny_components / "llm" / "qwen1.5-1.8b")
    assert model.config.image_seq_length == 15


@pytest.mark.slow
def test_converted_upstream_checkpoint_evaluates_end_to_end(upstream_parts, tmp_path, monkeypatch):
    """Upstream layout -> convert-upstream -> llavakd eval on stand-ins, through lmms-eval."""
    from llavakd.tiny.world import write_world

    monkeypatch.chdir(tmp_path)
    write_world(tmp_path / "world", seed=2, size="tiny")
    src = write_split(tmp_path / "upstream", *upstream_parts)
    assert main(["convert-upstream", str(src), str(tmp_path / "hf")]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "hf"), "--world", str(tmp_path / "world"), "--benchmarks",
                 "textvqa,pope", "--out", str(out), "--limit", "4"]) == 0
    for name, docs in (("textvqa", 4), ("pope", 12)):
        rec = json.loads((out / f"{name}.json").read_text())
        assert sum(t["docs"] for t in rec["tasks"].values()) == docs
        assert 0 <= rec["headline"] <= 100
        assert len((out / f"{name}.samples.jsonl").read_text().splitlines()) == docs
