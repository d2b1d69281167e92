"""The tiny model family's shapes: offline stand-ins for SigLIP-so400m and the paper's Qwen LLMs.

The LLMs mirror Table 1's pairs in miniature (a Qwen1.5-like family without GQA and a
Qwen2.5-like family with GQA, one teacher and two students each). Torch-free: the planner's
workflow reads ``LLM_NAMES`` to check a tiny study's families at plan time.
"""

from __future__ import annotations

TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
TINY_VOCAB = 1024  # BPE target; embeddings are padded above it, as Qwen pads 151,646 -> 151,936

VISION = dict(
    image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH, hidden_size=64, intermediate_size=256,
    num_hidden_layers=3, num_attention_heads=4, vision_use_head=False,
)

# name -> Qwen2Config overrides.  "Qwen1.5"-like: full multi-head attention; "Qwen2.5"-like: GQA.
LLMS: dict[str, dict] = {
    "qwen1.5-4b": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen1.5-1.8b": dict(hidden_size=160, intermediate_size=384, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "qwen1.5-0.5b": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=160, intermediate_size=384, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
PAIRS = {  # teacher -> students, as in Table 1
    "qwen1.5-4b": ["qwen1.5-0.5b", "qwen1.5-1.8b"],
    "qwen2.5-3b": ["qwen2.5-0.5b", "qwen2.5-1.5b"],
}
LLM_NAMES = tuple(LLMS)
