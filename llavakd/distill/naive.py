"""The straightforward autograd objective: the oracle the chunked path is tested against.

It materialises every full-vocabulary intermediate (log-softmaxes, probabilities, fp32 copies of
the visual logits), which is what makes it simple to read and expensive at V = 151,936.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavakd.distill.common import LossOutput, res_divergence, term_weights, vis_divergence
from llavakd.distill.divergences import Divergence
from llavakd.labels import IGNORE_INDEX


def naive_divergence(div: Divergence, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-row D(teacher || student) written as the textbook formula (autograd does the rest)."""
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


def naive_distill_loss(student, teacher, labels, visual_mask, cfg, student_features=None, teacher_features=None,
                       scale: dict[str, float] | None = None):
    w = term_weights(cfg, scale)
    cdt = torch.float64 if student.dtype == torch.float64 else torch.float32
    T = cfg.temperature
    sup = labels[:, 1:] != IGNORE_INDEX
    s_all = student.to(cdt)
    t_all = teacher.to(cdt) if teacher is not None else None
    parts, counts = {}, {}
    total = torch.zeros((), dtype=cdt, device=s_all.device)
    s_res = s_all[:, :-1][sup]
    counts["ce"] = counts["res"] = int(sup.sum())
    if cfg.ce:
        ce = F.cross_entropy(s_res, labels[:, 1:][sup], reduction="sum") / max(counts["ce"], 1)
        parts["ce"] = ce
        total = total + w["ce"] * ce
    if cfg.res:
        t_res = t_all[:, :-1][sup]
        res = (naive_divergence(res_divergence(cfg), s_res / T, t_res / T).sum() * T * T) / max(counts["res"], 1)
        parts["res"] = res
        total = total + w["res"] * res
    counts["vis"] = int(visual_mask.sum())
    if cfg.vis:
        s_vis, t_vis = s_all[visual_mask], t_all[visual_mask]
        vis = (naive_divergence(vis_divergence(cfg), s_vis / T, t_vis / T).sum() * T * T) / max(counts["vis"], 1)
        parts["vis"] = vis
        total = total + w["vis"] * vis
    if cfg.rel:
        rs, rt = [], []
        for b in range(student.shape[0]):
            m = visual_mask[b]
            if m.any():
                if cfg.rel_source == "features":
                    zs, zt = student_features[b][m].to(cdt), teacher_features[b][m].to(cdt)
                else:
                    zs, zt = s_all[b][m], t_all[b][m]
                if cfg.rel_normalise == "l2":
                    zs, zt = F.normalize(zs, dim=-1), F.normalize(zt, dim=-1)
                rs.append((zs @ zs.T).flatten())
                rt.append((zt @ zt.T).flatten())
        counts["rel"] = len(rs)
        if not rs:
            rel = torch.zeros((), dtype=cdt, device=s_all.device)
        elif cfg.rel_reduction == "batch":
            rel = 1 - F.cosine_similarity(torch.cat(rt), torch.cat(rs), dim=0, eps=1e-30)
        else:
            rel = torch.stack([1 - F.cosine_similarity(a, b, dim=0, eps=1e-30) for a, b in zip(rt, rs)]).mean()
        parts["rel"] = rel
        total = total + w["rel"] * rel
    return LossOutput(total=total.to(student.dtype), part_tensors={k: v.detach() for k, v in parts.items()},
                      counts=counts)
