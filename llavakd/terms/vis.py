"""L_vis: D(teacher || student) at each sample's own visual positions (unshifted), mean over all of them."""

from __future__ import annotations

from llavakd.terms.base import Divergences, NaiveInputs, Param, TermSpec
from llavakd.terms.res import DivergenceRows, divergence_of, naive_rows


def _name(cfg) -> str:
    return cfg.vis_divergence or cfg.divergence


def naive(x: NaiveInputs, cfg):
    return naive_rows(x, cfg, x.visual_mask, divergence_of(cfg, _name(cfg)))


SPEC = TermSpec(
    name="vis", title="L_vis", summary="D(teacher || student) at the visual positions", teacher=True,
    reads="both models' logit rows at each sample's visual-token positions", count="visual", rows="visual",
    params=(Param("vis_divergence", Divergences | None, None, "L_vis's own divergence (null: L_res's)",
                  method=False, added=False),),
    row_kernel=lambda cfg: DivergenceRows(_name(cfg), cfg.jsd_beta, cfg.skew_alpha, cfg.temperature),
    naive=naive, default_on=True, added=False,
    sources=("LLaVA-KD (arXiv 2410.16236), MDist's visual term",),
)
