"""bild: the bi-directional logits-difference loss of BiLD, at the response positions.

BiLD (Li et al., arXiv 2406.13555; code fpcsong/BiLD ``distil_losses/BILD.py``), the logit part of
Switch-KD's DBiLD. At one position, take k logits (the teacher's top k: teacher-led; the
student's top k: student-led) of both models at the same vocabulary entries, divide by T, form
their k(k-1)/2 pairwise differences z_i - z_j (i < j, in the leader's rank order), softmax over
the differences, and take KL(teacher || student):

    L_bild = mean over positions of  [ KL(sm(D_t^teacher-led) || sm(D_s^teacher-led))
                                      + KL(sm(D_t^student-led) || sm(D_s^student-led)) ]

as the released code does (no T^2 factor; ``bild_directions`` keeps one of the two). The top-k
selection carries no gradient. From row chunks: each chunk's [rows x V] logits give [rows x k]
selections, the gradient of the small differences comes from autograd and is scattered back into
the chunk's rows, so nothing holds more than a chunk of the vocabulary.
"""

from __future__ import annotations

from typing import Literal

from llavakd.terms.base import NaiveInputs, Param, TermSpec, at_least, positions


def _pairs(k: int, device):
    import torch

    return torch.triu_indices(k, k, offset=1, device=device)


def _led_kl(s_sel, t_sel, T: float):
    """Per row: KL(softmax of the teacher's pairwise differences || the student's)."""
    import torch

    i, j = _pairs(s_sel.shape[-1], s_sel.device)
    ds, dt = s_sel / T, t_sel / T
    ds, dt = ds[:, i] - ds[:, j], dt[:, i] - dt[:, j]
    lt, ls = torch.log_softmax(dt, -1), torch.log_softmax(ds, -1)
    return (lt.exp() * (lt - ls)).sum(-1)


def _directions(cfg) -> list[str]:
    return {"both": ["teacher", "student"], "teacher": ["teacher"], "student": ["student"]}[cfg.bild_directions]


def bild_rows(s, t, cfg):
    """Per-row BiLD of logit rows ``s``, ``t`` [N, V] (differentiable in ``s``)."""
    import torch

    k = min(cfg.bild_top_k, s.shape[-1])
    total = s.new_zeros(s.shape[0])
    for leader in _directions(cfg):
        idx = torch.topk((t if leader == "teacher" else s).detach(), k, dim=-1).indices
        total = total + _led_kl(s.gather(1, idx), t.gather(1, idx), cfg.bild_temperature)
    return total


class BildRows:
    """The row kernel: per-row values and dL/ds, the latter from autograd on the [rows x k] selections."""

    grad_scale = 1.0

    def __init__(self, cfg):
        self.cfg = cfg
        self.key = ("bild", cfg.bild_top_k, cfg.bild_temperature, cfg.bild_directions)

    def __call__(self, s, t, target, need_grad):
        import torch

        if not need_grad:
            return bild_rows(s, t, self.cfg), None
        with torch.enable_grad():
            leaf = s.detach().requires_grad_(True)
            rows = bild_rows(leaf, t, self.cfg)
            (grad,) = torch.autograd.grad(rows.sum(), leaf)
        return rows.detach(), grad

    @staticmethod
    def reduce(rows, mask):
        return (rows * mask).sum().double()


def naive(x: NaiveInputs, cfg):
    rows = positions("responses", x.labels, x.visual_mask, x.attention_mask)
    n = int(rows.sum())
    return bild_rows(x.student[rows], x.teacher[rows], cfg).sum() / max(n, 1), n


SPEC = TermSpec(
    name="bild", title="L_BiLD", summary="top-k logit-difference KL, teacher-led + student-led (BiLD)", teacher=True,
    reads="both models' top-k logits at the response positions", count="responses", rows="responses",
    params=(Param("bild_top_k", int, 8, "k: the logits each direction compares (k(k-1)/2 differences)",
                  at_least(2)),
            Param("bild_temperature", float, 3.0, "T: the logits are divided by it before their differences",
                  at_least(0, strict=True)),
            Param("bild_directions", Literal["both", "teacher", "student"], "both",
                  "both (BiLD): teacher-led + student-led; or one of them")),
    row_kernel=BildRows, naive=naive,
    sources=("BiLD (Li et al., arXiv 2406.13555), code fpcsong/BiLD distil_losses/BILD.py",),
)
