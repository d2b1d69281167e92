"""The tiny model family on disk: a vision tower, a tokenizer and the LLMs of ``family``.

    llavakd tiny-models --out results/tiny/components --seed 0

writes, with no network:
    vision/siglip/          SiglipVisionModel + SiglipImageProcessor (32px, patch 8 -> 16 tokens)
    llm/<name>/             a causal LM (Qwen2, Qwen3 or Llama: family.KINDS) + tokenizer, one folder per LLM
    manifest.json           the components and the teacher -> student pairs

The LLMs of a tokenizer style share one byte-level BPE tokenizer (the Qwen2-type ones: ``<|endoftext|>``,
``<image>`` and the phi template; Qwen3's: ChatML and think tokens; Llama's: Llama-3's header tokens), so
the real build path (``llavakd build``) assembles them exactly as it assembles hub checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llavakd.errors import UnknownNameError
from llavakd.model.build import siglip_image_processor
from llavakd.tiny.family import KINDS, LLMS, PAIRS, TINY_IMAGE_SIZE, VISION, padded_vocab
from llavakd.tiny.tokenizer import build_tokenizer, tiny_corpus  # noqa: F401  (tiny_corpus: re-exported)


def tiny_vision_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**VISION)


def tiny_image_processor():
    return siglip_image_processor(TINY_IMAGE_SIZE)


def tiny_llm_config(name: str, vocab_size: int, eos_id: int, bos_id: int | None = None):
    import transformers

    from llavakd.model.shapes import family

    if name not in LLMS:
        raise UnknownNameError(f"unknown tiny LLM {name!r}; known: {sorted(LLMS)}")
    cls = getattr(transformers, family(KINDS[name][0]).config_class)
    return cls(
        vocab_size=vocab_size, max_position_embeddings=2048, rope_theta=10000.0,
        bos_token_id=eos_id if bos_id is None else bos_id, eos_token_id=eos_id, pad_token_id=eos_id, **LLMS[name],
    )


def _seed_for(seed: int, name: str) -> int:
    # A stable per-component seed (Python's hash() is salted per process).
    return (seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))) % 2**31


def write_tiny_components(out: str | Path, seed: int = 0, llms: list[str] | None = None,
                          train_vision=None, train_llm=None) -> dict:
    """Write the tiny vision tower, tokenizer and LLMs as component checkpoints under ``out``.

    ``train_vision(tower)`` and ``train_llm(name, lm, tokenizer)`` (optional) train a component in
    place before it is saved and return a dict that goes into the manifest; the CLI passes the
    synthetic-world pre-training here, so this module needs no data code.
    """
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    out = Path(out)
    names = llms or list(LLMS)
    unknown = [n for n in names if n not in LLMS]
    if unknown:
        raise UnknownNameError(f"unknown tiny LLM(s) {unknown}; known: {sorted(LLMS)}")
    tokenizers = {}

    vdir = out / "vision" / "siglip"
    torch.manual_seed(_seed_for(seed, "vision"))
    tower = SiglipVisionModel(tiny_vision_config())
    manifest = {"seed": seed, "vision": str(vdir.relative_to(out)), "llms": {}, "pairs": {},
                "pretrained_on_world": train_vision is not None}
    if train_vision is not None:
        manifest["vision_pretraining"] = train_vision(tower)
    tower.save_pretrained(vdir)
    tiny_image_processor().save_pretrained(vdir)

    for name in names:
        style = KINDS[name][1]
        if style not in tokenizers:
            tokenizers[style] = build_tokenizer(style=style)
        tok = tokenizers[style]
        torch.manual_seed(_seed_for(seed, name))
        lm = AutoModelForCausalLM.from_config(tiny_llm_config(name, padded_vocab(len(tok)), tok.eos_token_id,
                                                              tok.bos_token_id))
        report = train_llm(name, lm, tok) if train_llm is not None else None
        ldir = out / "llm" / name
        lm.save_pretrained(ldir)
        tok.save_pretrained(ldir)
        manifest["llms"][name] = {
            "path": str(ldir.relative_to(out)),
            "params": sum(p.numel() for p in lm.parameters()),
        }
        if report is not None:
            manifest["llms"][name]["pretraining"] = report
    manifest["pairs"] = {t: [s for s in ss if s in names] for t, ss in PAIRS.items() if t in names}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
