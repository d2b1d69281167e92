"""Row-wise divergences D(teacher || student) between two logit rows, with analytic gradients.

Every function takes student and teacher logits ``s``, ``t`` of shape [N, V] (already divided by
the temperature, in the compute dtype) and returns ``(loss, grad)``: ``loss`` [N] per row and
``grad`` = dloss/ds [N, V] (or None when ``need_grad`` is false). Formulas, with p = softmax:

    forward_kl     KL(p_t || p_s)             = sum p_t (log p_t - log p_s)       (the paper's)
    reverse_kl     KL(p_s || p_t)             = sum p_s (log p_s - log p_t)
    jsd (beta)     beta KL(p_t || m) + (1-beta) KL(p_s || m),  m = beta p_t + (1-beta) p_s
    tv             0.5 sum |p_t - p_s|
    skew_kl (a)    KL(p_t || a p_t + (1-a) p_s)                (skewed forward KL, DistiLLM)

For all but forward KL the gradient is written as softmax's Jacobian applied to dL/dp_s:
dL/ds_j = p_j (g_j - sum_k p_k g_k), with g = dL/dp_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llavakd.terms.base import DIVERGENCES as NAMES


@dataclass(frozen=True)
class Divergence:
    name: str = "forward_kl"
    beta: float = 0.5  # jsd mixture weight of the teacher
    alpha: float = 0.1  # skew_kl mixture weight of the teacher

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"unknown divergence {self.name!r}; choose one of {', '.join(NAMES)}")
        if not 0.0 < self.beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1), got {self.beta}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"skew_kl alpha must be in [0, 1), got {self.alpha}")

    def __call__(self, s: torch.Tensor, t: torch.Tensor, need_grad: bool = True):
        return _FUNCS[self.name](self, s, t, need_grad)


def _softmax_pullback(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return p * (g - (p * g).sum(-1, keepdim=True))


def _xlogy_diff(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    # sum p (log p - log q), with 0 * (anything) = 0 where p underflows to exactly 0;
    # a NaN p must stay NaN (a `p > 0` guard would silently turn a broken teacher into loss 0)
    return torch.where(p == 0, torch.zeros((), dtype=p.dtype, device=p.device), p * (logp - logq)).sum(-1)


def _forward_kl(d, s, t, need_grad):
    # The default divergence, on [chunk x V] blocks: in place where it can, so that at most four
    # block-sized temporaries live at once (the fused objective's peak memory is mostly these).
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    pt = lt.exp()
    terms = lt.sub_(ls).mul_(pt)  # p_t (log p_t - log p_s), lt's buffer reused
    terms.masked_fill_(pt == 0, 0.0)  # as _xlogy_diff: 0 where p_t underflows; a NaN p_t stays NaN
    loss = terms.sum(-1)
    del terms
    return loss, ls.exp_().sub_(pt) if need_grad else None


def _reverse_kl(d, s, t, need_grad):
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    ps = ls.exp()
    diff = ls - lt
    loss = (ps * diff).sum(-1)
    return loss, _softmax_pullback(ps, diff) if need_grad else None


def _jsd(d, s, t, need_grad):
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    ps, pt = ls.exp(), lt.exp()
    b = d.beta
    lm = torch.logsumexp(torch.stack([lt + math.log(b), ls + math.log(1 - b)]), 0)  # scalars: no host-device copy
    loss = b * _xlogy_diff(pt, lt, lm) + (1 - b) * _xlogy_diff(ps, ls, lm)
    return loss, _softmax_pullback(ps, (1 - b) * (ls - lm)) if need_grad else None


def _tv(d, s, t, need_grad):
    ps, pt = torch.softmax(s, -1), torch.softmax(t, -1)
    diff = ps - pt
    loss = 0.5 * diff.abs().sum(-1)
    return loss, _softmax_pullback(ps, 0.5 * torch.sign(diff)) if need_grad else None


def _skew_kl(d, s, t, need_grad):
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    ps, pt = ls.exp(), lt.exp()
    a = d.alpha
    if a == 0.0:
        lm = ls
    else:
        lm = torch.logsumexp(torch.stack([lt + math.log(a), ls + math.log(1 - a)]), 0)
    loss = _xlogy_diff(pt, lt, lm)
    if not need_grad:
        return loss, None
    g = -(1 - a) * torch.exp(lt - lm)  # dL/dp_s = -(1-a) p_t / m
    return loss, _softmax_pullback(ps, g)


_FUNCS = {"forward_kl": _forward_kl, "reverse_kl": _reverse_kl, "jsd": _jsd, "tv": _tv,
          "skew_kl": _skew_kl}
assert set(_FUNCS) == set(NAMES), "llavakd.terms.base.DIVERGENCES and the implemented divergences differ"


def naive_divergence(div: Divergence, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-row D(teacher || student) written as the textbook formula (autograd does the rest): the
    oracle's form of each divergence above."""
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    ps, pt = ls.exp(), lt.exp()
    if div.name == "forward_kl":  # 0 log 0 = 0: a word the teacher rules out (p_t = 0) adds nothing
        return torch.where(pt == 0, 0.0, pt * (lt - ls)).sum(-1)
    if div.name == "reverse_kl":
        return (ps * (ls - lt)).sum(-1)
    if div.name == "tv":
        return 0.5 * (ps - pt).abs().sum(-1)
    if div.name == "jsd":
        m = div.beta * pt + (1 - div.beta) * ps
        lm = m.log()
        return div.beta * (pt * (lt - lm)).sum(-1) + (1 - div.beta) * (ps * (ls - lm)).sum(-1)
    if div.name == "skew_kl":
        m = div.alpha * pt + (1 - div.alpha) * ps
        return (pt * (lt - m.log())).sum(-1)
    raise ValueError(div.name)
