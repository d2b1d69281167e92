"""The loss terms, one module each, and the registry every other module reads them from.

Adding a term: write one module that builds a ``TermSpec`` (llavakd/terms/base.py says what each
field means) and add one ``register`` line below. docs/methods.md ("Adding a term") has a worked
example. The order of the lines is the order terms are computed, summed, logged and listed.
"""

from __future__ import annotations

from llavakd.terms import attn, bild, ce, feat, rel, res, soft, vis, vtok
from llavakd.terms.base import DIVERGENCES, REGISTRY, Dims, NaiveInputs, Param, TermSpec, register, weight_key

register(ce.SPEC)
register(res.SPEC)
register(vis.SPEC)
register(rel.SPEC)
register(feat.SPEC)
register(soft.SPEC)
register(bild.SPEC)
register(attn.SPEC)
register(vtok.SPEC)


def names() -> tuple[str, ...]:
    """Every registered term, in registration order."""
    return tuple(REGISTRY)


def teacher_terms() -> tuple[str, ...]:
    """The terms that compare with a teacher: what a distillation stage may add to CE (``dft~res+vis``)."""
    return tuple(n for n, s in REGISTRY.items() if s.teacher)


def default_terms() -> tuple[str, ...]:
    """The teacher terms a distillation stage uses when none are named: the paper's."""
    return tuple(n for n, s in REGISTRY.items() if s.teacher and s.default_on)


def dataset_terms() -> tuple[str, ...]:
    """The terms that read the dataset's answers (CE)."""
    return tuple(n for n, s in REGISTRY.items() if not s.teacher)


def spec(name: str) -> TermSpec:
    return REGISTRY[name]


def part_params(cfg, dims: Dims) -> int:
    """Parameters of every enabled term's learnable parts, from the registry's counts (nothing is built)."""
    return sum(REGISTRY[n].part_params(cfg, dims) for n in cfg.enabled())


def extra_flops(cfg, dims: Dims, positions: dict[str, float]) -> float:
    """FLOPs per sample of every enabled term beyond the models' own (forward and backward): each
    term's ``flops`` (per position) times the positions it is paid at (``positions``: "all",
    "answers" and "visual", each a count per sample)."""
    return sum(REGISTRY[n].flops(cfg, dims) * positions[REGISTRY[n].flop_positions(cfg)] for n in cfg.enabled())


def params() -> list[tuple[TermSpec, Param]]:
    """Every term's parameters, with their term, in registration order."""
    return [(s, p) for s in REGISTRY.values() for p in s.params]


__all__ = ["DIVERGENCES", "REGISTRY", "Dims", "NaiveInputs", "Param", "TermSpec", "dataset_terms", "default_terms",
           "extra_flops", "names", "part_params", "params", "register", "spec", "teacher_terms", "weight_key"]
