"""Template layouts: ids and labels against hand-written expectations and the HF processor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llavakd.data.templates import Encoder, TemplateError
from llavakd.labels import IGNORE_INDEX as IGNORE
from llavakd.model.chat import SYSTEM_PROMPT


@pytest.fixture(scope="module")
def processor(tiny_student):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_student)


@pytest.fixture(scope="module")
def enc(processor):
    return Encoder(processor.tokenizer, n_image_tokens=16, max_length=2048)


def _pieces(tok, ids, labels):
    """Split into runs of (decoded text, supervised?)."""
    runs, cur, sup = [], [], None
    for i, lab in zip(ids, labels):
        s = lab != IGNORE
        if sup is not None and s != sup:
            runs.append((tok.decode(cur), sup))
            cur = []
        cur.append(i)
        sup = s
    runs.append((tok.decode(cur), sup))
    return runs


def test_pretrain_layout(enc, processor):
    out = enc.pretrain("a red circle at top left .")
    tok = processor.tokenizer
    assert out.input_ids[:16] == [enc.image_id] * 16
    assert out.labels[:16] == [IGNORE] * 16
    assert out.labels[16:] == out.input_ids[16:]
    assert tok.decode(out.input_ids[16:]) == "a red circle at top left .\n"


def test_chat_layout_single_turn(enc, processor):
    out = enc.chat([("what color is the circle ?", "red")], with_image=True)
    tok = processor.tokenizer
    img = "<image>" * 16
    assert _pieces(tok, out.input_ids, out.labels) == [
        (f"{SYSTEM_PROMPT} USER: {img}\nwhat color is the circle ? ASSISTANT:", False),
        (" red<|endoftext|>", True),
    ]


def test_chat_layout_multi_turn_and_text_only(enc, processor):
    tok = processor.tokenizer
    out = enc.chat([("q one ?", "yes"), ("q two ?", "no")], with_image=False)
    assert _pieces(tok, out.input_ids, out.labels) == [
        (f"{SYSTEM_PROMPT} USER: q one ? ASSISTANT:", False),
        (" yes<|endoftext|>", True),
        (" USER: q two ? ASSISTANT:", False),
        (" no<|endoftext|>", True),
    ]
    assert enc.image_id not in out.input_ids


def test_chat_ids_equal_the_processor_on_the_rendered_template(enc, processor):
    turns = [("what shape is red ?", "circle"), ("how many shapes are there ?", "two")]
    msgs = []
    for k, (q, a) in enumerate(turns):
        content = ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": q}]
        msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": a}]}]
    text = processor.apply_chat_template(msgs)
    img = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    ref = processor(text=text, images=img, return_tensors="pt")["input_ids"][0].tolist()
    assert enc.chat(turns, with_image=True).input_ids == ref


def test_truncation_keeps_the_image(processor):
    enc = Encoder(processor.tokenizer, n_image_tokens=16, max_length=60)
    long = [("what color is the circle ?", "red " * 30)]
    out = enc.chat(long, with_image=True)
    assert out.truncated and len(out.input_ids) == 60
    assert out.input_ids.count(enc.image_id) == 16


def test_sample_that_cannot_fit(processor):
    enc = Encoder(processor.tokenizer, n_image_tokens=16, max_length=20)
    with pytest.raises(TemplateError, match="image does not fit max_length 20"):
        enc.chat([("q", "a")], with_image=True)
    enc = Encoder(processor.tokenizer, n_image_tokens=16, max_length=55)
    with pytest.raises(TemplateError, match="no supervised token left"):
        enc.chat([("what color is the circle ? " * 3, "red")], with_image=True)
