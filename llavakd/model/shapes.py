"""Architecture shapes: the paper's components (public config facts), and any component's own config.

The paper's shapes build random-weight models (the GPU step benchmark, real-size invariants) and
stand in for a hub id the planner cannot read. Everywhere a shape is used (build, planner, memory
estimate, cost, GPU benchmark) it comes from ``resolve_vision`` / ``resolve_llm``: the component's
own ``config.json`` (a local folder, or the hub id's snapshot in the local Hugging Face cache),
else the documented paper shape, saying so. Torch-free (JSON only): the planner imports it.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

from llavakd.errors import LlavaKDError, UnknownNameError

SIGLIP_SO400M_384 = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
    image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
)
STRATEGIES = ("default", "full")  # LLaVA's vision_feature_select_strategy: drop the first patch, or keep all
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
               "patch_size")
LLM_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "tie_word_embeddings", "vocab_size")


def image_token_count(image_size: int, patch_size: int, strategy: str = "default") -> int:
    """Visual positions per image: the patch grid, minus the first patch for 'default'."""
    if strategy not in STRATEGIES:
        raise LlavaKDError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
    grid = image_size // patch_size
    return grid * grid - (1 if strategy == "default" else 0)


def visual_tokens(vision: dict, strategy: str = "default") -> int:
    """The visual-token count a vision shape gives per image."""
    return image_token_count(int(vision["image_size"]), int(vision["patch_size"]), strategy)


PAPER_IMAGE_TOKENS = visual_tokens(SIGLIP_SO400M_384)  # the paper's: a 27x27 grid of SigLIP-so400m-384, first dropped

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


def llm_config(shape, **overrides):
    """A transformers Qwen2Config from an LLM shape (a namespace or dict: resolve_llm, qwen_shape)."""
    from transformers import Qwen2Config

    return Qwen2Config(**{**(shape if isinstance(shape, dict) else vars(shape)), **overrides})


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


# -- a component's own config ----------------------------------------------------------------
def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def read_config(ref: str | None) -> tuple[dict | None, str]:
    """``config.json`` of a local checkpoint folder, or of a hub id's snapshot in the local cache
    (refs/main first): (the parsed JSON, where it came from), or (None, why not). Never the network."""
    if not ref:
        return None, "not configured"
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        file = path / "config.json"
        return (json.loads(file.read_text()), str(file)) if file.is_file() else (None, f"{path} has no config.json")
    repo = _hub_cache() / f"models--{str(ref).replace('/', '--')}"
    snapshots = repo / "snapshots"
    if snapshots.is_dir():
        main = repo / "refs" / "main"
        order = [snapshots / main.read_text().strip()] if main.is_file() else []
        for snap in order + sorted(snapshots.iterdir()):
            if (snap / "config.json").is_file():
                return json.loads((snap / "config.json").read_text()), f"{ref} (local Hugging Face cache)"
    return None, f"{ref} is not a local folder nor in the local Hugging Face cache"


def vision_shape_from(checkpoint: dict) -> dict:
    """A SigLIP vision shape from a vision config, a SigLIP config or a LLaVA config (its vision_config)."""
    cfg = checkpoint.get("vision_config", checkpoint)
    missing = [k for k in VISION_KEYS if k not in cfg]
    if missing:
        raise LlavaKDError(f"vision config lacks {', '.join(missing)}")
    return {k: cfg[k] for k in VISION_KEYS}


def llm_shape_from(checkpoint: dict) -> types.SimpleNamespace:
    """A Qwen2-shaped LLM's numbers from its config (a LLaVA config: its text_config)."""
    cfg = checkpoint.get("text_config", checkpoint)
    values = {**_QWEN_COMMON, **{k: cfg[k] for k in LLM_KEYS if k in cfg}}
    values.setdefault("num_key_value_heads", values.get("num_attention_heads"))
    values.setdefault("tie_word_embeddings", False)
    missing = [k for k in LLM_KEYS if values.get(k) is None]
    if missing:
        raise LlavaKDError(f"LLM config lacks {', '.join(missing)}")
    return types.SimpleNamespace(**values)


def resolve_vision(ref: str | None) -> tuple[dict, str]:
    """(vision shape, source): the tower's own config, else SigLIP-so400m-384 (the paper's), saying why."""
    config, where = read_config(ref)
    if config is None:
        return dict(SIGLIP_SO400M_384), f"paper default SigLIP-so400m-patch14-384 ({where})"
    return vision_shape_from(config), where


def resolve_llm(name: str, ref: str | None) -> tuple[types.SimpleNamespace, str]:
    """(LLM shape, source): the LLM's own config, else the documented shape its name gives
    (UnknownNameError when there is neither)."""
    config, where = read_config(ref)
    if config is not None:
        return llm_shape_from(config), where
    match = {k.lower(): k for k in QWEN}.get(name.lower())
    if match is None:
        raise UnknownNameError(f"LLM {name}: no config ({where}) and no documented shape by that name; "
                               f"known: {', '.join(sorted(k.lower() for k in QWEN))}")
    return qwen_shape(match), f"paper default {match} ({where})"
