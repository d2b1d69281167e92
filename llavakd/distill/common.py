"""What every implementation of the objective shares: its output, its input checks, its divergences.

Both the naive oracle (``naive.py``) and the chunked path (``objective.py``) build on this module,
so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llavakd.config import LossConfig
from llavakd.distill.divergences import Divergence
from llavakd.labels import IGNORE_INDEX


class DistillShapeError(ValueError):
    """Teacher and student inputs disagree; distillation is never silently skipped."""


@dataclass
class LossOutput:
    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)  # unweighted values of enabled terms
    counts: dict[str, int] = field(default_factory=dict)  # positions each term averaged over


def res_divergence(cfg: LossConfig) -> Divergence:
    """The divergence of L_res."""
    return Divergence(cfg.divergence, beta=cfg.jsd_beta, alpha=cfg.skew_alpha)


def vis_divergence(cfg: LossConfig) -> Divergence:
    """The divergence of L_vis (``vis_divergence`` when set, else L_res's)."""
    return Divergence(cfg.vis_divergence or cfg.divergence, beta=cfg.jsd_beta, alpha=cfg.skew_alpha)


def resolve_config(cfg: LossConfig | None, has_teacher: bool, what: str) -> LossConfig:
    """The config to use (default: the paper's), refusing an invalid one or a missing teacher."""
    cfg = cfg or LossConfig()
    problems = cfg.validate()
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
