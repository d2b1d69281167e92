"""The study a Snakemake config describes: validated config, the runs each target needs, their cost.

    from llavakd.plan import Study
    study = Study.load(config)                 # the dict Snakemake read; every problem listed at once
    study.table1_models()                      # ['qwen1.5-4b/s0/pt--sft', 'qwen1.5-0.5b/s0/dpt--sft--dft', ...]
    study.stage_config('qwen1.5-0.5b', 0, 'dpt--sft')   # the typed, validated config of one training job

Models are named by ``llavakd.layout`` (``<llm>/s<seed>/<chain>``); chains follow the grammar of
``llavakd.stages``. Every prefix of a chain is itself a run, so variants that share stages share
their training jobs. A teacher given as a checkpoint is named ``<llm>/given``.

Loading a study builds the ``StageConfig`` of every training job its targets need, with the code
the job itself uses to read its config file, so a mistyped key or value fails ``snakemake -n``
(every problem of every job listed at once) before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import yaml

from llavakd import terms
from llavakd.config import DataConfig, LossConfig, StageConfig, TrainConfig, set_dotted, stage_config_from_dict, to_dict
from llavakd.errors import ConfigError, LlavaKDError, UnknownNameError
from llavakd.layout import Layout, given_name, marker, model_name, parse_model, released_name
from llavakd.methods import BUILTIN, CONTROL, Method, is_stage_default, loss_overrides
from llavakd.stages import DEFAULT_TERMS, METHOD_NAME, STAGES, TERMS, Chain, ChainError, Step, as_chain, with_terms
from llavakd.study import Family, LossAblation, StudyConfig, load_study_config

STUDENT_VARIANTS = ("baseline", "baseline_plus", "llava_kd")  # every student's rows in Table 1, in order


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the methods comparison: a compared method at a budget (``methods.budgets``; None
    without), or ``ce`` trained for the FLOPs of the method ``matched`` (``steps`` its step count)."""

    method: str
    budget: int | None = None
    matched: str | None = None
    steps: int | None = None

    @property
    def label(self) -> str:
        """``kd`` (no budgets), ``kd@800``; a compute-matched control ``ce=kd@800``."""
        name = self.method if self.matched is None else f"{self.method}={self.matched}"
        return name if self.budget is None else f"{name}@{self.budget}"


def _steps_or_none(chain: str) -> tuple[Step, ...]:
    try:
        return Chain.parse(chain).steps
    except ChainError:
        return ()  # reported already


class Study:
    """A loaded study: its typed config (``cfg``, llavakd.study) with its chains parsed, and the
    runs, jobs and paths each target needs. Built by ``Study.load``; nothing else reads the raw dict."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.run = cfg.run
        self.mode = cfg.mode
        self.seeds = list(cfg.seeds)
        self.families = cfg.families
        # baseline_plus, the step-matched control, is part of every study: the baseline, then CE-only
        # fine-tuning as long as DFT (llavakd.stages, "cft")
        variants = {name: Chain.parse(text) for name, text in cfg.variants.items()}
        self.variants: dict[str, Chain] = {
            "baseline_plus": Chain.of(*variants.get("baseline", Chain.parse("pt--sft")).steps, Step("cft")),
            **variants}
        self.ablation_stages: dict[str, Chain] = {n: Chain.parse(c) for n, c in cfg.ablations.stages.items()}
        self.layout = Layout(self.run)
        self.root = self.layout.root
        self.protocols = cfg.eval.protocols  # the first is the main one
        self.methods: dict[str, Method] = {**BUILTIN, **cfg.methods.define}  # every method a chain may name
        self._shapes: dict = {}
        self._arms: dict[str, list] = {}  # per methods student: its arms (method_arms), planned once
        self.tiny: dict = {}  # tiny mode: {LLM: its tokenizer} when the workflow passes the catalogue (load)

    # -- shapes (llavakd.model.shapes: the components' own configs, else the paper's) ------------
    def vision_shape(self):
        """The vision tower's shape and where it came from (real mode; read once)."""
        from llavakd.model.shapes import resolve_vision

        if "vision" not in self._shapes:
            self._shapes["vision"] = resolve_vision(self.cfg.vision)
        return self._shapes["vision"]

    def image_tokens(self) -> int:
        """Visual tokens per image of the study's tower under its feature-select strategy (``vision_strategy``;
        unset: upstream's 'default', first patch dropped)."""
        return self.vision_shape()[0].tokens(self.cfg.vision_strategy or "default")

    def llm_shape(self, llm: str):
        """An LLM's shape (its own config, else the documented one its name gives; UnknownNameError)."""
        from llavakd.model.shapes import resolve_llm

        if llm not in self._shapes:
            ref = self.cfg.llms.get(llm)
            given = [f.teacher_checkpoint for f in self.families.values() if f.teacher == llm and f.teacher_checkpoint]
            self._shapes[llm] = resolve_llm(llm, ref or (given[0] if given else None))
        return self._shapes[llm][0]

    def columns(self):
        """The report columns (llavakd.eval.registry.report_columns): the paper's ten, any other benchmark
        ``eval.benchmarks`` names, and the averages."""
        from llavakd.eval.registry import report_columns

        return report_columns(self.cfg.eval.benchmarks, self.cfg.eval.average_name)

    def llm_source(self, llm: str) -> str:
        """Where an LLM's shape came from (its config, or the documented shape, and what was filled)."""
        self.llm_shape(llm)
        return self._shapes[llm][1]

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, config: dict, source: str = "config", tiny_llms=None) -> Study:
        """Validate (types, then meaning, then every job's stage config); raise ConfigError listing
        every problem. ``tiny_llms``: the LLM names tiny mode knows, or {name: its tokenizer} (the workflow
        passes llavakd.tiny.tokenizer.catalogue(), which also lets the dry run compare tokenizers; the
        family's; ``None`` leaves names unchecked)."""
        cfg = load_study_config(config, source)
        problems = cls._semantic_problems(cfg, tiny_llms)
        if problems:
            raise ConfigError(source, problems)
        study = cls(cfg)
        study.tiny = dict(tiny_llms) if isinstance(tiny_llms, dict) else {}
        problems += study.tower_problems()  # first: every job's plan reads the tower
        if problems:
            raise ConfigError(source, problems)
        problems += study.vocabulary_problems() + study.job_config_problems()
        if problems:
            raise ConfigError(source, problems)
        return study

    def tower_problems(self) -> list[str]:
        """Real mode: a given teacher checkpoint whose tower gives another visual-token count than the
        students' tower (read from the checkpoints' configs; a checkpoint not readable here is not checked)."""
        from llavakd.model.shapes import read_config, vision_shape_from

        if self.mode == "tiny":
            return []
        try:
            self.vision_shape()
        except LlavaKDError as err:  # e.g. a NaFlex SigLIP2 tower
            return [f"vision: {err}"]
        out = []
        for name, fam in self.families.items():
            given, where = read_config(fam.teacher_checkpoint) if fam.teacher_checkpoint else (None, "")
            if given is None or "vision_config" not in given:
                continue
            n = vision_shape_from(given, where)[0].tokens(given.get("vision_feature_select_strategy", "default"))
            if n != self.image_tokens():
                out.append(f"families.{name}.teacher_checkpoint: {where} gives {n} visual tokens per image, the "
                           f"students' tower {self.image_tokens()} (vision: {self.vision_shape()[1]})")
        return out

    def vocabulary_problems(self) -> list[str]:
        """Teacher and student must share one tokenizer and one output vocabulary (the KL is taken index
        by index; cross-tokenizer distillation is out of scope), and a family's template must be one its
        tokenizers can write. Tiny mode: the tiny LLMs' tokenizers (the workflow's catalogue); real mode:
        the tokenizers' own files where readable here (local folders, the local Hugging Face cache), and
        the output vocabularies of their configs or documented shapes."""
        from llavakd.model.chat import DEFAULT_TEMPLATE, template

        out = []
        for name, fam in self.families.items():
            known = {fam.teacher: self._tokenizer(fam.teacher, teacher=True)}
            for student in fam.students:
                a, b = known[fam.teacher], known.setdefault(student, self._tokenizer(student))
                if a and b and a[0] != b[0]:
                    out.append(f"families.{name}: teacher {fam.teacher} and student {student} have different "
                               f"vocabularies ({a[1]}; {b[1]}); the KL is taken index by index, so they must share "
                               "one tokenizer (cross-tokenizer distillation is not supported)")
                elif self.mode != "tiny":
                    out += self._logit_problems(name, fam.teacher, student)
            chat = template(fam.template or DEFAULT_TEMPLATE)
            for llm, found in known.items():
                missing = [t for t in chat.tokens if found and found[2] and t not in found[2]]
                if missing:
                    out.append(f"families.{name}.template: {chat.name!r} writes {missing[0]!r}, and the tokenizer of "
                               f"{found[1]} has no such token")
                    break
        return out

    def _logit_problems(self, name: str, teacher: str, student: str) -> list[str]:
        try:
            t, s = self.llm_shape(teacher), self.llm_shape(student)
        except UnknownNameError:
            return []
        if t.vocab_size == s.vocab_size:
            return []
        return [f"families.{name}: teacher {teacher} has {t.vocab_size} output logits ({self.llm_source(teacher)}) and "
                f"student {student} {s.vocab_size} ({self.llm_source(student)}); the distillation losses need the same"]

    def _tokenizer(self, llm: str, teacher: bool = False) -> tuple | None:
        """(what identifies the tokenizer, a description with its size, the tokens it holds or ()), or None
        when nothing is known of it here."""
        if self.mode == "tiny":
            info = self.tiny.get(llm)
            if info is None:
                return None
            return (info["style"], f"{llm}: the tiny {info['style']!r} tokenizer, {info['tokens']} tokens "
                    f"(its template: {info['template']!r})", set(info["specials"]))
        from llavakd.model.shapes import read_vocabulary

        given = [f.teacher_checkpoint for f in self.families.values() if teacher and f.teacher == llm
                 and f.teacher_checkpoint]
        ref = given[0] if given else self.cfg.llms.get(llm)
        vocab, where = read_vocabulary(ref)
        if vocab is not None:  # the build adds <image>: a built teacher and a base student compare without it
            from llavakd.model.chat import IMAGE_TOKEN

            vocab.pop(IMAGE_TOKEN, None)
            return tuple(sorted(vocab.items())), f"{llm}: {where}, {len(vocab)} tokens", set(vocab)
        try:
            shape = self.llm_shape(llm)
        except UnknownNameError:
            return None
        return shape.vocab_size, f"{llm}: {shape.vocab_size} output logits ({self._shapes[llm][1]})", ()

    @staticmethod
    def _benchmark_problems(c: StudyConfig) -> list[str]:
        """Unknown benchmark names; in tiny mode, a column without a stand-in (one line each, saying why)."""
        from llavakd.eval.registry import load_registry, resolve

        out = []
        for key in ("eval", "agreement"):
            names = getattr(c, key).benchmarks
            if names is None:
                continue
            try:
                benches = resolve(names)
            except LlavaKDError as err:
                out.append(f"{key}.benchmarks: {err}")
                continue
            if c.mode == "tiny":
                out += [f"{key}.benchmarks: {b.name} ({b.column}) has no tiny stand-in ({b.no_standin}); tiny mode "
                        f"scores the columns that have one: {', '.join(n for n, x in load_registry().items() if x.standin)}"
                        for b in benches if b.standin is None]
        return out

    @staticmethod
    def _semantic_problems(c: StudyConfig, tiny_llms=None) -> list[str]:
        p = []
        teachers = {f.teacher for f in c.families.values()}
        students = [s for f in c.families.values() for s in f.students]
        for s in sorted({s for s in students if students.count(s) > 1}):
            p.append(f"families: student {s} appears in more than one family (its teacher would be ambiguous)")
        for s in sorted(teachers & set(students)):
            p.append(f"families: {s} is both a teacher and a student")
        p += Study._benchmark_problems(c)
        for t in sorted(teachers):
            chats = {f.template or "phi" for f in c.families.values() if f.teacher == t}
            if len(chats) > 1:
                p.append(f"families: teacher {t} is given two templates ({', '.join(sorted(chats))}); a model has one")
        llms = teachers | set(students)
        if c.mode == "tiny":
            for name in sorted(llms - set(tiny_llms)) if tiny_llms is not None else []:
                p.append(f"families: {name} is not a tiny LLM (tiny mode knows {', '.join(tiny_llms)})")
        else:
            for name in sorted(llms - set(c.llms)):
                if not any(f.teacher == name and f.teacher_checkpoint for f in c.families.values()):
                    p.append(f"llms.{name}: missing (real mode needs a base checkpoint path or hub id per LLM)")
            if not c.vision:
                p.append("vision: missing (real mode needs the SigLIP checkpoint)")
            for key in ("captions", "instruct", "images"):
                if not getattr(c.data, key):
                    p.append(f"data.{key}: missing (real mode trains on the LLaVA-1.5 data)")
        named = {f"variants.{k}": v for k, v in c.variants.items()}
        named.update({f"ablations.stages.{k}": v for k, v in c.ablations.stages.items()})
        named.update({f"ablations.losses.{k}.chain": v.chain for k, v in c.ablations.losses.items() if v.chain})
        for name, chain in named.items():
            try:
                Chain.parse(chain)
            except ChainError as e:
                p.append(f"{name}: {e}")
        for key in ("baseline", "llava_kd"):
            if key not in c.variants:
                p.append(f"variants.{key}: missing (Table 1 compares the baseline with LLaVA-KD)")
        for s in c.ablations.students or []:
            if s not in students:
                p.append(f"ablations.students: {s} is not a student of any family")
        methods = {**BUILTIN, **c.methods.define}
        for name in c.methods.define:
            if name in BUILTIN:
                p.append(f"methods.define.{name}: a built-in method has this name; choose another")
            elif not re.fullmatch(METHOD_NAME, name):
                p.append(f"methods.define.{name}: a method name is lower-case letters, digits and _")
        for name in c.methods.compare:
            if name not in methods:
                p.append(f"methods.compare: unknown method {name!r} (built in: {', '.join(BUILTIN)}; "
                         f"defined: {', '.join(c.methods.define) or 'none'})")
        for s in c.methods.students or []:
            if s not in students:
                p.append(f"methods.students: {s} is not a student of any family")
        if c.methods.budgets:
            p += [f"methods.budgets: {name} distils in dpt; a budget counts DFT's steps" for name in c.methods.compare
                  if name in methods and methods[name].stage != "dft"]
        if c.methods.compute_matched:
            if c.cost is None:
                p.append("methods.compute_matched: needs a cost section (its tokens_per_sample.sft sets the FLOP count)")
            elif "sft" not in c.cost.tokens_per_sample:
                p.append("cost.tokens_per_sample.sft: missing (methods.compute_matched counts the FLOPs of a DFT sample)")
            p += [f"methods.compute_matched: {name} distils in dpt; the compute-matched control matches a DFT job"
                  for name in c.methods.compare if name in methods and methods[name].stage != "dft"]
        for name, chain in named.items():
            for step in _steps_or_none(chain):
                if step.method is not None and step.method not in methods:
                    p.append(f"{name}: unknown method {step.method!r} in {chain!r}")
        return p

    # -- names ----------------------------------------------------------------------------
    def teacher_of(self, student: str) -> str:
        for fam in self.families.values():
            if student in fam.students:
                return fam.teacher
        raise LlavaKDError(f"{student} is not a student of any family of study {self.run}")

    def family_of_teacher(self, teacher: str) -> Family:
        return next(f for f in self.families.values() if f.teacher == teacher)

    def teacher_model(self, teacher: str) -> str:
        """Model name of a family's teacher: given as a checkpoint, or trained by the baseline recipe."""
        fam = self.family_of_teacher(teacher)
        if fam.teacher_checkpoint:
            return given_name(teacher)
        return model_name(teacher, self.seeds[0], self.variants["baseline"])

    def students(self) -> list[str]:
        return [s for f in self.families.values() for s in f.students]

    def llms(self) -> list[str]:
        """Every LLM the families name, teachers first, each once."""
        return list(dict.fromkeys([f.teacher for f in self.families.values()] + self.students()))

    def ablation_students(self) -> list[str]:
        return list(self.cfg.ablations.students or self.students())

    @staticmethod
    def loss_chain(spec: LossAblation) -> Chain:
        """The chain of a loss ablation: its own, or DPT and DFT with the listed terms (all when unlisted)."""
        if spec.chain is not None:
            return Chain.parse(spec.chain)
        return Chain.of(with_terms("dpt", spec.dpt), with_terms("sft", None), with_terms("dft", spec.dft))

    # -- targets --------------------------------------------------------------------------
    def variant_models(self, variant: str, seeds=None) -> list[str]:
        """Every student (under every seed, or the given ones) trained by one variant's chain."""
        return [model_name(s, seed, self.variants[variant]) for s in self.students() for seed in seeds or self.seeds]

    def table1_models(self) -> list[str]:
        out = [self.teacher_model(f.teacher) for f in self.families.values()]
        for s in self.students():
            for seed in self.seeds:
                out += [model_name(s, seed, self.variants[v]) for v in STUDENT_VARIANTS]
        return out

    def student_models(self) -> list[str]:
        """Table 1's trained students (every variant, every seed): the models the agreement target measures."""
        return [m for m in self.table1_models() if parse_model(m).llm in self.students()]

    def ablation_loss_models(self) -> dict[str, list[str]]:
        return {name: [model_name(s, seed, self.loss_chain(spec)) for s in self.ablation_students() for seed in self.seeds]
                for name, spec in self.cfg.ablations.losses.items()}

    def ablation_stage_models(self) -> dict[str, list[str]]:
        return {name: [model_name(s, seed, chain) for s in self.ablation_students() for seed in self.seeds]
                for name, chain in self.ablation_stages.items()}

    # -- methods ---------------------------------------------------------------------------
    def compared_methods(self) -> list[str]:
        """The methods benchmark_methods compares, the control (ce) first."""
        listed = list(self.cfg.methods.compare)
        return [CONTROL] + [m for m in listed if m != CONTROL] if listed else []

    def method_chain(self, name: str, steps: int | None = None) -> Chain:
        """The chain that trains a method: the baseline's stages before its stage, then its stage
        (``cft`` for the control; the bare stage for a method whose loss is the stage's own), with
        ``steps`` its own optimizer steps when given (a budget, or a compute-matched count)."""
        m = self.methods[name]
        base = [s for s in self.variants["baseline"].steps]
        if m.stage == "dpt":
            first = Step("dpt", DEFAULT_TERMS) if is_stage_default(m) else Step("dpt", DEFAULT_TERMS, name)
            return Chain.of(first, *base[1:])
        if m.is_control:
            return Chain.of(*base, Step("cft", steps=steps))
        return Chain.of(*base, Step("dft", DEFAULT_TERMS, None if is_stage_default(m) else name, steps))

    def method_students(self) -> list[str]:
        return list(self.cfg.methods.students or self.students())

    def method_arms(self, student: str) -> list[tuple[Arm, Chain]]:
        """Every arm of the methods comparison for one student, with the chain that trains it: at each
        budget (``methods.budgets``; one bare budget without), every compared method, ce (the
        step-matched control) first, then with ``methods.compute_matched`` one ce per method trained for
        that method's FLOPs (compute_matched_steps)."""
        if student not in self._arms:
            out = []
            for budget in self.cfg.methods.budgets or [None]:
                for name in self.compared_methods():
                    out.append((Arm(name, budget), self.method_chain(name, budget)))
                if self.cfg.methods.compute_matched:
                    for name in self.compared_methods()[1:]:
                        steps = compute_matched_steps(self, student, self.method_chain(name, budget))
                        out.append((Arm(CONTROL, budget, name, steps), self.method_chain(CONTROL, steps)))
            self._arms[student] = out
        return self._arms[student]

    def method_models(self) -> dict[str, list[str]]:
        """Per arm label (a compared method's name when the study has neither budgets nor compute-matched
        controls), its models: every method student under every seed."""
        out: dict[str, list[str]] = {}
        for s in self.method_students():
            for arm, chain in self.method_arms(s):
                out.setdefault(arm.label, []).extend(model_name(s, seed, chain) for seed in self.seeds)
        return out

    def released_models(self) -> list[str]:
        """Released checkpoints (config ``released``) evaluated to measure our protocol's offset."""
        return [released_name(name) for name in self.cfg.released]

    def all_models(self) -> list[str]:
        """Every model some target of the study trains or scores."""
        out = self.table1_models()
        for groups in (self.ablation_loss_models(), self.ablation_stage_models(), self.method_models()):
            out += [m for ms in groups.values() for m in ms]
        return list(dict.fromkeys(out))

    # -- jobs -----------------------------------------------------------------------------
    def model_dir(self, model: str) -> str:
        m = parse_model(model)
        if m.kind == "released":
            return self.cfg.released[m.llm].checkpoint
        if m.kind == "given":
            return self.family_of_teacher(m.llm).teacher_checkpoint
        return self.layout.final_dir(m.llm, m.seed, m.chain)

    def start_dir(self, llm: str, seed: int, chain: str) -> str:
        """The model the last stage of ``chain`` starts from: its parent run, or the built model."""
        parent = as_chain(chain).parent()
        return self.layout.final_dir(llm, seed, parent) if parent else self.layout.init_dir(llm, seed)

    def teacher_dir(self, llm: str, chain: str) -> str | None:
        if not as_chain(chain).last.distill:
            return None
        return self.model_dir(self.teacher_model(self.teacher_of(llm)))

    def train_inputs(self, llm: str, seed: int, chain: str) -> dict:
        """Input files of the job that trains the last stage of ``chain``: its config, start model,
        teacher, and the validation report of its dataset."""
        step = as_chain(chain).last
        out = {"config": self.layout.config_file(llm, seed, chain), "model": marker(self.start_dir(llm, seed, chain)),
               "data_report": self.layout.data_report(step.spec.dataset)}
        if step.distill:
            teacher = self.teacher_model(self.teacher_of(llm))
            if parse_model(teacher).kind == "run":  # a given checkpoint is a parameter, not a job input
                out["teacher"] = marker(self.model_dir(teacher))
        return out

    def stage_raw(self, llm: str, seed: int, chain: str) -> dict:
        """One job's stage config before validation: the study's overrides, the chain, the seed."""
        step = as_chain(chain).last
        settings = step.spec.settings_of or step.name  # cft runs with DFT's steps and learning rate
        merged = self.cfg.train.for_stage(settings, teacher=llm in {f.teacher for f in self.families.values()})
        merged.setdefault("train.seed", seed)
        if step.steps is not None:  # the chain's own budget, with its own full schedule
            merged["train.max_steps"] = step.steps
        if step.method is not None:  # the method sets the stage's whole loss (llavakd.methods)
            merged.update(loss_overrides(self.methods[step.method]))
        elif step.distill:
            for t in TERMS:
                merged[f"loss.{t}"] = t in step.terms
        data = self.data_paths()
        merged["data.json"] = data[step.spec.dataset]
        merged["data.images"] = data["images"]
        merged["data.skip_records"] = self.layout.data_report(step.spec.dataset)
        subset = self.cfg.data.subset
        if subset is not None and subset.fraction < 1:
            merged["data.subset_fraction"], merged["data.subset_seed"] = subset.fraction, subset.seed
        if merged.get("train.gradient_checkpointing") == "auto":
            merged["train.gradient_checkpointing"] = self._checkpointing(llm, step, merged)
        raw: dict = {"stage": step.name, "model": self.start_dir(llm, seed, chain),
                     "teacher": self.teacher_dir(llm, chain), "output_dir": self.layout.run_dir(llm, seed, chain)}
        for key, value in merged.items():
            set_dotted(raw, key, value)
        return raw

    def _checkpointing(self, llm: str, step, merged: dict):
        """``gradient_checkpointing: auto``: the least recomputation whose memory estimate fits the
        budget at the job's batch (llavakd.memory.least_recomputation); "auto" stays (and the job's
        validation names it) when the estimate does not know the LLM's shape (the tiny world's)."""
        from llavakd.memory import least_recomputation

        if self.mode == "tiny":  # the estimate knows the paper's shapes, not the tiny world's models
            return "auto"
        teacher = self.teacher_of(llm) if step.distill else None
        known = {f.name for f in dataclasses.fields(LossConfig)}  # a mistyped key is reported when the job validates
        loss = LossConfig(**{k[5:]: v for k, v in merged.items() if k.startswith("loss.") and k[5:] in known})
        try:
            k, _ = least_recomputation(self.llm_shape(llm), teacher and self.llm_shape(teacher),
                                       loss_parts=self.loss_parts(llm, teacher, loss),
                                       **self._memory_kw(step.name, merged))
        except UnknownNameError:
            return "auto"
        return k

    def _memory_kw(self, stage: str, merged: dict) -> dict:
        """What the memory estimate needs of one job, from its merged overrides (stage defaults otherwise)."""
        defaults = TrainConfig()
        return dict(stage=stage, per_device_batch=int(merged.get("train.per_device_batch", defaults.per_device_batch)),
                    zero_stage=_zero_stage(merged.get("train.deepspeed")), world=self.train_world(),
                    seq_len=int(merged.get("data.max_length", DataConfig().max_length)),
                    implementation=merged.get("loss.implementation", LossConfig().implementation),
                    vision=self.vision_shape()[0])

    def loss_parts(self, llm: str, teacher: str | None, loss) -> int:
        """Parameters of the learnable parts a job's loss trains (llavakd.terms.part_params), from
        both LLMs' shapes; 0 when a shape is unknown (the tiny world's)."""
        from llavakd import terms

        if not any(terms.spec(n).parts for n in loss.enabled()):
            return 0
        try:
            s = self.llm_shape(llm)
            t = self.llm_shape(teacher) if teacher else s
        except UnknownNameError:
            return 0
        return terms.part_params(loss, terms.Dims(s.hidden_size, t.hidden_size, s.num_attention_heads,
                                                  t.num_attention_heads))

    def train_world(self) -> int:
        """GPUs of one training job (nodes x GPUs a node)."""
        res = self.resources("train")
        return int(res.get("gpus", 1) or 1) * int(res.get("nodes", 1) or 1)

    def stage_config(self, llm: str, seed: int, chain: str) -> StageConfig:
        """The validated, resolved config of one training job (ConfigError names the job)."""
        return stage_config_from_dict(self.stage_raw(llm, seed, chain), f"job {model_name(llm, seed, chain)}")

    def stage_config_text(self, llm: str, seed: int, chain: str) -> str:
        """The job's config file, as written under results/<run>/configs/ and read by ``llavakd train``."""
        return yaml.safe_dump(to_dict(self.stage_config(llm, seed, chain)), sort_keys=False)

    def job_config_problems(self) -> list[str]:
        """Every problem of every training job the study's targets need, each line naming its job."""
        problems = []
        gpus = int(self.resources("train").get("gpus", 0) or 0)
        for llm, seed, chain in train_jobs(self, self.all_models()):
            try:
                cfg = self.stage_config(llm, seed, chain)
            except ConfigError as err:
                problems += [f"{err.source}: {p}" for p in err.problems]
                continue
            if cfg.loss.on_policy > 0 and _zero_stage(cfg.train.deepspeed) == 3:
                problems.append(f"job {model_name(llm, seed, chain)}: loss.on_policy under ZeRO-3 is refused: the "
                                "student samples with its full weights, which ZeRO-3 partitions; use ZeRO-2")
            with_parts = [n for n in cfg.loss.enabled() if terms.spec(n).has_parts(cfg.loss)]
            if with_parts and _zero_stage(cfg.train.deepspeed) == 3:
                problems.append(f"job {model_name(llm, seed, chain)}: loss terms with learnable parts "
                                f"({', '.join(with_parts)}) under ZeRO-3 are refused: the parts are used outside the "
                                "student's forward, where ZeRO-3 keeps them partitioned; use ZeRO-2")
            problems += [f"job {model_name(llm, seed, chain)}: {p}" for p in self._attention_layer_problems(llm, cfg)]
            if cfg.train.liger_kernels:
                problems += [f"job {model_name(llm, seed, chain)}: {p}" for p in self._liger_problems(llm, cfg)]
            if cfg.train.liger_kernels and gpus == 0:
                problems.append(f"job {model_name(llm, seed, chain)}: train.liger_kernels needs a GPU (liger-kernel is "
                                "Triton, CUDA only) and resources.train.gpus is 0; switch it off or give the job GPUs")
        return problems

    def _liger_problems(self, llm: str, cfg) -> list[str]:
        """train.liger_kernels on an LLM whose family liger-kernel does not cover (known shapes only)."""
        out = []
        for who in {llm, *([self.teacher_of(llm)] if cfg.distill else [])}:
            try:
                facts = self.llm_shape(who).facts
            except (UnknownNameError, LlavaKDError):
                continue
            if facts.liger is None:
                out.append(f"train.liger_kernels: liger-kernel has no kernels for {who}'s family "
                           f"({self.llm_shape(who).model_type}); switch it off")
        return out

    def _attention_layer_problems(self, llm: str, cfg) -> list[str]:
        """The layer an attention term hooks must exist in both LLMs (known shapes only: the tiny
        world's models are checked when the trainer hooks the layer)."""
        layers = cfg.loss.attention_layers()
        if not layers or not cfg.distill:
            return []
        out = []
        for who in (llm, self.teacher_of(llm)):
            try:
                depth = self.llm_shape(who).num_hidden_layers
            except UnknownNameError:
                continue
            out += [f"an attention term reads layer {k}, and {who} has {depth} layers" for k in sorted(layers)
                    if not -depth <= k < depth]
        return out

    def data_paths(self) -> dict:
        """The study's data, keyed as the stages name it (``StageSpec.dataset``) plus ``images``."""
        if self.mode == "tiny":
            w = self.layout.world_dir()
            return {"captions": f"{w}/train/captions.json", "instruct": f"{w}/train/instruct.json", "images": f"{w}/images"}
        d = self.cfg.data
        return {"captions": d.captions, "instruct": d.instruct, "images": d.images}

    def datasets(self) -> list[str]:
        """The study's datasets as the stages name them (``captions``, ``instruct``) that its jobs read."""
        used = {chain.last.spec.dataset for _, _, chain in train_jobs(self, self.all_models())}
        return sorted(used)

    def data_check(self, dataset: str) -> dict:
        """What validate-data checks one dataset with: the file, images, template and maximum length of
        the first job that reads it, and the study's ``data.max_bad_fraction``."""
        job = next(j for j in train_jobs(self, self.all_models()) if j[2].last.spec.dataset == dataset)
        cfg = self.stage_config(*job)
        first = self.students()[0]
        return {"json": cfg.data.json, "images": cfg.data.images, "template": cfg.spec.template,
                "max_length": cfg.data.max_length, "processor": self.layout.init_dir(first, self.seeds[0]),
                "max_bad_fraction": float(self.cfg.data.max_bad_fraction)}

    @property
    def subset_fraction(self) -> float:
        """The fraction of every stage's records the study trains on."""
        return self.cfg.data.subset.fraction if self.cfg.data.subset else 1.0

    def template_of(self, llm: str) -> str | None:
        """The conversation template of an LLM's family (None: unset, the paper's phi)."""
        return next((f.template for f in self.families.values() if llm == f.teacher or llm in f.students), None)

    def build_args(self, llm: str, seed: int) -> list[str]:
        chat = ["--template", self.template_of(llm)] if self.template_of(llm) else []  # unset: as before
        if self.mode == "tiny":
            c = self.layout.components_dir()
            return ["--vision", f"{c}/vision/siglip", "--llm", f"{c}/llm/{llm}", "--strategy", "full", *chat,
                    "--seed", str(seed)]
        strategy = ["--strategy", self.cfg.vision_strategy] if self.cfg.vision_strategy else []  # unset: as before
        return ["--vision", self.cfg.vision, "--llm", self.cfg.llms[llm], "--image-tokens", str(self.image_tokens()),
                *strategy, *chat, "--seed", str(seed)]

    def resources(self, rule: str) -> dict:
        """One rule's resources (llavakd.study.ResourcesSection.of: its section, default, the rule's own)."""
        return self.cfg.resources.of(rule)


# -- cost ---------------------------------------------------------------------------------
def train_jobs(study: Study, models: list[str]) -> list[tuple[str, int, str]]:
    """Every (llm, seed, chain prefix) a set of models needs, each once (shared prefixes)."""
    jobs, seen = [], set()
    for name in models:
        m = parse_model(name)
        if m.kind != "run":
            continue
        for prefix in as_chain(m.chain).prefixes():
            key = (m.llm, m.seed, prefix)
            if key not in seen:
                seen.add(key)
                jobs.append(key)
    return jobs


def answer_tokens(study: Study, chain) -> float | None:
    """Answer tokens of one sample of the chain's last stage (``cost.answer_tokens_per_sample`` of
    the stage's kind), None when the cost section does not give them."""
    given = study.cfg.cost.answer_tokens_per_sample if study.cfg.cost else {}
    kind = cost_kind(as_chain(chain).last.name)
    return float(given[kind]) if kind in given else None


def answers_overcounted(study: Study, llm: str, chain) -> list[str]:
    """The job's terms paid at the answer tokens that the count pays at every position instead, for
    want of ``cost.answer_tokens_per_sample`` (the dry run names them)."""
    st = as_chain(chain).last
    if not st.distill or study.cfg.cost is None or answer_tokens(study, chain) is not None:
        return []
    from llavakd import terms

    loss = study.stage_config(llm, study.seeds[0], chain).loss
    return [n for n in loss.enabled() if terms.spec(n).flop_positions(loss) == "answers"]


def loss_term_flops(study: Study, llm: str, chain, s_shape, t_shape, seq: int, visual: float) -> float:
    """FLOPs per sample of a job's loss terms beyond the models (their learnable parts;
    llavakd.terms): each term is paid at the positions it runs on, the sample's ``seq`` positions,
    its answer tokens (``answer_tokens``; all ``seq`` when not given) or its ``visual`` tokens."""
    from llavakd import terms

    st = as_chain(chain).last
    if not st.distill:
        return 0.0
    loss = study.stage_config(llm, study.seeds[0], chain).loss
    dims = terms.Dims(s_shape.hidden_size, t_shape.hidden_size, s_shape.num_attention_heads, t_shape.num_attention_heads)
    answers = answer_tokens(study, chain)
    where = {"all": float(seq), "answers": float(seq) if answers is None else min(answers, seq), "visual": float(visual)}
    return terms.extra_flops(loss, dims, where)


def llm_params(study: Study, llm: str) -> float:
    given = study.cfg.cost.params if study.cfg.cost else {}
    if llm in given:
        return float(given[llm])
    return float(_known_shape(study, llm).params)


def _known_shape(study: Study, llm: str):
    """An LLM's shape for the FLOP count: in tiny mode the tiny family's (llavakd.tiny.family, with its
    tokenizer's size when the workflow passed the catalogue), else its config or documented one
    (Study.llm_shape), or ConfigError."""
    if study.mode == "tiny":
        from llavakd.model.shapes import llm_shape_from

        return llm_shape_from(_tiny_entry(study, llm)["config"])[0]
    try:
        return study.llm_shape(llm)
    except UnknownNameError:
        raise ConfigError("cost", [f"cost.params.{llm}: unknown LLM size; give its parameter count"]) from None


def _tiny_entry(study: Study, llm: str) -> dict:
    """A tiny LLM's catalogue entry (llavakd.tiny.tokenizer.catalogue, handed over by the workflow)."""
    entry = study.tiny.get(llm)
    if not entry or "config" not in entry:
        raise ConfigError("cost", [f"{llm}: a tiny study's FLOP count reads the tiny catalogue's shapes; load the "
                                   "study with Study.load(config, tiny_llms=llavakd.tiny.tokenizer.catalogue())"])
    return entry


def _flop_vision(study: Study):
    """(vision shape, visual tokens per image) for the FLOP count: the tiny tower's in tiny mode."""
    if study.mode == "tiny":
        from llavakd.model.shapes import vision_shape_from

        shape = vision_shape_from(dict(_tiny_entry(study, study.students()[0])["vision"]))[0]
        return shape, shape.tokens(study.cfg.vision_strategy or "default")
    return study.vision_shape()[0], study.image_tokens()


def sample_flops(study: Study, llm: str, chain) -> dict[str, float]:
    """Model FLOPs of one training sample of the job that trains ``chain``'s last stage, by part
    (llavakd.flops.step_flops at the ``cost`` section's mean tokens of the stage's records, one image
    a record, the LM heads at every position, the loss terms' parts), plus ``generation``: an
    on-policy method's sampling, the student's forward over the prompt and ``max_new_tokens`` new
    tokens (2N a token) on the drawn share of the samples. ``teacher``: the teacher's share (its
    layers, attention and head, its vision pass and projector) and ``total``. The one count behind
    the price, the compute-matched control's steps and the reports' cost block. An LLM (student or
    teacher) known only by ``cost.params`` counts 6N per trained token and 2N per teacher token, by
    whole parameter counts (``student``, ``teacher``, ``generation``, ``total`` only)."""
    from llavakd.flops import step_flops

    st = as_chain(chain).last
    prompt = float(study.cfg.cost.tokens_per_sample[cost_kind(st.name)])
    teacher = study.teacher_of(llm) if st.distill else None
    if any(n in study.cfg.cost.params for n in (llm, teacher) if n):
        student = 6 * llm_params(study, llm) * prompt
        taught = 2 * llm_params(study, teacher) * prompt if teacher else 0.0
        gen = generation_flops(study, llm, chain)
        return {"student": student, "teacher": taught, "generation": gen, "total": student + taught + gen}
    s_shape = _known_shape(study, llm)
    t_shape = _known_shape(study, teacher) if teacher else None
    vision, tokens = _flop_vision(study)
    f = step_flops(student=s_shape, teacher=t_shape, seq=int(prompt), visual_tokens=tokens, vision=vision,
                   student_trains_llm="llm" in STAGES[st.name].trainable,
                   loss_terms=loss_term_flops(study, llm, chain, s_shape, t_shape or s_shape, int(prompt), tokens))
    out = dict(f)
    if t_shape is not None:
        alone = step_flops(student=s_shape, teacher=None, seq=int(prompt), visual_tokens=tokens, vision=vision,
                           student_trains_llm="llm" in STAGES[st.name].trainable)
        out["teacher"] = (f["teacher_layers"] + f["teacher_attention"] + f["teacher_head"]
                          + f.get("vision", 0.0) - alone.get("vision", 0.0)
                          + f.get("projectors", 0.0) - alone.get("projectors", 0.0))
    else:
        out["teacher"] = 0.0
    out["generation"] = generation_flops(study, llm, chain)
    out["total"] = f["total"] + out["generation"]
    return out


def generation_flops(study: Study, llm: str, chain) -> float:
    """An on-policy method's sampling per training sample: the student's forward over the prompt
    (the stage's mean tokens) and ``max_new_tokens`` new tokens, 2N a token (N: its parameters), on
    the drawn share of the samples; 0 for any other job."""
    st = as_chain(chain).last
    if st.method is None or study.methods[st.method].on_policy is None:
        return 0.0
    loss = study.stage_config(llm, study.seeds[0], chain).loss
    prompt = float(study.cfg.cost.tokens_per_sample[cost_kind(st.name)])
    return loss.on_policy * 2 * llm_params(study, llm) * (prompt + loss.max_new_tokens)


def job_samples(study: Study, llm: str, chain) -> float:
    """The samples a training job reads: its ``max_steps`` x global batch, else the stage's records
    (``cost.samples``) x its epochs."""
    chain = as_chain(chain)
    cfg = study.stage_config(llm, study.seeds[0], chain)
    if cfg.train.max_steps > 0:
        return float(cfg.train.max_steps * cfg.train.global_batch)
    return stage_records(study, chain.last.name) * cfg.train.epochs


def job_steps(study: Study, llm: str, chain) -> int | None:
    """A training job's optimizer steps: its chain's count, its ``max_steps``, else (a priced study) its
    samples over the global batch; None for an epoch-based job of an unpriced study."""
    chain = as_chain(chain)
    if chain.last.steps is not None:
        return chain.last.steps
    cfg = study.stage_config(llm, study.seeds[0], chain)
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    if study.cfg.cost is None:
        return None
    return math.ceil(job_samples(study, llm, chain) / cfg.train.global_batch)


def job_price(study: Study):
    """``price(llm, chain)`` of a priced study's training job: its hours (``job``, pricer), the teacher's
    inference inside it (``teacher_inference``), its model FLOPs (``flops``: sample_flops x job_samples,
    as the pricer counts), the teacher's own training (``teacher_training``: every job of the teacher's
    chain) and ``students``, the student models the methods comparison distils from that teacher (every
    method, seed and budget trains its own)."""
    job_hours = pricer(study)[0]
    distilled: dict[str, set] = {}
    for m in (m for ms in study.method_models().values() for m in ms):
        name = parse_model(m)
        if as_chain(name.chain).last.distill:
            distilled.setdefault(study.teacher_of(name.llm), set()).add(m)

    def price(llm: str, chain) -> dict[str, float]:
        chain = as_chain(chain)
        hours = job_hours(llm, chain)
        teacher = study.teacher_of(llm) if chain.last.distill else None
        f = sample_flops(study, llm, chain)
        flops, share = f["total"] * job_samples(study, llm, chain), f["teacher"] / f["total"]
        out = {"job": hours, "teacher_inference": hours * share, "flops": flops, "teacher_training": 0.0,
               "students": 0.0}
        if teacher:
            given = parse_model(study.teacher_model(teacher))
            if given.kind == "run":
                jobs = train_jobs(study, [study.teacher_model(teacher)])
                out["teacher_training"] = sum(job_hours(t, ch) for t, _, ch in jobs)
            out["students"] = float(len(distilled.get(teacher, ())))
        return out

    return price


def compute_matched_steps(study: Study, llm: str, chain) -> int:
    """Optimizer steps of the CE-only control (``cft``) that spend the FLOPs of the job training ``chain``
    (sample_flops x samples; both read the same batch size): round(steps x F_job / F_ce), at least 1."""
    chain = as_chain(chain)
    cfg = study.stage_config(llm, study.seeds[0], chain)
    control = Chain.of(*chain.steps[:-1], Step("cft"))
    ce_cfg = study.stage_config(llm, study.seeds[0], control)
    if ce_cfg.train.global_batch != cfg.train.global_batch:
        raise ConfigError("methods.compute_matched", [
            f"{model_name(llm, study.seeds[0], chain)}: its batch {cfg.train.global_batch} differs from ce's "
            f"{ce_cfg.train.global_batch}"])
    ratio = sample_flops(study, llm, chain)["total"] / sample_flops(study, llm, control)["total"]
    return max(1, round(job_samples(study, llm, chain) / cfg.train.global_batch * ratio))


def measured_mfu(study: Study) -> tuple[float, str] | None:
    """The MFU measured by benchmarks/gpu_mfu.py in ``cost.mfu_file``, when the file exists: its
    chosen setting's (the best that fits the memory budget), or, for a file with runs only, the
    runs at the study's DFT per-device batch (or the largest measured below it) and loss
    implementation, the lowest over the measured pairs; with where it came from."""
    path = study.cfg.cost.mfu_file if study.cfg.cost else None
    if not path or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as err:
        raise ConfigError("cost.mfu_file", [f"{path}: not JSON ({err})"]) from None
    chosen = [r for r in (data if isinstance(data, list) else [data]) if isinstance(r, dict) and r.get("chosen")]
    if chosen:
        low = min(chosen, key=lambda r: r["chosen"]["mfu"])
        pair = f"{low.get('student')} <- {low.get('teacher')}"
        return float(low["chosen"]["mfu"]), f"measured in {path} ({pair}, best setting)"
    reports = data if isinstance(data, list) else [data]
    dft = next((study.stage_config(llm, seed, chain) for llm, seed, chain in train_jobs(study, study.table1_models())
                if chain.last.name == "dft"), None)
    batch = dft.train.per_device_batch if dft else 1
    impl = dft.loss.implementation if dft else "fused"
    best: dict[str, tuple[int, float]] = {}
    for rep in reports:
        pair = f"{rep.get('student')} <- {rep.get('teacher')}"
        for run in rep.get("runs", []):
            b = run.get("per_device_batch", 0)
            if run.get("oom") or run.get("implementation") != impl or b > batch or "mfu" not in run:
                continue
            if pair not in best or b > best[pair][0]:
                best[pair] = (b, float(run["mfu"]))
    if not best:
        return None
    pair, (b, mfu) = min(best.items(), key=lambda kv: kv[1][1])
    return mfu, f"measured in {path} ({impl}, per-device {b}, lowest of {len(best)} pairs: {pair})"


def cost_kind(stage: str) -> str:
    """The ``cost`` section's key for a stage's dataset: ``pt`` (captions) or ``sft`` (instructions)."""
    return "pt" if STAGES[stage].dataset == "captions" else "sft"


def stage_records(study: Study, stage: str) -> float:
    """The records a stage trains on, by the ``cost`` section (``data.subset_fraction`` applied)."""
    return study.cfg.cost.samples[cost_kind(stage)] * study.subset_fraction


def pricer(study: Study):
    """The price of a study's jobs (its ``cost`` section): (job_hours(llm, chain), eval_hours(model),
    agreement_hours(model), mfu, where the rate came from). Training from the shared FLOP count
    (sample_flops x job_samples), 2N per evaluated token (N: the LLM's parameters), at the configured
    or measured MFU of the peak; with ``cost.cpu``, CPU-hours at its measured rate, and evaluation and
    agreement at their measured seconds."""
    c = study.cfg.cost
    if c.cpu is not None:
        mfu, source = 1.0, f"measured CPU rate {c.cpu.gflops:g} GFLOP/s a job"
        rate = c.cpu.gflops * 1e9
    else:
        measured = measured_mfu(study)
        mfu, source = measured if measured else (c.mfu, "configured" + (
            f"; {c.mfu_file} not found" if c.mfu_file else ""))
        rate = c.peak_tflops * 1e12 * mfu

    def job_hours(llm, chain) -> float:
        """A training job's model FLOPs (sample_flops x job_samples) over the rate."""
        return sample_flops(study, llm, chain)["total"] * job_samples(study, llm, chain) / rate / 3600

    def eval_hours(model) -> float:
        if c.cpu is not None:
            return c.cpu.eval_seconds / 3600
        return 2 * llm_params(study, parse_model(model).llm) * c.eval_tokens / rate / 3600

    def agreement_hours(model) -> float:
        """Student and teacher each generate and then read the evaluated tokens again: 4N per token each."""
        if c.cpu is not None:
            return c.cpu.agreement_seconds / 3600
        llm = parse_model(model).llm
        n = llm_params(study, llm) + llm_params(study, study.teacher_of(llm))
        return 4 * n * c.eval_tokens / rate / 3600

    return job_hours, eval_hours, agreement_hours, mfu, source


def cost_report(study: Study, benchmarks: list[str]) -> str:
    """GPU-hours per rule and in total (``pricer``)."""
    c = study.cfg.cost
    fraction = study.subset_fraction
    job_hours, eval_hours, agreement_hours, mfu, mfu_source = pricer(study)
    unit = "CPU-h" if c.cpu else "GPU-h"
    if c.cpu:
        lines = [f"llavakd CPU estimate (run {study.run}): training from llavakd.flops (model FLOPs of each step) at the "
                 f"{mfu_source}; evaluation {c.cpu.eval_seconds:g} s and agreement {c.cpu.agreement_seconds:g} s a "
                 "model, measured"]
    else:
        lines = [f"llavakd cost estimate (run {study.run}): training from llavakd.flops (model FLOPs of each step: "
                 "layers, attention, LM heads, vision tower, projectors), 2N per evaluated token, "
                 f"MFU {mfu:.1%} ({mfu_source}) of {c.peak_tflops:g} TFLOP/s per GPU"
                 + (f", {fraction:g} of the training records" if fraction < 1 else "")]
    targets = {"reproduce_table1": study.table1_models()}
    for name, groups in (("ablation_losses", study.ablation_loss_models()),
                         ("ablation_stages", study.ablation_stage_models()),
                         ("benchmark_methods", study.method_models())):
        targets[name] = [m for ms in groups.values() for m in ms]
    done: set = set()
    grand = 0.0
    for target, models in targets.items():
        jobs = [j for j in train_jobs(study, models) if j not in done]
        evals = [m for m in dict.fromkeys(models) if ("eval", m) not in done for _ in study.protocols]
        per_stage: dict[str, list[float]] = {}
        for llm, seed, chain in jobs:
            per_stage.setdefault(chain.last.name, []).append(job_hours(llm, chain))
        ev = [eval_hours(m) for m in evals]
        agreeing = {"reproduce_table1": study.student_models(),
                    "benchmark_methods": [m for m in models if m not in study.student_models()]}.get(target, [])
        agree = [agreement_hours(m) for m in dict.fromkeys(agreeing)]
        total = sum(sum(v) for v in per_stage.values()) + sum(ev) + sum(agree)
        grand += total
        lines.append(f"  {target}{' (jobs not shared with the targets above)' if done else ''}:")
        for stage, hours in per_stage.items():
            lines.append(f"    train[{stage:3s}]  {len(hours):3d} jobs  {sum(hours):9.1f} {unit}")
        lines.append(f"    evaluate    {len(ev):3d} jobs  {sum(ev):9.1f} {unit}  ({len(benchmarks)} benchmarks, "
                     f"protocol {' and '.join(study.protocols)})")
        if agree:
            lines.append(f"    agreement   {len(agree):3d} jobs  {sum(agree):9.1f} {unit}  (each student and its teacher)")
        lines.append(f"    total                {total:9.1f} {unit}")
        if c.cpu and done and total:
            teachers = {study.teacher_model(study.teacher_of(parse_model(m).llm)) for m in models
                        if parse_model(m).kind == "run" and any(st.distill for st in as_chain(parse_model(m).chain).steps)}
            alone = (sum(job_hours(llm, chain) for llm, seed, chain in train_jobs(study, [*models, *sorted(teachers)]))
                     + sum(eval_hours(m) for m in dict.fromkeys(models) for _ in study.protocols) + sum(agree))
            lines.append(f"    with the jobs it shares: {alone:.1f} {unit}, about {alone / c.cpu.cores:.1f} h of wall "
                         f"time on {c.cpu.cores} cores")
        done |= set(jobs) | {("eval", m) for m in evals}
    lines.append(f"  all targets            {grand:9.1f} {unit}")
    if c.cpu:
        lines.append(f"  on {c.cpu.cores} cores, jobs side by side: about {grand / c.cpu.cores:.1f} h of wall time "
                     "(a lower bound: the teacher's jobs come first, one core each)")
    return "\n".join(lines)


def methods_report(study: Study) -> str:
    """The methods comparison's arms, as ``snakemake -n`` prints them: per student and budget, each
    arm's chain, its optimizer steps, its FLOPs per sample (sample_flops: the teacher's share and on-policy
    sampling included) and their ratio to ce's; then, for a priced study, the teacher's cost of each
    method's job (job_price): the job, the teacher's inference in it, the teacher's own training, and
    the job's charge when the teacher was trained for the comparison's students."""
    priced = study.cfg.cost is not None
    unit = "CPU-h" if priced and study.cfg.cost.cpu else "GPU-h"
    lines = ["llavakd methods arms (llavakd.plan.method_arms; FLOPs per training sample from llavakd.flops"
             + (", the compute-matched ce trains steps x FLOP ratio)" if study.cfg.methods.compute_matched else ")")]
    costs = []
    price = job_price(study) if priced else None
    for student in study.method_students():
        ce = None
        for arm, chain in study.method_arms(student):
            f = sample_flops(study, student, chain)["total"] if priced else None
            if arm.method == CONTROL and arm.matched is None:
                ce = f
            ratio = f"{f / ce:5.2f}x ce" if f and ce else ""
            flops = f"{f / 1e9:10.3f} GFLOP/sample" if f else ""
            what = f"ce for the FLOPs of {arm.matched}" if arm.matched else arm.method
            budget = "" if arm.budget is None else f"budget {arm.budget:5d}  "
            steps = job_steps(study, student, chain)
            lines.append(f"  {student}  {budget}{what:34s} {str(chain):34s} {steps or '':>6} steps {flops} {ratio}")
            over = answers_overcounted(study, student, chain) if priced and arm.matched is None else []
            if over:
                key = f"cost.answer_tokens_per_sample.{cost_kind(as_chain(chain).last.name)}"
                lines.append(f"    counts {', '.join(over)} at every position, though it runs on the answer tokens "
                             f"only: set {key} for the answers' share")
            if price and arm.matched is None and arm.method != CONTROL:
                c = price(student, chain)
                n = int(c["students"])
                charged = c["job"] + c["teacher_training"] / max(n, 1)
                costs.append(f"  {student}  {budget}{arm.method:16s} job {c['job']:9.3g}  teacher's inference in it "
                             f"{c['teacher_inference']:9.3g}  teacher's training {c['teacher_training']:9.3g}  "
                             f"charged if trained for these {n} student models {charged:9.3g}")
    if costs:
        lines.append(f"llavakd teacher's cost per method job ({unit}, one seed; the teacher's training counts every job "
                     "of its chain; not charged when the teacher exists)")
        lines += costs
    return "\n".join(lines)


# -- memory -------------------------------------------------------------------------------
def _zero_stage(path: str | None) -> int:
    if not path:
        return 0
    try:
        return int(json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError) as err:
        raise ConfigError("train.deepspeed", [f"{path}: cannot read its ZeRO stage ({err})"]) from None


def memory_report(study: Study, budget_gib: float = 80.0) -> str:
    """Per training stage and student/teacher pair: the estimated memory per GPU at the configured
    per-device batch and checkpointing (llavakd.memory; ``auto`` shows the planner's choice), and
    the largest batch that fits."""
    from llavakd.memory import GIB, checkpointing_label, estimate, largest_per_device_batch

    world = study.train_world()
    lines = [f"llavakd memory estimate per GPU (llavakd/memory.py; {budget_gib:g} GiB budget, {world} GPUs a job):"]
    if study.mode != "tiny":
        lines.append(f"  vision tower: {study.vision_shape()[1]}, {study.image_tokens()} visual tokens per image")
        for llm in study.llms():
            try:
                s = study.llm_shape(llm)
            except UnknownNameError:
                continue
            lines.append(f"  {llm}: {study.llm_source(llm)}; {s.model_type}, {s.params / 1e9:.2f}B parameters, "
                         f"{s.num_attention_heads} x {s.head_dim} query heads, vocabulary {s.vocab_size}"
                         f"{', tied head' if s.tie_word_embeddings else ''}")
    seen: set = set()
    for llm, seed, chain in train_jobs(study, study.all_models()):
        stage = chain.last.name
        cfg = study.stage_config(llm, seed, chain)
        teacher = study.teacher_of(llm) if cfg.distill else None
        parts = study.loss_parts(llm, teacher, cfg.loss)
        key = (stage, llm, teacher, cfg.train.per_device_batch, cfg.train.gradient_checkpointing, parts)
        if key in seen:
            continue
        seen.add(key)
        kw = dict(stage=stage, zero_stage=_zero_stage(cfg.train.deepspeed), world=world,
                  seq_len=cfg.data.max_length, gradient_checkpointing=cfg.train.gradient_checkpointing,
                  implementation=cfg.loss.implementation, vision=study.vision_shape()[0], loss_parts=parts)
        shapes = (study.llm_shape(llm), teacher and study.llm_shape(teacher))
        total = estimate(*shapes, per_device_batch=cfg.train.per_device_batch, **kw)["total"]
        fits = largest_per_device_batch(*shapes, global_batch=cfg.train.global_batch, budget_gib=budget_gib, **kw)
        pair = f"{llm} <- {teacher}" if teacher else llm
        if parts:
            pair += f" +{parts / 1e6:.1f}M loss parts"
        flag = "" if total <= budget_gib * GIB else "  DOES NOT FIT"
        lines.append(f"  {stage:4s} {pair:28s} ZeRO-{kw['zero_stage']} per-device {cfg.train.per_device_batch:3d}, "
                     f"checkpointing {checkpointing_label(cfg.train.gradient_checkpointing)}: {total / GIB:5.1f} GiB "
                     f"(largest batch that fits: {fits}){flag}")
    return "\n".join(lines)
