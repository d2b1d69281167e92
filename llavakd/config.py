"""Typed, validated configurations: one stage of training and its loss (torch-free).

A stage config is YAML with four sections; unknown keys and bad values are collected and
reported together (``ConfigError`` lists every problem). ``key=value`` overrides use dotted
paths (``train.lr=1e-3``, ``loss.rel=false``); values are parsed as YAML scalars.

    stage: dft                       # a stage of llavakd.stages.STAGES (freeze plan, defaults)
    model: results/.../sft/final     # the student to start from (a llavakd/HF LLaVA folder)
    teacher: results/.../teacher     # distillation stages only
    output_dir: results/.../dft
    data:  {json: ..., images: ..., max_length: 2048, skip_bad: false}
    train: {global_batch: 128, per_device_batch: 1, lr: 2.0e-5, ...}
    loss:  {ce: true, res: true, vis: true, rel: true, ...}   # LossConfig below (llavakd.terms)

The planner builds one ``StageConfig`` per training job from the study (``llavakd.plan``) with
the same code a job uses to read it back (``stage_config_from_dict``), so a bad key fails the
dry run. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from llavakd import terms
from llavakd.errors import ConfigError
from llavakd.stages import DISTILL_STAGES, NAMES, STAGES, StageSpec
from llavakd.terms.base import LEGACY_KEY_ORDER
from llavakd.typed import build

IMPLEMENTATIONS = ("fused", "chunked", "naive")  # fused: from hidden states and heads (llavakd.distill.fused)


def added(default):
    """A field added after runs were made with this config: a config file carries it only when it is
    set away from its default, so the config files of finished jobs stay byte-identical (their
    ``job_config`` and ``train`` jobs do not look stale) and their resume check sees no change."""
    return field(default=default, metadata={"omit_at_default": True})


class _Loss:
    """The objective's configuration: for every registered term (llavakd.terms) a switch
    ``<term>``, a weight ``<term>_weight`` and the term's parameters, plus the settings every term
    shares (below). The paper's default: CE, L_res, L_vis and L_rel on, weight 1, temperature 1;
    a term added since is off unless a method or a chain names it.

    docs/method.md ("Losses") has the equations; docs/losses.md the divergences and implementations;
    docs/methods.md every term and its parameters.
    """

    def enabled(self) -> tuple[str, ...]:
        """The terms switched on, in registration order."""
        return tuple(n for n in terms.names() if getattr(self, n))

    def weight(self, name: str) -> float:
        return getattr(self, terms.weight_key(name))

    def only(self, names) -> _Loss:
        """The same settings with exactly these terms switched on."""
        return dataclasses.replace(self, **{n: n in names for n in terms.names()})

    def without(self, names) -> _Loss:
        """The same settings with these terms switched off."""
        return dataclasses.replace(self, **{n: False for n in names})

    @property
    def needs_teacher(self) -> bool:
        return any(terms.spec(n).teacher for n in self.enabled())

    def needs(self) -> set[str]:
        """Inputs beyond logits that the enabled terms read (``features``: the projected visual features)."""
        return {x for n in self.enabled() for x in terms.spec(n).needs(self)}

    def attention_layers(self) -> set[int]:
        """The decoder layers whose attention the enabled terms read."""
        return {terms.spec(n).attention_layer(self) for n in self.enabled() if "attention" in terms.spec(n).needs(self)}

    def validate(self) -> list[str]:
        """Every problem, one line each: the settings in the config's key order, then the weights,
        then the rules between settings."""
        params = {p.name: p for _, p in terms.params()}
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in params:
                bad = params[f.name].problem(value)
            else:
                bad = _SHARED_CHECKS.get(f.name, lambda v: None)(value)
            if bad:
                problems.append(f"{f.name}: {bad}")
        for name in terms.names():
            if self.weight(name) < 0:
                problems.append(f"{terms.weight_key(name)}: must be >= 0, got {self.weight(name)}")
        for name in self.enabled():
            problems += terms.spec(name).checks(self)
        if len(self.attention_layers()) > 1:
            problems.append(f"attention: the terms read attention at different layers {sorted(self.attention_layers())}; "
                            "one layer is hooked")
        if self.on_policy and not any(terms.spec(n).teacher and terms.spec(n).rows_for(self) == "responses"
                                      for n in self.enabled()):
            problems.append("on_policy: the sampled answers are distilled through a teacher term on the responses "
                            f"({', '.join(n for n in terms.teacher_terms() if terms.spec(n).rows == 'responses')}), "
                            "and none is on")
        return problems


def _positive(v):
    return None if v > 0 else f"must be > 0, got {v}"


def _at_least_one(v):
    return None if v is None or v >= 1 else f"must be >= 1, got {v}"


_SHARED_CHECKS = {
    "temperature": _positive,
    "implementation": lambda v: None if v in IMPLEMENTATIONS else f"must be one of {', '.join(IMPLEMENTATIONS)}, got {v!r}",
    "on_policy": lambda v: None if 0 <= v <= 1 else f"must be in [0, 1], got {v}",
    "sample_temperature": _positive,
    "max_new_tokens": _at_least_one,
    "parts_lr": lambda v: None if v is None or v >= 0 else f"must be >= 0, got {v}",
    "chunk_rows": _at_least_one,
    "chunk_vocab": _at_least_one,
}


# The settings every term shares (name, type, default, omitted at default).
_SHARED = [
    ("temperature", float, 1.0, False),  # softmax temperature of every divergence on logits (value times T^2)
    ("implementation", str, "fused", False),  # "fused" (trainer: hidden states + heads), "chunked" or "naive" (logits)
    ("chunk_rows", int | None, None, False),  # rows per chunk; default: ~32 MB of fp32 per full-vocabulary temporary
    ("chunk_vocab", int | None, None, False),  # vocabulary columns per Gram chunk
    ("on_policy", float, 0.0, True),  # share of micro-batches whose last answer the student samples (GKD's lambda)
    ("sample_temperature", float, 1.0, True),  # the student's sampling temperature on those micro-batches
    ("max_new_tokens", int, 128, True),  # at most this many sampled tokens per answer
    ("parts_lr", float | None, None, True),  # the learnable parts' learning rate (null: the student's)
]


def _loss_fields() -> list[tuple]:
    """LossConfig's fields from the registry: every term's switch, weight and parameters, then the
    shared settings; keys of configs written before the registry keep their order (llavakd.terms.base)."""
    out = []
    for spec in terms.REGISTRY.values():
        out.append((spec.name, bool, spec.default_on, spec.added))
        out.append((terms.weight_key(spec.name), float, 1.0, spec.added))
    for spec, p in terms.params():
        out.append((p.name, p.type, p.default, p.added))
    out += _SHARED
    legacy = {k: i for i, k in enumerate(LEGACY_KEY_ORDER)}
    out.sort(key=lambda f: (0, legacy[f[0]]) if f[0] in legacy else (1, 0))  # stable: new keys keep their order
    return [(name, tp, added(default) if omit else field(default=default)) for name, tp, default, omit in out]


LossConfig = dataclasses.make_dataclass("LossConfig", _loss_fields(), bases=(_Loss,))
LossConfig.__module__ = __name__
LossConfig.__doc__ = _Loss.__doc__


@dataclass
class DataConfig:
    json: str = ""
    images: str = ""
    max_length: int = 2048
    skip_bad: bool = False
    num_workers: int = 0
    subset_fraction: float = 1.0  # train on a deterministic random subset of the records (speedrun)
    subset_seed: int = 0
    skip_records: str | None = None  # a validate-data report: its bad records are left out up front


@dataclass
class TrainConfig:
    global_batch: int | None = None  # default: the stage's (llavakd.stages); kept constant across GPU counts
    per_device_batch: int = 1
    lr: float | None = None  # default: the stage's
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    seed: int = 1234
    precision: str | None = None  # fp32 | bf16 | fp16 | fp64 (exactness tests); default: the stage's
    grad_clip: float = 1.0
    gradient_checkpointing: bool | int | Literal["auto"] = False  # false off, true all layers, k every k-th
    #   decoder layer (llavakd.memory.checkpointed_layers); "auto" in a study: the planner picks the least
    #   recomputation that fits the memory estimate (llavakd.plan), and the job config holds its choice
    group_by_modality_length: bool = True  # batches of similar length, images and text apart (llavakd.data.sampler)
    deepspeed: str | None = None  # path to a DeepSpeed JSON config
    save_steps: int = 500
    keep_checkpoints: int = 2
    logging_steps: int = 1
    stop_after_steps: int | None = None  # a test hook: stop at the first checkpoint at or after this step, with no
    #   final/, as a job killed right after that checkpoint would. It exists so the resume and damaged-checkpoint
    #   tests (tests/test_faults.py, tests/test_train.py) get a half-finished run in-process, without a subprocess
    #   and a SIGKILL; it is not part of what is trained (a resume may drop it) and a study never sets it
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = added("sdpa")  # every LLaVA the job
    #   loads (transformers' attn_implementation; flash_attention_2 needs the flash-attn package and a GPU)
    liger_kernels: bool = added(False)  # liger-kernel's Qwen2 kernels (RMSNorm, RoPE, SwiGLU) in both LLMs;
    #   Triton, so CUDA only: a study refuses it for jobs without GPUs (pip install 'llavakd[cuda]')
    compile: bool = added(False)  # torch.compile each decoder layer of the student's LLM
    share_vision_tower: bool = added(True)  # one vision pass for teacher and student when their frozen towers
    #   hold the same weights (llavakd/train/vision.py); false: each model runs its own


@dataclass
class StageConfig:
    stage: str = ""
    model: str = ""
    teacher: str | None = None
    output_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    @property
    def spec(self) -> StageSpec:
        return STAGES[self.stage]

    @property
    def distill(self) -> bool:
        return self.spec.distill

    def resolved(self) -> StageConfig:
        """Fill stage defaults (batch, lr, precision; CE-only loss for pt/sft)."""
        cfg = dataclasses.replace(self, data=dataclasses.replace(self.data), train=dataclasses.replace(self.train),
                                  loss=dataclasses.replace(self.loss))
        spec = cfg.spec
        cfg.train.global_batch = cfg.train.global_batch or spec.global_batch
        cfg.train.lr = spec.lr if cfg.train.lr is None else cfg.train.lr
        cfg.train.precision = cfg.train.precision or spec.precision
        if not cfg.distill:
            cfg.loss = cfg.loss.without(terms.teacher_terms())
        return cfg

    def validate(self) -> list[str]:
        p = []
        if self.stage not in STAGES:
            p.append(f"stage: must be one of {', '.join(NAMES)}, got {self.stage!r}")
        for key in ("model", "output_dir"):
            if not getattr(self, key):
                p.append(f"{key}: required")
        if not self.data.json:
            p.append("data.json: required")
        if not self.data.images:
            p.append("data.images: required")
        if self.stage in DISTILL_STAGES and not self.teacher:
            p.append(f"teacher: required for the distillation stage {self.stage!r}")
        if self.stage in STAGES and not self.distill and self.teacher:
            p.append(f"teacher: stage {self.stage!r} trains with CE only; remove the teacher or use dpt/dft")
        t = self.train
        if t.global_batch is not None and t.global_batch < 1:
            p.append(f"train.global_batch: must be >= 1, got {t.global_batch}")
        if t.per_device_batch < 1:
            p.append(f"train.per_device_batch: must be >= 1, got {t.per_device_batch}")
        if t.lr is not None and t.lr <= 0:
            p.append(f"train.lr: must be > 0, got {t.lr}")
        if t.schedule not in ("cosine", "linear", "constant"):
            p.append(f"train.schedule: must be cosine, linear or constant, got {t.schedule!r}")
        if not 0 <= t.warmup_ratio < 1:
            p.append(f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
        if t.precision not in (None, "fp32", "bf16", "fp16", "fp64"):
            p.append(f"train.precision: must be fp32, bf16, fp16 or fp64 (tests), got {t.precision!r}")
        gc = t.gradient_checkpointing
        if gc == "auto":
            p.append("train.gradient_checkpointing: 'auto' is chosen by the study planner from the memory estimate "
                     "(llavakd/memory.py knows the shapes of the paper's Qwen LLMs); a job needs false, true or k "
                     "(every k-th layer)")
        elif not isinstance(gc, bool) and isinstance(gc, int) and gc < 0:
            p.append(f"train.gradient_checkpointing: k must be >= 1 (every k-th layer), got {gc}")
        if t.save_steps < 1:
            p.append(f"train.save_steps: must be >= 1, got {t.save_steps}")
        if t.deepspeed and not Path(t.deepspeed).is_file():
            p.append(f"train.deepspeed: {t.deepspeed} does not exist")
        if not 0 < self.data.subset_fraction <= 1:
            p.append(f"data.subset_fraction: must be in (0, 1], got {self.data.subset_fraction}")
        if self.data.max_length < 8:
            p.append(f"data.max_length: must be >= 8, got {self.data.max_length}")
        p += [f"loss.{x}" if not x.startswith("loss.") else x for x in self.loss.validate()]
        if self.stage in DISTILL_STAGES and not self.loss.enabled():
            p.append("loss: every term is switched off")
        return p


# ----------------------------------------------------------------------------- parsing


def set_dotted(raw: dict, key: str, value) -> str | None:
    """Set ``a.b.c`` in nested dicts; returns the part that is not a section, if one is in the way."""
    *sections, leaf = key.strip().split(".")
    node = raw
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return part
    node[leaf] = value
    return None


def _apply_override(raw: dict, item: str, problems: list[str]) -> None:
    if "=" not in item:
        problems.append(f"override {item!r}: expected key=value")
        return
    key, value = item.split("=", 1)
    blocked = set_dotted(raw, key, yaml.safe_load(value) if value.strip() else None)
    if blocked:
        problems.append(f"override {item!r}: {blocked} is not a section")


def load_stage_config(path: str | Path | None, overrides: list[str] = (), stage: str | None = None) -> StageConfig:
    """Read, override, type-check and validate; raise ConfigError listing every problem."""
    problems: list[str] = []
    source = str(path) if path else "<overrides>"
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(source, [f"config file {p} does not exist"])
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(source, [f"malformed YAML: {err}"]) from err
        if not isinstance(raw, dict):
            raise ConfigError(source, ["the top level must be a mapping"])
    for item in overrides:
        _apply_override(raw, item, problems)
    if stage is not None:
        if raw.get("stage") not in (None, stage):
            problems.append(f"stage: --stage {stage} disagrees with the config's stage {raw['stage']!r}")
        raw["stage"] = stage
    return stage_config_from_dict(raw, source, problems)


def stage_config_from_dict(raw: dict, source: str, problems: list[str] | None = None) -> StageConfig:
    """Type-check, validate and resolve a stage config given as nested dicts (the planner's and the
    job's one path); raise ConfigError listing every problem, ``problems`` found earlier included."""
    problems = list(problems or [])
    cfg = build(StageConfig, raw, "", problems)
    reported = {x.split(":")[0] for x in problems}
    problems += [q for q in cfg.validate() if q.split(":")[0] not in reported]
    if problems:
        raise ConfigError(source, problems)
    return cfg.resolved()


def to_dict(cfg) -> dict:
    """A config as nested dicts, as written to a job's config file (``added`` fields left out at
    their default)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("omit_at_default") and value == f.default:
            continue
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out
