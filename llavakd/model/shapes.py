"""Architecture shapes of the paper's components (public config facts), for random-weight builds.

Used to check real-size invariants (728 visual tokens) without downloading anything, for the
GPU step benchmark, and for the cost model of the paper DAG.
"""

from __future__ import annotations

import types

from llavakd.errors import UnknownNameError

PAPER_IMAGE_TOKENS = 728  # the paper's visual tokens per image: 27x27 SigLIP-so400m-384 patches, the first dropped

SIGLIP_SO400M_384 = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
    image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
)

_QWEN_COMMON = dict(vocab_size=151936, max_position_embeddings=32768, hidden_act="silu",
                    rms_norm_eps=1e-6)

QWEN = {
    "Qwen1.5-0.5B": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=True,
                         rope_theta=1e6),
    "Qwen1.5-1.8B": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False,
                         rope_theta=1e6),
    "Qwen1.5-4B": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=40,
                       num_attention_heads=20, num_key_value_heads=20, tie_word_embeddings=False,
                       rope_theta=5e6),
    "Qwen2.5-0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_theta=1e6),
    "Qwen2.5-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_theta=1e6),
    "Qwen2.5-3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
                       rope_theta=1e6),
}
QWEN["Qwen2-0.5B"] = QWEN["Qwen2.5-0.5B"]
QWEN["Qwen2-1.5B"] = QWEN["Qwen2.5-1.5B"]


def siglip_config(**overrides):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**{**SIGLIP_SO400M_384, "vision_use_head": False, **overrides})


def qwen_config(name: str, **overrides):
    from transformers import Qwen2Config

    if name not in QWEN:
        raise UnknownNameError(f"unknown Qwen shape {name!r}; known: {sorted(QWEN)}")
    return Qwen2Config(**{**_QWEN_COMMON, **QWEN[name], **overrides})


def qwen_shape(name: str) -> types.SimpleNamespace:
    """The numbers of ``qwen_config`` without transformers (the planner's cost and memory estimate
    stay torch-free, so ``snakemake -n`` imports neither)."""
    if name not in QWEN:
        raise UnknownNameError(f"unknown Qwen shape {name!r}; known: {sorted(QWEN)}")
    return types.SimpleNamespace(**{**_QWEN_COMMON, **QWEN[name]})


def count_llm_params(cfg) -> int:
    """Parameters of a Qwen2-shaped causal LM from its config (embeddings counted once if tied)."""
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    attn = h * h + 2 * h * kv + h * h + (h + 2 * kv)  # q, k, v (with biases), o
    mlp = 3 * h * i
    per_layer = attn + mlp + 2 * h
    emb = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return n * per_layer + emb + h
