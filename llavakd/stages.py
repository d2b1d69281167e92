"""The one home of stage knowledge: the stages, and the chain grammar that strings them together.

    from llavakd.stages import STAGES, Chain
    STAGES["dft"].trainable          # ('projector', 'llm')
    chain = Chain.parse("dpt~res+vis--sft--dft")
    chain.last.name, chain.last.terms  # 'dft', ('res', 'vis', 'rel')
    str(chain.prefix(2))             # 'dpt~res+vis--sft'

A distillation stage may instead name a *method* after ``@`` (``pt--sft--dft@kd``): a recipe of the
study (llavakd.methods: built in, or defined in its YAML) that sets the stage's whole loss. A stage
after the first may carry its optimizer steps after its name (``pt--sft--dft800@kd``, ``pt--sft--cft2480``):
a budget of its own, with its own full learning-rate schedule, in a folder of its own; a stage
without a count trains the study's ``train.<stage>.max_steps``.

A stage (docs/method.md, "Three stages") says what trains, which template and dataset it reads, whether
a frozen teacher distils into it, and the paper's batch, learning rate and precision. A *chain*
lists stages in order, joined by ``--``; a distillation stage may name the terms it adds to CE
after ``~`` (``dpt~res+vis``, any registered teacher term; no list means the paper's L_res, L_vis,
L_rel, and a term added since is never on unless named). ``pt--sft`` is the
TinyLLaVA recipe of teachers and baselines, ``dpt--sft--dft`` LLaVA-KD. Every prefix of a chain is
itself a run, so variants that share stages share their training jobs. ``cft`` is not a stage of the
paper: CE-only fine-tuning with DFT's data, steps and learning rate, so that ``pt--sft--cft`` (the
``baseline_plus`` variant) takes as many optimizer steps as LLaVA-KD without a teacher.

Nothing else parses or formats a chain: the planner, the rules (through ``CHAIN_REGEX``), the
trainer and the reports all go through ``Chain``. Torch-free, so the planner can import it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from llavakd import terms as _terms

TERMS = _terms.teacher_terms()  # the distillation terms a distillation stage may name after ~ (llavakd.terms)
DEFAULT_TERMS = _terms.default_terms()  # what a bare distillation stage adds to CE: the paper's
SEPARATOR = "--"  # between the stages of a chain
TERM_MARK = "~"  # after a distillation stage's name: the terms it uses
TERM_JOIN = "+"  # between those terms
METHOD_MARK = "@"  # after a distillation stage's name: the method (llavakd.methods) that sets its loss
METHOD_NAME = r"[a-z][a-z0-9_]*"
STEPS = r"[1-9][0-9]*"  # a stage's own optimizer steps, right after its name (no stage name holds a digit)


@dataclass(frozen=True)
class StageSpec:
    """What one stage is (the paper's hyper-parameters are the defaults a study may override)."""

    name: str
    trainable: tuple[str, ...]  # modules that train; the vision tower is always frozen
    template: str  # "pretrain" (image + caption) or "chat" (the phi conversation template)
    dataset: str  # "captions" (558K) or "instruct" (mix-665K): the study's data key it reads
    distill: bool  # a frozen teacher adds L_res, L_vis, L_rel to CE
    global_batch: int
    lr: float
    precision: str  # fp32 | bf16 | fp16
    starts_chain: bool  # trains a fresh projector: only allowed as a chain's first stage
    settings_of: str | None = None  # a control stage: takes this stage's study settings (train.<stage>)


STAGES: dict[str, StageSpec] = {
    "pt": StageSpec("pt", ("projector",), "pretrain", "captions", False, 256, 1e-3, "fp16", True),
    "sft": StageSpec("sft", ("projector", "llm"), "chat", "instruct", False, 128, 2e-5, "bf16", False),
    "dpt": StageSpec("dpt", ("projector",), "pretrain", "captions", True, 256, 1e-3, "fp16", True),
    "dft": StageSpec("dft", ("projector", "llm"), "chat", "instruct", True, 128, 2e-5, "bf16", False),
    # the step-matched control of DFT: the same stage without the teacher (settings_of: always DFT's)
    "cft": StageSpec("cft", ("projector", "llm"), "chat", "instruct", False, 128, 2e-5, "bf16", False, "dft"),
}
NAMES = tuple(STAGES)
DISTILL_STAGES = tuple(n for n, s in STAGES.items() if s.distill)
FIRST_STAGES = tuple(n for n, s in STAGES.items() if s.starts_chain)

_ALT = "|".join
TOKEN_REGEX = (rf"(?:{_ALT(NAMES)})(?:{STEPS})?(?:{re.escape(TERM_MARK)}(?:{_ALT(TERMS)})"
               rf"(?:{re.escape(TERM_JOIN)}(?:{_ALT(TERMS)}))*|{re.escape(METHOD_MARK)}{METHOD_NAME})?")
CHAIN_REGEX = rf"{TOKEN_REGEX}(?:{SEPARATOR}{TOKEN_REGEX})*"  # Snakemake's {chain} wildcard
_TOKEN = re.compile(rf"^({_ALT(NAMES)})({STEPS})?(?:{re.escape(TERM_MARK)}(.*)|{re.escape(METHOD_MARK)}(.*))?$")


class ChainError(ValueError):
    """A chain or stage token that the grammar above does not accept."""


@dataclass(frozen=True)
class Step:
    """One stage of a chain: its name and, for a distillation stage, the terms it adds to CE or the
    method that sets its loss (the study resolves the method's name: llavakd.plan); ``steps``: its
    own optimizer steps (None: the study's for the stage)."""

    name: str
    terms: tuple[str, ...] = ()
    method: str | None = None
    steps: int | None = None

    @property
    def spec(self) -> StageSpec:
        return STAGES[self.name]

    @property
    def distill(self) -> bool:
        return self.spec.distill

    @classmethod
    def parse(cls, token: str) -> Step:
        m = _TOKEN.match(token)
        if not m:
            raise ChainError(f"bad stage token {token!r}: expected one of {', '.join(NAMES)}, "
                             f"optionally {TERM_MARK}{TERM_JOIN.join(TERMS)} or {METHOD_MARK}<method>")
        name, count, listed, method = m.group(1), m.group(2), m.group(3), m.group(4)
        steps = int(count) if count else None
        if steps is not None and STAGES[name].starts_chain:
            raise ChainError(f"stage token {token!r}: a chain's first stage trains the study's steps; only later "
                             "stages carry a count")
        if method is not None:
            if not STAGES[name].distill:
                raise ChainError(f"stage token {token!r}: only {' and '.join(DISTILL_STAGES)} take a method")
            if not re.fullmatch(METHOD_NAME, method):
                raise ChainError(f"stage token {token!r}: a method name is lower-case letters, digits and _")
            return cls(name, DEFAULT_TERMS, method, steps)
        if listed is None:
            return cls(name, DEFAULT_TERMS if STAGES[name].distill else (), None, steps)
        if not STAGES[name].distill:
            raise ChainError(f"stage token {token!r}: only {' and '.join(DISTILL_STAGES)} take loss terms")
        chosen = listed.split(TERM_JOIN)
        unknown = [t for t in chosen if t not in TERMS]
        if unknown or not listed:
            raise ChainError(f"stage token {token!r}: terms must be some of {', '.join(TERMS)}")
        return cls(name, tuple(t for t in TERMS if t in chosen), None, steps)

    def __str__(self) -> str:
        head = self.name + ("" if self.steps is None else str(self.steps))
        if self.method is not None:
            return head + METHOD_MARK + self.method
        if not self.distill or set(self.terms) == set(DEFAULT_TERMS):
            return head
        return head + TERM_MARK + TERM_JOIN.join(self.terms)


@dataclass(frozen=True)
class Chain:
    """Stages in training order; ``str(chain)`` is the canonical text used in run names."""

    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, text: str) -> Chain:
        """The chain a text names (ChainError if the grammar refuses it); each text is parsed once."""
        return _parse_chain(str(text))

    @classmethod
    def _parse(cls, text: str) -> Chain:
        steps = tuple(Step.parse(t) for t in text.split(SEPARATOR))
        if steps[0].name not in FIRST_STAGES:
            raise ChainError(f"chain {text!r} must start with {' or '.join(FIRST_STAGES)} "
                             "(the projector is trained first)")
        if any(s.name in FIRST_STAGES for s in steps[1:]):
            raise ChainError(f"chain {text!r}: {'/'.join(FIRST_STAGES)} may only come first")
        return cls(steps)

    @classmethod
    def of(cls, *steps: Step) -> Chain:
        return cls(tuple(steps))

    def __str__(self) -> str:
        return SEPARATOR.join(str(s) for s in self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def last(self) -> Step:
        return self.steps[-1]

    def prefix(self, n: int) -> Chain:
        """The first ``n`` stages (a run of its own)."""
        return Chain(self.steps[:n])

    def prefixes(self) -> list[Chain]:
        return [self.prefix(i + 1) for i in range(len(self.steps))]

    def parent(self) -> Chain | None:
        """The run this chain's last stage starts from (None: the freshly built model)."""
        return self.prefix(len(self.steps) - 1) if len(self.steps) > 1 else None


@functools.lru_cache(maxsize=4096)
def _parse_chain(text: str) -> Chain:
    return Chain._parse(text)


def as_chain(chain: Chain | str) -> Chain:
    """A chain given as an object or as its text (a Snakemake wildcard, a model name's part)."""
    return chain if isinstance(chain, Chain) else Chain.parse(chain)


def with_terms(name: str, terms) -> Step:
    """A stage with an explicit list of distillation terms (``None``: the stage's default, the paper's)."""
    return Step(name, DEFAULT_TERMS if terms is None else tuple(t for t in TERMS if t in terms))
