"""The study a Snakemake config describes: validated config, the runs each target needs, their cost.

    from llavakd.plan import Study
    study = Study.load(config)                 # the dict Snakemake read; every problem listed at once
    study.table1_models()                      # ['qwen1.5-4b/s0/pt--sft', 'qwen1.5-0.5b/s0/dpt--sft--dft', ...]
    study.train_inputs('qwen1.5-0.5b', 0, 'dpt--sft')   # what one training job starts from

A trained model is named ``<llm>/s<seed>/<chain>``: the chain lists its stages in order, joined
by ``--`` (``pt--sft`` is the TinyLLaVA recipe of the teachers and baselines, ``dpt--sft--dft``
LLaVA-KD). A distillation stage may name its loss terms: ``dpt~res+vis`` (default: all of CE,
L_res, L_vis, L_rel). Every prefix of a chain is itself a run, so variants that share stages share
their training jobs. A teacher given as a checkpoint is named ``<llm>/given``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from llavakd.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
STAGES = ("pt", "sft", "dpt", "dft")
TERMS = ("res", "vis", "rel")
TOKEN = re.compile(r"^(pt|sft|dpt|dft)(?:~((?:res|vis|rel)(?:\+(?:res|vis|rel))*))?$")
TINY_LLMS = ("qwen1.5-4b", "qwen1.5-1.8b", "qwen1.5-0.5b", "qwen2.5-3b", "qwen2.5-1.5b", "qwen2.5-0.5b")


@dataclass(frozen=True)
class Stage:
    name: str                # pt | sft | dpt | dft
    terms: tuple[str, ...]   # distillation terms (dpt/dft); () for pt/sft

    @property
    def distill(self) -> bool:
        return self.name in ("dpt", "dft")


def parse_token(token: str) -> Stage:
    m = TOKEN.match(token)
    if not m:
        raise ValueError(f"bad stage token {token!r}: expected pt, sft, dpt, dft, optionally ~res+vis+rel")
    name, terms = m.group(1), m.group(2)
    if terms and name in ("pt", "sft"):
        raise ValueError(f"stage token {token!r}: only dpt and dft take loss terms")
    chosen = tuple(t for t in TERMS if t in (terms.split("+") if terms else TERMS)) if name in ("dpt", "dft") else ()
    return Stage(name, chosen)


def check_chain(chain: str) -> list[Stage]:
    stages = [parse_token(t) for t in chain.split("--")]
    first = stages[0].name
    if first not in ("pt", "dpt"):
        raise ValueError(f"chain {chain!r} must start with pt or dpt (the projector is trained first)")
    if any(s.name in ("pt", "dpt") for s in stages[1:]):
        raise ValueError(f"chain {chain!r}: pt/dpt may only come first")
    return stages


def _schema_problems(config: dict) -> list[str]:
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(f"{where}: {err.message}")
    return out


class Study:
    def __init__(self, config: dict):
        self.config = config
        self.run = config["run"]
        self.mode = config["mode"]
        self.seeds = list(config["seeds"])
        self.families = config["families"]
        self.variants = config["variants"]
        self.ablations = config.get("ablations", {})
        self.root = f"results/{self.run}"

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, config: dict, source: str = "config") -> Study:
        problems = _schema_problems(config)
        if problems:
            raise ConfigError(source, problems)
        problems += cls._semantic_problems(config)
        if problems:
            raise ConfigError(source, problems)
        return cls(config)

    @staticmethod
    def _semantic_problems(c: dict) -> list[str]:
        p = []
        teachers = {f["teacher"] for f in c["families"].values()}
        students = [s for f in c["families"].values() for s in f["students"]]
        for s in sorted({s for s in students if students.count(s) > 1}):
            p.append(f"families: student {s} appears in more than one family (its teacher would be ambiguous)")
        for s in sorted(teachers & set(students)):
            p.append(f"families: {s} is both a teacher and a student")
        llms = teachers | set(students)
        if c["mode"] == "tiny":
            for name in sorted(llms - set(TINY_LLMS)):
                p.append(f"families: {name} is not a tiny LLM (tiny mode knows {', '.join(TINY_LLMS)})")
        else:
            for name in sorted(llms - set(c.get("llms", {}))):
                if not any(f["teacher"] == name and f.get("teacher_checkpoint") for f in c["families"].values()):
                    p.append(f"llms.{name}: missing (real mode needs a base checkpoint path or hub id per LLM)")
            if not c.get("vision"):
                p.append("vision: missing (real mode needs the SigLIP checkpoint)")
            for key in ("captions", "instruct", "images"):
                if not c.get("data", {}).get(key):
                    p.append(f"data.{key}: missing (real mode trains on the LLaVA-1.5 data)")
        named = dict(c["variants"])
        for name, spec in c.get("ablations", {}).get("stages", {}).items():
            named[f"ablations.stages.{name}"] = spec
        for name, chain in named.items():
            try:
                check_chain(chain)
            except ValueError as e:
                p.append(f"{name if '.' in name else 'variants.' + name}: {e}")
        for key in ("baseline", "llava_kd"):
            if key not in c["variants"]:
                p.append(f"variants.{key}: missing (Table 1 compares the baseline with LLaVA-KD)")
        for name, spec in c.get("ablations", {}).get("losses", {}).items():
            for st, terms in spec.items():
                if not terms:
                    p.append(f"ablations.losses.{name}.{st}: name at least one of res, vis, rel")
        abl_students = c.get("ablations", {}).get("students")
        for s in abl_students or []:
            if s not in students:
                p.append(f"ablations.students: {s} is not a student of any family")
        return p

    # -- names ----------------------------------------------------------------------------
    def teacher_of(self, student: str) -> str:
        for fam in self.families.values():
            if student in fam["students"]:
                return fam["teacher"]
        raise KeyError(student)

    def family_of_teacher(self, teacher: str) -> dict:
        return next(f for f in self.families.values() if f["teacher"] == teacher)

    def teacher_model(self, teacher: str) -> str:
        """Model name of a family's teacher: given as a checkpoint, or trained by the baseline recipe."""
        fam = self.family_of_teacher(teacher)
        if fam.get("teacher_checkpoint"):
            return f"{teacher}/given"
        return f"{teacher}/s{self.seeds[0]}/{self.variants['baseline']}"

    def students(self) -> list[str]:
        return [s for f in self.families.values() for s in f["students"]]

    def ablation_students(self) -> list[str]:
        return list(self.ablations.get("students") or self.students())

    @staticmethod
    def loss_chain(spec: dict) -> str:
        def tok(stage):
            terms = spec.get(stage)
            return stage if terms is None or set(terms) == set(TERMS) else f"{stage}~" + "+".join(
                t for t in TERMS if t in terms)
        return f"{tok('dpt')}--sft--{tok('dft')}"

    # -- targets --------------------------------------------------------------------------
    def table1_models(self) -> list[str]:
        out = [self.teacher_model(f["teacher"]) for f in self.families.values()]
        for s in self.students():
            for seed in self.seeds:
                out += [f"{s}/s{seed}/{self.variants['baseline']}", f"{s}/s{seed}/{self.variants['llava_kd']}"]
        return out

    def ablation_loss_models(self) -> dict[str, list[str]]:
        return {name: [f"{s}/s{seed}/{self.loss_chain(spec)}" for s in self.ablation_students() for seed in self.seeds]
                for name, spec in self.ablations.get("losses", {}).items()}

    def ablation_stage_models(self) -> dict[str, list[str]]:
        return {name: [f"{s}/s{seed}/{chain}" for s in self.ablation_students() for seed in self.seeds]
                for name, chain in self.ablations.get("stages", {}).items()}

    # -- jobs -----------------------------------------------------------------------------
    def released_models(self) -> list[str]:
        """Released checkpoints (config ``released``) evaluated to measure our protocol's offset."""
        return [f"released/{name}" for name in self.config.get("released", {})]

    def model_dir(self, model: str) -> str:
        if model.startswith("released/"):
            return self.config["released"][model.split("/", 1)[1]]["checkpoint"]
        if model.endswith("/given"):
            return self.family_of_teacher(model.split("/")[0])["teacher_checkpoint"]
        return f"{self.root}/runs/{model}/final"

    def train_inputs(self, llm: str, seed: int, chain: str) -> dict:
        """Inputs of the job that trains the last stage of ``chain``: start model and teacher."""
        tokens = chain.split("--")
        stage = parse_token(tokens[-1])
        start = (f"{self.root}/runs/{llm}/s{seed}/{'--'.join(tokens[:-1])}/final/COMPLETE" if len(tokens) > 1
                 else f"{self.root}/models/{llm}/s{seed}/init/COMPLETE")
        out = {"model": start}
        teacher = self.teacher_model(self.teacher_of(llm)) if stage.distill else None
        if teacher and not teacher.endswith("/given"):  # a given checkpoint is a parameter, not a job input
            out["teacher"] = f"{self.model_dir(teacher)}/COMPLETE"
        return out

    def teacher_dir(self, llm: str, chain: str) -> str | None:
        if not parse_token(chain.split("--")[-1]).distill:
            return None
        return self.model_dir(self.teacher_model(self.teacher_of(llm)))

    def train_overrides(self, llm: str, seed: int, chain: str) -> list[str]:
        """``key=value`` overrides for ``llavakd train`` (beyond model/teacher/output_dir)."""
        stage = parse_token(chain.split("--")[-1])
        tr = self.config.get("train", {})
        merged = dict(tr.get("common", {}))
        merged.update(tr.get(stage.name, {}) or {})
        teachers = {f["teacher"] for f in self.families.values()}
        if llm in teachers:
            merged.update((tr.get("teacher", {}) or {}).get(stage.name, {}) or {})
        merged.setdefault("train.seed", seed)
        if stage.distill:
            for t in TERMS:
                merged[f"loss.{t}"] = t in stage.terms
        data = self.data_paths()
        merged["data.json"] = data["captions"] if stage.name in ("pt", "dpt") else data["instruct"]
        merged["data.images"] = data["images"]
        return [f"{k}={_fmt(v)}" for k, v in merged.items()]

    def data_paths(self) -> dict:
        if self.mode == "tiny":
            w = f"{self.root}/world"
            return {"captions": f"{w}/train/captions.json", "instruct": f"{w}/train/instruct.json", "images": f"{w}/images"}
        return dict(self.config["data"])

    def build_args(self, llm: str, seed: int) -> list[str]:
        if self.mode == "tiny":
            c = f"{self.root}/components"
            return ["--vision", f"{c}/vision/siglip", "--llm", f"{c}/llm/{llm}", "--strategy", "full", "--seed", str(seed)]
        return ["--vision", self.config["vision"], "--llm", self.config["llms"][llm], "--image-tokens", "728",
                "--seed", str(seed)]

    def resources(self, rule: str) -> dict:
        res = dict(self.config.get("resources", {}).get("default", {}))
        res.update(self.config.get("resources", {}).get(rule, {}))
        return res


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# -- cost ---------------------------------------------------------------------------------
def train_jobs(study: Study, models: list[str]) -> list[tuple[str, int, str]]:
    """Every (llm, seed, chain prefix) a set of models needs, each once (shared prefixes)."""
    jobs, seen = [], set()
    for m in models:
        if m.endswith("/given"):
            continue
        llm, seed, chain = m.split("/", 2)
        tokens = chain.split("--")
        for i in range(len(tokens)):
            key = (llm, int(seed[1:]), "--".join(tokens[: i + 1]))
            if key not in seen:
                seen.add(key)
                jobs.append(key)
    return jobs


def llm_params(study: Study, llm: str) -> float:
    given = study.config.get("cost", {}).get("params", {})
    if llm in given:
        return float(given[llm])
    from llavakd.model.shapes import QWEN, count_llm_params, qwen_config

    match = {k.lower(): k for k in QWEN}.get(llm.lower())
    if match is None:
        raise ConfigError("cost", [f"cost.params.{llm}: unknown LLM size; give its parameter count"])
    return float(count_llm_params(qwen_config(match)))


def cost_report(study: Study, benchmarks: list[str]) -> str:
    """GPU-hours per rule and in total from a FLOPs model: 6N per trained token (N: the student
    LLM's parameters; backward through a frozen LLM costs the same), 2N per teacher token, 2N per
    evaluated token, at the configured MFU of the configured peak."""
    c = study.config["cost"]
    rate = c["peak_tflops"] * 1e12 * c["mfu"]
    samples, per = c["samples"], c["tokens_per_sample"]

    def stage_tokens(stage: str) -> float:
        kind = "pt" if stage in ("pt", "dpt") else "sft"
        return samples[kind] * per[kind]

    def job_hours(llm, chain) -> float:
        st = parse_token(chain.split("--")[-1])
        flops = 6 * llm_params(study, llm) * stage_tokens(st.name)
        if st.distill:
            flops += 2 * llm_params(study, study.teacher_of(llm)) * stage_tokens(st.name)
        return flops / rate / 3600

    def eval_hours(model) -> float:
        return 2 * llm_params(study, model.split("/")[0]) * c.get("eval_tokens", 0) / rate / 3600

    lines = [f"llavakd cost estimate (run {study.run}): 6N per trained token, 2N per teacher and evaluated token, "
             f"MFU {c['mfu']:.0%} of {c['peak_tflops']:g} TFLOP/s per GPU"]
    targets = {"reproduce_table1": study.table1_models()}
    for name, groups in (("ablation_losses", study.ablation_loss_models()),
                         ("ablation_stages", study.ablation_stage_models())):
        targets[name] = [m for ms in groups.values() for m in ms]
    done: set = set()
    grand = 0.0
    for target, models in targets.items():
        jobs = [j for j in train_jobs(study, models) if j not in done]
        evals = [m for m in dict.fromkeys(models) if ("eval", m) not in done]
        per_stage: dict[str, list[float]] = {}
        for llm, seed, chain in jobs:
            per_stage.setdefault(chain.split("--")[-1].split("~")[0], []).append(job_hours(llm, chain))
        ev = [eval_hours(m) for m in evals]
        total = sum(sum(v) for v in per_stage.values()) + sum(ev)
        grand += total
        lines.append(f"  {target}{' (jobs not shared with the targets above)' if done else ''}:")
        for stage, hours in per_stage.items():
            lines.append(f"    train[{stage:3s}]  {len(hours):3d} jobs  {sum(hours):9.1f} GPU-h")
        lines.append(f"    evaluate    {len(ev):3d} jobs  {sum(ev):9.1f} GPU-h  ({len(benchmarks)} benchmarks)")
        lines.append(f"    total                {total:9.1f} GPU-h")
        done |= set(jobs) | {("eval", m) for m in evals}
    lines.append(f"  all targets            {grand:9.1f} GPU-h")
    return "\n".join(lines)
