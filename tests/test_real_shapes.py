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
from llavakd.model.shapes import QWEN, count_llm_params, qwen_config, siglip_config
from llavakd.tiny.components import build_tokenizer, tiny_image_processor


def test_count_formula():
    assert image_token_count(384, 14, "default") == PAPER_IMAGE_TOKENS == 728
    assert image_token_count(384, 14, "full") == 729


def test_real_model_yields_728_positions_without_allocating():
    from transformers import LlavaForConditionalGeneration

    tok = build_tokenizer()
    cfg = llava_config(siglip_config(), qwen_config("Qwen1.5-0.5B"), tok.convert_tokens_to_ids("<image>"),
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


@pytest.mark.parametrize("name,billions", [("Qwen1.5-0.5B", 0.46), ("Qwen2.5-0.5B", 0.49),
                                           ("Qwen2.5-1.5B", 1.54), ("Qwen1.5-4B", 3.95)])
def test_param_counts_match_published_sizes(name, billions):
    from transformers import Qwen2ForCausalLM

    cfg = qwen_config(name)
    with torch.device("meta"):
        n = sum(p.numel() for p in Qwen2ForCausalLM(cfg).parameters())
    assert count_llm_params(cfg) == n
    assert abs(n / 1e9 - billions) / billions < 0.03
    assert name in QWEN


def test_patch_grid_mismatch_is_refused(tiny_components):
    from llavakd.model.build import build_llava

    with pytest.raises(LlavaKDError, match=r"4x4 grid = 16 visual tokens.*expects 728"):
        build_llava(tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-0.5b",
                    strategy="full", image_tokens=728)


def test_the_torch_free_shapes_count_what_the_transformers_configs_count():
    from llavakd.model.shapes import qwen_shape

    for name in QWEN:
        assert count_llm_params(qwen_shape(name)) == count_llm_params(qwen_config(name)), name
