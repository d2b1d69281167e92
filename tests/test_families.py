"""LLM families beyond Qwen2 (llavakd.model.shapes.FAMILIES): liger-kernel dispatch by model_type,
tied heads through build, training, checkpoint, resume and export."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from llavakd.errors import LlavaKDError
from llavakd.model.build import check_tied, llava_config
from llavakd.model.shapes import FAMILIES, LLMShape, VisionShape, llm_config, siglip_config

TINY_VISION = VisionShape(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=16, patch_size=8)


def _tiny_llava(model_type: str, tied: bool = True):
    from transformers import LlavaForConditionalGeneration

    shape = LLMShape(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16 if model_type == "qwen3" else 8, vocab_size=64,
                     tie_word_embeddings=tied)
    text = llm_config(shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = llava_config(siglip_config(TINY_VISION), text, 63, "full", -1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    if tied:
        model.tie_weights()
    return model


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_liger_kernels_dispatch_on_the_llms_family(model_type, monkeypatch):
    from llavakd.train.run import apply_liger

    calls = []
    fake = types.ModuleType("liger_kernel.transformers")
    for facts in FAMILIES.values():
        setattr(fake, facts.liger, lambda _n=facts.liger, **kw: calls.append((_n, kw)))
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    model = _tiny_llava(model_type)
    apply_liger(model)
    assert [name for name, _ in calls] == [f"apply_liger_kernel_to_{model_type}"]
    kw = calls[0][1]
    assert kw["cross_entropy"] is False and kw["fused_linear_cross_entropy"] is False  # the logits stay ours
    assert kw["model"] is model.model.language_model


def test_a_family_liger_does_not_cover_is_refused(monkeypatch):
    from dataclasses import replace

    from llavakd.train.run import apply_liger

    monkeypatch.setitem(FAMILIES, "llama", replace(FAMILIES["llama"], liger=None))
    with pytest.raises(LlavaKDError, match="liger-kernel has no kernels for 'llama'"):
        apply_liger(_tiny_llava("llama"))


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_tied_head_survives_save_and_plain_transformers_load(model_type, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model = _tiny_llava(model_type)
    check_tied(model, "built")
    model.save_pretrained(tmp_path)
    back = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    check_tied(back, "exported")
    assert back.lm_head.weight.data_ptr() == back.model.language_model.embed_tokens.weight.data_ptr()


def test_an_untied_copy_of_a_tied_head_is_refused():
    """The negative control of the tie check: a head cloned off its embeddings."""
    model = _tiny_llava("qwen3")
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with pytest.raises(LlavaKDError, match="ties the LM head to the input embeddings, but they are two tensors"):
        check_tied(model, "broken")
    check_tied(_tiny_llava("qwen3", tied=False), "untied by config")  # an untied config is left alone
