"""The tiny world's tokenizers: byte-level BPE trained offline on the world's words, one per style.

Torch-free up to ``build_tokenizer`` (which wraps the trained BPE in transformers' fast tokenizer): the
dry run trains the BPE to name a tiny tokenizer's size without importing transformers.
"""

from __future__ import annotations

import functools

from llavakd.errors import UnknownNameError
from llavakd.model.chat import END_TOKEN, IMAGE_TOKEN, SYSTEM_PROMPT, template
from llavakd.tiny.family import KINDS, TINY_VOCAB

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


def style_of(style: str) -> dict:
    if style not in TOKENIZER_STYLES:
        raise UnknownNameError(f"unknown tokenizer style {style!r}; known: {sorted(TOKENIZER_STYLES)}")
    return TOKENIZER_STYLES[style]


def train_bpe(vocab_size: int = TINY_VOCAB, style: str = "qwen"):
    """The style's BPE (a ``tokenizers.Tokenizer``), trained on ``tiny_corpus``: deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = style_of(style)
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
    if spec.get("bos"):
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


@functools.lru_cache(maxsize=None)
def tiny_vocab_size(style: str) -> int:
    """Tokens of a style's tiny tokenizer (the dry run names it)."""
    return train_bpe(style=style).get_vocab_size()


def build_tokenizer(vocab_size: int = TINY_VOCAB, style: str = "qwen"):
    """A byte-level BPE tokenizer trained offline on ``tiny_corpus`` (deterministic), with the special
    tokens of a tokenizer ``style`` (a Llama-3 style one adds ``<|begin_of_text|>`` when asked to add
    special tokens, as Llama-3's does)."""
    from transformers import PreTrainedTokenizerFast

    spec = style_of(style)
    end = spec["specials"][0]
    tok = train_bpe(vocab_size, style)
    extra = {}
    if spec.get("bos"):
        extra["bos_token"] = spec["bos"]
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


def catalogue() -> dict[str, dict]:
    """{tiny LLM: its tokenizer (style, special tokens, size, template), its shape (``config``) and the tiny
    tower's (``vision``)}: what the workflow hands the planner
    (``Study.load(tiny_llms=...)``), which never imports the tiny world itself."""
    from llavakd.tiny.family import VISION, llm_config_dict

    return {name: {"style": style, "specials": TOKENIZER_STYLES[style]["specials"], "tokens": tiny_vocab_size(style),
                   "template": TOKENIZER_STYLES[style]["template"],
                   "config": llm_config_dict(name, tiny_vocab_size(style)), "vision": dict(VISION)}
            for name, (_, style) in KINDS.items()}
