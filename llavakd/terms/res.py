"""L_res: D(teacher || student) at every response position (whose shifted label is supervised), mean over them.

The divergence and its parameter are this term's (``divergence``, ``jsd_beta``, ``skew_alpha``);
L_vis takes them too unless it sets its own (``vis_divergence``). The softmax temperature is the
loss section's ``temperature`` (every divergence on logits), the value times T^2.
"""

from __future__ import annotations

from llavakd.terms.base import Divergences, NaiveInputs, Param, TermSpec, between


class DivergenceRows:
    """Per-row T^2 D(p_t || p_s) at temperature T, with its analytic gradient (llavakd.distill.divergences)."""

    def __init__(self, name: str, beta: float, alpha: float, temperature: float):
        from llavakd.distill.divergences import Divergence

        self.div = Divergence(name, beta=beta, alpha=alpha)
        self.T = temperature
        self.key = ("divergence", self.div, temperature)
        self.grad_scale = temperature  # d/ds of T^2 D(s/T) = T D'(s/T)

    def __call__(self, s, t, target, need_grad):
        T = self.T
        st, tt = (s / T, t / T) if T != 1.0 else (s, t)
        return self.div(st, tt, need_grad)

    def reduce(self, rows, mask):
        return (rows * mask).sum().double() * self.T * self.T


def divergence_of(cfg, name: str | None = None):
    """The divergence named ``name`` (default: this term's) with the config's beta and alpha."""
    from llavakd.distill.divergences import Divergence

    return Divergence(name or cfg.divergence, beta=cfg.jsd_beta, alpha=cfg.skew_alpha)


def naive_rows(x: NaiveInputs, cfg, rows, div) -> tuple:
    """sum over ``rows`` of T^2 D(teacher || student) / their number, by the textbook formula."""
    from llavakd.distill.divergences import naive_divergence

    T = cfg.temperature
    n = int(rows.sum())
    s, t = x.student[rows], x.teacher[rows]
    return (naive_divergence(div, s / T, t / T).sum() * T * T) / max(n, 1), n


def naive(x: NaiveInputs, cfg):
    from llavakd.labels import IGNORE_INDEX

    sup = x.labels[:, 1:] != IGNORE_INDEX
    rows = sup.new_zeros(x.labels.shape)
    rows[:, :-1] = sup
    return naive_rows(x, cfg, rows, divergence_of(cfg))


SPEC = TermSpec(
    name="res", title="L_res", summary="D(teacher || student) on the responses", teacher=True,
    reads="both models' logit rows at the supervised (response) positions", count="responses", rows="responses",
    params=(
        Param("divergence", Divergences, "forward_kl",
              "D(teacher || student) of L_res (and of L_vis unless vis_divergence)", added=False),
        Param("jsd_beta", float, 0.5, "the generalized JSD's teacher weight beta", between(0, 1, False, False),
              added=False),
        Param("skew_alpha", float, 0.1, "skew_kl's teacher share alpha in KL(p_t || a p_t + (1 - a) p_s)",
              between(0, 1, True, False), added=False),
    ),
    row_kernel=lambda cfg: DivergenceRows(cfg.divergence, cfg.jsd_beta, cfg.skew_alpha, cfg.temperature),
    naive=naive, default_on=True, added=False,
    sources=("LLaVA-KD (arXiv 2410.16236), MDist's response term",),
)
