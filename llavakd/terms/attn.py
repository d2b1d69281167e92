"""attn: one layer's attention maps, text queries to vision keys, Align-KD's attention term.

Align-KD (Feng et al., arXiv 2412.01282; code fqhank/Align-KD ``mobilevlm/train/trainer.py`` at
03d1fa4): at the first decoder layer, the teacher's attention probabilities mixed into the
student's head count by a learnable 1x1 map over heads (``attn_adapter``, H_t -> H_s, with bias)
against the student's, MSE over the entries of a text/vision mask; weight 1. Readings taken here
(docs/methods.md):

* the entries: queries at the text positions after the image (``attn_queries: after_image``; or
  the answer tokens, ``answers``), keys at the visual positions (``attn_keys: visual``; or the
  answer tokens, ``answers``, where only the causal pairs, key not after query, count). The public code's mask has the
  vision positions as rows and the text after them as columns, which causal attention makes zero
  in both models (no gradient); the paper speaks of text attending to vision, read here;
* the map trains with the student (the public code keeps it outside the optimizer's groups, so it
  never updates); ``attn_heads: mean`` averages the heads of both instead (LLaVADI's attention
  option when the counts differ);
* ``attn_distance: kl``: the first upload's variant (55d8c24), KL(teacher || student) between the
  head-averaged rows over the visual keys (renormalised), mean over the queries;
* the MSE's mean runs over the step's (query, key) pairs and the student's heads; the layer is
  ``attn_layer`` (0: the first; negative counts from the last).

The probabilities come from the layer's queries and keys for the chosen rows only
(llavakd.distill.attention); the models keep sdpa everywhere.
"""

from __future__ import annotations

from typing import Literal

from llavakd.terms.base import Dims, NaiveInputs, Param, TermSpec, engine_and_oracle, positions


def query_key_masks(cfg, labels, visual_mask, attention_mask):
    """[B, L] bool masks of the query and key positions."""
    import torch

    attended = positions("attended", labels, visual_mask, attention_mask)
    if cfg.attn_queries == "answers":
        q = positions("answers", labels, visual_mask, attention_mask)
    else:  # the text after each sample's image
        seen = torch.cumsum(visual_mask.long(), dim=1) > 0
        q = seen & ~visual_mask & attended
    if cfg.attn_keys == "answers":
        return q, positions("answers", labels, visual_mask, attention_mask)
    return q & visual_mask.any(-1, keepdim=True), visual_mask


def causal_pairs(rows, keys):
    """[n, m] bool: which (query, key) pairs causal attention connects (the key not after the query)."""
    return keys[None, :] <= rows[:, None]


def count(cfg, labels, visual_mask, attention_mask) -> float:
    """The (query, key) pairs (MSE) or the queries with a key (KL) the term averages over in a batch."""
    qm, km = query_key_masks(cfg, labels, visual_mask, attention_mask)
    total = 0
    for b in range(labels.shape[0]):
        pairs = causal_pairs(qm[b].nonzero().flatten(), km[b].nonzero().flatten())
        total += int(pairs.any(-1).sum()) if cfg.attn_distance == "kl" else int(pairs.sum())
    return float(total)


def _maps(x: NaiveInputs, cfg, b, rows, keys, full: bool):
    """(student, teacher) probabilities of one sample's query rows over its chosen keys, [heads, n, m]."""
    import torch

    from llavakd.distill.attention import probabilities

    attended = positions("attended", x.labels, x.visual_mask, x.attention_mask)[b]
    out = []
    for q, k in (x.student_attention, x.teacher_attention):
        if full:  # the oracle: every query row, then the chosen ones
            p = probabilities(q[b], k[b], torch.arange(q.shape[2], device=q.device), attended)[:, rows]
        else:
            p = probabilities(q[b], k[b], rows, attended)
        out.append(p[:, :, keys])
    return out[0], out[1].detach()


def _distance(ps, pt, pairs, x: NaiveInputs, cfg):
    """Summed distance of one sample's maps over its causal ``pairs`` (the caller divides by the count)."""
    import torch

    if cfg.attn_heads == "mix":
        mixer = x.parts["attn"]
        pt = torch.einsum("hqk,sh->sqk", pt.to(mixer.weight.dtype), mixer.weight) + mixer.bias[:, None, None]
        pt = pt.to(ps.dtype)
    else:
        ps, pt = ps.mean(0, keepdim=True), pt.mean(0, keepdim=True)
    if cfg.attn_distance == "mse":
        return ((ps - pt).pow(2).mean(0) * pairs).sum()
    keep = pairs.any(-1)  # head-averaged rows over the chosen keys, renormalised
    valid = pairs[keep]
    ps, pt = (ps.mean(0) * pairs)[keep], (pt.mean(0) * pairs)[keep]
    ps, pt = ps / ps.sum(-1, keepdim=True), pt / pt.sum(-1, keepdim=True)
    one = torch.ones((), dtype=ps.dtype, device=ps.device)  # log(1) = 0 off the causal pairs: no inf * 0 in the gradient
    terms = pt * (torch.where(valid, pt, one).log() - torch.where(valid, ps, one).log())
    return torch.where(valid & (pt > 0), terms, torch.zeros_like(pt)).sum()


def _value(x: NaiveInputs, cfg, full: bool):
    import torch

    qm, km = query_key_masks(cfg, x.labels, x.visual_mask, x.attention_mask)
    n = count(cfg, x.labels, x.visual_mask, x.attention_mask)
    total = torch.zeros((), dtype=torch.float64, device=x.labels.device)
    for b in range(x.labels.shape[0]):
        rows, keys = qm[b].nonzero().flatten(), km[b].nonzero().flatten()
        if rows.numel() and keys.numel():
            ps, pt = _maps(x, cfg, b, rows, keys, full)
            total = total + _distance(ps, pt, causal_pairs(rows, keys), x, cfg).double()
    return total / max(n, 1), int(n)


value, naive = engine_and_oracle(_value)


def build(cfg, dims: Dims):
    import torch

    return torch.nn.Linear(dims.teacher_heads, dims.student_heads)


SPEC = TermSpec(
    name="attn", title="L_attn", summary="one layer's attention maps, text queries to vision keys (Align-KD)",
    teacher=True, reads="both LLMs' attention probabilities at one layer, from the text after the image to the "
                        "visual tokens; the teacher's heads mixed into the student's by a learnable map",
    count="query-key pairs (kl: queries)", counter=count,
    params=(Param("attn_layer", int, 0, "the decoder layer (0: the first; negative: from the last)"),
            Param("attn_queries", Literal["after_image", "answers"], "after_image",
                  "the query rows: the text after the image, or the answer tokens"),
            Param("attn_keys", Literal["visual", "answers"], "visual",
                  "the keys: the visual tokens, or the answer tokens (causal pairs only)"),
            Param("attn_heads", Literal["mix", "mean"], "mix",
                  "mix: the teacher's heads mapped to the student's by a learnable map; mean: both averaged"),
            Param("attn_distance", Literal["mse", "kl"], "mse",
                  "mse over the entries (the current code), or KL between head-averaged rows (the first upload)")),
    checks=lambda cfg: ["attn_distance: kl compares distributions; with attn_heads: mix the mixed teacher maps "
                        "are not one (use attn_heads: mean)"] if cfg.attn_distance == "kl" and cfg.attn_heads == "mix"
    else [],
    autograd_term=value, naive=naive, needs=lambda cfg: ("attention",), parts=build,
    learnable=lambda cfg: cfg.attn_heads == "mix", attention_layer=lambda cfg: cfg.attn_layer,
    part_params=lambda cfg, d: (d.teacher_heads * d.student_heads + d.student_heads) if cfg.attn_heads == "mix" else 0,
    sources=("Align-KD (Feng et al., arXiv 2412.01282), code fqhank/Align-KD mobilevlm/train/trainer.py",),
)
