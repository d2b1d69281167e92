"""The phi-style conversation template LLaVA-KD uses for Qwen (docs/method.md, "Architecture"), and
LLaVA-1.5's prompt suffixes.

One source of truth for the template text: the data pipeline builds training sequences from
these constants, and the Jinja version below is stored in every saved processor so that
``processor.apply_chat_template`` in plain transformers produces the same prompt.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
USER_TAG = " USER: "
ASSISTANT_TAG = " ASSISTANT:"
END_TOKEN = "<|endoftext|>"
IMAGE_TOKEN = "<image>"

# LLaVA-1.5's instructions appended to a question (its training data and evaluation prompts).
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
LETTER_CN = "\n请直接回答选项字母。"
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."

# Messages follow the transformers convention: {"role": "user"|"assistant"|"system",
# "content": str | [{"type": "image"} | {"type": "text", "text": str}]}.
# An image placeholder renders as "<image>\n" before the user's text, as in LLaVA-1.5.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + SYSTEM_PROMPT.replace("'", "\\'") + "') -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- set ns.system = (m['content'] if m['content'] is string "
    "else m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')) -%}"
    "{%- endfor -%}"
    "{{- ns.system -}}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{- '" + USER_TAG + "' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}"
    "{%- else -%}"
    "{%- for c in m['content'] if c['type'] == 'image' -%}{{- '" + IMAGE_TOKEN + "\\n' -}}{%- endfor -%}"
    "{%- for c in m['content'] if c['type'] == 'text' -%}{{- c['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- '" + ASSISTANT_TAG + " ' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}"
    "{%- else -%}"
    "{%- for c in m['content'] if c['type'] == 'text' -%}{{- c['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '" + END_TOKEN + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + ASSISTANT_TAG + "' -}}{%- endif -%}"
)


def render_prompt(question: str, *, n_images: int = 1, system: str = SYSTEM_PROMPT) -> str:
    """The generation prompt for one single-turn question, identical to the Jinja template's."""
    return f"{system}{USER_TAG}{(IMAGE_TOKEN + chr(10)) * n_images}{question}{ASSISTANT_TAG}"
