"""Architecture shapes, one type each: ``LLMShape`` and ``VisionShape`` (flops, memory, cost, build
and the GPU benchmark all read these).

A shape comes from ``resolve_vision`` / ``resolve_llm``: the component's own ``config.json`` (a local
folder, or the hub id's snapshot in the local Hugging Face cache), else the table of documented
shapes below (public config facts), saying so. A key a config leaves out is taken from transformers'
own default for that family (``FAMILIES``, checked against the config classes by a test), and the
source says which keys were filled: never a silent Qwen default. Torch-free (JSON only): the planner
imports it, so ``snakemake -n`` imports neither torch nor transformers.

Families (``model_type``) and what their decoder layers hold beyond q, k, v, o and a SwiGLU MLP:

- ``qwen2`` (Qwen1.5, Qwen2, Qwen2.5): q/k/v biases, always; ``head_dim = hidden / heads``;
- ``qwen3``: an explicit ``head_dim`` (128 in every released size), RMSNorms on q and k per head,
  biases only if ``attention_bias`` (q, k, v and o);
- ``llama`` (Llama-3.x, SmolLM2): biases only if ``attention_bias`` (q, k, v, o) / ``mlp_bias``;
- ``smollm3``: as llama.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from llavakd.errors import LlavaKDError, UnknownNameError

STRATEGIES = ("default", "full")  # LLaVA's vision_feature_select_strategy: drop the first patch, or keep all


# -- families -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyFacts:
    """What the harness knows of one LLM family (a transformers ``model_type``)."""

    config_class: str
    """The transformers config class (``llm_config`` builds it; the defaults test reads it)."""
    qkv_bias: bool | None
    """q/k/v biases regardless of the config (Qwen2's), or None: ``attention_bias`` decides (q, k, v, o)."""
    qk_norm: bool
    """RMSNorms on queries and keys per head (Qwen3)."""
    liger: str | None
    """liger-kernel's patch function for the family (train.liger_kernels), or None: not covered."""
    defaults: dict = field(default_factory=dict)
    """transformers' defaults for the keys a config may leave out (``head_dim`` None: hidden / heads)."""


FAMILIES: dict[str, FamilyFacts] = {
    "qwen2": FamilyFacts("Qwen2Config", True, False, "apply_liger_kernel_to_qwen2",
                         dict(vocab_size=151936, head_dim=None, tie_word_embeddings=False)),
    "qwen3": FamilyFacts("Qwen3Config", None, True, "apply_liger_kernel_to_qwen3",
                         dict(vocab_size=151936, head_dim=128, tie_word_embeddings=False, attention_bias=False)),
    "llama": FamilyFacts("LlamaConfig", None, False, "apply_liger_kernel_to_llama",
                         dict(vocab_size=32000, head_dim=None, tie_word_embeddings=False, attention_bias=False,
                              mlp_bias=False)),
    "smollm3": FamilyFacts("SmolLM3Config", None, False, "apply_liger_kernel_to_smollm3",
                           dict(vocab_size=128256, head_dim=None, tie_word_embeddings=True, attention_bias=False,
                                mlp_bias=False)),
}
LLM_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def family(model_type: str, where: str = "LLM") -> FamilyFacts:
    """The facts of a family, or one line naming the model type and the supported ones."""
    if model_type not in FAMILIES:
        raise LlavaKDError(f"{where}: model_type {model_type!r} is not supported; supported LLM families: "
                           f"{', '.join(FAMILIES)} (docs/models.md says how to add one)")
    return FAMILIES[model_type]


# -- the LLM shape -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LLMShape:
    """A decoder-only LLM's numbers, named as in its transformers config."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float | None = None
    max_position_embeddings: int | None = None
    rms_norm_eps: float | None = None

    @property
    def facts(self) -> FamilyFacts:
        return family(self.model_type)

    @property
    def attention_width(self) -> int:
        """Queries' width: heads x head_dim (Qwen3-0.6B: 16 x 128 = 2048, twice its hidden size)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Matmul parameters of all decoder layers (no embeddings, norms or biases)."""
        h, q, kv = self.hidden_size, self.attention_width, self.kv_width
        return self.num_hidden_layers * (2 * h * q + 2 * h * kv + 3 * h * self.intermediate_size)

    @property
    def head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        """Every parameter, as transformers' ``num_parameters()`` counts them (a tied head once)."""
        h, q, kv, i = self.hidden_size, self.attention_width, self.kv_width, self.intermediate_size
        fixed = self.facts.qkv_bias  # Qwen2: q/k/v biases always, none on o
        qkv_bias, o_bias = (fixed, False) if fixed is not None else (self.attention_bias, self.attention_bias)
        per_layer = (q + 2 * kv) * qkv_bias + h * o_bias
        per_layer += 2 * self.head_dim if self.facts.qk_norm else 0
        per_layer += (2 * i + h) if self.mlp_bias else 0
        per_layer += 2 * h  # input and post-attention RMSNorms
        matmuls = self.layer_params
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return matmuls + self.num_hidden_layers * per_layer + embeddings + h  # + the final norm

    def config_kwargs(self) -> dict:
        """Keyword arguments of the family's transformers config (None values left to its defaults)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "model_type"}
        if self.facts.qkv_bias is not None:  # Qwen2 has no attention_bias / mlp_bias keys
            out.pop("attention_bias"), out.pop("mlp_bias")
        if self.model_type == "qwen3":
            out.pop("mlp_bias")
        return out


def as_llm_shape(cfg) -> LLMShape:
    """An LLMShape from a shape, a transformers config or a config dict (a LLaVA's: its text_config)."""
    if isinstance(cfg, LLMShape):
        return cfg
    if not isinstance(cfg, dict):
        cfg = cfg.to_dict()
    return llm_shape_from(cfg)[0]


def count_llm_params(cfg) -> int:
    """Parameters of a causal LM (embeddings counted once if tied) from its shape or config."""
    return as_llm_shape(cfg).params


def llm_config(shape, **overrides):
    """The family's transformers config from an LLM shape (or a documented name)."""
    import transformers

    shape = documented_shape(shape) if isinstance(shape, str) else as_llm_shape(shape)
    cls = getattr(transformers, shape.facts.config_class)
    return cls(**{**shape.config_kwargs(), **overrides})


def llm_shape_from(checkpoint: dict, where: str = "LLM config") -> tuple[LLMShape, list[str]]:
    """(shape, notes) from an LLM config (a LLaVA config: its text_config). ``notes`` names every key
    taken from the family's transformers default because the config leaves it out."""
    cfg = checkpoint.get("text_config", checkpoint)
    notes = []
    model_type = cfg.get("model_type")
    if model_type is None:
        model_type = "qwen2"
        notes.append("model_type=qwen2 (not in the config)")
    facts = family(model_type, where)
    missing = [k for k in LLM_REQUIRED if cfg.get(k) is None]
    if missing:
        raise LlavaKDError(f"{where} lacks {', '.join(missing)}")
    values = {k: cfg[k] for k in LLM_REQUIRED}
    values["num_key_value_heads"] = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if cfg.get("num_key_value_heads") is None:
        notes.append(f"num_key_value_heads={values['num_key_value_heads']} (= heads)")
    for key, default in facts.defaults.items():
        if cfg.get(key) is not None:
            values[key] = cfg[key]
            continue
        if key == "head_dim" and default is None:
            values[key] = cfg["hidden_size"] // cfg["num_attention_heads"]
            continue  # what the family's attention computes; nothing to report
        values[key] = default
        notes.append(f"{key}={default!r}")
    for key in ("attention_bias", "mlp_bias"):
        if key in facts.defaults:
            values[key] = bool(values.get(key, False))
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
    shape = LLMShape(model_type=model_type, rope_theta=rope, max_position_embeddings=cfg.get("max_position_embeddings"),
                     rms_norm_eps=cfg.get("rms_norm_eps"), **values)
    return shape, notes


# -- the vision shape ------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisionShape:
    """A fixed-resolution SigLIP / SigLIP2 tower's numbers, named as in its config."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int

    @property
    def patches(self) -> int:
        """Positions the tower runs on per image: the whole patch grid."""
        return (self.image_size // self.patch_size) ** 2

    def tokens(self, strategy: str = "default") -> int:
        """Visual positions per image in the LLM: the grid, minus the first patch for 'default'."""
        return image_token_count(self.image_size, self.patch_size, strategy)

    @property
    def layer_params(self) -> int:
        """Matmul parameters of all encoder layers (q, k, v, o and the two-layer MLP)."""
        h = self.hidden_size
        return self.num_hidden_layers * (4 * h * h + 2 * h * self.intermediate_size)

    @property
    def params(self) -> int:
        """SigLIP vision-model parameters without the pooling head (``vision_use_head=False``)."""
        h, i, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        per_layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h  # attention, MLP, two layer norms
        return n * per_layer + 3 * self.patch_size ** 2 * h + h + self.patches * h + 2 * h


# transformers' SiglipVisionConfig defaults (a test compares): what a small config may leave out.
SIGLIP_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16)
VISION_TYPES = ("siglip", "siglip_vision_model")  # SigLIP and fixed-resolution SigLIP2 checkpoints
NAFLEX_TYPES = ("siglip2", "siglip2_vision_model")


def image_token_count(image_size: int, patch_size: int, strategy: str = "default") -> int:
    """Visual positions per image: the patch grid, minus the first patch for 'default'."""
    if strategy not in STRATEGIES:
        raise LlavaKDError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
    grid = image_size // patch_size
    return grid * grid - (1 if strategy == "default" else 0)


def vision_shape_from(checkpoint: dict, where: str = "vision config") -> tuple[VisionShape, list[str]]:
    """(shape, notes) from a vision config, a SigLIP config or a LLaVA config (its vision_config).
    NaFlex SigLIP2 is refused: its variable patch grid needs ``pixel_attention_mask`` and
    ``spatial_shapes``, which LLaVA's fixed visual-token count cannot carry."""
    top = checkpoint.get("model_type")
    cfg = checkpoint.get("vision_config", checkpoint)
    kind = cfg.get("model_type", top)
    if kind in NAFLEX_TYPES or top in NAFLEX_TYPES:
        raise LlavaKDError(f"{where}: model_type {kind or top!r} is NaFlex SigLIP2 (variable resolution: it needs "
                           "pixel_attention_mask and spatial_shapes, and gives no fixed visual-token count); use a "
                           "fixed-resolution SigLIP2 checkpoint (model_type 'siglip', e.g. "
                           "google/siglip2-so400m-patch14-384)")
    if kind is not None and kind not in VISION_TYPES and top not in ("llava", *VISION_TYPES):
        raise LlavaKDError(f"{where}: model_type {kind!r} is not a SigLIP tower ({', '.join(VISION_TYPES)})")
    values, notes = {}, []
    for key, default in SIGLIP_DEFAULTS.items():
        if cfg.get(key) is None:
            notes.append(f"{key}={default}")
        values[key] = cfg.get(key, default) if cfg.get(key) is not None else default
    return VisionShape(**values), notes


# -- documented shapes (public config.json facts; no download) --------------------------------------
SIGLIP_SO400M_384 = VisionShape(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=384, patch_size=14)
SIGLIP_EXTRA = dict(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=False)
DOCUMENTED_VISION: dict[str, VisionShape] = {
    "google/siglip-so400m-patch14-384": SIGLIP_SO400M_384,
    # SigLIP2's fixed-resolution checkpoints ship as model_type 'siglip' with SigLIP's architecture.
    "google/siglip2-so400m-patch14-384": SIGLIP_SO400M_384,
    "google/siglip2-so400m-patch16-384": replace(SIGLIP_SO400M_384, patch_size=16),
    "google/siglip2-so400m-patch16-512": replace(SIGLIP_SO400M_384, patch_size=16, image_size=512),
    "google/siglip2-base-patch16-224": VisionShape(768, 3072, 12, 12, 224, 16),
}
PAPER_IMAGE_TOKENS = SIGLIP_SO400M_384.tokens()  # the paper's: a 27x27 grid of SigLIP-so400m-384, first dropped


def _qwen2(h, i, n, heads, kv, tied, theta):
    return LLMShape("qwen2", h, i, n, heads, kv, h // heads, 151936, tied, rope_theta=theta,
                    max_position_embeddings=32768, rms_norm_eps=1e-6)


def _qwen3(h, i, n, heads, tied):
    return LLMShape("qwen3", h, i, n, heads, 8, 128, 151936, tied, rope_theta=1e6, max_position_embeddings=40960,
                    rms_norm_eps=1e-6)


def _llama(h, i, n, heads, kv, vocab, theta, positions):
    return LLMShape("llama", h, i, n, heads, kv, h // heads, vocab, True, rope_theta=theta,
                    max_position_embeddings=positions, rms_norm_eps=1e-5)


DOCUMENTED: dict[str, LLMShape] = {
    "Qwen1.5-0.5B": _qwen2(1024, 2816, 24, 16, 16, True, 1e6),
    "Qwen1.5-1.8B": _qwen2(2048, 5504, 24, 16, 16, False, 1e6),
    "Qwen1.5-4B": _qwen2(2560, 6912, 40, 20, 20, False, 5e6),
    "Qwen2.5-0.5B": _qwen2(896, 4864, 24, 14, 2, True, 1e6),
    "Qwen2.5-1.5B": _qwen2(1536, 8960, 28, 12, 2, True, 1e6),
    "Qwen2.5-3B": _qwen2(2048, 11008, 36, 16, 2, True, 1e6),
    "Qwen3-0.6B": _qwen3(1024, 3072, 28, 16, True),
    "Qwen3-1.7B": _qwen3(2048, 6144, 28, 16, True),
    "Qwen3-4B": _qwen3(2560, 9728, 36, 32, True),
    "Qwen3-8B": _qwen3(4096, 12288, 36, 32, False),
    "Llama-3.2-1B": _llama(2048, 8192, 16, 32, 8, 128256, 5e5, 131072),
    "Llama-3.2-3B": _llama(3072, 8192, 28, 24, 8, 128256, 5e5, 131072),
    "SmolLM2-135M": _llama(576, 1536, 30, 9, 3, 49152, 1e5, 8192),
    "SmolLM2-360M": _llama(960, 2560, 32, 15, 5, 49152, 1e5, 8192),
    "SmolLM2-1.7B": _llama(2048, 8192, 24, 32, 32, 49152, 1.3e5, 8192),
}
DOCUMENTED["Qwen2-0.5B"] = DOCUMENTED["Qwen2.5-0.5B"]
DOCUMENTED["Qwen2-1.5B"] = DOCUMENTED["Qwen2.5-1.5B"]


def documented_name(name: str | None) -> str | None:
    """The documented shape's key for a name or hub id (case-insensitive; 'Qwen/Qwen3-0.6B' -> 'Qwen3-0.6B')."""
    if not name:
        return None
    keys = {k.lower(): k for k in DOCUMENTED}
    return keys.get(str(name).lower()) or keys.get(str(name).rstrip("/").split("/")[-1].lower())


def documented_shape(name: str) -> LLMShape:
    """A documented LLM shape by name (UnknownNameError naming the known ones)."""
    match = documented_name(name)
    if match is None:
        raise UnknownNameError(f"unknown LLM {name!r}; documented: {', '.join(sorted(k.lower() for k in DOCUMENTED))}")
    return DOCUMENTED[match]


def siglip_config(shape: VisionShape = SIGLIP_SO400M_384, **overrides):
    """transformers' SiglipVisionConfig of a vision shape (no pooling head, as LLaVA uses the tower)."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**{**asdict(shape), **SIGLIP_EXTRA, **overrides})


# -- a component's own config ----------------------------------------------------------------
def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def read_config(ref: str | None, filename: str = "config.json") -> tuple[dict | None, str]:
    """``config.json`` (or another JSON file) of a local checkpoint folder, or of a hub id's snapshot in
    the local cache (refs/main first): (the parsed JSON, where it came from), or (None, why not).
    Never the network."""
    if not ref:
        return None, "not configured"
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        file = path / filename
        return (json.loads(file.read_text()), str(file)) if file.is_file() else (None, f"{path} has no {filename}")
    repo = _hub_cache() / f"models--{str(ref).replace('/', '--')}"
    snapshots = repo / "snapshots"
    if snapshots.is_dir():
        main = repo / "refs" / "main"
        order = [snapshots / main.read_text().strip()] if main.is_file() else []
        for snap in order + sorted(snapshots.iterdir()):
            if (snap / filename).is_file():
                return json.loads((snap / filename).read_text()), f"{ref} (local Hugging Face cache)"
    return None, f"{ref} is not a local folder nor in the local Hugging Face cache"


def read_vocabulary(ref: str | None) -> tuple[dict | None, str]:
    """A tokenizer's token -> id map from its ``tokenizer.json`` (the model's vocabulary and its added
    tokens), or (None, why not): the dry run compares teacher and student without loading either."""
    data, where = read_config(ref, "tokenizer.json")
    if data is None:
        return None, where
    vocab = data.get("model", {}).get("vocab") or {}
    vocab = dict(vocab) if isinstance(vocab, dict) else {piece: i for i, (piece, _) in enumerate(vocab)}  # Unigram
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return vocab, where


def _with_notes(where: str, notes: list[str], family_name: str) -> str:
    return f"{where}; transformers' {family_name} defaults for what it leaves out: {', '.join(notes)}" if notes \
        else where


def resolve_vision(ref: str | None) -> tuple[VisionShape, str]:
    """(vision shape, source): the tower's own config, else its documented shape, else SigLIP-so400m-384
    (the paper's), saying which."""
    config, where = read_config(ref)
    if config is not None:
        shape, notes = vision_shape_from(config, where)
        return shape, _with_notes(where, notes, "SigLIP")
    if ref in DOCUMENTED_VISION:
        return DOCUMENTED_VISION[ref], f"documented shape of {ref} ({where})"
    if ref and str(ref).split("/")[-1].lower().startswith("siglip2") and "naflex" in str(ref).lower():
        vision_shape_from({"model_type": "siglip2_vision_model"}, str(ref))  # refuses, saying why
    return SIGLIP_SO400M_384, f"paper default SigLIP-so400m-patch14-384 ({where})"


def resolve_llm(name: str, ref: str | None) -> tuple[LLMShape, str]:
    """(LLM shape, source): the LLM's own config, else the documented shape its name (or hub id) gives
    (UnknownNameError when there is neither)."""
    config, where = read_config(ref)
    if config is not None:
        shape, notes = llm_shape_from(config, where)
        return shape, _with_notes(where, notes, shape.model_type)
    match = documented_name(name) or documented_name(ref)
    if match is None:
        raise UnknownNameError(f"LLM {name}: no config ({where}) and no documented shape by that name; "
                               f"documented: {', '.join(sorted(k.lower() for k in DOCUMENTED))}")
    return DOCUMENTED[match], f"documented shape of {match} ({where})"

