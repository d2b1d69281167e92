"""The study config as a typed tree: every key of ``config/*.yaml``, its type, default and meaning.

    from llavakd.study import load_study_config
    cfg = load_study_config(raw_dict, "config/config.yaml")   # ConfigError lists every problem at once
    cfg.eval.limit, cfg.families["qwen1.5"].students, cfg.components.vision_steps

In the manner of torchtitan's ``JobConfig``: one dataclass per section, ``Literal`` fields for
closed choices, and a docstring under every field. Defaults live here and nowhere else: the rules
and the CLI read them from this tree (``ComponentsSection().vision_steps`` is the CLI's default
too). ``llavakd.plan.Study.load`` builds the tree once; nothing else reads the raw dict. What a
type cannot say (ranges, names that must match, chains) is checked by each section's
``problems``; chains are parsed by ``llavakd.stages`` when the planner builds the study.
Torch-free, so ``snakemake -n`` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from llavakd.errors import ConfigError
from llavakd.methods import Method
from llavakd.model.chat import TEMPLATES
from llavakd.protocols import DEFAULT_PROTOCOL
from llavakd.stages import TERMS
from llavakd.typed import build

Protocol = Literal["lmms-eval", "paper"]  # llavakd.protocols.PROTOCOLS
DType = Literal["float32", "bfloat16", "float16"]
Term = Literal[TERMS]  # a registered teacher term (llavakd.terms)
ChatTemplate = Literal[tuple(TEMPLATES)]  # llavakd.model.chat.TEMPLATES
_RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_OVERRIDE_KEY = re.compile(r"^(train|data|loss)\.[a-z_]+$")


def _at_least(prefix: str, node, minimum: float, *names: str, strict: bool = False) -> list[str]:
    out = []
    for name in names:
        v = getattr(node, name)
        if v is not None and (v <= minimum if strict else v < minimum):
            out.append(f"{prefix}{name}: must be {'>' if strict else '>='} {minimum:g}, got {v!r}")
    return out


def _fraction(prefix: str, node, *names: str) -> list[str]:
    return [f"{prefix}{n}: must be in [0, 1], got {getattr(node, n)!r}" for n in names
            if getattr(node, n) is not None and not 0 <= getattr(node, n) <= 1]


@dataclass
class WorldSection:
    seed: int = 0
    """Seed of the synthetic world (tiny mode); the same seed writes byte-identical files."""
    size: Literal["tiny", "small", "demo", "small600"] = "tiny"
    """``tiny``: 1,500 training images and 40 per stand-in; ``small``: 6,000 and 150; ``demo``: tiny's
    1,500 without the yes/no checks and the text-only records (MME and POPE are not taught), 100 per
    stand-in; ``small600``: small's training data and 600 per stand-in, small's 150 images first
    (llavakd.tiny.world.SIZES)."""


@dataclass
class ComponentsSection:
    seed: int = 0
    """Initialisation seed of the tiny SigLIP and LLMs (tiny mode)."""
    vision_steps: int = 1500
    """Pre-training steps of the tiny vision tower (batch 64)."""
    llm_steps: int = 150
    """Language-model pre-training steps of each tiny LLM (batch 32)."""
    min_probe: float = 0.9
    """Fail unless the tower's held-out cell accuracy reaches this."""
    only_study_llms: bool = False
    """Pre-train only the tiny LLMs the study's families name, not all six (the demo: a minute less on
    2 cores). Off by default: the components job of a study that leaves it unset is unchanged."""

    def problems(self, prefix: str) -> list[str]:
        return _at_least(prefix, self, 1, "vision_steps", "llm_steps") + _fraction(prefix, self, "min_probe")


@dataclass
class SubsetSection:
    fraction: float
    """Train every stage on this deterministic random fraction of its records (the speedrun)."""
    seed: int = 0
    """Which subset."""

    def problems(self, prefix: str) -> list[str]:
        out = [] if 0 < self.fraction <= 1 else [f"{prefix}fraction: must be in (0, 1], got {self.fraction!r}"]
        return out + _at_least(prefix, self, 0, "seed")


@dataclass
class DataSection:
    captions: str | None = None
    """Real mode: the caption set PT/DPT read (LLaVA's 558K JSON)."""
    instruct: str | None = None
    """Real mode: the instruction set SFT/DFT read (mix-665K JSON)."""
    images: str | None = None
    """Real mode: the folder both sets' image paths are relative to."""
    manifest: str | None = None
    """Real mode: the files ``prepare_data`` fetches (manifests/)."""
    root: str | None = None
    """Real mode: the folder the manifest's destinations are under."""
    max_bad_fraction: float = 0.0
    """``validate_data`` fails when more than this fraction of a dataset's records is bad."""
    subset: SubsetSection | None = None
    """Train on a subset of every dataset (unset: all records)."""

    def problems(self, prefix: str) -> list[str]:
        return _fraction(prefix, self, "max_bad_fraction")


@dataclass
class Family:
    teacher: str
    """The teacher LLM's name."""
    students: list[str]
    """The student LLMs distilled from it."""
    teacher_checkpoint: str | None = None
    """A trained teacher (LLaVA folder) to use instead of training one by the baseline recipe."""
    template: ChatTemplate | None = None
    """The conversation template of the family's models (llavakd.model.chat; docs/models.md): ``phi``
    (unset: the paper's), ``chatml`` (Qwen2.5, SmolLM2), ``qwen3`` / ``qwen3-think`` (Qwen3: its empty
    think block unsupervised / supervised), ``llama3`` (Llama-3.x). Stored in every saved processor."""

    def problems(self, prefix: str) -> list[str]:
        return [] if self.students else [f"{prefix}students: name at least one student"]


Overrides = dict[str, Any]  # dotted StageConfig keys: {"train.lr": 2e-5, "loss.rel_weight": 0.5}


def _override_problems(prefix: str, node, names) -> list[str]:
    out = []
    for name in names:
        for key in getattr(node, name) or {}:
            if not _OVERRIDE_KEY.match(key):
                out.append(f"{prefix}{name}: {key!r} is not a dotted train./data./loss. key")
    return out


@dataclass
class TeacherTrainSection:
    pt: Overrides | None = None
    """Overrides of the teacher's PT job (on top of ``train.pt``)."""
    sft: Overrides | None = None
    """Overrides of the teacher's SFT job (on top of ``train.sft``)."""

    def problems(self, prefix: str) -> list[str]:
        return _override_problems(prefix, self, ("pt", "sft"))


@dataclass
class TrainSection:
    """``llavakd train`` overrides per stage, any dotted StageConfig key (``train.lr``, ``loss.rel``)."""

    common: Overrides | None = None
    """Every training job."""
    pt: Overrides | None = None
    """PT jobs."""
    sft: Overrides | None = None
    """SFT jobs."""
    dpt: Overrides | None = None
    """DPT jobs."""
    dft: Overrides | None = None
    """DFT jobs, and CFT (the step-matched control takes DFT's settings)."""
    teacher: TeacherTrainSection = field(default_factory=TeacherTrainSection)
    """Teacher runs only, added to the stage's."""

    def problems(self, prefix: str) -> list[str]:
        return _override_problems(prefix, self, ("common", "pt", "sft", "dpt", "dft"))

    def for_stage(self, settings: str, teacher: bool) -> dict[str, Any]:
        """The merged overrides of one job: common, then the stage's, then the teacher's."""
        merged = dict(self.common or {})
        merged.update(getattr(self, settings, None) or {})
        if teacher:
            merged.update(getattr(self.teacher, settings, None) or {})
        return merged


@dataclass
class LossAblation:
    dpt: list[Term] | None = None
    """The distillation terms DPT adds to CE (unset: all)."""
    dft: list[Term] | None = None
    """The distillation terms DFT adds to CE (unset: all)."""
    chain: str | None = None
    """A whole chain instead of ``dpt``/``dft``, for a row that distils in one stage only
    (``dpt~res--sft``, ``pt--sft--dft~res``)."""

    def problems(self, prefix: str) -> list[str]:
        p = [f"{prefix}{st}: name at least one of {', '.join(TERMS)}" for st in ("dpt", "dft")
             if getattr(self, st) is not None and not getattr(self, st)]
        if self.chain is not None and (self.dpt is not None or self.dft is not None):
            p.append(f"{prefix}chain: give a chain or dpt/dft terms, not both")
        return p


@dataclass
class AblationsSection:
    students: list[str] | None = None
    """The students the ablations train (unset: every student)."""
    losses: dict[str, LossAblation] = field(default_factory=dict)
    """Loss ablations by row name: which terms DPT and DFT distil."""
    stages: dict[str, str] = field(default_factory=dict)
    """Stage ablations by row name: a chain (``pt--sft--dft``)."""


@dataclass
class EvalSection:
    benchmarks: str | list[str] = "all"
    """``all`` (the paper's ten) or names of llavakd/eval/benchmarks.yaml (a comma list or a YAML list;
    ``all`` may be one of them: ``all,mmstar``). Table 1 shows the paper's ten and any other named here."""
    average_name: str | None = None
    """The header of the average over all the study's columns when they go beyond the paper's ten
    (unset: Avg(N))."""
    limit: int | None = None
    """Score the first N documents of each task (unset: all)."""
    batch_size: int = 8
    """Generation batch (answers do not depend on it)."""
    dtype: DType = "float32"
    """Weights' dtype during evaluation."""
    pope_questions: str | None = None
    """Paper protocol: a folder of upstream's POPE question files (llava_pope_test.jsonl, coco/, val2014/)
    to score POPE on instead of lmms-lab's copy."""
    hf_home: str | None = None
    """Real mode: a shared Hugging Face cache; evaluation then runs offline after prefetch_benchmarks."""
    protocol: Protocol | list[Protocol] = DEFAULT_PROTOCOL
    """``lmms-eval`` (the stock tasks), ``paper`` (upstream's prompts and parsing), or both (the first is the main one)."""

    def problems(self, prefix: str) -> list[str]:
        out = _at_least(prefix, self, 1, "limit", "batch_size")
        if isinstance(self.protocol, list) and (not self.protocol or len(set(self.protocol)) < len(self.protocol)):
            out.append(f"{prefix}protocol: a list must name each protocol once, got {self.protocol!r}")
        return out

    @property
    def protocols(self) -> list[str]:
        return [self.protocol] if isinstance(self.protocol, str) else list(self.protocol)


@dataclass
class AgreementSection:
    """``llavakd agreement``: each student against its teacher."""

    benchmarks: str | list[str] | None = None
    """Benchmarks to measure (unset: eval's)."""
    limit: int | None = None
    """The first N documents of each task (unset: all)."""
    dtype: DType | None = None
    """Weights' dtype (unset: eval's)."""

    def problems(self, prefix: str) -> list[str]:
        return _at_least(prefix, self, 1, "limit")


@dataclass
class Released:
    checkpoint: str
    """A released checkpoint in our HF layout (e.g. from ``llavakd convert-upstream``)."""
    method: str
    """The paper's Method column it is (e.g. LLaVA-KD)."""
    llm: str
    """The paper's LLM column it is (e.g. Qwen1.5-0.5B)."""


@dataclass
class ReportSection:
    paper_table: str | None = None
    """Not read by the reports (the paper's numbers are under llavakd/report/paper/); kept so older configs load."""
    smoke_run: bool = False
    """The tables say their numbers come from a smoke run, with its step counts."""
    caption: str | None = None
    """Said above every table instead (the demo: what it can and cannot show); ``{steps}`` and
    ``{batch}`` are replaced by the stage step counts and the global batch of the students' runs,
    ``{teacher_steps}`` by the first teacher's."""

    def problems(self, prefix: str) -> list[str]:
        if self.caption is None:
            return []
        import string

        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.caption) if f is not None}
        except ValueError as e:  # a lone brace
            return [f"{prefix}caption: {e} (write a brace as {{{{ or }}}})"]
        return [f"{prefix}caption: unknown placeholder {{{f}}} (known: {{steps}}, {{batch}}, {{teacher_steps}})"
                for f in sorted(fields - {"steps", "batch", "teacher_steps"})]


@dataclass
class Resources:
    """One rule's resources; unset keys fall back to ``resources.default``, then to the rule's own."""

    gpus: int | None = None
    """GPUs per node."""
    nodes: int | None = None
    """Training only: one SLURM job on this many nodes x gpus (torchrun per node)."""
    mem_mb: int | None = None
    """Memory in MB."""
    runtime: int | None = None
    """Minutes. A priced study's (one with ``cost``) training and evaluation jobs ask for their own
    time instead (``max_runtime``; llavakd.schedule)."""
    threads: int | None = None
    """CPU threads."""

    def problems(self, prefix: str) -> list[str]:
        return _at_least(prefix, self, 0, "gpus") + _at_least(prefix, self, 1, "nodes", "mem_mb", "runtime", "threads")


# What a rule gets when neither its section nor ``resources.default`` says (one place for all rules).
RULE_RESOURCES: dict[str, dict[str, int]] = {
    "world": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "components": {"threads": 1, "mem_mb": 8000, "runtime": 60},
    "build": {"threads": 1, "mem_mb": 8000, "runtime": 30},
    "train": {"threads": 1, "gpus": 0, "nodes": 1, "mem_mb": 8000, "runtime": 60},
    "eval": {"threads": 1, "gpus": 0, "mem_mb": 8000, "runtime": 60},
    "report": {},
}


@dataclass
class ResourcesSection:
    default: Resources = field(default_factory=Resources)
    """Every rule, unless its own section says otherwise."""
    world: Resources = field(default_factory=Resources)
    """The synthetic world (tiny mode)."""
    components: Resources = field(default_factory=Resources)
    """The tiny components' pre-training (tiny mode)."""
    build: Resources = field(default_factory=Resources)
    """Assembling each initial LLaVA."""
    train: Resources = field(default_factory=Resources)
    """Every training job."""
    eval: Resources = field(default_factory=Resources)
    """Evaluation and agreement jobs."""
    report: Resources = field(default_factory=Resources)
    """Report rules."""
    max_runtime: int | None = None
    """Minutes: the partition's time limit. With a ``cost`` section, each training and evaluation job
    asks SLURM for its own estimated time (llavakd.schedule) up to this; a job estimated beyond it
    runs in segments, each stopped at a checkpoint before the limit and retried. Unset: no cap."""
    runtime_safety: float = 1.5
    """The factor on a job's estimated time in its request (the estimate's MFU is a guess until measured)."""
    startup_minutes: float = 10.0
    """Minutes each attempt spends before its first step (loading the models and data, resuming)."""
    checkpoint_gbps: float = 1.0
    """GB/s at which a checkpoint (weights and optimizer state) is written, for its share of the time."""
    stop_warning: int = 600
    """Seconds before the time limit at which SLURM sends the trainer its warning (``--signal=URG@``):
    enough to finish a step and write a checkpoint."""

    def problems(self, prefix: str) -> list[str]:
        out = _at_least(prefix, self, 1, "max_runtime", "runtime_safety")
        out += _at_least(prefix, self, 0, "startup_minutes", "stop_warning") + _at_least(prefix, self, 0, "checkpoint_gbps",
                                                                                         strict=True)
        reserved = self.startup_minutes + self.stop_warning / 60
        if self.max_runtime is not None and self.max_runtime <= reserved:
            out.append(f"{prefix}max_runtime: {self.max_runtime} minutes leave no time to train after "
                       f"startup_minutes {self.startup_minutes:g} and stop_warning {self.stop_warning} s")
        return out

    def of(self, rule: str) -> dict[str, int]:
        """One rule's resources: its section over ``default`` over ``RULE_RESOURCES``."""
        out = dict(RULE_RESOURCES.get(rule, {}))
        for section in (self.default, getattr(self, rule)):
            out.update({k: v for k, v in vars(section).items() if v is not None})
        return out


@dataclass
class CpuRate:
    """A study on this CPU (the tiny world): jobs priced in CPU-hours at measured rates, not GPU-hours."""

    gflops: float
    """Model GFLOP/s (llavakd.flops) of one single-threaded training job, measured on the machine
    (``python -m benchmarks.dft_step``: the step's FLOPs over its median seconds)."""
    eval_seconds: float = 0.0
    """Measured seconds of one model's evaluation (every benchmark; its benchmark: file)."""
    agreement_seconds: float = 0.0
    """Measured seconds of one student's agreement job."""
    cores: int = 2
    """Jobs run side by side: the wall-time estimate divides the CPU-hours by this."""

    def problems(self, prefix: str) -> list[str]:
        return (_at_least(prefix, self, 0, "gflops", strict=True)
                + _at_least(prefix, self, 0, "eval_seconds", "agreement_seconds") + _at_least(prefix, self, 1, "cores"))


@dataclass
class CostSection:
    """The GPU-hour estimate ``snakemake -n`` prints (llavakd.plan.cost_report), or with ``cpu`` the CPU-hours."""

    samples: dict[str, int]
    """Records per dataset kind: ``pt`` (captions) and ``sft`` (instructions)."""
    tokens_per_sample: dict[str, float]
    """Mean tokens per record, by the same keys."""
    answer_tokens_per_sample: dict[str, float] = field(default_factory=dict)
    """Mean supervised (answer) tokens per record, by the same keys (the data check's
    ``supervised_tokens`` mean): a loss term that runs on the answers only (LLaVADI's ``feat``) is
    counted there. Unset: at every position, an overcount the dry run names."""
    params: dict[str, float] = field(default_factory=dict)
    """Parameter counts of LLMs whose size the planner does not know."""
    eval_tokens: float = 0.0
    """Tokens one evaluation of one model reads and writes."""
    mfu_file: str | None = None
    """JSON written by benchmarks/gpu_mfu.sh (benchmarks/gpu_mfu.py); when it exists, its measured MFU replaces ``mfu``."""
    peak_tflops: float | None = None
    """Dense bf16 peak of one GPU (H100 SXM: 989); a GPU price needs it."""
    mfu: float | None = None
    """Model FLOPs utilisation assumed until ``mfu_file`` exists; a GPU price needs it."""
    cpu: CpuRate | None = None
    """Price on this CPU instead (the tiny world's studies): measured rates, CPU-hours and a wall-time estimate."""

    def problems(self, prefix: str) -> list[str]:
        out = _at_least(prefix, self, 0, "peak_tflops", strict=True) + _at_least(prefix, self, 0, "eval_tokens")
        if self.cpu is None:
            out += [f"{prefix}{k}: missing (a GPU price needs it; or give cost.cpu)" for k in ("peak_tflops", "mfu")
                    if getattr(self, k) is None]
        if self.mfu is not None and not 0 < self.mfu <= 1:
            out.append(f"{prefix}mfu: must be in (0, 1], got {self.mfu!r}")
        for name in ("samples", "tokens_per_sample", "answer_tokens_per_sample", "params"):
            out += [f"{prefix}{name}.{k}: must be >= 0, got {v!r}" for k, v in getattr(self, name).items() if v < 0]
        return out


@dataclass
class MethodsSection:
    """Distillation methods compared on one footing (``snakemake benchmark_methods``; docs/methods.md)."""

    compare: list[str] = field(default_factory=list)
    """The methods to train and compare: built-in ones (ce, kd, reverse_kl, skew_kl, jsd, gkd,
    llava_kd_dft) or ones under ``define``; ce, the step-matched control, is always compared."""
    students: list[str] | None = None
    """The students of the comparison (default: every student)."""
    define: dict[str, Method] = field(default_factory=dict)
    """This study's own methods, by name, with the keys of a built-in one (llavakd.methods.Method)."""
    budgets: list[int] = field(default_factory=list)
    """Optimizer steps of the methods' stage (DFT), e.g. [200, 800]: every method, ce included, runs at
    every budget from the seed's one start, each with its own full learning-rate schedule (the job's
    chain carries its count: ``pt--sft--dft800@kd``); empty: the stage's ``train.dft.max_steps``, bare chains."""
    compute_matched: bool = False
    """Also train, per method and budget, ``ce`` for as many FLOPs as the method's job (the teacher's
    forward, the terms' parts and on-policy sampling counted by the planner: llavakd.plan.sample_flops);
    its step count is printed by ``snakemake -n``. Needs a ``cost`` section (its ``tokens_per_sample.sft``)."""

    def problems(self, prefix: str) -> list[str]:
        p = [f"{prefix}budgets: {b} must be >= 1" for b in self.budgets if b < 1]
        if len(set(self.budgets)) < len(self.budgets):
            p.append(f"{prefix}budgets: {self.budgets} repeats a budget")
        return p


@dataclass
class StudyConfig:
    """One study: what to train, evaluate and report (``config/*.yaml``; Snakemake's ``config``)."""

    run: str
    """Its name: results go to results/<run>/, reports to reports/<run>/."""
    mode: Literal["tiny", "real"]
    """``tiny``: the synthetic world and tiny models; ``real``: the paper's models and data."""
    seeds: list[int]
    """Training seeds; every student is trained once per seed (teachers under the first)."""
    families: dict[str, Family]
    """Teacher families by name: a teacher and the students distilled from it."""
    variants: dict[str, str]
    """Table 1's recipes as chains: ``baseline`` (PT+SFT) and ``llava_kd`` (DPT+SFT+DFT) at least."""
    eval: EvalSection
    """How models are scored."""
    train: TrainSection = field(default_factory=TrainSection)
    """Per-stage training overrides."""
    world: WorldSection = field(default_factory=WorldSection)
    """The synthetic world (tiny mode)."""
    components: ComponentsSection = field(default_factory=ComponentsSection)
    """The tiny components' pre-training (tiny mode)."""
    vision: str | None = None
    """Real mode: the SigLIP checkpoint (folder or hub id): SigLIP, or a fixed-resolution SigLIP2 (NaFlex
    SigLIP2 is refused; docs/models.md)."""
    vision_strategy: Literal["default", "full"] | None = None
    """Real mode: LLaVA's ``vision_feature_select_strategy``: ``full`` keeps every patch, ``default``
    (upstream's, the paper's 728 tokens) drops the first; unset: ``default``."""
    llms: dict[str, str] = field(default_factory=dict)
    """Real mode: the base LLM checkpoint (folder or hub id) per LLM name."""
    data: DataSection = field(default_factory=DataSection)
    """Training data (real mode) and its checks."""
    ablations: AblationsSection = field(default_factory=AblationsSection)
    """The loss and stage ablations."""
    agreement: AgreementSection = field(default_factory=AgreementSection)
    """Each student's agreement with its teacher."""
    released: dict[str, Released] = field(default_factory=dict)
    """Released checkpoints scored to measure our protocol's offset, by name."""
    report: ReportSection = field(default_factory=ReportSection)
    """Report options."""
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    """Per-rule resources (local cores or SLURM)."""
    cost: CostSection | None = None
    """The GPU-hour estimate (unset: none is printed)."""
    methods: MethodsSection = field(default_factory=MethodsSection)
    """Distillation methods compared on one footing."""

    def problems(self, prefix: str) -> list[str]:
        out = []
        if not _RUN_NAME.match(self.run):
            out.append(f"run: {self.run!r} must use letters, digits, '_', '.' and '-' only")
        if not self.seeds:
            out.append("seeds: name at least one seed")
        out += [f"seeds: {s} must be >= 0" for s in self.seeds if s < 0]
        if len(set(self.seeds)) < len(self.seeds):
            out.append(f"seeds: {self.seeds} repeats a seed")
        if not self.families:
            out.append("families: name at least one family")
        return out


def load_study_config(raw: dict, source: str = "config") -> StudyConfig:
    """The typed study; ConfigError lists every unknown key, wrong type and bad value at once."""
    problems: list[str] = []
    cfg = build(StudyConfig, raw, "", problems)
    if problems:
        raise ConfigError(source, problems)
    return cfg
