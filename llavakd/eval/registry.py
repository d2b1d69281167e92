"""The benchmark registry: every column (the paper's ten and newer ones), its lmms-eval tasks and
scoring conventions, and the reports' averages. The one home of column names: the reports read
header, order and averages from here (``report_columns``).

    from llavakd.eval.registry import load_registry, headline, report_columns
    reg = load_registry()                      # llavakd/eval/benchmarks.yaml, validated
    reg["mme"].tasks                           # ('mme',)
    headline(reg["pope"], {"pope_adv": {...}, ...}, samples)   # -> score in the paper's scale
    report_columns(["mmstar"]).keys            # the paper's ten, MMStar, Avg7, Avg10, Avg(11)

The YAML is data (facts in docs/method.md, "Benchmarks"); this module only checks it and applies the scale.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from llavakd.errors import ConfigError, LlavaKDError

REGISTRY_PATH = Path(str(importlib.resources.files("llavakd.eval") / "benchmarks.yaml"))  # package data
SCALES = ("percent", "identity", "mme_perception")
REDUCES = ("mean",)
KEYS = {"column", "paper", "tasks", "submission", "metric", "filter", "scale", "reduce", "paper_split", "extra_datasets",
        "pooled", "yaml", "standin", "no_standin"}
STUDY_AVERAGE = "avg"  # the key of the average over a study's own columns (when they are not the paper's ten)

# MME's perception categories (lmms-eval's mme/utils.py eval_type_dict["Perception"]); a stand-in
# may hold a subset, so the divisor counts the categories actually scored
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")


@dataclass(frozen=True)
class Benchmark:
    name: str
    column: str
    tasks: tuple[str, ...]
    metric: str
    scale: str
    paper_split: str
    submission: tuple[str, ...] = ()
    reduce: str = "mean"
    extra_datasets: tuple[tuple[str, str | None], ...] = ()  # (hub id, config) the task code loads itself
    # (metric, lmms-eval aggregation as "module:function" under lmms_eval.tasks): also scored over the
    # documents of all tasks together, beside each task's own value (POPE: pooled F1 and accuracy)
    pooled: tuple[tuple[str, str], ...] = ()
    paper: bool = False                           # one of the paper's ten Table 1 columns
    filter: str = "none"                          # the lmms-eval filter the metric is read under
    yaml: tuple[tuple[str, str], ...] = ()        # (task, its YAML relative to lmms_eval/tasks)
    standin: tuple[tuple[str, str], ...] | None = None  # tiny mode: (task, stand-in); None: no stand-in
    no_standin: str | None = None                 # why there is no stand-in


@dataclass(frozen=True)
class Average:
    key: str
    name: str                                     # the header
    of: tuple[str, ...]                           # the benchmarks it averages


@dataclass(frozen=True)
class Columns:
    """What a report shows: benchmark columns in order, then its averages; ``headline`` is the average
    the methods table ranks by (Avg10 over the paper's ten, else the study's own)."""

    benchmarks: tuple[str, ...]
    averages: tuple[Average, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.benchmarks, *(a.key for a in self.averages))

    @property
    def headline(self) -> str:
        return self.averages[-1].key

    @property
    def paper_average(self) -> str:
        """The key of the average over the paper's ten (Avg10): the paper's and third-party rows report it."""
        paper = paper_columns()
        return next(a.key for a in self.averages if a.of == paper)

    def header(self, key: str) -> str:
        return {a.key: a.name for a in self.averages}.get(key) or header(key)

    def average(self, key: str) -> Average:
        return next(a for a in self.averages if a.key == key)


def pooled_value(bench: Benchmark, metric: str, records: list[dict]) -> float:
    """``metric`` over the per-sample records of all the benchmark's tasks, by lmms-eval's own aggregation."""
    import importlib

    module, fn = dict(bench.pooled)[metric].split(":")
    value = float(getattr(importlib.import_module(f"lmms_eval.tasks.{module}"), fn)(records))
    if not math.isfinite(value):
        raise LlavaKDError(f"{bench.name}: pooled {metric} is not finite ({value})")
    return value


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LlavaKDError(f"benchmark registry {path} not found (it ships inside the package)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"benchmarks", "averages"} or not isinstance(raw.get("benchmarks"), dict):
        raise ConfigError(path, [f"{path}: expected 'benchmarks' (a mapping of benchmark names) and 'averages'"])
    return raw


def load_registry(path: str | Path = REGISTRY_PATH) -> dict[str, Benchmark]:
    """The benchmarks by name, in the file's order (validated; read once per file and process)."""
    return dict(_load_registry(str(path), Path(path).stat().st_mtime_ns if Path(path).is_file() else 0))


@functools.lru_cache(maxsize=8)
def _load_registry(path: str, _mtime: int) -> dict[str, Benchmark]:
    raw = _read(path)["benchmarks"]
    problems, out = [], {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            problems.append(f"{name}: expected a mapping, got {type(spec).__name__}")
            continue
        for k in sorted(set(spec) - KEYS):
            problems.append(f"{name}.{k}: unknown key (known: {', '.join(sorted(KEYS))})")
        for k in ("column", "tasks", "metric", "scale", "paper_split"):
            if k not in spec:
                problems.append(f"{name}.{k}: missing")
        if spec.get("scale") not in SCALES:
            problems.append(f"{name}.scale: {spec.get('scale')!r} is not one of {', '.join(SCALES)}")
        if spec.get("reduce", "mean") not in REDUCES:
            problems.append(f"{name}.reduce: {spec.get('reduce')!r} is not one of {', '.join(REDUCES)}")
        for k in ("tasks", "submission"):
            if k in spec and (not isinstance(spec[k], list) or not all(isinstance(t, str) for t in spec[k])):
                problems.append(f"{name}.{k}: expected a list of task names")
        extra = spec.get("extra_datasets", [])
        if not isinstance(extra, list) or not all(isinstance(d, dict) and isinstance(d.get("path"), str) for d in extra):
            problems.append(f"{name}.extra_datasets: expected a list of {{path: hub id, name: config}}")
        pooled = spec.get("pooled", {})
        if not isinstance(pooled, dict) or not all(isinstance(f, str) and f.count(":") == 1 for f in pooled.values()):
            problems.append(f"{name}.pooled: expected a mapping of metric -> 'module:function' under lmms_eval.tasks")
        tasks = [*spec.get("tasks", []), *spec.get("submission", [])]
        if sorted(spec.get("yaml") or {}) != sorted(tasks):
            problems.append(f"{name}.yaml: name the YAML of each task ({', '.join(tasks)})")
        if spec.get("standin") is None and not spec.get("no_standin"):
            problems.append(f"{name}: give its tiny stand-in per task (standin) or why there is none (no_standin)")
        elif spec.get("standin") is not None and sorted(spec["standin"]) != sorted(tasks):
            problems.append(f"{name}.standin: name the stand-in of each task ({', '.join(tasks)})")
        if not problems:
            standin = spec.get("standin")
            out[name] = Benchmark(name=name, column=spec["column"], tasks=tuple(spec["tasks"]), metric=spec["metric"],
                                  scale=spec["scale"], paper_split=spec["paper_split"],
                                  submission=tuple(spec.get("submission", ())), reduce=spec.get("reduce", "mean"),
                                  extra_datasets=tuple((d["path"], d.get("name")) for d in extra),
                                  pooled=tuple(pooled.items()), paper=bool(spec.get("paper", False)),
                                  filter=spec.get("filter", "none"), yaml=tuple(spec["yaml"].items()),
                                  standin=tuple(standin.items()) if standin is not None else None,
                                  no_standin=spec.get("no_standin"))
    if problems:
        raise ConfigError(path, problems)
    return out


def paper_columns(registry: dict[str, Benchmark] | None = None) -> tuple[str, ...]:
    """The paper's ten Table 1 columns, in the registry's order."""
    return tuple(name for name, b in (registry or load_registry()).items() if b.paper)


def load_averages(path: str | Path = REGISTRY_PATH) -> tuple[Average, ...]:
    """The registry's averages (validated; read once per file and process, as the benchmarks)."""
    return _load_averages(str(path), Path(path).stat().st_mtime_ns if Path(path).is_file() else 0)


@functools.lru_cache(maxsize=8)
def _load_averages(path: str, _mtime: int) -> tuple[Average, ...]:
    registry = load_registry(path)
    out = []
    for key, spec in (_read(path).get("averages") or {}).items():
        of = paper_columns(registry) if spec.get("of") == "paper" else tuple(spec.get("of") or ())
        unknown = [c for c in of if c not in registry]
        if unknown or not of or not spec.get("name"):
            raise ConfigError(path, [f"averages.{key}: needs a name and benchmarks of the registry to average "
                                     f"(unknown: {', '.join(unknown) or '-'})"])
        out.append(Average(key, spec["name"], of))
    return tuple(out)


def report_columns(names: str | list[str] = "all", average_name: str | None = None) -> Columns:
    """The columns of a study's reports: the paper's ten (always: Table 1 compares with the paper), then
    any other benchmark ``names`` lists, in its order; the registry's averages, and, when there are
    columns beyond the paper's ten, one over all of them (``average_name``, else Avg(N))."""
    registry = load_registry()
    paper = paper_columns(registry)
    extra = tuple(b.name for b in resolve(names, registry) if b.name not in paper)
    averages = load_averages()
    if extra:
        cols = (*paper, *extra)
        averages = (*averages, Average(STUDY_AVERAGE, average_name or f"Avg({len(cols)})", cols))
    return Columns((*paper, *extra), averages)


def header(key: str) -> str:
    """What a report prints for a benchmark or one of the registry's averages."""
    registry = load_registry()
    if key in registry:
        return registry[key].column
    return {a.key: a.name for a in load_averages()}[key]


def resolve(names: str | list[str], registry: dict[str, Benchmark] | None = None) -> list[Benchmark]:
    """'all' (the paper's ten), a comma list or a list of names -> benchmarks, refusing unknown names
    (all listed)."""
    registry = registry or load_registry()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(x for n in names for x in (paper_columns(registry) if n == "all" else [n])))
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise LlavaKDError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(registry)} (or 'all': the "
                           "paper's ten)")
    if not names:
        raise LlavaKDError("no benchmark named")
    return [registry[n] for n in names]


def headline(bench: Benchmark, task_metrics: dict[str, dict], samples: dict[str, list[dict]] | None = None) -> float:
    """The column's number in the paper's scale from each task's aggregated metric.

    ``task_metrics[task][bench.metric]`` is lmms-eval's aggregate; ``samples`` (the per-sample
    log) is needed for MME only, to count the perception categories that were scored.
    """
    values = []
    for task in bench.tasks:
        if bench.metric not in task_metrics.get(task, {}):
            raise LlavaKDError(f"{bench.name}: task {task} reported no {bench.metric!r} "
                               f"(got {sorted(task_metrics.get(task, {}))})")
        v = float(task_metrics[task][bench.metric])
        if not math.isfinite(v):
            raise LlavaKDError(f"{bench.name}: task {task} reported a non-finite {bench.metric} ({v})")
        if bench.scale == "percent":
            v *= 100.0
        elif bench.scale == "mme_perception":
            cats = {s["category"] for s in (samples or {}).get(task, []) if s.get("category") in MME_PERCEPTION}
            if not cats:
                raise LlavaKDError(f"{bench.name}: no perception category found in the samples of {task}")
            v /= 2.0 * len(cats)
        values.append(v)
    return sum(values) / len(values)
