"""Conversation templates (llavakd.model.chat): the training label mask against transformers' own
rendering of the template stored in the processor, token by token, for every template."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llavakd.data.templates import Encoder
from llavakd.errors import LlavaKDError
from llavakd.labels import IGNORE_INDEX
from llavakd.model.build import prepare_tokenizer
from llavakd.model.chat import CHATML, PHI, TEMPLATES, Template, template_of
from llavakd.tiny.components import build_tokenizer

STYLE = {"phi": "qwen", "chatml": "qwen3", "qwen3": "qwen3", "qwen3-think": "qwen3", "llama3": "llama3"}
TURNS = [("what color is the circle ?", "red"), ("and the square ?", "blue . two")]


def _tokenizer(name: str):
    return prepare_tokenizer(build_tokenizer(style=STYLE[name]), "tiny-tokenizer", name)


def _messages(turns, with_image: bool) -> list[dict]:
    out = []
    for k, (q, a) in enumerate(turns):
        content = ([{"type": "image"}] if k == 0 and with_image else []) + [{"type": "text", "text": q}]
        out += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]
    return out


def _transformers(tok, turns, with_image):
    out = tok.apply_chat_template(_messages(turns, with_image), tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("turns,with_image", [(TURNS, True), (TURNS[:1], False)])
def test_label_mask_equals_transformers_assistant_mask(name, turns, with_image):
    tok = _tokenizer(name)
    enc = Encoder(tok, n_image_tokens=1).chat(turns, with_image)
    ids, mask = _transformers(tok, turns, with_image)
    assert enc.input_ids == ids
    assert [int(label != IGNORE_INDEX) for label in enc.labels] == mask
    supervised = tok.decode([i for i, m in zip(ids, mask) if m])
    chat = TEMPLATES[name]
    think = chat.think if chat.supervise_think else ""
    assert supervised == "".join(f"{think if k == len(turns) - 1 else ''}{chat.answer_lead}{a}{chat.end}"
                                 for k, (_, a) in enumerate(turns))


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_generation_prompt_equals_transformers_rendering(name):
    tok = _tokenizer(name)
    messages = _messages(TURNS[:1], True)[:1]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == TEMPLATES[name].prompt(TURNS[0][0], n_images=1)
    assert template_of(tok) is TEMPLATES[name]


def test_qwen3_think_block_is_prompt_unless_switched_on():
    """Qwen3's empty think block sits in the last assistant turn only; ``qwen3`` leaves it unsupervised,
    ``qwen3-think`` supervises it; the generation prompt ends with it in both."""
    for name, supervised in (("qwen3", False), ("qwen3-think", True)):
        tok = _tokenizer(name)
        ids, mask = _transformers(tok, TURNS, True)
        think = tok("<think>", add_special_tokens=False)["input_ids"]
        where = [i for i, t in enumerate(ids) if [t] == think]
        assert len(where) == 1 and mask[where[0]] == int(supervised), name
        assert TEMPLATES[name].prompt("q").endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_template_that_disagrees_with_the_stored_one_fails_the_comparison():
    """Negative control: an encoder that also supervised ChatML's newline after <|im_end|> differs
    from transformers' mask of the stored template."""
    tok = _tokenizer("chatml")
    wrong = replace(CHATML, end="<|im_end|>\n", after_end="")
    segments = wrong.segments(TURNS, True)
    text = "".join(t for t, _ in segments)
    ids, mask = _transformers(tok, TURNS, True)
    assert tok(text, add_special_tokens=False)["input_ids"] == ids  # same text ...
    enc = Encoder(tok, n_image_tokens=1)
    enc.template = wrong
    assert [int(x != IGNORE_INDEX) for x in enc.chat(TURNS, True).labels] != mask  # ... another mask


@pytest.mark.parametrize("name,style,token", [("llama3", "qwen", "<|eot_id|>"), ("chatml", "llama3", "<|im_end|>"),
                                              ("phi", "llama3", "<|endoftext|>")])
def test_a_tokenizer_without_the_templates_end_token_is_refused(name, style, token):
    with pytest.raises(LlavaKDError, match=rf"tokenizer of tiny-\w+: has no '{_re(token)}', the end-of-turn token "
                                           rf"of the '{name}' chat template"):
        prepare_tokenizer(build_tokenizer(style=style), f"tiny-{style}", name)


def test_processors_saved_before_generation_tags_are_still_phi():
    assert template_of(build_tokenizer(style="qwen")) is PHI  # the untagged text older processors hold
    tok = build_tokenizer(style="qwen")
    tok.chat_template = "{{ messages }}"
    with pytest.raises(LlavaKDError, match="chat template is none of llavakd's"):
        template_of(tok)
    assert isinstance(PHI, Template)


def _re(text: str) -> str:
    import re

    return re.escape(text)
