"""The benchmark registry: the paper's ten columns, their lmms-eval tasks and scoring conventions.

    from llavakd.eval.registry import load_registry, headline
    reg = load_registry()                      # llavakd/eval/benchmarks.yaml, validated
    reg["mme"].tasks                           # ('mme',)
    headline(reg["pope"], {"pope_adv": {...}, ...}, samples)   # -> score in the paper's scale

The YAML is data (facts in docs/method.md, "Benchmarks"); this module only checks it and applies the scale.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from llavakd.errors import ConfigError, LlavaKDError

REGISTRY_PATH = Path(str(importlib.resources.files("llavakd.eval") / "benchmarks.yaml"))  # package data
SCALES = ("percent", "identity", "mme_perception")
REDUCES = ("mean",)
KEYS = {"column", "tasks", "submission", "metric", "scale", "reduce", "paper_split", "extra_datasets", "pooled"}

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


def pooled_value(bench: Benchmark, metric: str, records: list[dict]) -> float:
    """``metric`` over the per-sample records of all the benchmark's tasks, by lmms-eval's own aggregation."""
    import importlib

    module, fn = dict(bench.pooled)[metric].split(":")
    value = float(getattr(importlib.import_module(f"lmms_eval.tasks.{module}"), fn)(records))
    if not math.isfinite(value):
        raise LlavaKDError(f"{bench.name}: pooled {metric} is not finite ({value})")
    return value


def load_registry(path: str | Path = REGISTRY_PATH) -> dict[str, Benchmark]:
    path = Path(path)
    if not path.is_file():
        raise LlavaKDError(f"benchmark registry {path} not found (it ships inside the package)")
    raw = yaml.safe_load(path.read_text()) or {}
    problems, out = [], {}
    if not isinstance(raw, dict):
        raise ConfigError(path, [f"{path}: expected a mapping of benchmark names"])
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
        if not problems:
            out[name] = Benchmark(name=name, column=spec["column"], tasks=tuple(spec["tasks"]), metric=spec["metric"],
                                  scale=spec["scale"], paper_split=spec["paper_split"],
                                  submission=tuple(spec.get("submission", ())), reduce=spec.get("reduce", "mean"),
                                  extra_datasets=tuple((d["path"], d.get("name")) for d in extra),
                                  pooled=tuple(pooled.items()))
    if problems:
        raise ConfigError(path, problems)
    return out


def resolve(names: str | list[str], registry: dict[str, Benchmark] | None = None) -> list[Benchmark]:
    """'all', a comma list or a list of names -> benchmarks, refusing unknown names (all listed)."""
    registry = registry or load_registry()
    if isinstance(names, str):
        names = list(registry) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise LlavaKDError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(registry)} (or 'all')")
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
