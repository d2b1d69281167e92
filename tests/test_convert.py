"""convert-upstream / export-upstream: checkpoints in every layout upstream writes become our HF LLaVA
with the logits of an independent forward pass, and ours go back to upstream's layout losslessly.

The "upstream" files here are written by an independent writer: transformers' own SiglipVisionModel
and Qwen2ForCausalLM state dicts, renamed the way TinyLLaVA_Factory saves them (the prefixes, and
the ``vision_model.`` level that transformers 4.3x-4.4x puts in SigLIP's keys). The reference
logits come from those original modules, wired by hand as upstream's forward does; the converter's
output is never used to compute them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from llavakd.cli import main
from llavakd.errors import LlavaKDError
from llavakd.model.build import load_processor
from llavakd.model.convert import convert_upstream

# upstream's phi conversation template for one image and one question, written out by hand
PHI_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions. USER: <image>\nwhat shape is "
              "red? ASSISTANT:")
PHI_TEXT_ONLY = PHI_PROMPT.replace("<image>\n", "")
IMAGE_TOKEN_INDEX = -200  # upstream's placeholder id for the image in tokenizer_image_token
IMAGE_SIZE, PATCH = 40, 8  # 5 x 5 patches: 24 visual tokens with the first one dropped (not the paper's 728)


@pytest.fixture(scope="module")
def tokenizer(tiny_components):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_components / "llm" / "qwen1.5-0.5b")


def modules(tokenizer, tied: bool, seed: int = 7):
    """Randomly initialised original modules: SigLIP tower (with its pooling head), Qwen2 LM, connector."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    tower = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=True)).eval()
    lm = Qwen2ForCausalLM(Qwen2Config(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer) + 7, tie_word_embeddings=tied, max_position_embeddings=512)).eval()
    connector = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 48)).eval()
    return tower, lm, connector


def tinyllava_config(tower, lm) -> dict:
    """What TinyLlavaConfig.to_dict() holds; the *_name_or_path entries point where nothing exists."""
    return {
        "architectures": ["TinyLlavaForConditionalGeneration"], "model_type": "tinyllava",
        "llm_model_name_or_path": "./pretrained_ckpt/Qwen1.5-0.5B",
        "vision_model_name_or_path": "./pretrained_ckpt/siglip-so400m-patch14-384",
        "tokenizer_name_or_path": "./pretrained_ckpt/Qwen1.5-0.5B",
        "connector_type": "mlp2x_gelu", "conv_version": "phi", "image_aspect_ratio": "square",
        "vision_feature_layer": -2, "vision_feature_select_strategy": "patch",
        "text_config": lm.config.to_dict(), "vision_config": tower.config.to_dict(),
    }


def _vision_sd(tower, nested: bool, prefix: str = "") -> dict:
    level = "vision_model." if nested else ""
    return {f"{prefix}{level}{k}": v.clone() for k, v in tower.state_dict().items()}


def _lm_sd(lm, keep_tied_head: bool) -> dict:
    sd = {k: v.clone() for k, v in lm.state_dict().items()}
    if lm.config.tie_word_embeddings and not keep_tied_head:
        sd.pop("lm_head.weight", None)
    return sd


def _save_sharded(sd: dict, folder, shards: int) -> None:
    """safetensors shards plus the index transformers writes (model.safetensors.index.json)."""
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map |= dict.fromkeys(part, name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_upstream(dst, tokenizer, tower, lm, connector, *, layout: str, nested: bool, fmt: str,
                   keep_tied_head: bool = False, prefixed: bool = True, extra: dict | None = None):
    """One upstream checkpoint folder. layout: single | split; fmt: bin | safetensors | sharded."""
    dst.mkdir(parents=True)
    if layout == "single":
        sd = {f"language_model.{k}": v for k, v in _lm_sd(lm, keep_tied_head).items()}
        sd |= _vision_sd(tower, nested, "vision_tower._vision_tower.")
        sd |= {f"connector._connector.{k}": v.clone() for k, v in connector.state_dict().items()}
        sd |= extra or {}
        if fmt == "bin":
            torch.save(sd, dst / "pytorch_model.bin")
        elif fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"))
        else:
            _save_sharded(sd, dst, 2)
    else:
        for sub in ("language_model", "vision_tower", "connector"):
            (dst / sub).mkdir()
        lm_sd = _lm_sd(lm, keep_tied_head)
        if fmt == "bin":
            torch.save(lm_sd, dst / "language_model" / "pytorch_model.bin")
        elif fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in lm_sd.items()}, str(dst / "language_model" / "model.safetensors"))
        else:
            _save_sharded(lm_sd, dst / "language_model", 3)
        torch.save(_vision_sd(tower, nested, "_vision_tower." if prefixed else ""),
                   dst / "vision_tower" / "pytorch_model.bin")
        torch.save({f"{'_connector.' if prefixed else ''}{k}": v.clone() for k, v in connector.state_dict().items()},
                   dst / "connector" / "pytorch_model.bin")
    (dst / "config.json").write_text(json.dumps(tinyllava_config(tower, lm)))
    tokenizer.save_pretrained(dst)
    return dst


def upstream_tokens(tokenizer, prompt: str) -> list[int]:
    """Upstream's tokenizer_image_token: the text around each <image> tokenized alone, the image as -200."""
    chunks = [tokenizer(c, add_special_tokens=False).input_ids for c in prompt.split("<image>")]
    out = chunks[0]
    for c in chunks[1:]:
        out = out + [IMAGE_TOKEN_INDEX] + c
    return out


def upstream_pixels(image: Image.Image) -> torch.Tensor:
    """SigLIP preprocessing as upstream runs it on a square-mode image: bicubic resize, /255, (x - 0.5) / 0.5."""
    arr = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy((arr - 0.5) / 0.5).permute(2, 0, 1)[None]


@torch.no_grad()
def reference_logits(tower, lm, connector, ids: list[int], pixels: torch.Tensor | None) -> torch.Tensor:
    """Upstream's forward by hand: SigLIP layer -2, first patch dropped ('patch'), connector, spliced in."""
    text = torch.tensor([i for i in ids if i != IMAGE_TOKEN_INDEX])
    emb = lm.model.embed_tokens(text)
    if pixels is not None:
        feats = connector(tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])[0]
        at = ids.index(IMAGE_TOKEN_INDEX)
        emb = torch.cat([emb[:at], feats, emb[at:]])
    return lm(inputs_embeds=emb[None]).logits[0]


def collapse_image(ids: torch.Tensor, image_token_id: int) -> list[int]:
    out = []
    for i in ids.tolist():
        if i == image_token_id:
            if not out or out[-1] != IMAGE_TOKEN_INDEX:
                out.append(IMAGE_TOKEN_INDEX)
        else:
            out.append(i)
    return out


def image(seed: int = 3) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (57, 45, 3), dtype=np.uint8))


LAYOUTS = {  # every way upstream's saving code lays out a checkpoint
    "single-nested-safetensors-untied": dict(layout="single", nested=True, fmt="safetensors", tied=False),
    "single-nested-sharded-tied-no-head": dict(layout="single", nested=True, fmt="sharded", tied=True),
    "single-nested-bin-tied-head-saved": dict(layout="single", nested=True, fmt="bin", tied=True, keep_tied_head=True),
    "single-flat-safetensors-untied": dict(layout="single", nested=False, fmt="safetensors", tied=False),
    "split-nested-bin-untied": dict(layout="split", nested=True, fmt="bin", tied=False),
    "split-nested-unprefixed-sharded-tied": dict(layout="split", nested=True, fmt="sharded", tied=True, prefixed=False),
    "split-flat-safetensors-tied-head-saved": dict(layout="split", nested=False, fmt="safetensors", tied=True,
                                                   keep_tied_head=True),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_every_upstream_layout_converts_to_the_independent_forward(case, tokenizer, tmp_path, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    spec = dict(LAYOUTS[case])
    tower, lm, connector = modules(tokenizer, spec.pop("tied"))
    src = write_upstream(tmp_path / "upstream", tokenizer, tower, lm, connector, **spec)
    monkeypatch.chdir(tmp_path)  # ./pretrained_ckpt/... does not exist here, and must not be needed
    assert main(["convert-upstream", str(src), str(tmp_path / "hf")]) == 0

    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    proc = load_processor(tmp_path / "hf")  # how our trainer and evaluator load it
    img = image()
    enc = proc(text=PHI_PROMPT, images=img, return_tensors="pt")
    # the visual-token count comes from the checkpoint's vision config: (40 / 8)^2 - 1
    assert model.config.image_seq_length == 24 == int((enc["input_ids"] == model.config.image_token_id).sum())
    assert collapse_image(enc["input_ids"][0], model.config.image_token_id) == upstream_tokens(tokenizer, PHI_PROMPT)
    torch.testing.assert_close(enc["pixel_values"], upstream_pixels(img), rtol=0, atol=1e-5)
    with torch.no_grad():
        got = model(**enc).logits[0]
    ref = reference_logits(tower, lm, connector, upstream_tokens(tokenizer, PHI_PROMPT), upstream_pixels(img))
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-3)

    text = proc(text=PHI_TEXT_ONLY, return_tensors="pt")
    assert text["input_ids"][0].tolist() == upstream_tokens(tokenizer, PHI_TEXT_ONLY)
    with torch.no_grad():
        got_text = model(**text).logits[0]
    torch.testing.assert_close(got_text, reference_logits(tower, lm, connector, upstream_tokens(tokenizer, PHI_TEXT_ONLY),
                                                          None), rtol=0, atol=2e-3)


def test_a_wrong_vision_level_would_fail_the_reference(tokenizer, tmp_path):
    """Negative control: the reference is sensitive to the tower's weights (a shuffled layer differs)."""
    tower, lm, connector = modules(tokenizer, tied=False)
    src = write_upstream(tmp_path / "u", tokenizer, tower, lm, connector, layout="single", nested=True, fmt="safetensors")
    model, proc = convert_upstream(src)
    with torch.no_grad():
        model.model.vision_tower.encoder.layers[0].mlp.fc1.weight.mul_(-1.0)
        enc = proc(text=PHI_PROMPT, images=image(), return_tensors="pt")
        got = model(**enc).logits[0]
    ref = reference_logits(tower, lm, connector, upstream_tokens(tokenizer, PHI_PROMPT), upstream_pixels(image()))
    assert (got - ref).abs().max() > 2e-3


@pytest.mark.parametrize("which", ["built", "converted"])
def test_export_then_convert_gives_identical_logits(which, tiny_student, tokenizer, tmp_path):
    from transformers import LlavaForConditionalGeneration

    if which == "built":
        ours = tiny_student  # strategy "full": upstream's "cls_patch"
    else:
        tower, lm, connector = modules(tokenizer, tied=True)
        src = write_upstream(tmp_path / "u", tokenizer, tower, lm, connector, layout="single", nested=True, fmt="bin")
        assert main(["convert-upstream", str(src), str(tmp_path / "ours")]) == 0
        ours = tmp_path / "ours"
    assert main(["export-upstream", str(ours), str(tmp_path / "exported")]) == 0
    keys = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert keys["model_type"] == "tinyllava" and keys["connector_type"] == "mlp2x_gelu"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "exported" / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert any(k.startswith("vision_tower._vision_tower.vision_model.") for k in names)
    assert all(k.startswith(("language_model.", "vision_tower._vision_tower.", "connector._connector.")) for k in names)
    assert main(["convert-upstream", str(tmp_path / "exported"), str(tmp_path / "back")]) == 0

    a = LlavaForConditionalGeneration.from_pretrained(ours)
    b = LlavaForConditionalGeneration.from_pretrained(tmp_path / "back")
    pa, pb = load_processor(ours), load_processor(tmp_path / "back")
    ea = pa(text=PHI_PROMPT, images=image(), return_tensors="pt")
    eb = pb(text=PHI_PROMPT, images=image(), return_tensors="pt")
    assert torch.equal(ea["input_ids"], eb["input_ids"]) and torch.equal(ea["pixel_values"], eb["pixel_values"])
    with torch.no_grad():
        assert torch.equal(a(**ea).logits, b(**eb).logits)


def _single(tmp_path, tokenizer, **kw):
    tower, lm, connector = modules(tokenizer, tied=False)
    return write_upstream(tmp_path / "u", tokenizer, tower, lm, connector, layout="single", nested=True,
                          fmt="safetensors", **kw)


def test_missing_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlavaKDError, match="no config.json"):
        convert_upstream(tmp_path / "empty")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(LlavaKDError, match="does not exist"):
        convert_upstream(tmp_path / "absent")


@pytest.mark.parametrize("key,value,message", [
    ("connector_type", "qformer", "connector_type 'qformer'"),
    ("image_aspect_ratio", "pad", "image_aspect_ratio 'pad'"),
])
def test_unsupported_settings_are_named(key, value, message, tokenizer, tmp_path):
    src = _single(tmp_path, tokenizer)
    cfg = json.loads((src / "config.json").read_text())
    cfg[key] = value
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlavaKDError, match=message):
        convert_upstream(src)


def test_stray_weights_are_refused(tokenizer, tmp_path):
    src = _single(tmp_path, tokenizer, extra={"mystery.weight": torch.zeros(2)})
    with pytest.raises(LlavaKDError, match="mystery.weight"):
        convert_upstream(src)


def test_missing_weights_are_refused(tokenizer, tmp_path):
    tower, lm, connector = modules(tokenizer, tied=False)
    src = write_upstream(tmp_path / "u", tokenizer, tower, lm, connector, layout="split", nested=True, fmt="bin")
    sd = torch.load(src / "language_model" / "pytorch_model.bin", weights_only=True)
    del sd["model.norm.weight"]
    torch.save(sd, src / "language_model" / "pytorch_model.bin")
    with pytest.raises(LlavaKDError, match="missing weights.*norm"):
        convert_upstream(src)


def test_a_tied_head_that_differs_from_the_embeddings_is_refused(tokenizer, tmp_path):
    tower, lm, connector = modules(tokenizer, tied=True)
    src = write_upstream(tmp_path / "u", tokenizer, tower, lm, connector, layout="split", nested=True, fmt="bin",
                         keep_tied_head=True)
    sd = torch.load(src / "language_model" / "pytorch_model.bin", weights_only=True)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    torch.save(sd, src / "language_model" / "pytorch_model.bin")
    with pytest.raises(LlavaKDError, match="lm_head.weight differs"):
        convert_upstream(src)


def test_no_tokenizer_asks_for_one(tokenizer, tiny_components, tmp_path):
    src = _single(tmp_path, tokenizer)
    for f in src.glob("tokenizer*"):
        f.unlink()
    (src / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(LlavaKDError, match="--tokenizer"):
        convert_upstream(src)
    model, _ = convert_upstream(src, tokenizer=tiny_components / "llm" / "qwen1.5-0.5b")
    assert model.config.image_seq_length == 24
