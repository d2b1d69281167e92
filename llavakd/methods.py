"""Distillation methods as named recipes: the stage a method distils in and that stage's loss.

    from llavakd.methods import BUILTIN, Method, loss_overrides
    BUILTIN["gkd"].on_policy.fraction        # 0.5
    loss_overrides(BUILTIN["kd"])           # {"loss.ce": True, "loss.res": True, "loss.vis": False, ...}

A method is what a researcher compares: which terms (CE on the dataset's answers, L_res on the
responses, L_vis at the visual positions, L_rel), their weights, the divergence and its parameter,
the temperature, and where the distilled response tokens come from (the dataset's answers, or for
a fraction of the micro-batches the student's own samples: on-policy). docs/methods.md describes
each built-in method and the paper it follows.

Every method of a study runs its distillation stage from the same start (the baseline's ``pt--sft``
of that seed), on the same batches in the same order, with the same steps, learning rate and
schedule: two methods' jobs differ only in ``loss.*`` (``ce`` trains the stage ``cft``, DFT without
a teacher). A method is named in a chain after ``@`` (``pt--sft--dft@kd``; llavakd.stages); a
method whose loss is the stage's own (``llava_kd_dft``) is the bare stage, so its job is the one the
PT+SFT+DFT ablation row trains. A study may define more methods in YAML (``methods.define``), with
the same keys. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llavakd.config import DIVERGENCES

LossTerm = Literal["ce", "res", "vis", "rel"]
Divergence = Literal["forward_kl", "reverse_kl", "jsd", "tv", "skew_kl"]  # llavakd.config.DIVERGENCES
assert set(Divergence.__args__) == set(DIVERGENCES)
CONTROL = "ce"  # the step-matched control every method is compared with


@dataclass
class OnPolicy:
    """Where the distilled responses come from on some micro-batches: the student's own samples."""

    fraction: float = 0.5
    """lambda: the share of micro-batches (a seeded, resumable draw) whose last answer the student
    samples anew; 0 is off-policy."""
    temperature: float = 1.0
    """Sampling temperature of the student."""
    max_new_tokens: int = 128
    """At most this many sampled tokens per answer (the end token stops earlier)."""

    def problems(self, prefix: str) -> list[str]:
        p = []
        if not 0 <= self.fraction <= 1:
            p.append(f"{prefix}fraction: must be in [0, 1], got {self.fraction!r}")
        if self.temperature <= 0:
            p.append(f"{prefix}temperature: must be > 0, got {self.temperature!r}")
        if self.max_new_tokens < 1:
            p.append(f"{prefix}max_new_tokens: must be >= 1, got {self.max_new_tokens!r}")
        return p


@dataclass
class Method:
    """One distillation method: its stage and that stage's loss."""

    terms: list[LossTerm]
    """The terms of the loss: ce (the dataset's answers), res (the responses), vis (the visual
    positions), rel (the visual positions' relation matrix)."""
    stage: Literal["dft", "dpt"] = "dft"
    """The stage the method distils in (its chain: the baseline's stages up to it, then it)."""
    ce_weight: float = 1.0
    """Weight of CE."""
    res_weight: float = 1.0
    """Weight of the response divergence."""
    vis_weight: float = 1.0
    """Weight of the visual-position divergence."""
    rel_weight: float = 1.0
    """Weight of L_rel."""
    divergence: Divergence = "forward_kl"
    """D(teacher || student) of res and vis (llavakd.distill.divergences)."""
    jsd_beta: float = 0.5
    """The generalized JSD's teacher weight beta."""
    skew_alpha: float = 0.1
    """skew_kl's teacher share alpha in KL(p_t || alpha p_t + (1 - alpha) p_s)."""
    temperature: float = 1.0
    """Softmax temperature of the divergences."""
    on_policy: OnPolicy | None = None
    """The student's own samples as responses (null: the dataset's answers only)."""
    follows: str = ""
    """The paper (or summary) the method follows, in a few words."""

    def problems(self, prefix: str) -> list[str]:
        p = []
        if not self.terms:
            p.append(f"{prefix}terms: name at least one of ce, res, vis, rel")
        for name in ("ce_weight", "res_weight", "vis_weight", "rel_weight", "temperature"):
            if getattr(self, name) < 0 or (name == "temperature" and self.temperature == 0):
                p.append(f"{prefix}{name}: must be {'> 0' if name == 'temperature' else '>= 0'}, "
                         f"got {getattr(self, name)!r}")
        if not 0 < self.jsd_beta < 1:
            p.append(f"{prefix}jsd_beta: must be in (0, 1), got {self.jsd_beta!r}")
        if not 0 <= self.skew_alpha < 1:
            p.append(f"{prefix}skew_alpha: must be in [0, 1), got {self.skew_alpha!r}")
        if self.on_policy is not None:
            if "res" not in self.terms:
                p.append(f"{prefix}on_policy: the sampled responses are distilled through res; add it to terms")
            if self.stage != "dft":
                p.append(f"{prefix}on_policy: the student samples answers in dft only (dpt has captions)")
        return p

    @property
    def is_control(self) -> bool:
        """CE alone: no teacher, the stage's step-matched control (``cft``)."""
        return list(self.terms) == ["ce"]


BUILTIN: dict[str, Method] = {
    "ce": Method(terms=["ce"], follows="the step-matched control: the same stage with CE only, no teacher"),
    "kd": Method(terms=["ce", "res"], follows="Hinton et al. 2015; the dense response distillation of LLaVA-MoD's "
                                              "mimic stage and LLaVADI"),
    "reverse_kl": Method(terms=["ce", "res"], divergence="reverse_kl",
                         follows="MiniLLM's divergence (Gu et al. 2024), off-policy; its policy gradient is not "
                                 "reproduced"),
    "skew_kl": Method(terms=["ce", "res"], divergence="skew_kl", skew_alpha=0.1,
                      follows="DistiLLM's skew KL, SKL with alpha 0.1 (Ko et al. 2024), without its adaptive "
                              "off-policy sampling"),
    "jsd": Method(terms=["res"], divergence="jsd", jsd_beta=0.5,
                  follows="GKD's supervised setting, lambda 0 (Agarwal et al. 2024)"),
    "gkd": Method(terms=["res"], divergence="jsd", jsd_beta=0.5, on_policy=OnPolicy(0.5, 1.0, 128),
                  follows="GKD (Agarwal et al., ICLR 2024): generalized JSD, half the micro-batches on the "
                          "student's own samples"),
    "llava_kd_dft": Method(terms=["ce", "res", "vis", "rel"],
                           follows="LLaVA-KD's DFT objective on the PT+SFT start (the paper's PT+SFT+DFT row)"),
}


def loss_overrides(m: Method) -> dict:
    """The ``loss.*`` keys of a job of this method (every key a method sets, always written, so that
    two methods' jobs differ exactly where their losses do)."""
    out = {f"loss.{t}": t in m.terms for t in ("ce", "res", "vis", "rel")}
    for name in ("ce_weight", "res_weight", "vis_weight", "rel_weight", "divergence", "jsd_beta", "skew_alpha",
                 "temperature"):
        out[f"loss.{name}"] = getattr(m, name)
    op = m.on_policy or OnPolicy(fraction=0.0)
    out.update({"loss.on_policy": op.fraction, "loss.sample_temperature": op.temperature,
                "loss.max_new_tokens": op.max_new_tokens})
    return out


def is_stage_default(m: Method) -> bool:
    """Whether the method's loss is its stage's own (every term, the defaults): its chain is the bare stage."""
    default = Method(terms=["ce", "res", "vis", "rel"], stage=m.stage)
    return loss_overrides(m) == loss_overrides(default) and m.stage == default.stage

