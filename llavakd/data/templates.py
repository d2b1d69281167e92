"""Token/label layouts of the two LLaVA-KD templates (docs/method.md, "Architecture").

pretrain (PT/DPT):  <image>xN caption "\\n"                 labels: everything but the image
chat (SFT/DFT):     SYSTEM " USER: " <image>xN "\\n" q1 " ASSISTANT:" " " a1 <|endoftext|>
                    " USER: " q2 " ASSISTANT:" " " a2 <|endoftext|> ...
                    labels: only the answers and their end token

Pieces are tokenized separately and concatenated; every cut sits where the byte-level
pre-tokenizer splits anyway, so the ids equal tokenizing the rendered chat template (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from llavakd.labels import IGNORE_INDEX
from llavakd.model.chat import ASSISTANT_TAG, END_TOKEN, IMAGE_TOKEN, SYSTEM_PROMPT, USER_TAG

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
        self.eos_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
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
        ids = self._ids(system)
        labels = [IGNORE_INDEX] * len(ids)
        for k, (question, answer) in enumerate(turns):
            image = IMAGE_TOKEN + "\n" if (k == 0 and with_image) else ""
            prompt = self._ids(f"{USER_TAG}{image}{question}{ASSISTANT_TAG}")
            reply = self._ids(" " + answer) + [self.eos_id]
            ids += prompt + reply
            labels += [IGNORE_INDEX] * len(prompt) + reply
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
