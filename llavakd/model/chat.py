"""Conversation templates by LLM family, one home; and LLaVA-1.5's prompt suffixes.

Every template is one ``Template`` here, from which three things are generated: the training layout
(``segments``: what is prompt and what is supervised, for llavakd.data.templates), the generation
prompt (``prompt``: evaluation, agreement, on-policy sampling), and the Jinja chat template stored in
every saved processor, so that ``apply_chat_template`` in plain transformers renders what training saw
(its ``{% generation %}`` blocks mark the supervised spans: ``return_assistant_tokens_mask=True``
gives the training label mask; tests/test_chat_templates.py checks the two token by token).

Templates (``TEMPLATES``; a study picks one per family, ``families.<name>.template``):

- ``phi`` (the default, the paper's Qwen1.5/Qwen2.5 configs): LLaVA-KD's phi style,
  ``SYSTEM USER: <image>\\nq ASSISTANT: a<|endoftext|>``;
- ``chatml`` (Qwen2.5, SmolLM2): ``<|im_start|>role\\n...<|im_end|>\\n``;
- ``qwen3``: ChatML, and Qwen3's empty ``<think>\\n\\n</think>\\n\\n`` block in the last assistant turn,
  as Qwen3's own template renders a turn without reasoning (its non-thinking mode); the block is
  part of the prompt, not supervised, and every generation prompt ends with it;
  ``qwen3-think`` supervises it (the student learns to emit the empty block itself);
- ``llama3``: Llama-3's header format, ``<|begin_of_text|>``, ``<|start_header_id|>role
  <|end_header_id|>\\n\\n...<|eot_id|>``.

Labels supervise the assistant's answer and its end-of-turn token, in every template; what follows
the end token (ChatML's newline) is not supervised. The system prompt is LLaVA's in every template
(the data's; a family's own default system prompt is not used).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from llavakd.errors import LlavaKDError, UnknownNameError

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_TOKEN = "<image>"

# LLaVA-1.5's instructions appended to a question (its training data and evaluation prompts).
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
LETTER_CN = "\n请直接回答选项字母。"
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."


@dataclass(frozen=True)
class Template:
    """One conversation format. A rendered conversation is: ``bos``, the system turn
    (``system_prefix`` + text + ``system_suffix``), then per turn ``user_prefix`` + [``<image>\\n``] +
    question + ``user_suffix`` + ``assistant_prefix`` [+ ``think`` in the last turn] + ``answer_lead`` +
    answer + ``end`` + ``after_end``."""

    name: str
    end: str
    """The end-of-turn token: supervised after every answer, the stop token of generation."""
    user_prefix: str
    assistant_prefix: str
    system_prefix: str = ""
    system_suffix: str = ""
    user_suffix: str = ""
    answer_lead: str = ""
    """Supervised text before the answer (phi's space after 'ASSISTANT:')."""
    after_end: str = ""
    """Unsupervised text after the end token (ChatML's newline)."""
    bos: str = ""
    think: str = ""
    """Qwen3's empty reasoning block, in the last assistant turn and in the generation prompt."""
    supervise_think: bool = False
    family: str = ""
    """Who uses it (docs)."""

    @property
    def tokens(self) -> tuple[str, ...]:
        """The special tokens the template writes (a tokenizer must hold each as one token)."""
        found = [self.end]
        for text in (self.bos, self.system_prefix, self.system_suffix, self.user_prefix, self.user_suffix,
                     self.assistant_prefix, self.think):
            found += [t for t in _special_pieces(text) if t not in found]
        return tuple(found)

    # -- training layout --------------------------------------------------------------------------
    def segments(self, turns: list[tuple[str, str]], with_image: bool, system: str = SYSTEM_PROMPT
                 ) -> list[tuple[str, bool]]:
        """The conversation as (text, supervised) pieces, in order."""
        out = [(self.bos + self.system_prefix + system + self.system_suffix, False)]
        for k, (question, answer) in enumerate(turns):
            image = IMAGE_TOKEN + "\n" if (k == 0 and with_image) else ""
            prompt = self.user_prefix + image + question + self.user_suffix + self.assistant_prefix
            think = self.think if k == len(turns) - 1 else ""
            reply = self.answer_lead + answer + self.end
            if self.supervise_think:
                out += [(prompt, False), (think + reply, True)]
            else:
                out += [(prompt + think, False), (reply, True)]
            if self.after_end:
                out.append((self.after_end, False))
        return [(t, s) for t, s in out if t]

    def prompt(self, question: str, *, n_images: int = 1, system: str = SYSTEM_PROMPT) -> str:
        """The generation prompt of one single-turn question (equal to the Jinja template's)."""
        return (self.bos + self.system_prefix + system + self.system_suffix + self.user_prefix
                + (IMAGE_TOKEN + "\n") * n_images + question + self.user_suffix + self.assistant_prefix + self.think)

    # -- the Jinja template stored in the processor -----------------------------------------------
    def jinja(self, generation_tags: bool = True) -> str:
        """The chat template (transformers' message format: content a string or a list of
        ``{"type": "image"}`` / ``{"type": "text", "text": ...}``; an image renders as ``<image>\\n``
        before the user's text, as in LLaVA-1.5). ``generation_tags``: mark the supervised spans."""
        gen, endgen = ("{%- generation -%}", "{%- endgeneration -%}") if generation_tags else ("", "")
        think_prompt = _lit(self.think)
        reply = _lit(self.answer_lead) + _content_text("m") + _lit(self.end)
        if self.think:  # Qwen3: in the last assistant turn only
            think = "{%- if loop.last -%}" + think_prompt + "{%- endif -%}"
            turn = (gen + think + reply + endgen) if self.supervise_think else (think + gen + reply + endgen)
            assistant = _lit(self.assistant_prefix) + turn
        elif generation_tags:
            assistant = _lit(self.assistant_prefix) + gen + reply + endgen
        else:  # one literal for the prefix and the lead: the form processors saved before the tags had
            assistant = _lit(self.assistant_prefix + self.answer_lead) + _content_text("m") + _lit(self.end)
        return (
            "{%- set ns = namespace(system='" + _esc(SYSTEM_PROMPT) + "') -%}"
            "{%- for m in messages if m['role'] == 'system' -%}"
            "{%- set ns.system = (m['content'] if m['content'] is string "
            "else m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')) -%}"
            "{%- endfor -%}"
            + _lit(self.bos) + _lit(self.system_prefix) + "{{- ns.system -}}" + _lit(self.system_suffix) +
            "{%- for m in messages if m['role'] != 'system' -%}"
            "{%- if m['role'] == 'user' -%}"
            + _lit(self.user_prefix) +
            "{%- if m['content'] is string -%}{{- m['content'] -}}"
            "{%- else -%}"
            "{%- for c in m['content'] if c['type'] == 'image' -%}{{- '" + IMAGE_TOKEN + "\\n' -}}{%- endfor -%}"
            "{%- for c in m['content'] if c['type'] == 'text' -%}{{- c['text'] -}}{%- endfor -%}"
            "{%- endif -%}"
            + _lit(self.user_suffix) +
            "{%- elif m['role'] == 'assistant' -%}"
            + assistant + _lit(self.after_end) +
            "{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}" + _lit(self.assistant_prefix) + think_prompt + "{%- endif -%}"
        )

    def recognises(self, chat_template: str | None) -> bool:
        return chat_template in (self.jinja(True), self.jinja(False))

    # -- a tokenizer for it ----------------------------------------------------------------------
    def check_tokenizer(self, tokenizer, where: str, declared=None) -> None:
        """Refuse a tokenizer that lacks one of the template's tokens as a single token, in one line
        naming the tokenizer, the template and the token. ``declared(token)``: whether the tokenizer's
        own file holds it (None: unknown), for classes that add default tokens on load."""
        vocab = tokenizer.get_vocab()
        for token in self.tokens:
            if token not in vocab or (declared is not None and declared(token) is False):
                what = "end-of-turn token" if token == self.end else "token"
                raise LlavaKDError(
                    f"tokenizer of {where}: has no {token!r}, the {what} of the {self.name!r} chat template; "
                    f"pick the template of its family ({', '.join(f'{t.name}: {t.family}' for t in TEMPLATES.values())})")


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def _lit(text: str) -> str:
    return "{{- '" + _esc(text) + "' -}}" if text else ""


def _content_text(var: str) -> str:
    return ("{%- if " + var + "['content'] is string -%}{{- " + var + "['content'] -}}"
            "{%- else -%}"
            "{%- for c in " + var + "['content'] if c['type'] == 'text' -%}{{- c['text'] -}}{%- endfor -%}"
            "{%- endif -%}")


def _special_pieces(text: str) -> list[str]:
    """The ``<|...|>`` and ``<think>``-style tokens inside a template string."""
    return re.findall(r"<\|[a-z_]+\|>|</?think>", text)


PHI = Template("phi", end="<|endoftext|>", user_prefix=" USER: ", assistant_prefix=" ASSISTANT:", answer_lead=" ",
               family="the paper's Qwen1.5 / Qwen2.5 configs (LLaVA-KD's phi style)")
CHATML = Template("chatml", end="<|im_end|>", system_prefix="<|im_start|>system\n", system_suffix="<|im_end|>\n",
                  user_prefix="<|im_start|>user\n", user_suffix="<|im_end|>\n",
                  assistant_prefix="<|im_start|>assistant\n", after_end="\n", family="Qwen2.5, SmolLM2")
QWEN3 = replace(CHATML, name="qwen3", think="<think>\n\n</think>\n\n", family="Qwen3 (empty think block unsupervised)")
LLAMA3 = Template("llama3", end="<|eot_id|>", bos="<|begin_of_text|>",
                  system_prefix="<|start_header_id|>system<|end_header_id|>\n\n", system_suffix="<|eot_id|>",
                  user_prefix="<|start_header_id|>user<|end_header_id|>\n\n", user_suffix="<|eot_id|>",
                  assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n", family="Llama-3.x")
TEMPLATES: dict[str, Template] = {t.name: t for t in (
    PHI, CHATML, QWEN3, replace(QWEN3, name="qwen3-think", supervise_think=True,
                                family="Qwen3 (empty think block supervised)"), LLAMA3)}
DEFAULT_TEMPLATE = "phi"


def template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UnknownNameError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def template_of(tokenizer_or_processor) -> Template:
    """The template a saved processor (or its tokenizer) was built with, recognised by its chat template."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    found = getattr(tok, "chat_template", None) or getattr(tokenizer_or_processor, "chat_template", None)
    for t in TEMPLATES.values():
        if t.recognises(found):
            return t
    where = getattr(tok, "name_or_path", "") or "the tokenizer"
    raise LlavaKDError(f"{where}: its chat template is none of llavakd's ({', '.join(TEMPLATES)}); "
                       "build the model with `llavakd build --template NAME`")


# The paper's template's end token: the tiny world's original tokenizer, which only ever speaks phi.
END_TOKEN = PHI.end


def render_prompt(question: str, *, n_images: int = 1, system: str = SYSTEM_PROMPT, chat: Template = PHI) -> str:
    """The generation prompt of one single-turn question in ``chat`` (the paper's phi by default)."""
    return chat.prompt(question, n_images=n_images, system=system)


def encode_prompt(processor, question: str, images: list | None = None, *, system: str = SYSTEM_PROMPT):
    """A single-turn generation prompt in the processor's own template, encoded (tensors), images
    included. The template writes its own special tokens (Llama-3's ``<|begin_of_text|>``), so the
    tokenizer adds none."""
    chat = template_of(processor)
    text = chat.prompt(question, n_images=len(images or []), system=system)
    return processor(text=text, images=images or None, return_tensors="pt", add_special_tokens=False)


def end_id(tokenizer_or_processor) -> int:
    """The id of the end-of-turn token of the processor's template (generation stops there)."""
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    return tok.convert_tokens_to_ids(template_of(tok).end)
