"""The tiny model family's shapes: offline stand-ins for SigLIP-so400m and the LLMs.

The Qwen2-type LLMs mirror Table 1's pairs in miniature (a Qwen1.5-like family without GQA and a
Qwen2.5-like family with GQA, one teacher and two students each). A Qwen3-shaped pair (explicit
head_dim wider than hidden / heads, q/k norms, no biases, ChatML tokenizer with Qwen3's think tokens)
and a Llama-shaped pair (Llama-3-style tokenizer and template) exercise the other families. Torch-free:
the planner's workflow reads ``LLM_NAMES`` to check a tiny study's families at plan time.
"""

from __future__ import annotations

TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
TINY_VOCAB = 1024  # BPE target; embeddings are padded above it, as Qwen pads 151,646 -> 151,936

VISION = dict(
    image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH, hidden_size=64, intermediate_size=256,
    num_hidden_layers=3, num_attention_heads=4, vision_use_head=False,
)

# name -> config overrides (Qwen2Config unless KINDS says otherwise).  "Qwen1.5"-like: full multi-head
# attention; "Qwen2.5"-like: GQA.
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
    # Qwen3-shaped: head_dim 48 > hidden / heads (as Qwen3-0.6B's 128 > 1024 / 16), tied, q/k norms.
    "qwen3-1.7b": dict(hidden_size=160, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=48, tie_word_embeddings=True),
    "qwen3-0.6b": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=48, tie_word_embeddings=True),
    # Llama-3.2-shaped: GQA, tied, no biases; a Llama-3-style tokenizer.
    "llama-3.2-3b": dict(hidden_size=160, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True),
}
# name -> (model_type, tokenizer style: llavakd.tiny.tokenizer.TOKENIZER_STYLES, which names its template)
KINDS = {name: ("qwen2", "qwen") for name in LLMS}
KINDS.update({"qwen3-1.7b": ("qwen3", "qwen3"), "qwen3-0.6b": ("qwen3", "qwen3"),
              "llama-3.2-3b": ("llama", "llama3"), "llama-3.2-1b": ("llama", "llama3")})
PAIRS = {  # teacher -> students, as in Table 1; and one pair of each newer family
    "qwen1.5-4b": ["qwen1.5-0.5b", "qwen1.5-1.8b"],
    "qwen2.5-3b": ["qwen2.5-0.5b", "qwen2.5-1.5b"],
    "qwen3-1.7b": ["qwen3-0.6b"],
    "llama-3.2-3b": ["llama-3.2-1b"],
}
LLM_NAMES = tuple(LLMS)


def padded_vocab(n_tokens: int, multiple: int = 64) -> int:
    """A tiny LLM's embedding rows: its tokenizer's size rounded up to a multiple of 64."""
    return (n_tokens + multiple - 1) // multiple * multiple


def llm_config_dict(name: str, tokens: int = TINY_VOCAB) -> dict:
    """A tiny LLM's shape as a config dict (what its config.json holds of it), for the planner's FLOP
    count: ``tokens``, the size of its tokenizer (llavakd.tiny.tokenizer.catalogue)."""
    return {"model_type": KINDS[name][0], "vocab_size": padded_vocab(tokens), **LLMS[name]}

