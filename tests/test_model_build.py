"""Assembling LLaVA from components; plain transformers loads and runs the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakd.model.build import build_llava, check_same_vocab, save_llava
from llavakd.model.chat import END_TOKEN, render_prompt
from llavakd.tiny.family import LLMS, PAIRS, TINY_IMAGE_SIZE, TINY_PATCH


def _image(seed=0, size=(40, 56)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def test_manifest_mirrors_the_paper_pairs(tiny_components):
    import json

    man = json.loads((tiny_components / "manifest.json").read_text())
    assert man["pairs"] == PAIRS
    for teacher, students in PAIRS.items():
        for s in students:  # every student is smaller than its teacher
            assert man["llms"][s]["params"] < man["llms"][teacher]["params"]
    assert set(man["llms"]) == set(LLMS)


def test_plain_transformers_loads_and_generates(tiny_student):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_student)
    proc = AutoProcessor.from_pretrained(tiny_student)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is it ?"}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt == render_prompt("what color is it ?")
    inputs = proc(text=prompt, images=_image(), return_tensors="pt")
    n_img = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert n_img == (TINY_IMAGE_SIZE // TINY_PATCH) ** 2 == model.config.image_seq_length
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert 1 <= new.numel() <= 4
    assert isinstance(proc.decode(new, skip_special_tokens=True), str)


def test_round_trip_is_bit_identical(tiny_components, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, proc, prov = build_llava(
        tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen1.5-4b", strategy="full"
    )
    save_llava(model, proc, tmp_path / "m", prov)
    back = LlavaForConditionalGeneration.from_pretrained(tmp_path / "m")
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    proc2 = AutoProcessor.from_pretrained(tmp_path / "m")
    assert proc2.tokenizer.get_vocab() == proc.tokenizer.get_vocab()
    assert proc2.chat_template == proc.chat_template
    # the untied teacher keeps a separate lm_head; tied students share it
    assert not back.config.tie_word_embeddings


def test_components_are_reused_not_reinitialised(tiny_components):
    from transformers import Qwen2ForCausalLM, SiglipVisionModel

    model, _, _ = build_llava(
        tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-0.5b", strategy="full"
    )
    lm = Qwen2ForCausalLM.from_pretrained(tiny_components / "llm" / "qwen2.5-0.5b")
    tower = SiglipVisionModel.from_pretrained(tiny_components / "vision" / "siglip")
    for k, v in lm.model.state_dict().items():
        assert torch.equal(model.model.language_model.state_dict()[k], v), k
    for k, v in tower.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[k], v), k


def test_projector_is_mlp2x_gelu_and_seeded(tiny_components):
    args = (tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-0.5b")
    m1, _, _ = build_llava(*args, strategy="full", seed=1)
    m2, _, _ = build_llava(*args, strategy="full", seed=1)
    m3, _, _ = build_llava(*args, strategy="full", seed=2)
    p1 = m1.model.multi_modal_projector
    assert p1.linear_1.in_features == 64 and p1.linear_1.out_features == 128
    assert p1.linear_2.in_features == p1.linear_2.out_features == 128
    assert m1.config.projector_hidden_act == "gelu"
    assert torch.equal(p1.linear_1.weight, m2.model.multi_modal_projector.linear_1.weight)
    assert not torch.equal(p1.linear_1.weight, m3.model.multi_modal_projector.linear_1.weight)


def test_teacher_and_student_share_the_vocabulary(tiny_components, tmp_path):
    for teacher, students in PAIRS.items():
        for s in students:
            check_same_vocab(tiny_components / "llm" / teacher, tiny_components / "llm" / s)


def test_template_end_token_is_one_token(tiny_student):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_student)
    ids = tok(" ASSISTANT: a red circle" + END_TOKEN, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids(END_TOKEN)
    assert tok.decode(ids) == " ASSISTANT: a red circle" + END_TOKEN


@pytest.mark.parametrize("strategy,expected", [("full", 16), ("default", 15)])
def test_strategy_sets_visual_positions(tiny_components, strategy, expected):
    model, proc, _ = build_llava(
        tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-0.5b", strategy=strategy
    )
    inputs = proc(text=render_prompt("q"), images=_image(), return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == expected
    feats = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert feats[0].shape[0] == expected
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[1] == inputs["input_ids"].shape[1]


def test_non_persistent_buffers_match_a_fresh_model(tiny_components):
    """Buffers that are not saved (rotary inv_freq, SigLIP position ids) must be initialised."""
    from transformers import LlavaForConditionalGeneration

    model, _, _ = build_llava(
        tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-3b", strategy="full"
    )
    fresh = LlavaForConditionalGeneration(model.config)
    for (name, buf), (_, ref) in zip(model.named_buffers(), fresh.named_buffers()):
        assert torch.equal(buf, ref), name
