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


def res_divergence(cfg: LossConfig) -> Divergence:
    """The divergence of L_res."""
    return Divergence(cfg.divergence, beta=cfg.jsd_beta, alpha=cfg.skew_alpha)


def vis_divergence(cfg: LossConfig) -> Divergence:
    """The divergence of L_vis (``vis_divergence`` when set, else L_res's)."""
    return Divergence(cfg.vis_divergence or cfg.divergence, beta=cfg.jsd_beta, alpha=cfg.skew_alpha)


TERM_NAMES = ("ce", "res", "vis", "rel")


def term_weights(cfg: LossConfig, scale: dict[str, float] | None = None) -> dict[str, float]:
    """Each term's weight in this call: the configured weight (never rewritten) times ``scale``,
    the share of the optimizer step's positions this micro-batch holds (the trainer's; 1 if unset)."""
    scale = scale or {}
    return {k: getattr(cfg, f"{k}_weight") * float(scale.get(k, 1.0)) for k in TERM_NAMES}


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


def check_features(student_features, teacher_features, labels, cfg: LossConfig) -> None:
    """With ``rel_source: features`` both feature tensors are needed, [batch, length, d] each."""
    if not (cfg.rel and cfg.rel_source == "features"):
        return
    if student_features is None or teacher_features is None:
        raise DistillShapeError("loss.rel_source is 'features' but the student's or the teacher's features were not given")
    for who, f in (("student", student_features), ("teacher", teacher_features)):
        if f.dim() != 3 or f.shape[:2] != labels.shape:
            raise DistillShapeError(f"{who} features {tuple(f.shape)} do not match the tokens {tuple(labels.shape)}: "
                                    "expected [batch, length, d]")


def unit_gram(R: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of the unit-normalised rows of Z, from R = Z Z^T: R_ij / (|z_i| |z_j|), each
    norm clamped at 1e-12 as F.normalize does."""
    norms = R.diagonal().clamp_min(0).sqrt().clamp_min(1e-12)
    return R / (norms[:, None] * norms[None, :])


def relation_value(Rs: list, Rt: list, cfg: LossConfig) -> torch.Tensor:
    """L_rel = 1 - cos of the (optionally normalised) Gram matrices, float64 in and out; autograd
    gives dL/dR_s (the chunked and fused paths read their gradient from it)."""
    if cfg.rel_normalise == "l2":
        Rs, Rt = [unit_gram(r) for r in Rs], [unit_gram(r) for r in Rt]
    eps = torch.finfo(torch.float64).tiny
    if cfg.rel_reduction == "batch":
        dot = sum((a * b).sum() for a, b in zip(Rt, Rs))
        nt = torch.sqrt(sum((a * a).sum() for a in Rt)).clamp_min(eps)
        ns = torch.sqrt(sum((b * b).sum() for b in Rs)).clamp_min(eps)
        return 1 - dot / (nt * ns)
    cos = [(a * b).sum() / (a.norm().clamp_min(eps) * b.norm().clamp_min(eps)) for a, b in zip(Rt, Rs)]
    return 1 - torch.stack(cos).mean()


def feature_relation(student_features, teacher_features, visual_mask, cfg: LossConfig):
    """L_rel from the projected visual features (``rel_source: features``) by autograd: the features
    are [positions x d] with d in the thousands, so nothing here is vocabulary-sized. Gram products
    in at least float32, the cosine in float64. Returns (value, number of image samples)."""
    cdt = torch.float64 if student_features.dtype == torch.float64 else torch.float32
    Rs, Rt = [], []
    for b in range(visual_mask.shape[0]):
        m = visual_mask[b]
        if m.any():
            zs, zt = student_features[b][m].to(cdt), teacher_features[b][m].detach().to(cdt)
            Rs.append((zs @ zs.T).double())
            Rt.append((zt @ zt.T).double())
    if not Rs:
        return torch.zeros((), dtype=torch.float64, device=visual_mask.device), 0
    return relation_value(Rs, Rt, cfg), len(Rs)


def with_feature_relation(out: LossOutput, student_features, teacher_features, visual_mask, cfg,
                          weight: float) -> LossOutput:
    """Add L_rel from the features, times ``weight``, to an objective computed without it."""
    rel, n = feature_relation(student_features, teacher_features, visual_mask, cfg)
    out.part_tensors["rel"] = rel.detach()
    out.counts["rel"] = n
    out.total = out.total + (weight * rel).to(out.total.dtype)
    return out
