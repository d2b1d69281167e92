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

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from llavakd import terms

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


class _Method:
    """One distillation method: its stage and that stage's loss (a weight per registered term of
    llavakd.terms, and every term parameter a method sets)."""

    def problems(self, prefix: str) -> list[str]:
        p = []
        known = terms.names()
        if not self.terms:
            p.append(f"{prefix}terms: name at least one of {', '.join(known)}")
        p += [f"{prefix}terms: unknown term {t!r} (registered: {', '.join(known)})" for t in self.terms if t not in known]
        for name in known:
            if getattr(self, terms.weight_key(name)) < 0:
                p.append(f"{prefix}{terms.weight_key(name)}: must be >= 0, got {getattr(self, terms.weight_key(name))!r}")
        for _, param in method_params():
            bad = param.problem(getattr(self, param.name))
            if bad:
                p.append(f"{prefix}{param.name}: {bad}")
        if self.temperature <= 0:
            p.append(f"{prefix}temperature: must be > 0, got {self.temperature!r}")
        if self.on_policy is not None:
            if not any(t in known and terms.spec(t).teacher and terms.spec(t).rows == "responses" for t in self.terms):
                p.append(f"{prefix}on_policy: the sampled responses are distilled through a teacher term on the "
                         f"responses; add one of {', '.join(_response_terms())} to terms")
            if self.stage != "dft":
                p.append(f"{prefix}on_policy: the student samples answers in dft only (dpt has captions)")
        return p

    @property
    def is_control(self) -> bool:
        """No teacher term (CE alone): the stage's step-matched control (``cft``)."""
        return bool(self.terms) and not any(t in terms.REGISTRY and terms.spec(t).teacher for t in self.terms)


def _response_terms() -> list[str]:
    return [n for n in terms.teacher_terms() if terms.spec(n).rows == "responses"]


def method_params() -> list:
    """The term parameters a method sets (llavakd.terms.base.Param.method), with their terms."""
    return [(s, p) for s, p in terms.params() if p.method]


def _method_fields() -> tuple[list, dict[str, str]]:
    fields = [("terms", list[Literal[terms.names()]], field()),
              ("stage", Literal["dft", "dpt"], field(default="dft"))]
    docs = {"terms": "The terms of the loss (llavakd.terms; docs/methods.md): a method names every term it uses, "
                     "CE included.",
            "stage": "The stage the method distils in (its chain: the baseline's stages up to it, then it)."}
    for name in terms.names():
        fields.append((terms.weight_key(name), float, field(default=1.0)))
        docs[terms.weight_key(name)] = f"Weight of {terms.spec(name).title} ({terms.spec(name).summary})."
    for spec, param in method_params():
        fields.append((param.name, param.type, field(default=param.default)))
        docs[param.name] = f"{spec.title}: {param.doc}."
    fields += [("temperature", float, field(default=1.0)),
               ("parts_lr", float | None, field(default=None)),
               ("on_policy", OnPolicy | None, field(default=None)),
               ("follows", str, field(default=""))]
    docs.update(temperature="Softmax temperature of the divergences on logits.",
                parts_lr="The learning rate of the terms' learnable parts (null: the student's).",
                on_policy="The student's own samples as responses (null: the dataset's answers only).",
                follows="The paper (or summary) the method follows, in a few words.")
    return fields, docs


_fields, _docs = _method_fields()
Method = dataclasses.make_dataclass("Method", _fields, bases=(_Method,))
Method.__module__ = __name__
Method.__doc__ = _Method.__doc__
Method.__field_docs__ = _docs


BUILTIN: dict[str, Method] = {
    CONTROL: Method(terms=["ce"], follows="the step-matched control: the same stage with CE only, no teacher"),
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
    "llavadi": Method(terms=["ce", "res", "feat"],
                      follows="LLaVADI (Xu et al., arXiv 2407.19409): CE + forward KL on the responses + the final "
                              "hidden states' MSE through a learnable projector, weights 1"),
    "align_kd": Method(terms=["ce", "soft", "attn", "vtok"], soft_positions="all",
                       follows="Align-KD (Feng et al., arXiv 2412.01282): CE + soft-label KD on every position + the "
                               "first layer's text-to-vision attention through a learnable head mixer + the "
                               "teacher's visual tokens through a learnable map (all and the 16 it attends most)"),
    "bild": Method(terms=["soft", "bild"], soft_positions="prompt",
                   follows="BiLD (Li et al., arXiv 2406.13555) as released: forward KL on the prompt + top-8 logit "
                           "differences at T 3, teacher-led and student-led, on the responses; no CE"),
    "llava_kd_dft": Method(terms=["ce", "res", "vis", "rel"],
                           follows="LLaVA-KD's DFT objective on the PT+SFT start (the paper's PT+SFT+DFT row)"),
}


def loss_overrides(m: Method) -> dict:
    """The ``loss.*`` keys of a job of this method: every registered term's switch and weight and
    every parameter a method sets, always written, so that two methods' jobs differ exactly where
    their losses do (keys of terms added since are left out of the job's file at their defaults)."""
    out = {f"loss.{t}": t in m.terms for t in terms.names()}
    out.update({f"loss.{terms.weight_key(t)}": getattr(m, terms.weight_key(t)) for t in terms.names()})
    out.update({f"loss.{p.name}": getattr(m, p.name) for _, p in method_params()})
    out["loss.temperature"] = m.temperature
    if m.parts_lr is not None:  # left out at its default, as job configs written before it leave it out
        out["loss.parts_lr"] = m.parts_lr
    op = m.on_policy or OnPolicy(fraction=0.0)
    out.update({"loss.on_policy": op.fraction, "loss.sample_temperature": op.temperature,
                "loss.max_new_tokens": op.max_new_tokens})
    return out


def is_stage_default(m: Method) -> bool:
    """Whether the method's loss is its stage's own (the paper's terms, the defaults): its chain is the bare stage."""
    default = Method(terms=[*terms.dataset_terms(), *terms.default_terms()], stage=m.stage)
    return loss_overrides(m) == loss_overrides(default) and m.stage == default.stage
