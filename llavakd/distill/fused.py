"""The objective from hidden states and LM heads: no [positions x vocabulary] logits beyond one chunk.

    from llavakd.distill import fused_distill_loss
    out = fused_distill_loss(student_hidden, student.lm_head.weight, teacher_hidden, teacher.lm_head.weight,
                             labels, visual_mask, cfg)
    out.total.backward()   # gradients for student_hidden and the student's head weight

``fused_distill_loss(h_s, W_s, h_t, W_t, ...)`` returns what ``distill_loss(h_s @ W_s.T, h_t @ W_t.T, ...)``
returns (hidden states [B, L, d], heads [V, d]; same labels, visual mask and LossConfig), computing
each row chunk's logits from the hidden states and the head when the chunked objective needs them
(the fused-linear pattern): CE, L_res and L_vis over row chunks, L_rel's Gram matrices accumulated
over vocabulary chunks of Z = H W^T in at least float32, the cosine in float64. A gradient chunk dZ
becomes dZ W for the hidden states and dZ^T H for the head, accumulated in float32 (float64 for
float64 inputs). The math is the chunked objective's own (``objective._objective`` reads logits
through ``LinearSource`` here, through ``LogitSource`` there), so every divergence, temperature and
reduction the objective offers is here too.

Why not liger-kernel's fused-linear distillation losses: they take one target mask and average over
it (L_res's positions), while LLaVA-KD adds a term at each sample's own visual positions with its
own mean, a Gram-matrix term and TV / skew-KL divergences; sharing the chunked objective's math
keeps one implementation of every term. Evaluated where it does fit (benchmarks/liger_compare.py:
``LigerFusedLinearJSDLoss`` with beta 0, one call on the supervised rows for CE + L_res and one on
the visual rows for L_vis, at the paper's shape, fp32 on the CPU): the same loss parts to 1e-7 and
gradients to 5e-7 relative, but 1.27x our time and 2.4x our peak memory (liger 0.8.5, uncompiled;
its compiled GPU path is not measured yet). So liger is not used.

L_rel's Gram matrices: by default (``rel_gram: identity``) through Z Z^T = H (W^T W) H^T, with
W^T W (d x d) accumulated over vocabulary chunks in at least float32: the frozen teacher's once
per run, the student's once per optimizer step (``step``, passed by the trainer); its gradient
is S H (W^T W) for the hidden states and W (H^T S H) for the head. ``rel_gram: chunks``
accumulates Z Z^T over vocabulary chunks of Z recomputed from H and W instead (the chunked path's
own code). benchmarks/distill_memory.py times both at the paper's shape. Terms of the
``autograd`` engine (L_rel with ``rel_source: features``, by plain autograd on the projected
visual features) are added after the fused objective (``common.with_autograd_terms``).
"""

from __future__ import annotations

import torch

from llavakd.config import LossConfig
from llavakd.distill.common import (
    DistillShapeError,
    LossOutput,
    check_features,
    check_inputs,
    resolve_config,
    term_weights,
    with_autograd_terms,
)
from llavakd.distill.objective import LinearSource, _compute_dtype, _objective
from llavakd.terms.base import NaiveInputs


def _check(h_s, w_s, h_t, w_t, labels, visual_mask) -> None:
    if h_s.dim() != 3 or w_s.dim() != 2 or h_s.shape[-1] != w_s.shape[1]:
        raise DistillShapeError(f"student hidden states {tuple(h_s.shape)} and head {tuple(w_s.shape)} do not "
                                "fit: expected [batch, length, d] and [vocab, d]")
    if h_t is not None:
        if h_t.dim() != 3 or w_t is None or w_t.dim() != 2 or h_t.shape[-1] != w_t.shape[1]:
            raise DistillShapeError(f"teacher hidden states {tuple(h_t.shape)} and head "
                                    f"{None if w_t is None else tuple(w_t.shape)} do not fit")
        if w_t.shape[0] != w_s.shape[0] or h_t.shape[:2] != h_s.shape[:2]:
            raise DistillShapeError(
                f"teacher hidden {tuple(h_t.shape)} / head {tuple(w_t.shape)} and student hidden {tuple(h_s.shape)} / "
                f"head {tuple(w_s.shape)} differ in tokens or vocabulary; teacher and student must see the same "
                "tokens and share one vocabulary")
    meta = torch.empty((*h_s.shape[:2], w_s.shape[0]), device="meta")
    check_inputs(meta, None, labels, visual_mask)


class _FusedLinearObjective(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, visual_mask, cfg, weights, sink):
        need_grad = h_s.requires_grad or w_s.requires_grad
        src_s = LinearSource(h_s, w_s, need_grad, need_head_grad=w_s.requires_grad, step=sink.get("step"))
        src_t = LinearSource(h_t, w_t, False) if h_t is not None else None
        total, parts, counts = _objective(src_s, src_t, labels, visual_mask, cfg, weights, need_grad,
                                          _compute_dtype(h_s), h_s.device, sink.get("attention_mask"))
        sink["parts"] = {k: v.detach() for k, v in parts.items()}
        sink["counts"] = counts
        ctx.grads = (src_s.grad_h, src_s.head_grad()) if need_grad else None
        ctx.meta = (h_s.shape, h_s.dtype, h_s.requires_grad, w_s.dtype, w_s.requires_grad)
        return total.to(h_s.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("fused_distill_loss: backward can run once per forward")
        shape, h_dtype, h_grad, w_dtype, w_grad = ctx.meta
        go = float(grad_out)
        out = []
        for g, dtype, wanted in ((grads[0], h_dtype, h_grad), (grads[1], w_dtype, w_grad)):
            if not wanted or g is None:
                out.append(None)
                continue
            if go != 1.0:
                g.mul_(go)  # in place: the head's gradient buffer is as large as the head
            out.append(g.to(dtype))
        return out[0].reshape(shape) if out[0] is not None else None, out[1], None, None, None, None, None, None, None


def fused_distill_loss(student_hidden: torch.Tensor, student_head: torch.Tensor,
                       teacher_hidden: torch.Tensor | None, teacher_head: torch.Tensor | None,
                       labels: torch.Tensor, visual_mask: torch.Tensor, cfg: LossConfig | None = None, *,
                       student_features: torch.Tensor | None = None,
                       teacher_features: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, parts=None,
                       student_attention=None, teacher_attention=None,
                       scale: dict[str, float] | None = None, checked: bool = False,
                       step: int | None = None) -> LossOutput:
    """See the module docstring; raises DistillShapeError naming both shapes when they do not fit.
    ``scale`` and ``checked`` as in ``llavakd.distill.objective.distill_loss``. ``step``: the
    optimizer step this call belongs to; the micro-batches of one step then share the trained
    head's W^T W (``objective.head_gram``); without it W^T W is computed at every call.
    ``student_features``, ``teacher_features``, ``attention_mask`` and ``parts`` as in ``distill_loss``
    (the hidden states given here are the ones the hidden-state terms read)."""
    cfg = resolve_config(cfg, teacher_hidden is not None, "hidden states", checked)
    w = term_weights(cfg, scale)
    _check(student_hidden, student_head, teacher_hidden, teacher_head, labels, visual_mask)
    x = NaiveInputs(labels=labels, visual_mask=visual_mask, student_features=student_features,
                    teacher_features=teacher_features, student_hidden=student_hidden, teacher_hidden=teacher_hidden,
                    attention_mask=attention_mask, parts=parts, student_attention=student_attention,
                    teacher_attention=teacher_attention)
    check_features(x, cfg)
    sink: dict = {"step": step, "attention_mask": attention_mask}
    total = _FusedLinearObjective.apply(student_hidden, student_head, teacher_hidden, teacher_head, labels,
                                        visual_mask, cfg, w, sink)
    out = LossOutput(total=total, part_tensors=sink["parts"], counts=sink["counts"])
    return with_autograd_terms(out, cfg, w, x)
