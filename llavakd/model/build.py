"""Assemble a LLaVA-KD model (SigLIP + mlp2x_gelu projector + Qwen) as a plain HF checkpoint.

    llavakd build --vision google/siglip-so400m-patch14-384 --llm Qwen/Qwen1.5-0.5B --out DIR
    llavakd build --vision tiny/vision-siglip --llm tiny/llm-q15-0.5b --out DIR   # tiny, CPU

The result is a ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder: plain
``transformers`` loads it back, with no code of ours installed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llavakd.errors import LlavaKDError
from llavakd.model.chat import DEFAULT_TEMPLATE, IMAGE_TOKEN, Template, template
from llavakd.model.shapes import FAMILIES, PAPER_IMAGE_TOKENS, image_token_count, vision_shape_from  # noqa: F401

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Source:
    """Where a component comes from: a local folder, or a hub id (network allowed)."""

    ref: str
    local: bool

    @property
    def kwargs(self) -> dict[str, Any]:
        # Local folders never touch the network; nothing runs code from a checkpoint folder.
        return {"local_files_only": True} if self.local else {}


def resolve(ref: str | Path, what: str) -> Source:
    """Turn a path or hub id into a Source, or raise an error naming ``what`` and the path."""
    ref = str(ref)
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LlavaKDError(f"{what}: {ref} is a file, expected a checkpoint folder")
        if not (path / "config.json").exists():
            raise LlavaKDError(f"{what}: {ref} has no config.json; is it a Hugging Face checkpoint?")
        return Source(str(path), True)
    if _HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return Source(ref, False)
    raise LlavaKDError(f"{what}: {ref} does not exist (and is not a hub id like 'org/name')")


def _load_vision(src: Source, dtype: torch.dtype):
    from transformers import AutoConfig, SiglipVisionModel

    cfg = AutoConfig.from_pretrained(src.ref, **src.kwargs)
    vision_shape_from(cfg.to_dict(), f"vision tower {src.ref}")  # NaFlex SigLIP2 refused, saying why
    vision_cfg = getattr(cfg, "vision_config", cfg)
    if vision_cfg.model_type != "siglip_vision_model":
        raise LlavaKDError(
            f"vision tower {src.ref}: model_type {cfg.model_type!r} is not SigLIP "
            "(expected 'siglip' or 'siglip_vision_model')"
        )
    model = SiglipVisionModel.from_pretrained(src.ref, dtype=dtype, **src.kwargs)
    return model


# Images are preprocessed by the PIL implementation of the image processor: the one the transformers
# versions upstream trained and evaluated with ran. transformers 5 loads the torchvision one by default,
# whose bicubic resize differs by up to 0.09 (on the [-1, 1] scale) on a real image.
IMAGE_BACKEND = "pil"


def load_processor(ref: str | Path, **kwargs):
    """A saved LLaVA's processor (tokenizer + image processor), images preprocessed as upstream did."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(ref, backend=IMAGE_BACKEND, **kwargs)


def _load_image_processor(src: Source, image_size: int):
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(src.ref, backend=IMAGE_BACKEND, **src.kwargs)
    except (OSError, ValueError) as err:
        raise LlavaKDError(f"vision tower {src.ref}: no image processor config ({err})") from err
    # LLaVA-KD resizes straight to the tower's resolution (no pad-to-square, no crop).
    proc.size = {"height": image_size, "width": image_size}
    if hasattr(proc, "do_center_crop"):
        proc.do_center_crop = False
    return proc


def siglip_image_processor(image_size: int):
    """SigLIP's own preprocessing at ``image_size``: bicubic resize, rescale, normalise with mean = std = 0.5."""
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, resample=3,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def _declares_token(folder: str, token: str) -> bool | None:
    """Whether a local tokenizer.json itself holds ``token`` (None: no file to look at).

    Some tokenizer classes (Qwen2Tokenizer) add their default special tokens on load, so the
    loaded vocabulary alone would hide a tokenizer that never had the template's end token.
    """
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).token_to_id(token) is not None


def prepare_tokenizer(tokenizer, where: str, chat: Template | str = DEFAULT_TEMPLATE):
    """Check the template's tokens, add the ``<image>`` token and store the template; returns the tokenizer."""
    chat = template(chat) if isinstance(chat, str) else chat
    chat.check_tokenizer(tokenizer, where, declared=lambda token: _declares_token(where, token))
    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN not in vocab:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = chat.end
    tokenizer.eos_token = chat.end
    tokenizer.chat_template = chat.jinja()
    return tokenizer


def make_processor(image_processor, tokenizer, patch_size: int, strategy: str, chat: Template | str = DEFAULT_TEMPLATE):
    from transformers import LlavaProcessor

    chat = template(chat) if isinstance(chat, str) else chat
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=chat.jinja(),
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=0,  # SigLIP has no CLS token
    )


def llava_config(vision_config, text_config, image_token_id: int, strategy: str, feature_layer: int):
    from transformers import LlavaConfig

    n = image_token_count(vision_config.image_size, vision_config.patch_size, strategy)
    return LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=image_token_id,
        projector_hidden_act="gelu",  # Linear -> GELU -> Linear: mlp2x_gelu
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
        image_seq_length=n,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )


def init_projector(model, seed: int) -> None:
    """A fresh mlp2x_gelu projector, reproducible from ``seed`` (LLaVA's Linear init)."""
    gen = torch.Generator().manual_seed(seed)
    proj = model.model.multi_modal_projector
    for lin in (proj.linear_1, proj.linear_2):
        bound = 1.0 / lin.in_features**0.5
        with torch.no_grad():
            w = torch.empty(lin.weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
            lin.weight.copy_(w.to(lin.weight.dtype))
            if lin.bias is not None:
                b = torch.empty(lin.bias.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
                lin.bias.copy_(b.to(lin.bias.dtype))


def build_llava(
    vision: str | Path,
    llm: str | Path,
    *,
    tokenizer: str | Path | None = None,
    image_tokens: int | None = None,
    strategy: str = "default",
    feature_layer: int = -2,
    dtype: str = "float32",
    seed: int = 1234,
    chat: str = DEFAULT_TEMPLATE,
):
    """Assemble (model, processor) from a SigLIP checkpoint and a causal-LM checkpoint.

    ``image_tokens`` is the visual-token count the caller's configuration expects (728 for the
    paper); a vision tower whose patch grid gives another count is refused. ``chat``: the
    conversation template (llavakd.model.chat.TEMPLATES), stored in the processor.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    if dtype not in DTYPES:
        raise LlavaKDError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    vsrc = resolve(vision, "vision tower")
    lsrc = resolve(llm, "LLM")
    tsrc = resolve(tokenizer, "tokenizer") if tokenizer is not None else lsrc

    tower = _load_vision(vsrc, torch_dtype)
    vcfg = tower.config
    n = image_token_count(vcfg.image_size, vcfg.patch_size, strategy)
    if image_tokens is not None and n != image_tokens:
        grid = vcfg.image_size // vcfg.patch_size
        raise LlavaKDError(
            f"vision tower {vsrc.ref}: a {vcfg.image_size}px image with patch {vcfg.patch_size} "
            f"gives a {grid}x{grid} grid = {n} visual tokens ({strategy!r} strategy), "
            f"but the configuration expects {image_tokens}"
        )
    image_processor = _load_image_processor(vsrc, vcfg.image_size)

    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(tsrc.ref, **tsrc.kwargs), tsrc.ref, chat)
    lm = AutoModelForCausalLM.from_pretrained(lsrc.ref, dtype=torch_dtype, **lsrc.kwargs)
    if lm.config.model_type not in FAMILIES:
        raise LlavaKDError(f"LLM {lsrc.ref}: model_type {lm.config.model_type!r} is not supported; supported: "
                           f"{', '.join(FAMILIES)} (docs/models.md)")
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id >= lm.config.vocab_size:
        lm.resize_token_embeddings(len(tok))

    config = llava_config(vcfg, lm.config, image_token_id, strategy, feature_layer)
    # Construct for real (not on the meta device): non-persistent buffers such as SigLIP's
    # position ids and the rotary inv_freq are not in any state dict and must be initialised.
    model = LlavaForConditionalGeneration._from_config(config, dtype=torch_dtype)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(lm.lm_head.state_dict(), strict=True)
    init_projector(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    check_tied(model, f"built from {lsrc.ref}")
    model.eval()
    processor = make_processor(image_processor, tok, vcfg.patch_size, strategy, chat)
    provenance = {"vision": vsrc.ref, "llm": lsrc.ref, "tokenizer": tsrc.ref, "seed": seed, "dtype": dtype}
    if chat != DEFAULT_TEMPLATE:  # (unset: the provenance of a phi build is what it was before templates)
        provenance["template"] = chat
        end_id = tok.convert_tokens_to_ids(template(chat).end)
        model.generation_config.eos_token_id = end_id  # plain generate() stops at the end of the turn
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor, provenance


def check_tied(model, where: str) -> None:
    """A model whose config ties its head must hold one tensor for the input embeddings and the LM
    head (transformers 5 reads the tie from the outer config, and has had regressions there: an
    untied copy would train a second head silently)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) or \
        bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    if not tied:
        return
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if head.data_ptr() != embed.data_ptr() or head.shape != embed.shape:
        raise LlavaKDError(f"{where}: its config ties the LM head to the input embeddings, but they are two tensors "
                           f"(tie_word_embeddings outer={getattr(model.config, 'tie_word_embeddings', None)}, text="
                           f"{getattr(model.config.get_text_config(), 'tie_word_embeddings', None)})")


def save_llava(model, processor, out: str | Path, provenance: dict | None = None) -> Path:
    """``save_pretrained`` both halves, then write ``llavakd.json`` (provenance) last."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "llavakd.json").write_text(json.dumps({"built_from": provenance or {}}, indent=2) + "\n")
    return out


def check_same_vocab(teacher_dir: str | Path, student_dir: str | Path) -> None:
    """Distillation compares logits index by index: both tokenizers must be identical."""
    from transformers import AutoConfig, AutoTokenizer

    tsrc, ssrc = resolve(teacher_dir, "teacher"), resolve(student_dir, "student")
    tv = AutoTokenizer.from_pretrained(tsrc.ref, **tsrc.kwargs).get_vocab()
    sv = AutoTokenizer.from_pretrained(ssrc.ref, **ssrc.kwargs).get_vocab()
    if tv != sv:
        only_t = sorted(set(tv) - set(sv))[:5]
        only_s = sorted(set(sv) - set(tv))[:5]
        moved = sorted(k for k in set(tv) & set(sv) if tv[k] != sv[k])[:5]
        raise LlavaKDError(
            f"teacher {tsrc.ref} and student {ssrc.ref} have different vocabularies "
            f"({len(tv)} vs {len(sv)} tokens; only in teacher: {only_t}; only in student: {only_s}; "
            f"different ids: {moved}); the KL is taken index by index, so they must share one tokenizer"
        )
    tvs = _text_vocab_size(AutoConfig.from_pretrained(tsrc.ref, **tsrc.kwargs))
    svs = _text_vocab_size(AutoConfig.from_pretrained(ssrc.ref, **ssrc.kwargs))
    if tvs != svs:
        raise LlavaKDError(
            f"teacher {tsrc.ref} has {tvs} output logits but student {ssrc.ref} has {svs}; "
            "they must be equal for the distillation losses"
        )


def _text_vocab_size(cfg) -> int:
    return getattr(cfg, "text_config", cfg).vocab_size
