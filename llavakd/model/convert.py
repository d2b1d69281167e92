"""Convert a TinyLLaVA / upstream LLaVA-KD checkpoint into our plain HF LLaVA checkpoint, and back.

    llavakd convert-upstream path/to/LLaVA-KD-1B out/llava-kd-1b-hf
    llavakd convert-upstream SRC DST --tokenizer Qwen/Qwen1.5-0.5B   # if SRC ships no tokenizer
    llavakd export-upstream results/demo/runs/.../final out/upstream-layout   # for upstream's own scripts

Every layout TinyLLaVA_Factory (upstream's training code) writes is understood:
  * single: ``model.safetensors`` / ``pytorch_model.bin``, sharded with an index or not, whose keys
    carry the prefixes ``language_model.``, ``vision_tower._vision_tower.``, ``connector._connector.``;
  * split:  ``language_model/`` (a causal LM's ``save_pretrained``), ``vision_tower/`` (SigLIP
    weights, keys optionally prefixed ``_vision_tower.``), ``connector/`` (keys ``[_connector.]0/2.*``).
The vision weights may or may not carry SigLIP's ``vision_model.`` level: transformers 4.3x-4.4x,
which upstream trained with, nests ``SiglipVisionModel``'s weights under it; later versions do not.
A tied LM head may be saved (``pytorch_model.bin``) or left out (``save_pretrained`` to safetensors).

Only the checkpoint's own files are read: ``config.json`` (a TinyLlavaConfig: ``text_config``,
``vision_config``, connector type, feature layer and strategy) and the weights. Its
``llm_model_name_or_path`` / ``vision_model_name_or_path`` (often ``./pretrained_ckpt/...``, relative
to upstream's working directory) are never opened. The visual-token count follows from the vision
config's image and patch size. Weights are read with ``weights_only`` loading: nothing in SRC is executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llavakd.errors import LlavaKDError
from llavakd.model.build import (
    init_projector,
    llava_config,
    make_processor,
    prepare_tokenizer,
    resolve,
)
from llavakd.model.chat import IMAGE_TOKEN

# upstream vision_feature_select_strategy -> transformers'
_STRATEGY = {"patch": "default", "cls_patch": "full", "default": "default", "full": "full"}
# transformers' vision_feature_select_strategy -> upstream's
_UPSTREAM_STRATEGY = {"default": "patch", "full": "cls_patch"}
_PROJECTOR_INDEX = {"linear_1": "0", "linear_2": "2"}  # our projector's layers in upstream's nn.Sequential


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise LlavaKDError(f"{path}: cannot read weights safely ({err})") from err


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: a single file, or the shards an index names."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(_read_weight_file(folder / shard))
            return out
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return _read_weight_file(folder / name)
    raise LlavaKDError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index found")


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _unprefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from the keys when every key carries it (upstream writes it or not, by layout)."""
    return _strip(sd, prefix) if sd and all(k.startswith(prefix) for k in sd) else sd


def _vision_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SigLIP weights as transformers now names them: no ``vision_model.`` level, no pooling head
    (LLaVA-KD reads a hidden layer, never the pooled output)."""
    sd = _unprefix(sd, "vision_model.")
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def read_upstream(src: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Return (TinyLLaVA config dict, {"llm", "vision", "connector"} state dicts, keys normalised:
    LLM ``model.*`` / ``lm_head.weight``, vision as transformers' ``SiglipVisionModel`` now names
    them, connector ``0.*`` / ``2.*``)."""
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise LlavaKDError(f"{src}: no config.json; not a TinyLLaVA / LLaVA-KD checkpoint")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise LlavaKDError(f"{cfg_path}: malformed JSON ({err})") from err
    missing = [k for k in ("text_config", "vision_config") if not isinstance(cfg.get(k), dict)]
    if missing:
        raise LlavaKDError(f"{cfg_path}: missing {missing}; not a TinyLLaVA config")
    connector = cfg.get("connector_type", "mlp2x_gelu")
    if connector != "mlp2x_gelu":
        raise LlavaKDError(f"{cfg_path}: connector_type {connector!r} is not supported (only mlp2x_gelu)")
    aspect = cfg.get("image_aspect_ratio", "square")
    if aspect != "square":
        raise LlavaKDError(f"{cfg_path}: image_aspect_ratio {aspect!r} is not supported: a LlavaProcessor "
                           "resizes straight to the tower's resolution ('square'), as LLaVA-KD does")

    if (src / "language_model").is_dir():
        parts = {
            "llm": _read_weights(src / "language_model"),
            "vision": _unprefix(_read_weights(src / "vision_tower"), "_vision_tower."),
            "connector": _unprefix(_read_weights(src / "connector"), "_connector."),
        }
    else:
        sd = _read_weights(src)
        known = ("language_model.", "vision_tower._vision_tower.", "connector._connector.")
        stray = sorted(k for k in sd if not k.startswith(known))
        if stray:
            raise LlavaKDError(f"{src}: unexpected weights {stray[:8]} (not LLM / vision tower / connector)")
        parts = {"llm": _strip(sd, known[0]), "vision": _strip(sd, known[1]), "connector": _strip(sd, known[2])}
    parts["vision"] = _vision_keys(parts["vision"])
    for name, part in parts.items():
        if not part:
            raise LlavaKDError(f"{src}: no {name} weights found")
    return cfg, parts


def convert_upstream(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    image_processor: str | Path | None = None,
    dtype: str | None = None,
):
    """Convert SRC; return (model, processor). Writes DST when given."""
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        LlavaForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from llavakd.model.build import DTYPES, IMAGE_BACKEND, save_llava, siglip_image_processor

    src = Path(src)
    if not src.is_dir():
        raise LlavaKDError(f"upstream checkpoint {src} does not exist or is not a folder")
    cfg, parts = read_upstream(src)
    tcfg = dict(cfg["text_config"])
    if tcfg.get("model_type") not in ("qwen2", None):
        raise LlavaKDError(f"{src}: LLM model_type {tcfg.get('model_type')!r} is not supported (qwen2)")
    text_config = Qwen2Config(**{k: v for k, v in tcfg.items() if k != "model_type"})
    vcfg = {k: v for k, v in cfg["vision_config"].items() if k != "model_type"}
    # the pooling head (in SigLIP's config by default) is never used by LLaVA: built without it, its weights dropped
    vision_config = SiglipVisionConfig(**{**vcfg, "vision_use_head": False})
    strategy = _STRATEGY.get(cfg.get("vision_feature_select_strategy", "patch"))
    if strategy is None:
        raise LlavaKDError(f"{src}: unknown vision_feature_select_strategy {cfg['vision_feature_select_strategy']!r}")
    layer = int(cfg.get("vision_feature_layer", -2))

    tok_src = resolve(tokenizer, "tokenizer") if tokenizer else None
    if tok_src is None:
        if (src / "tokenizer_config.json").exists() or (src / "tokenizer.json").exists():
            tok_src = resolve(src, "tokenizer")
        else:
            raise LlavaKDError(f"{src}: ships no tokenizer; pass --tokenizer (the LLM's, e.g. Qwen/Qwen1.5-0.5B)")
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(tok_src.ref, **tok_src.kwargs), tok_src.ref)
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)

    if image_processor:
        ip_src = resolve(image_processor, "image processor")
        ip = AutoImageProcessor.from_pretrained(ip_src.ref, backend=IMAGE_BACKEND, **ip_src.kwargs)
    elif (src / "preprocessor_config.json").exists():
        ip = AutoImageProcessor.from_pretrained(str(src), backend=IMAGE_BACKEND, local_files_only=True)
    else:
        ip = siglip_image_processor(vision_config.image_size)
    ip.size = {"height": vision_config.image_size, "width": vision_config.image_size}

    config = llava_config(vision_config, text_config, image_token_id, strategy, layer)
    if image_token_id >= text_config.vocab_size:
        raise LlavaKDError(
            f"{src}: tokenizer has {len(tok)} tokens with {IMAGE_TOKEN} at id {image_token_id}, beyond "
            f"the LLM's {text_config.vocab_size} embeddings"
        )
    model = LlavaForConditionalGeneration(config)
    init_projector(model, 0)  # overwritten below; keeps construction deterministic
    conn = parts["connector"]
    mapped = {
        **{f"model.language_model.{k[len('model.'):]}": v for k, v in parts["llm"].items() if k.startswith("model.")},
        **{f"model.vision_tower.{k}": v for k, v in parts["vision"].items()},
    }
    head = parts["llm"].get("lm_head.weight")
    if head is not None and config.tie_word_embeddings:
        # a tied head saved beside the embeddings (torch.save keeps both names): it must be the same matrix
        emb = parts["llm"].get("model.embed_tokens.weight")
        if emb is not None and not torch.equal(head, emb):
            raise LlavaKDError(f"{src}: text_config ties the LM head to the embeddings, but lm_head.weight "
                               "differs from model.embed_tokens.weight")
    elif head is not None:
        mapped["lm_head.weight"] = head
    for lin, idx in _PROJECTOR_INDEX.items():
        for p in ("weight", "bias"):
            if f"{idx}.{p}" in conn:
                mapped[f"model.multi_modal_projector.{lin}.{p}"] = conn[f"{idx}.{p}"]
    unknown_llm = sorted(k for k in parts["llm"] if not k.startswith("model.") and k != "lm_head.weight")
    unknown_conn = sorted(k for k in conn if k.split(".")[0] not in ("0", "2"))
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k == "lm_head.weight")]
    problems = []
    if missing:
        problems.append(f"missing weights {missing[:8]}")
    if result.unexpected_keys or unknown_llm or unknown_conn:
        problems.append(f"unexpected weights {(result.unexpected_keys + unknown_llm + unknown_conn)[:8]}")
    if problems:
        raise LlavaKDError(f"{src}: " + "; ".join(problems))
    if config.tie_word_embeddings:
        model.tie_weights()
    if dtype:
        model = model.to(DTYPES[dtype])
    model.eval()
    processor = make_processor(ip, tok, vision_config.patch_size, strategy)
    if dst is not None:
        save_llava(model, processor, dst, {"converted_from": str(src), "tokenizer": tok_src.ref})
    return model, processor



def upstream_state_dict(model) -> dict[str, torch.Tensor]:
    """Our LLaVA's weights named as TinyLLaVA_Factory saves a whole model (single-file layout), with
    SigLIP's ``vision_model.`` level as the transformers versions upstream used write it; a tied LM
    head is left out, as ``save_pretrained`` does."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            out[f"language_model.model.{k[len('model.language_model.'):]}"] = v
        elif k.startswith("model.vision_tower."):
            out[f"vision_tower._vision_tower.vision_model.{k[len('model.vision_tower.'):]}"] = v
        elif k.startswith("model.multi_modal_projector."):
            lin, p = k[len("model.multi_modal_projector."):].split(".")
            out[f"connector._connector.{_PROJECTOR_INDEX[lin]}.{p}"] = v
        elif k == "lm_head.weight":
            if not model.config.tie_word_embeddings:
                out["language_model.lm_head.weight"] = v
        else:
            raise LlavaKDError(f"export-upstream: weight {k} has no place in upstream's layout")
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def upstream_config(model, provenance: dict | None = None) -> dict:
    """A TinyLlavaConfig-shaped ``config.json`` for our LLaVA (phi conversation template, square images)."""
    cfg = model.config
    strategy = _UPSTREAM_STRATEGY.get(cfg.vision_feature_select_strategy)
    if strategy is None:
        raise LlavaKDError(f"export-upstream: vision_feature_select_strategy {cfg.vision_feature_select_strategy!r} "
                           "has no upstream equivalent")
    text, vision = cfg.text_config.to_dict(), cfg.vision_config.to_dict()
    provenance = provenance or {}
    return {
        "architectures": ["TinyLlavaForConditionalGeneration"], "model_type": "tinyllava",
        "llm_model_name_or_path": provenance.get("llm", text.get("_name_or_path", "")),
        "vision_model_name_or_path": provenance.get("vision", vision.get("_name_or_path", "")),
        "tokenizer_name_or_path": provenance.get("tokenizer", provenance.get("llm", "")),
        "connector_type": "mlp2x_gelu", "conv_version": "phi", "image_aspect_ratio": "square",
        "vision_feature_layer": int(cfg.vision_feature_layer), "vision_feature_select_strategy": strategy,
        "tokenizer_padding_side": "right", "tokenizer_model_max_length": 2048,
        "hidden_size": text["hidden_size"], "vocab_size": text["vocab_size"],
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "text_config": text, "vision_config": {**vision, "model_type": "siglip_vision_model"},
    }


def export_upstream(model_dir: str | Path, dst: str | Path) -> Path:
    """Write our HF LLaVA at ``model_dir`` as a TinyLLaVA-style single-file checkpoint in ``dst``
    (weights, config, tokenizer, image processor), so upstream's own scripts can score it."""
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    from llavakd.model.build import load_processor

    model_dir, dst = Path(model_dir), Path(dst)
    if not (model_dir / "config.json").is_file():
        raise LlavaKDError(f"{model_dir}: not a checkpoint folder (no config.json)")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
    processor = load_processor(model_dir, local_files_only=True)
    prov_path = model_dir / "llavakd.json"
    provenance = json.loads(prov_path.read_text()).get("built_from", {}) if prov_path.is_file() else {}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(upstream_state_dict(model), str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(upstream_config(model, provenance), indent=2, sort_keys=True) + "\n")
    processor.tokenizer.save_pretrained(dst)
    processor.image_processor.save_pretrained(dst)
    return dst
