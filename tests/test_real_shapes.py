"""The paper's real shapes (SigLIP-so400m-384 + Qwen1.5-0.5B) give 728 visual positions.

Built on the meta device from configs: no download, no allocation of the 0.9B parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from llavakd.errors import LlavaKDError
from llavakd.model.build import PAPER_IMAGE_TOKENS, image_token_count, llava_config, make_processor
from llavakd.model.shapes import DOCUMENTED, FAMILIES, SIGLIP_DEFAULTS, count_llm_params, llm_config, siglip_config
from llavakd.tiny.components import build_tokenizer, tiny_image_processor


def test_count_formula():
    assert image_token_count(384, 14, "default") == PAPER_IMAGE_TOKENS == 728
    assert image_token_count(384, 14, "full") == 729


def test_real_model_yields_728_positions_without_allocating():
    from transformers import LlavaForConditionalGeneration

    tok = build_tokenizer()
    cfg = llava_config(siglip_config(), llm_config("Qwen1.5-0.5B"), tok.convert_tokens_to_ids("<image>"),
                       "default", -2)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(cfg)
        pixels = torch.empty(2, 3, 384, 384)
        feats = model.model.get_image_features(pixel_values=pixels).pooler_output
    assert cfg.image_seq_length == 728
    assert [f.shape for f in feats] == [torch.Size([728, 1024])] * 2
    assert model.model.multi_modal_projector.linear_1.in_features == 1152

    ip = tiny_image_processor()
    ip.size = {"height": 384, "width": 384}
    proc = make_processor(ip, tok, 14, "default")
    img = Image.fromarray(np.zeros((300, 500, 3), dtype=np.uint8))
    enc = proc(text="<image>\nwhat is it?", images=img, return_tensors="pt")
    assert enc["pixel_values"].shape[-2:] == (384, 384)
    assert (enc["input_ids"] == cfg.image_token_id).sum().item() == 728


# Published sizes (model cards), and the five 2026 configs the harness must price right: Qwen3 has an
# explicit head_dim (0.6B: hidden 1024, 16 x 128), q/k norms and no q/k/v bias; Llama-3.2 and SmolLM2
# (model_type llama) have no bias; all five tie their embeddings.
@pytest.mark.parametrize("name,billions", [("Qwen1.5-0.5B", 0.46), ("Qwen2.5-0.5B", 0.49), ("Qwen2.5-1.5B", 1.54),
                                           ("Qwen1.5-4B", 3.95), ("Qwen3-0.6B", 0.596), ("Qwen3-4B", 4.02),
                                           ("Llama-3.2-1B", 1.24), ("SmolLM2-360M", 0.362)])
def test_param_counts_equal_transformers_num_parameters(name, billions):
    from transformers import AutoModelForCausalLM

    cfg = llm_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = model.num_parameters()
    assert count_llm_params(cfg) == n == DOCUMENTED[name].params
    assert abs(n / 1e9 - billions) / billions < 0.03
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == DOCUMENTED[name].tie_word_embeddings


def test_qwen3_shape_is_not_read_as_qwen2():
    """The negative control of the count: Qwen3-0.6B read with Qwen2's rules (head_dim = hidden / heads,
    q/k/v biases, no q/k norms) is off by 44M parameters; the shape keeps the family."""
    from dataclasses import replace

    qwen3 = DOCUMENTED["Qwen3-0.6B"]
    as_qwen2 = replace(qwen3, model_type="qwen2", head_dim=qwen3.hidden_size // qwen3.num_attention_heads)
    assert as_qwen2.params != qwen3.params
    assert qwen3.params - as_qwen2.params > 40e6
    assert qwen3.attention_width == 2048 and qwen3.hidden_size == 1024


def test_family_defaults_are_transformers_defaults():
    """A config that leaves a key out is read with transformers' own default for its family."""
    import transformers

    for model_type, facts in FAMILIES.items():
        cfg = getattr(transformers, facts.config_class)()
        for key, default in facts.defaults.items():
            if key == "head_dim" and default is None:
                assert getattr(cfg, "head_dim", None) in (None, cfg.hidden_size // cfg.num_attention_heads), model_type
            else:
                assert getattr(cfg, key) == default, (model_type, key)
    assert {k: getattr(transformers.SiglipVisionConfig(), k) for k in SIGLIP_DEFAULTS} == SIGLIP_DEFAULTS


def test_patch_grid_mismatch_is_refused(tiny_components):
    from llavakd.model.build import build_llava

    with pytest.raises(LlavaKDError, match=r"4x4 grid = 16 visual tokens.*expects 728"):
        build_llava(tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-0.5b",
                    strategy="full", image_tokens=728)


def test_the_torch_free_shapes_count_what_the_transformers_configs_count():
    for name, shape in DOCUMENTED.items():
        assert count_llm_params(shape) == count_llm_params(llm_config(name)), name
