"""L_rel (RDist): 1 - cos(vec(Z_t Z_t^T), vec(Z_s Z_s^T)), Z = a sample's visual-position logits [n, V].

``rel_reduction: batch`` (upstream) concatenates every image sample's Gram matrix into one vector;
``per_sample`` averages the per-sample cosines. ``rel_normalise: l2`` unit-normalises the rows of
Z first (cosine self-similarity, taken on the Gram matrix: R_ij / (|z_i| |z_j|)). ``rel_source:
features`` takes Z from the projected visual features the LLM receives, by plain autograd (the
features are [positions x d], nothing vocabulary-sized). From logits the Gram matrices accumulate
over vocabulary chunks in at least float32 (``rel_gram``: of Z itself, or in the fused path as
H (W^T W) H^T), and the cosine is taken in float64 on the small n x n matrices, whose gradient
autograd gives; the chunked sources turn it into dL/dZ = (G + G^T) Z.
"""

from __future__ import annotations

from typing import Literal

from llavakd.terms.base import NaiveInputs, Param, TermSpec


def unit_gram(R):
    """The Gram matrix of the unit-normalised rows of Z, from R = Z Z^T: R_ij / (|z_i| |z_j|), each
    norm clamped at 1e-12 as F.normalize does."""
    norms = R.diagonal().clamp_min(0).sqrt().clamp_min(1e-12)
    return R / (norms[:, None] * norms[None, :])


def relation_value(Rs: list, Rt: list, cfg):
    """L_rel = 1 - cos of the (optionally normalised) Gram matrices, float64 in and out; autograd
    gives dL/dR_s (the chunked and fused paths read their gradient from it)."""
    import torch

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


def feature_relation(x: NaiveInputs, cfg):
    """L_rel from the projected visual features (``rel_source: features``) by autograd. Gram
    products in at least float32, the cosine in float64. Returns (value, number of image samples)."""
    import torch

    student_features, teacher_features, visual_mask = x.student_features, x.teacher_features, x.visual_mask
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


def sample_visual_rows(visual_mask) -> list:
    """Flat row indices of each image sample's visual positions (text-only samples skipped)."""
    B, L = visual_mask.shape
    out = []
    for b in range(B):
        idx = visual_mask[b].nonzero().flatten()
        if idx.numel():
            out.append(idx + b * L)
    return out


def gram_cosine(src_s, src_t, visual_mask, cfg, weight, need_grad, cdt):
    """L_rel from logit sources and (through ``src_s``) its gradient; returns (value, number of image samples)."""
    import torch

    from llavakd.distill.chunking import DEFAULT_CHUNK_ELEMENTS

    samples = sample_visual_rows(visual_mask)
    if not samples:
        return torch.zeros((), dtype=torch.float64, device=visual_mask.device), 0
    n_max = max(i.numel() for i in samples)
    step = cfg.chunk_vocab or max(1, DEFAULT_CHUNK_ELEMENTS // max(n_max, 1))
    # The Gram matrices accumulate in the compute dtype; the cosine is taken in float64 (n x n,
    # cheap): with cos close to 1, fp32 would leave 1 - cos only ~1e-7 of absolute precision.
    Rs = [src_s.gram(idx, step, cdt, cfg.rel_gram).double().requires_grad_(need_grad) for idx in samples]
    Rt = [src_t.gram(idx, step, cdt, cfg.rel_gram).double() for idx in samples]
    with torch.enable_grad():
        value = relation_value(Rs, Rt, cfg)
        G = torch.autograd.grad(value, Rs) if need_grad else ()
    for idx, g in zip(samples, G):
        sym = ((g + g.T) * weight).to(cdt)  # dL/dZ = (G + G^T) Z
        src_s.add_gram_grad(idx, sym, step, cdt, cfg.rel_gram)
    return value.detach(), len(samples)


def naive(x: NaiveInputs, cfg):
    import torch
    import torch.nn.functional as F

    from_features = cfg.rel_source == "features"
    rs, rt = [], []
    for b in range(x.visual_mask.shape[0]):
        m = x.visual_mask[b]
        if m.any():
            if from_features:
                cdt = x.student.dtype
                zs, zt = x.student_features[b][m].to(cdt), x.teacher_features[b][m].to(cdt)
            else:
                zs, zt = x.student[b][m], x.teacher[b][m]
            if cfg.rel_normalise == "l2":
                zs, zt = F.normalize(zs, dim=-1), F.normalize(zt, dim=-1)
            rs.append((zs @ zs.T).flatten())
            rt.append((zt @ zt.T).flatten())
    if not rs:
        return torch.zeros((), dtype=x.student.dtype, device=x.student.device), 0
    if cfg.rel_reduction == "batch":
        return 1 - F.cosine_similarity(torch.cat(rt), torch.cat(rs), dim=0, eps=1e-30), len(rs)
    return torch.stack([1 - F.cosine_similarity(a, b, dim=0, eps=1e-30) for a, b in zip(rt, rs)]).mean(), len(rs)


SPEC = TermSpec(
    name="rel", title="L_rel", summary="1 - cos of the visual positions' Gram matrices (RDist)", teacher=True,
    reads="the Gram matrix of each image sample's visual-position logits (or projected visual features)",
    count="images",
    params=(
        Param("rel_reduction", Literal["batch", "per_sample"], "batch",
              "batch: one cosine over every sample's Gram matrix (upstream); per_sample: their mean",
              method=False, added=False),
        Param("rel_source", Literal["logits", "features"], "logits",
              "Z: the visual positions' logits (upstream's loss) or the projected visual features the LLM receives",
              method=False, added=False),
        Param("rel_normalise", Literal["none", "l2"], "none", "l2: rows of Z unit-normalised first (cosine "
              "self-similarity)", method=False, added=False),
        Param("rel_gram", Literal["identity", "chunks"], "identity", "fused only: Z Z^T as H (W^T W) H^T "
              "(identity) or over vocabulary chunks", method=False, added=False),
    ),
    source_term=gram_cosine, autograd_term=feature_relation,
    engine=lambda cfg: "autograd" if cfg.rel_source == "features" else "sources",
    needs=lambda cfg: ("features",) if cfg.rel_source == "features" else (),
    naive=naive, default_on=True, added=False,
    sources=("LLaVA-KD (arXiv 2410.16236), RDist",),
)
