"""The straightforward autograd objective: the oracle the chunked and fused paths are tested against.

Each term's own naive form (``TermSpec.naive``) on full tensors: every full-vocabulary
intermediate (log-softmaxes, probabilities, fp32 copies of the visual logits) is materialised,
which is what makes it simple to read and expensive at V = 151,936.
"""

from __future__ import annotations

import dataclasses

import torch

from llavakd import terms
from llavakd.distill.common import LossOutput, term_weights
from llavakd.distill.divergences import naive_divergence
from llavakd.terms.base import NaiveInputs

__all__ = ["naive_distill_loss", "naive_divergence"]


def naive_distill_loss(student, teacher, cfg, inputs: NaiveInputs, scale: dict[str, float] | None = None):
    """Every enabled term's naive form on the logits and ``inputs`` (labels, masks, features, hidden
    states, parts), summed with its weight."""
    w = term_weights(cfg, scale)
    cdt = torch.float64 if student.dtype == torch.float64 else torch.float32
    x = dataclasses.replace(inputs, student=student.to(cdt), teacher=teacher.to(cdt) if teacher is not None else None)
    parts, counts = {}, {}
    total = torch.zeros((), dtype=cdt, device=student.device)
    for name in cfg.enabled():
        value, counts[name] = terms.spec(name).naive(x, cfg)
        parts[name] = value
        total = total + w[name] * value
    return LossOutput(total=total.to(student.dtype), part_tensors={k: v.detach() for k, v in parts.items()},
                      counts=counts)
