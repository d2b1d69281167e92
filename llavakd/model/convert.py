"""Convert a TinyLLaVA / upstream LLaVA-KD checkpoint into our plain HF LLaVA checkpoint.

    llavakd convert-upstream path/to/LLaVA-KD-1B out/llava-kd-1b-hf
    llavakd convert-upstream SRC DST --tokenizer Qwen/Qwen1.5-0.5B   # if SRC ships no tokenizer

Two upstream layouts are understood (both written by TinyLLaVA_Factory):
  * split:  ``language_model/`` (a causal LM's weights), ``vision_tower/`` (SigLIP weights, keys
    optionally prefixed ``_vision_tower.``), ``connector/`` (keys ``_connector.0/2.*``);
  * single: ``model.safetensors`` / ``pytorch_model.bin`` (possibly sharded with an index) whose
    keys carry the prefixes ``language_model.``, ``vision_tower._vision_tower.``, ``connector._connector.``.
Its ``config.json`` (a TinyLlavaConfig) gives the LLM and vision configs and the connector type.
Weights are read with ``weights_only`` loading: nothing in SRC is executed.
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


def read_upstream(src: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Return (TinyLLaVA config dict, {"llm", "vision", "connector"} state dicts)."""
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

    if (src / "language_model").is_dir():
        parts = {
            "llm": _read_weights(src / "language_model"),
            "vision": _read_weights(src / "vision_tower"),
            "connector": _read_weights(src / "connector"),
        }
        vis = parts["vision"]
        if any(k.startswith("_vision_tower.") for k in vis):
            parts["vision"] = _strip(vis, "_vision_tower.")
        if any(k.startswith("_connector.") for k in parts["connector"]):
            parts["connector"] = _strip(parts["connector"], "_connector.")
    else:
        sd = _read_weights(src)
        parts = {
            "llm": _strip(sd, "language_model."),
            "vision": _strip(sd, "vision_tower._vision_tower."),
            "connector": _strip(sd, "connector._connector."),
        }
        known = ("language_model.", "vision_tower._vision_tower.", "connector._connector.")
        stray = sorted(k for k in sd if not k.startswith(known))
        if stray:
            raise LlavaKDError(f"{src}: unexpected weights {stray[:8]} (not LLM / vision tower / connector)")
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

    from llavakd.model.build import DTYPES, save_llava, siglip_image_processor

    src = Path(src)
    if not src.is_dir():
        raise LlavaKDError(f"upstream checkpoint {src} does not exist or is not a folder")
    cfg, parts = read_upstream(src)
    tcfg = dict(cfg["text_config"])
    if tcfg.get("model_type") not in ("qwen2", None):
        raise LlavaKDError(f"{src}: LLM model_type {tcfg.get('model_type')!r} is not supported (qwen2)")
    text_config = Qwen2Config(**{k: v for k, v in tcfg.items() if k != "model_type"})
    vcfg = {k: v for k, v in cfg["vision_config"].items() if k != "model_type"}
    vision_config = SiglipVisionConfig(**{"vision_use_head": False, **vcfg})
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
        ip = AutoImageProcessor.from_pretrained(ip_src.ref, **ip_src.kwargs)
    elif (src / "preprocessor_config.json").exists():
        ip = AutoImageProcessor.from_pretrained(str(src), local_files_only=True)
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
        **{f"model.vision_tower.{k}": v for k, v in parts["vision"].items() if not k.startswith("head.")},
    }
    if "lm_head.weight" in parts["llm"]:
        mapped["lm_head.weight"] = parts["llm"]["lm_head.weight"]
    for idx, lin in (("0", "linear_1"), ("2", "linear_2")):
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
