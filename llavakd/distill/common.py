"""What every implementation of the objective shares: its output, its input checks, the weights.

Both the naive oracle (``naive.py``) and the chunked path (``objective.py``) build on this module,
so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llavakd import terms
from llavakd.config import LossConfig
from llavakd.labels import IGNORE_INDEX
from llavakd.terms.base import NaiveInputs


class DistillShapeError(ValueError):
    """Teacher and student inputs disagree; distillation is never silently skipped."""


@dataclass
class LossOutput:
    """The objective's value (``total``, differentiable) and its unweighted parts. The parts stay
    device tensors (``part_tensors``: reading them waits for the device, so the trainer reads them
    at logging steps only); ``parts`` gives them as floats."""

    total: torch.Tensor
    part_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted values of enabled terms
    counts: dict[str, int] = field(default_factory=dict)  # positions each term averaged over

    @property
    def parts(self) -> dict[str, float]:
        """The parts as floats (one wait for the device)."""
        if not self.part_tensors:
            return {}
        keys = list(self.part_tensors)
        values = torch.stack([self.part_tensors[k].detach().double() for k in keys]).tolist()
        return dict(zip(keys, values))


def term_weights(cfg: LossConfig, scale: dict[str, float] | None = None) -> dict[str, float]:
    """Each enabled term's weight in this call: the configured weight (never rewritten) times
    ``scale``, the share of the optimizer step's positions this micro-batch holds (the trainer's; 1
    if unset)."""
    scale = scale or {}
    return {k: cfg.weight(k) * float(scale.get(k, 1.0)) for k in cfg.enabled()}


def resolve_config(cfg: LossConfig | None, has_teacher: bool, what: str, checked: bool = False) -> LossConfig:
    """The config to use (default: the paper's), refusing an invalid one or a missing teacher.
    ``checked``: the caller validated it already (a training job, once when it read its config)."""
    cfg = cfg or LossConfig()
    problems = [] if checked else cfg.validate()
    if problems:
        raise ValueError("invalid loss config: " + "; ".join(problems))
    if cfg.needs_teacher and not has_teacher:
        raise DistillShapeError(f"distillation terms are enabled but no teacher {what} were given")
    return cfg


def check_inputs(student, teacher, labels, visual_mask, teacher_labels=None, teacher_visual_mask=None):
    """Raise DistillShapeError naming the first disagreement between teacher and student."""
    if student.dim() != 3:
        raise DistillShapeError(f"student logits must be [batch, length, vocab], got {tuple(student.shape)}")
    if teacher is not None and teacher.shape != student.shape:
        raise DistillShapeError(
            f"teacher logits {tuple(teacher.shape)} and student logits {tuple(student.shape)} differ; "
            "teacher and student must see the same tokens (same tokenizer, same visual-token count)"
        )
    if labels.shape != student.shape[:2]:
        raise DistillShapeError(f"labels {tuple(labels.shape)} do not match logits {tuple(student.shape[:2])}")
    if visual_mask.shape != student.shape[:2] or visual_mask.dtype != torch.bool:
        raise DistillShapeError(
            f"visual_mask must be bool {tuple(student.shape[:2])}, got {visual_mask.dtype} {tuple(visual_mask.shape)}"
        )
    if teacher_labels is not None and not torch.equal(teacher_labels, labels):
        bad = (teacher_labels != labels).any(-1).nonzero().flatten().tolist()
        raise DistillShapeError(f"teacher and student supervise different tokens in samples {bad}")
    if teacher_visual_mask is not None and not torch.equal(teacher_visual_mask, visual_mask):
        bad = (teacher_visual_mask != visual_mask).any(-1).nonzero().flatten().tolist()
        raise DistillShapeError(f"teacher and student visual positions differ in samples {bad}")
    sup = labels[labels != IGNORE_INDEX]
    if sup.numel() and (sup.min() < 0 or sup.max() >= student.shape[-1]):
        raise DistillShapeError(f"labels outside [0, {student.shape[-1]}): {sup.min().item()}..{sup.max().item()}")


def check_features(x: NaiveInputs, cfg: LossConfig) -> None:
    """What the enabled terms read beyond logits must be given: both models' projected visual
    features (``features``) or last hidden states (``hidden``), [batch, length, d] each, and every
    learnable part."""
    needs = cfg.needs()
    wanted = {"features": ("student_features", "teacher_features", "features"),
              "hidden": ("student_hidden", "teacher_hidden", "hidden states")}
    for need, (s_key, t_key, what) in wanted.items():
        if need not in needs:
            continue
        readers = ", ".join(n for n in cfg.enabled() if need in terms.spec(n).needs(cfg))
        pair = (getattr(x, s_key), getattr(x, t_key))
        if any(f is None for f in pair):
            raise DistillShapeError(f"loss terms {readers} read both models' {what}, but the student's or the "
                                    "teacher's were not given")
        for who, f in zip(("student", "teacher"), pair):
            if f.dim() != 3 or f.shape[:2] != x.labels.shape:
                raise DistillShapeError(f"{who} {what} {tuple(f.shape)} do not match the tokens "
                                        f"{tuple(x.labels.shape)}: expected [batch, length, d]")
    missing = [n for n in cfg.enabled() if terms.spec(n).has_parts(cfg) and (x.parts is None or n not in x.parts)]
    if missing:
        raise DistillShapeError(f"loss terms {', '.join(missing)} have learnable parts, and none were given "
                                "(llavakd.distill.parts.build_parts)")


def engine_terms(cfg: LossConfig, engine: str) -> tuple[str, ...]:
    """The enabled terms one engine computes (llavakd.terms.base: rows, sources or autograd)."""
    return tuple(n for n in cfg.enabled() if terms.spec(n).engine_for(cfg) == engine)


def with_autograd_terms(out: LossOutput, cfg: LossConfig, weights: dict[str, float], x: NaiveInputs) -> LossOutput:
    """Add the terms computed by plain autograd (after the chunked objective), each times its weight."""
    for name in engine_terms(cfg, "autograd"):
        value, n = terms.spec(name).autograd_term(x, cfg)
        out.part_tensors[name] = value.detach()
        out.counts[name] = n
        out.total = out.total + (weights[name] * value).to(out.total.dtype)
    return out
