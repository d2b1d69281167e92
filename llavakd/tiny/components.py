"""The tiny model family on disk: a vision tower, a tokenizer and the LLMs of ``family``.

    llavakd tiny-models --out results/tiny/components --seed 0

writes, with no network:
    vision/siglip/          SiglipVisionModel + SiglipImageProcessor (32px, patch 8 -> 16 tokens)
    llm/<name>/             Qwen2ForCausalLM + tokenizer, one folder per LLM
    manifest.json           the components and the teacher -> student pairs

All LLMs share one byte-level BPE
tokenizer with ``<|endoftext|>``, ``<image>`` and the chat template, so the real build path
(``llavakd build``) assembles them exactly as it assembles hub checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llavakd.errors import UnknownNameError
from llavakd.model.build import siglip_image_processor
from llavakd.model.chat import END_TOKEN, IMAGE_TOKEN, SYSTEM_PROMPT, template
from llavakd.tiny.family import LLMS, PAIRS, TINY_IMAGE_SIZE, TINY_VOCAB, VISION

# Words of the synthetic world and of the benchmark prompts: what the tokenizer learns merges for.
# Anything else still tokenizes (byte-level BPE), only into more pieces.
WORLD_WORDS = (
    "red green blue yellow purple white black orange gray brown "
    "circle square triangle shape shapes number numbers digit text "
    "top bottom left right center middle at of in on the a an is are there what which where how many "
    "color colour written image picture object objects "
    "zero one two three four five six seven eight nine ten "
    "0 1 2 3 4 5 6 7 8 9 yes no A B C D E "
    "Answer the question using a single word or phrase . , ? : ( ) ' "
    "with option's letter from given choices directly "
    "When provided information is insufficient respond 'Unanswerable' unanswerable "
    "Context Options Hint Question Reference OCR token tokens Please "
    "first second third fourth only and or not"
)


def tiny_corpus() -> list[str]:
    """Deterministic training text for the tokenizer: the template and the world's vocabulary."""
    words = WORLD_WORDS.split()
    lines = [SYSTEM_PROMPT, f"USER: {IMAGE_TOKEN}\nwhat is this? ASSISTANT: a red circle"]
    lines += [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    lines += [f"{a} {b}" for a in words[:40] for b in words[40:80]]
    return lines * 4


# Tokenizer styles: the special tokens (in id order, the base model's end-of-text first) and the
# template of each tiny tokenizer. "qwen" is the tiny world's original (its ids must not move).
TOKENIZER_STYLES = {
    "qwen": dict(specials=(END_TOKEN,), template="phi"),
    "qwen3": dict(specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"), template="qwen3"),
    "llama3": dict(specials=("<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>"), template="llama3", bos="<|begin_of_text|>"),
}


def build_tokenizer(vocab_size: int = TINY_VOCAB, style: str = "qwen"):
    """A byte-level BPE tokenizer trained offline on ``tiny_corpus`` (deterministic), with the special
    tokens of a tokenizer ``style`` (a Llama-3 style one adds ``<|begin_of_text|>`` when asked to add
    special tokens, as Llama-3's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in TOKENIZER_STYLES:
        raise UnknownNameError(f"unknown tokenizer style {style!r}; known: {sorted(TOKENIZER_STYLES)}")
    spec = TOKENIZER_STYLES[style]
    end = spec["specials"][0]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*spec["specials"], IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer)
    extra = {}
    if spec.get("bos"):
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
        extra["bos_token"] = bos
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=end,
        pad_token=end,
        additional_special_tokens=[IMAGE_TOKEN],
        model_max_length=2048,
        padding_side="right",
        **extra,
    )
    # (the original keeps the untagged phi text its files always had; a build stores the tagged one)
    hf.chat_template = template(spec["template"]).jinja(generation_tags=style != "qwen")
    return hf


def _padded_vocab(n_tokens: int, multiple: int = 64) -> int:
    return (n_tokens + multiple - 1) // multiple * multiple


def tiny_vision_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(**VISION)


def tiny_image_processor():
    return siglip_image_processor(TINY_IMAGE_SIZE)


def tiny_llm_config(name: str, vocab_size: int, eos_id: int):
    from transformers import Qwen2Config

    if name not in LLMS:
        raise UnknownNameError(f"unknown tiny LLM {name!r}; known: {sorted(LLMS)}")
    return Qwen2Config(
        vocab_size=vocab_size, max_position_embeddings=2048, rope_theta=10000.0,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, **LLMS[name],
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
    from transformers import Qwen2ForCausalLM, SiglipVisionModel

    out = Path(out)
    names = llms or list(LLMS)
    unknown = [n for n in names if n not in LLMS]
    if unknown:
        raise UnknownNameError(f"unknown tiny LLM(s) {unknown}; known: {sorted(LLMS)}")
    tok = build_tokenizer()
    vocab = _padded_vocab(len(tok))
    eos_id = tok.convert_tokens_to_ids(END_TOKEN)

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
        torch.manual_seed(_seed_for(seed, name))
        lm = Qwen2ForCausalLM(tiny_llm_config(name, vocab, eos_id))
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
