"""soft: D(teacher || student) at the positions it names, the prompt or every attended one.

L_res distils the answers; this term distils the other positions a method names:

* ``soft_positions: prompt``: the text positions whose next token is not supervised (the prompt
  predicting itself; visual positions are L_vis's), the forward KL BiLD's released trainer adds
  on the prompt (fpcsong/BiLD ``trainers/custom_trainer.py``);
* ``soft_positions: all``: every attended position, Align-KD's soft-label logit term (fqhank/Align-KD
  ``mobilevlm/train/trainer.py``: -sum p_t log p_s over all positions). With ``forward_kl`` the
  value differs from that soft-label cross-entropy by the teacher's entropy, a constant of the
  student: the gradients are the same.

Its divergence is its own (``soft_divergence``, with L_res's ``jsd_beta``/``skew_alpha``); the
temperature is the loss section's (value times T^2), the mean over the step's positions of its kind.
"""

from __future__ import annotations

from typing import Literal

from llavakd.terms.base import Divergences, NaiveInputs, Param, TermSpec, positions
from llavakd.terms.res import DivergenceRows, divergence_of, naive_rows


def _rows(cfg) -> str:
    return "prompt" if cfg.soft_positions == "prompt" else "attended"


def naive(x: NaiveInputs, cfg):
    rows = positions(_rows(cfg), x.labels, x.visual_mask, x.attention_mask)
    return naive_rows(x, cfg, rows, divergence_of(cfg, cfg.soft_divergence))


SPEC = TermSpec(
    name="soft", title="L_soft", summary="D(teacher || student) at the prompt or at every attended position",
    teacher=True, reads="both models' logit rows at the prompt's text positions or at every attended position",
    count=_rows, rows=_rows,
    params=(Param("soft_positions", Literal["prompt", "all"], "all",
                  "prompt: the text positions whose next token is not supervised (BiLD's prompt KL); all: every "
                  "attended position (Align-KD's soft-label KD)"),
            Param("soft_divergence", Divergences, "forward_kl", "its D(teacher || student)")),
    row_kernel=lambda cfg: DivergenceRows(cfg.soft_divergence, cfg.jsd_beta, cfg.skew_alpha, cfg.temperature),
    naive=naive,
    sources=("BiLD (Li et al., arXiv 2406.13555), code fpcsong/BiLD trainers/custom_trainer.py",
             "Align-KD (Feng et al., arXiv 2412.01282), code fqhank/Align-KD mobilevlm/train/trainer.py"),
)
