"""Token/label layouts of the two kinds of sample (docs/method.md, "Architecture").

pretrain (PT/DPT):  <image>xN caption "\\n"                 labels: everything but the image
chat (SFT/DFT):     the tokenizer's conversation template (llavakd.model.chat; the paper's phi:
                    SYSTEM " USER: " <image>xN "\\n" q1 " ASSISTANT:" " " a1 <|endoftext|> ...)
                    labels: only the answers and their end-of-turn token

A conversation is rendered whole and tokenized once; a token is supervised when it starts inside a
supervised piece (``Template.segments``), and a token that straddles a prompt/answer boundary is an
error, never a silent half-label. The ids equal the saved processor's ``apply_chat_template`` and the
labels its assistant mask (tests/test_chat_templates.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from llavakd.labels import IGNORE_INDEX
from llavakd.model.chat import IMAGE_TOKEN, SYSTEM_PROMPT, template_of

TEMPLATES = ("pretrain", "chat")


class TemplateError(ValueError):
    """A sample cannot be laid out (e.g. it cannot fit the maximum length)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


class Encoder:
    """Turns (caption | conversation turns) into input ids and labels for one tokenizer."""

    def __init__(self, tokenizer, n_image_tokens: int, max_length: int = 2048):
        self.tok = tokenizer
        self.n_image_tokens = n_image_tokens
        self.max_length = max_length
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.template = template_of(tokenizer)
        self.eos_id = tokenizer.convert_tokens_to_ids(self.template.end)
        if self.image_id is None or self.image_id == tokenizer.unk_token_id:
            raise TemplateError(f"tokenizer has no {IMAGE_TOKEN} token")

    def _ids(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        out: list[int] = []
        for i in ids:  # expand the single <image> token into the visual positions
            out.extend([i] * self.n_image_tokens if i == self.image_id else [i])
        return out

    def pretrain(self, caption: str, with_image: bool = True) -> Encoded:
        image = [self.image_id] * self.n_image_tokens if with_image else []
        text = self._ids(caption.strip() + "\n")
        return self._finish(image + text, [IGNORE_INDEX] * len(image) + text)

    def chat(self, turns: list[tuple[str, str]], with_image: bool, system: str = SYSTEM_PROMPT) -> Encoded:
        pieces = self.template.segments(turns, with_image, system)
        text, spans, at = "", [], 0
        for piece, supervised in pieces:
            spans.append((at, at + len(piece), supervised))
            text += piece
            at += len(piece)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, labels, k = [], [], 0
        for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            while spans[k][1] <= start:
                k += 1
            if end > spans[k][1]:
                raise TemplateError(f"token {self.tok.convert_ids_to_tokens(token)!r} crosses the boundary between "
                                    f"{text[spans[k][0]:spans[k][1]][-20:]!r} and {text[spans[k][1]:][:20]!r} "
                                    f"({self.template.name} template): no clean label mask")
            supervised = spans[k][2]
            for i in ([token] * self.n_image_tokens if token == self.image_id else [token]):
                ids.append(i)
                labels.append(i if supervised else IGNORE_INDEX)
        return self._finish(ids, labels)

    def _finish(self, ids: list[int], labels: list[int]) -> Encoded:
        if len(ids) <= self.max_length:
            return Encoded(ids, labels)
        positions = [i for i, t in enumerate(ids) if t == self.image_id]
        if positions and positions[-1] >= self.max_length:
            raise TemplateError(
                f"{len(ids)} tokens with the image ending at position {positions[-1] + 1}: "
                f"the image does not fit max_length {self.max_length}"
            )
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(x == IGNORE_INDEX for x in labels):
            raise TemplateError(f"no supervised token left within max_length {self.max_length}")
        return Encoded(ids, labels, truncated=True)
