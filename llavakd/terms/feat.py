"""feat: final hidden-state alignment through a learnable projector, LLaVADI's feature term.

    L_feat = mean over positions p of  (1/d_t) || P(h_s[p]) - h_t[p] ||^2,   P = Linear(d_s, d_t) - GELU - Linear(d_t, d_t)

LLaVADI (Xu et al., arXiv 2407.19409; code xushilin1/LLaVADI, ``projects/distill/distill_llava_llama.py``,
``align_hidden_embeds``): the last hidden states (after the final norm, what the LM head reads) of
student and teacher, the student's mapped to the teacher's width by P, MSE, added with weight 1 to
CE and a forward-KL logit term. Readings taken here, each written down in docs/methods.md:

* positions: the answer tokens' own positions (labels not ignored, as LLaVADI's mask is taken on
  unshifted labels); ``feat_positions: all`` takes every attended position (its
  ``align_all_hidden_embeds``);
* the mean: over the optimizer step's positions (the project's convention for every term, so a step
  does not depend on how its batch is split), where LLaVADI averages per sample and then over the
  samples of a micro-batch; each position's squared error is averaged over the teacher's width, as
  ``F.mse_loss`` does;
* P trains with the student (its learning rate), is saved in every checkpoint and is not part of the
  exported student. The teacher's hidden states carry no gradient.
"""

from __future__ import annotations

from typing import Literal

from llavakd.terms.base import Dims, NaiveInputs, Param, TermSpec, positions


def _kind(cfg) -> str:
    return "answers" if cfg.feat_positions == "responses" else "attended"


def read_positions(x: NaiveInputs, cfg):
    """[B, L] bool: the positions the term reads under ``feat_positions``."""
    return positions(_kind(cfg), x.labels, x.visual_mask, x.attention_mask)


def build(cfg, dims: Dims):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(dims.student_hidden, dims.teacher_hidden), torch.nn.GELU(),
                               torch.nn.Linear(dims.teacher_hidden, dims.teacher_hidden))


def value(x: NaiveInputs, cfg):
    """The term by autograd (its ``autograd`` engine): squared errors summed in at least float32."""
    import torch

    mask = read_positions(x, cfg)
    n = int(mask.sum())
    proj = x.parts["feat"]
    w = next(proj.parameters())
    hs = x.student_hidden[mask].to(w.dtype)
    ht = x.teacher_hidden[mask].detach()
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    err = (proj(hs).to(acc) - ht.to(acc)).pow(2).mean(-1)
    return err.sum() / max(n, 1), n


def naive(x: NaiveInputs, cfg):
    import torch.nn.functional as F

    mask = read_positions(x, cfg)
    n = int(mask.sum())
    proj = x.parts["feat"]
    hs, ht = x.student_hidden[mask], x.teacher_hidden[mask]
    if n == 0:
        return (proj(hs).sum() * 0).to(x.student.dtype), 0
    return F.mse_loss(proj(hs.to(next(proj.parameters()).dtype)).to(x.student.dtype), ht.to(x.student.dtype)), n


SPEC = TermSpec(
    name="feat", title="L_feat", summary="MSE of the projected final hidden states (LLaVADI)", teacher=True,
    reads="both LLMs' last hidden states at the answer tokens (or every attended position), the student's "
          "through a learnable projector",
    count=_kind,
    params=(Param("feat_positions", Literal["responses", "all"], "responses",
                  "responses: the answer tokens' own positions (LLaVADI); all: every attended position"),),
    autograd_term=value, naive=naive, needs=lambda cfg: ("hidden",),
    parts=build,
    part_params=lambda cfg, d: d.student_hidden * d.teacher_hidden + d.teacher_hidden ** 2 + 2 * d.teacher_hidden,
    flops=lambda cfg, d: 6.0 * (d.student_hidden * d.teacher_hidden + d.teacher_hidden ** 2),
    flop_positions=lambda cfg: "answers" if cfg.feat_positions == "responses" else "all",
    sources=("LLaVADI (Xu et al., arXiv 2407.19409), code xushilin1/LLaVADI projects/distill/distill_llava_llama.py",),
)
