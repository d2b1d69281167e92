"""What a loss term is: its declaration (``TermSpec``), its parameters (``Param``) and the registry.

A term is one module of ``llavakd.terms`` that builds a ``TermSpec`` and registers it (one line in
``llavakd/terms/__init__.py``). Everything else reads terms from ``REGISTRY``: the stage config's
``loss`` section (a switch ``<name>``, a weight ``<name>_weight`` and the term's parameters, each a
key of its own), the methods (``llavakd.methods``), the chain grammar (``dpt~res+vis``), the
objective's engines (``llavakd.distill``), the trainer's per-step counts and the reports. No module
outside this package enumerates term names or branches on them.

A term is computed by one of three engines, which its spec names per config (``engine``):

* ``rows``     one value per logit row at the rows it selects (``rows``: the supervised responses
               or the visual positions), in the chunked pass over row chunks that never holds more
               than a chunk of full-vocabulary intermediates (``row_kernel``);
* ``sources``  from logit sources that give row chunks and vocabulary blocks (``source_term``: the
               Gram matrices of L_rel), inside the same custom autograd function;
* ``autograd`` by plain autograd from small tensors (projected visual features, hidden states:
               ``autograd_term``), added after the chunked objective.

Every term also has a float64-friendly naive form (``naive``), the oracle the engines are tested
against. Torch-free at import: implementations import torch inside their functions, so the planner
reads the registry without loading torch.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

Divergences = Literal["forward_kl", "reverse_kl", "jsd", "tv", "skew_kl"]
"""D(teacher || student) between two logit rows (llavakd.distill.divergences implements each)."""
DIVERGENCES = Divergences.__args__

Rows = Literal["responses", "visual", "prompt", "attended"]
"""Logit rows a row term reads (``positions``): ``responses``, the positions whose next token is
supervised (the answers; shifted labels); ``visual``, each sample's own visual-token positions;
``prompt``, the other text positions whose next position is attended (the prompt predicting
itself); ``attended``, every non-padding position."""
Count = Literal["responses", "answers", "visual", "prompt", "attended", "images"]
"""What a term averages over, summed over the optimizer step's micro-batches and ranks: the
positions of a ``Rows`` kind, the supervised tokens' own positions (``answers``), or the samples
with an image (``images``)."""


def positions(kind: str, labels, visual_mask, attention_mask=None):
    """[B, L] bool: the positions of one kind (``Rows``/``Count``; not ``images``), the one
    definition the engines, the naive forms and the trainer's per-step counts share."""
    import torch

    from llavakd.labels import IGNORE_INDEX

    attended = attention_mask.bool() if attention_mask is not None else torch.ones_like(labels, dtype=torch.bool)
    if kind == "visual":
        return visual_mask
    if kind == "attended":
        return attended
    if kind == "answers":
        return (labels != IGNORE_INDEX) & attended
    responses = torch.zeros_like(labels, dtype=torch.bool)
    responses[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    if kind == "responses":
        return responses
    if kind == "prompt":
        next_attended = torch.zeros_like(attended)
        next_attended[:, :-1] = attended[:, 1:]
        return attended & next_attended & ~visual_mask & ~responses
    raise ValueError(f"unknown positions {kind!r}")
Engine = Literal["rows", "sources", "autograd"]

# Job configs written before the registry list their loss keys in this order; a finished job's
# config text must come out byte-identical (Snakemake would otherwise see changed params and plan
# the job again), so these keys keep their places and every key added since follows them.
LEGACY_KEY_ORDER = ("ce", "res", "vis", "rel", "ce_weight", "res_weight", "vis_weight", "rel_weight", "divergence",
                    "vis_divergence", "jsd_beta", "skew_alpha", "temperature", "rel_reduction", "rel_source",
                    "rel_normalise", "rel_gram", "implementation", "chunk_rows", "chunk_vocab", "on_policy",
                    "sample_temperature", "max_new_tokens")


@dataclass(frozen=True)
class Param:
    """One parameter of a term: a key of the ``loss`` section (and, with ``method``, of a method)."""

    name: str
    """The config key (unique across terms; a term's own parameters are prefixed with its name)."""
    type: Any
    """Its type as ``llavakd.typed`` reads it (bool, int, float, str, Literal[...], X | None)."""
    default: Any
    """Its value when a config leaves it out."""
    doc: str
    """What it means, in a sentence (docs/methods.md lists every parameter from these)."""
    check: Callable[[Any], str | None] | None = None
    """A range or cross-value rule: returns the problem (after the key's name) or None."""
    method: bool = True
    """A method sets it (every method's job writes it, so two methods differ exactly where their
    losses do); False: it stays the study's stage setting (the paper's fixed choices of L_vis and
    L_rel, kept out of methods so configs written before the registry do not move)."""
    added: bool = True
    """Written to a job config only when set away from its default, so the configs of jobs that
    finished before it existed stay byte-identical (every parameter of a new term)."""

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` (None: nothing): a value outside a Literal type, or the check's line."""
        allowed = _literal_values(self.type)
        if allowed and value not in allowed and not (value is None and _optional(self.type)):
            return f"must be one of {', '.join(map(str, allowed))}, got {value!r}"
        return self.check(value) if self.check is not None else None


def _optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _literal_values(tp) -> tuple:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


@dataclass(frozen=True)
class TermSpec:
    """One term of the objective."""

    name: str
    """Its key: the ``loss`` switch, ``<name>_weight``, the chain's ``~`` list, ``loss_<name>`` in metrics."""
    title: str
    """How reports and docs write it (``L_res``)."""
    summary: str
    """What it computes, in a line."""
    teacher: bool
    """It compares the student with the frozen teacher (False: it reads the dataset's answers, as CE)."""
    reads: str
    """What it reads, in words: logit rows at its positions, the Gram matrices of the visual logits,
    hidden states at a layer, ... (docs/methods.md)."""
    count: Count | Callable[[Any], Count]
    """What its mean is taken over (``Count``), or a function of the config giving it."""
    naive: Callable
    """The oracle: ``naive(ctx, cfg) -> (value, count)`` by autograd on full tensors (``NaiveInputs``)."""
    params: tuple[Param, ...] = ()
    """Its parameters."""
    rows: Rows | Callable[[Any], Rows] | None = None
    """A row term's rows (``Rows``), or a function of the config giving them."""
    row_kernel: Callable | None = None
    """A row term's kernel: ``row_kernel(cfg)`` returns an object with ``key`` (kernels with equal
    keys are evaluated once per chunk), ``__call__(s, t, target, need_grad) -> (rows, dL/ds)`` and
    ``reduce(rows, mask)`` (the chunk's contribution to the sum) and ``grad_scale``."""
    source_term: Callable | None = None
    """``source_term(src_s, src_t, visual_mask, cfg, weight, need_grad, cdt) -> (value, count)``,
    writing its gradient into the student's source."""
    autograd_term: Callable | None = None
    """``autograd_term(inputs, cfg) -> (value, count)`` by plain autograd (``NaiveInputs`` fields)."""
    engine: Callable[[Any], Engine] | None = None
    """Which engine computes it under a config (default: the one its kernels imply)."""
    needs: Callable[[Any], tuple[str, ...]] = lambda cfg: ()
    """Extra inputs it needs under a config, beyond logits (``features``: the projected visual
    features both LLMs receive)."""
    checks: Callable[[Any], list[str]] = lambda cfg: []
    """Rules between its parameters (after each parameter's own check)."""
    default_on: bool = False
    """On in a distillation stage's default loss (the paper's four); a new term is never on unless a
    method or a chain names it."""
    added: bool = True
    """Its switch and weight are written to a job config only away from their defaults (module docstring)."""
    sources: tuple[str, ...] = ()
    """Papers and code it follows (docs/methods.md)."""
    parts: Callable[[Any, Dims], Any] | None = None
    """Its learnable modules: ``parts(cfg, dims)`` returns a ``torch.nn.Module`` (a projector, a head
    mixer) that trains beside the student (llavakd.distill.parts: optimizer, checkpoints, guard) and
    is left out of the exported model; the term reads it as ``inputs.parts[name]``."""
    attention_layer: Callable[[Any], int] | None = None
    """The decoder layer whose attention it reads (``needs`` has ``attention``): the trainer hooks it."""
    learnable: Callable[[Any], bool] = lambda cfg: True
    """Whether ``parts`` exist under a config (a head mixer only when heads are mixed)."""
    counter: Callable | None = None
    """``counter(cfg, labels, visual_mask, attention_mask) -> float``: its count in a batch, for a
    term whose mean runs over something no ``Count`` kind names (pairs of positions)."""
    part_params: Callable[[Any, Dims], int] = lambda cfg, dims: 0
    """How many parameters ``parts`` holds (the memory estimate counts them without building them)."""
    flops: Callable[[Any, Dims], float] = lambda cfg, dims: 0.0
    """FLOPs per position it reads, forward and backward, beyond the models' own (the FLOP count)."""
    flop_positions: Callable[[Any], Literal["all", "answers", "visual"]] = lambda cfg: "all"
    """Which positions of a sample ``flops`` is paid at: every position, the answer (supervised)
    tokens only, or the visual tokens only (llavakd.terms.extra_flops)."""

    def has_parts(self, cfg) -> bool:
        return self.parts is not None and self.learnable(cfg)

    def rows_for(self, cfg) -> Rows | None:
        return self.rows(cfg) if callable(self.rows) else self.rows

    def count_for(self, cfg) -> Count:
        return self.count(cfg) if callable(self.count) else self.count

    def engine_for(self, cfg) -> Engine:
        if self.engine is not None:
            return self.engine(cfg)
        return "rows" if self.row_kernel else "sources" if self.source_term else "autograd"


REGISTRY: dict[str, TermSpec] = {}


def register(spec: TermSpec) -> TermSpec:
    """Add a term (its module calls this once, at import)."""
    if spec.name in REGISTRY:
        raise ValueError(f"loss term {spec.name!r} is registered twice")
    taken = {p.name for s in REGISTRY.values() for p in s.params} | set(REGISTRY) | {f"{n}_weight" for n in REGISTRY}
    clash = [p.name for p in spec.params if p.name in taken] + ([spec.name] if spec.name in taken else [])
    if clash:
        raise ValueError(f"loss term {spec.name!r}: config keys already taken: {', '.join(clash)}")
    REGISTRY[spec.name] = spec
    return spec


def weight_key(name: str) -> str:
    return f"{name}_weight"


def one_of(allowed) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"must be one of {', '.join(map(str, allowed))}, got {v!r}"


def at_least(low: float, strict: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if v is None:
            return None
        bad = v <= low if strict else v < low
        return f"must be {'>' if strict else '>='} {low:g}, got {v!r}" if bad else None
    return check


def between(low: float, high: float, closed_low: bool, closed_high: bool) -> Callable[[Any], str | None]:
    def check(v):
        ok = (v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)
        if ok:
            return None
        return f"must be in {'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}, got {v!r}"
    return check


def engine_and_oracle(compute: Callable) -> tuple[Callable, Callable]:
    """A term's autograd form and its naive form from one ``compute(x, cfg, full) -> (value, count)``
    that takes only the rows it needs (``full`` False) or the full maps first (the oracle)."""

    def value(x, cfg):
        return compute(x, cfg, False)

    def naive(x, cfg):
        v, n = compute(x, cfg, True)
        return v.to(x.student.dtype), n

    return value, naive


@dataclass(frozen=True)
class Dims:
    """The shapes a term's learnable parts are built for (both LLMs' widths and attention heads)."""

    student_hidden: int
    teacher_hidden: int
    student_heads: int = 1
    teacher_heads: int = 1


@dataclass
class NaiveInputs:
    """Everything a term may read, as full tensors (the oracle's and the autograd engine's view)."""

    student: Any = None  # logits [B, L, V] in the compute dtype
    teacher: Any = None
    labels: Any = None  # [B, L], IGNORE_INDEX where unsupervised
    visual_mask: Any = None  # [B, L] bool
    student_features: Any = None  # the projected visual features the LLM receives, [B, L, d]
    teacher_features: Any = None
    student_hidden: Any = None  # the LLM's last hidden state (after the final norm), [B, L, d]
    teacher_hidden: Any = None
    attention_mask: Any = None  # [B, L], 1 where attended (None: every position)
    student_attention: Any = None  # (queries, keys) of one decoder layer, [B, heads, L, head_dim] each
    teacher_attention: Any = None
    parts: Any = None  # the learnable parts by term name (a ModuleDict or a dict)
