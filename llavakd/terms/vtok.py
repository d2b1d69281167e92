"""vtok: the teacher's projected visual tokens, mapped to the student's width, against the student's.

Align-KD (Feng et al., arXiv 2412.01282; code fqhank/Align-KD ``mobilevlm/train/trainer.py`` at
03d1fa4): the visual tokens the teacher's projector gives its LLM, mapped to the student's width
by a learnable 1x1 map (``proj_adapter``; a Linear d_t -> d_s with bias), MSE against the
student's over all of them, plus MSE over the ``vtok_top_k`` (16) the teacher's head-averaged
attention at ``attn_layer`` (the first) favours; weight 1. Readings taken here (docs/methods.md):

* "favours": the teacher's attention from the text after the image (attn's query rows) to each
  visual token, averaged over heads and queries; the top k over the visual keys only (the public
  code ranks all key positions and offsets the index);
* both MSEs are means over their tokens and the width, summed, then averaged over the step's
  image samples; the map trains with the student (the public code leaves it out of the
  optimizer); the teacher's tokens carry no gradient. ``vtok_top_k: 0`` keeps the all-token part.
"""

from __future__ import annotations

from llavakd.terms.base import Dims, NaiveInputs, Param, TermSpec, at_least, engine_and_oracle


def favoured(x: NaiveInputs, cfg, b, keys, k: int, full: bool):
    """The k visual positions of sample ``b`` the teacher's attention at ``attn_layer`` favours."""
    import torch

    from llavakd.distill.attention import probabilities
    from llavakd.terms.attn import query_key_masks
    from llavakd.terms.base import positions

    qm, _ = query_key_masks(cfg, x.labels, x.visual_mask, x.attention_mask)
    rows = qm[b].nonzero().flatten()
    if not rows.numel():
        return keys[:0]
    q, kk = x.teacher_attention
    attended = positions("attended", x.labels, x.visual_mask, x.attention_mask)[b]
    if full:
        p = probabilities(q[b], kk[b], torch.arange(q.shape[2], device=q.device), attended)[:, rows]
    else:
        p = probabilities(q[b], kk[b], rows, attended)
    score = p[:, :, keys].mean(dim=(0, 1))
    return keys[torch.topk(score, min(k, keys.numel())).indices]


def _value(x: NaiveInputs, cfg, full: bool):
    import torch

    mapper = x.parts["vtok"]
    total = torch.zeros((), dtype=torch.float64, device=x.labels.device)
    n = 0
    for b in range(x.labels.shape[0]):
        keys = x.visual_mask[b].nonzero().flatten()
        if not keys.numel():
            continue
        n += 1
        chosen = [keys] + ([favoured(x, cfg, b, keys, cfg.vtok_top_k, full)] if cfg.vtok_top_k else [])
        for pos in chosen:
            if pos.numel():
                mapped = mapper(x.teacher_features[b, pos].detach().to(mapper.weight.dtype))
                total = total + (mapped.double() - x.student_features[b, pos].double()).pow(2).mean()
    return total / max(n, 1), n


value, naive = engine_and_oracle(_value)


def build(cfg, dims: Dims):
    import torch

    return torch.nn.Linear(dims.teacher_hidden, dims.student_hidden)


SPEC = TermSpec(
    name="vtok", title="L_vtok", summary="MSE of the teacher's visual tokens, mapped to the student's width (Align-KD)",
    teacher=True, reads="both models' projected visual tokens (all, and the top k the teacher's attention favours)",
    count="images",
    params=(Param("vtok_top_k", int, 16, "the visual tokens the teacher's attention favours, a second MSE "
                  "(0: all tokens only)", at_least(0)),),
    autograd_term=value, naive=naive, parts=build,
    needs=lambda cfg: ("features", "attention") if cfg.vtok_top_k else ("features",),
    attention_layer=lambda cfg: cfg.attn_layer,  # the layer attn reads (the first, as Align-KD)
    part_params=lambda cfg, d: d.teacher_hidden * d.student_hidden + d.student_hidden,
    flops=lambda cfg, d: 6.0 * d.teacher_hidden * d.student_hidden,
    flop_positions=lambda cfg: "visual",
    sources=("Align-KD (Feng et al., arXiv 2412.01282), code fqhank/Align-KD mobilevlm/train/trainer.py",),
)
