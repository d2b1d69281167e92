"""The objective's learnable parts (a term's projector, a head mixer), built from the registry and
kept beside the student while it trains.

    parts = build_parts(cfg, dims_of(student, teacher), seed=0)   # ModuleDict by term name, or None
    attach(student, parts)   # the optimizer, DDP/DeepSpeed, the guard and checkpoints now see them

Attached as a submodule of the student (``PARTS_ATTR``), the parts train exactly as the student's
own weights do: the Trainer builds the optimizer from the model's parameters, DDP and DeepSpeed
reduce their gradients, the non-finite guard checks them, and DeepSpeed saves them with its engine
state. The trainer leaves them out of every saved model file (``is_part_key``) and writes them
beside a checkpoint's weights instead (llavakd.layout.LOSS_PARTS), so the exported student stays a
plain ``LlavaForConditionalGeneration`` that ``from_pretrained`` loads with no unexpected keys.
Each part is initialised from its own seeded stream, so adding one does not move the global random
stream (two methods of a study read the same batches from the same start).
"""

from __future__ import annotations

import zlib

import torch

from llavakd import terms
from llavakd.terms.base import Dims

PARTS_ATTR = "llavakd_loss_parts"  # the student's submodule holding them while it trains


def dims_of(student, teacher) -> Dims:
    """Both LLMs' widths and head counts (a LLaVA or a wrapped one; the student twice without a teacher)."""
    s = _text_config(student)
    t = _text_config(teacher) if teacher is not None else s
    return Dims(student_hidden=s.hidden_size, teacher_hidden=t.hidden_size,
                student_heads=s.num_attention_heads, teacher_heads=t.num_attention_heads)


def _text_config(model):
    cfg = getattr(model, "module", model).config
    return getattr(cfg, "text_config", cfg)


def build_parts(cfg, dims: Dims, seed: int = 0) -> torch.nn.ModuleDict | None:
    """Every enabled term's learnable parts (None when no term has any), each from a stream seeded
    by ``seed`` and the term's name."""
    built = {}
    for name in cfg.enabled():
        spec = terms.spec(name)
        if not spec.has_parts(cfg):
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            built[name] = spec.parts(cfg, dims)
    return torch.nn.ModuleDict(built) if built else None


def attach(model, parts: torch.nn.ModuleDict | None):
    """Hold ``parts`` as the student's submodule, in the dtype and on the device of its LM head, and
    tie them into the student's forward; returns the hook's handle (None without parts).

    The tie: the terms use the parts after the forward, on its hidden states, and DDP (with
    ``find_unused_parameters``, transformers' choice without gradient checkpointing) marks every
    parameter that the forward's outputs do not reach as unused, then fails when its gradient
    arrives in the backward. A hook adds 0 x (one entry of every part's tensor) to the LLM's last
    hidden state in every training forward: the values are unchanged exactly, the parts are in the
    forward's graph, and their gradient is the terms' alone (as ``llavakd.train.trainer.tie_projector``
    does for a projector that a text-only batch never calls)."""
    if parts is None:
        return None
    head = model.get_output_embeddings().weight
    model.add_module(PARTS_ATTR, parts.to(device=head.device, dtype=head.dtype))
    llm = model.model.language_model

    def tie(module, args, output):
        if not torch.is_grad_enabled():
            return output
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        zero = 0.0 * torch.stack([p.reshape(-1)[0] for p in parts.parameters()]).sum()
        tied = hidden + zero.to(hidden.dtype)
        if hasattr(output, "last_hidden_state"):
            output["last_hidden_state"] = tied
            return output
        return (tied, *output[1:])

    return llm.register_forward_hook(tie)


def parts_of(model) -> torch.nn.ModuleDict | None:
    """The parts attached to a student (a wrapped one included), or None."""
    return getattr(getattr(model, "module", model), PARTS_ATTR, None)


def is_part_key(key: str) -> bool:
    """Whether a state-dict key belongs to the parts (left out of saved models)."""
    return key.startswith(PARTS_ATTR + ".") or f".{PARTS_ATTR}." in key
