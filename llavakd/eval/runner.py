"""Evaluate a checkpoint on the paper's benchmarks through lmms-eval, in process; fixed result files.

    llavakd eval --model results/demo/runs/qwen1.5-0.5b/s0/dpt--sft--dft/final --benchmarks all \\
        --out /tmp/eval --world results/demo/world  # tiny mode: the synthetic stand-ins
    llavakd eval --model DIR --benchmarks gqa,mme --out DIR --hf-home /data/hf   # real tasks, offline cache
    llavakd eval --model DIR --benchmarks pope --out /tmp/e --world W --limit 20 --batch-size 8

For each benchmark (``llavakd/eval/benchmarks.yaml``) this runs ``lmms_eval.evaluator.simple_evaluate``
on its tasks with the ``llavakd`` model class, in a working folder of its own
(``<out>/.work/<benchmark>/``: lmms-eval's submission files land there), and writes

    <out>/<benchmark>.json           headline in the paper's scale, every raw lmms-eval metric per task,
                                     pooled metrics over all its tasks (POPE: F1 and accuracy),
                                     lmms-eval version, task config hash, model path, seed, doc counts
    <out>/<benchmark>.samples.jsonl  one line per scored document: task, doc id, target, prediction,
                                     the task's per-sample metric records
    <out>/<benchmark>.submissions/   with --submission: the files for the evaluation server (VQAv2 and
                                     VizWiz test), under fixed names (lmms-eval's minus the timestamp)

Both appear only when the benchmark succeeded (written to temporary names, then renamed); once
every requested benchmark has its files, ``<out>/COMPLETE`` (sizes and sha256 of the folder's files)
marks the folder done. A run killed mid-benchmark leaves that benchmark without files and every
finished one intact; run again, it reuses each finished benchmark whose recorded request (model
fingerprint, seed, limit, dtype, task files, lmms-eval version) equals the new one and scores only
what is missing (``--recompute`` scores everything again). A failure (unknown benchmark, missing
data, an exception inside lmms-eval, zero scored documents, a missing or non-finite metric) raises
``EvalError``; the CLI exits non-zero and leaves no result file for that benchmark. Nothing in a
result file depends on time, host or batch size, so two runs give identical files. Seeds: Python's
``random`` (MMMU's guess on an unparsable answer), numpy and torch are seeded before every
benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
from importlib.metadata import version
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.eval.registry import Benchmark, headline, pooled_value, resolve
from llavakd.io import COMPLETE_MARKER, atomic_write_text, write_marker
from llavakd.protocols import DEFAULT_PROTOCOL, PROTOCOLS, SCORING_REVISION

log = logging.getLogger("llavakd.eval")


class EvalError(LlavaKDError):
    """A benchmark could not be scored; no result file was written for it."""


def _jsonable(value):
    """Per-sample records hold numpy scalars and sometimes images: keep what JSON can say."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    return f"<{type(value).__name__}>"


def config_hash(config: dict) -> str:
    """Hash of the task config as lmms-eval ran it; functions appear by name (their reprs carry
    memory addresses that differ between processes)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", json.dumps(_jsonable(config), sort_keys=True))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _task_metrics(raw: dict, only: str = "none") -> dict:
    """lmms-eval's 'metric,filter' keys -> {metric: value} for the filter ``only`` (the benchmark's; stderr
    kept too)."""
    out = {}
    for key, value in raw.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        if filt == only and isinstance(value, (int, float)):
            out[metric] = value
    return out


def _sample_record(task: str, s: dict, metrics: list[str]) -> dict:
    pred = s.get("filtered_resps", s.get("resps"))
    while isinstance(pred, list) and len(pred) == 1:
        pred = pred[0]
    rec = {"task": task, "doc_id": s.get("doc_id"), "target": s.get("target"), "prediction": pred}
    for m in metrics:
        if m in s:
            rec[m] = s[m]
    return _jsonable(rec)


def task_names(bench: Benchmark, names: dict[str, str], submission: bool) -> list[str]:
    """The lmms-eval tasks to run for ``bench``: ``names`` maps each registry task to its stock task,
    stand-in or protocol variant."""
    wanted = list(bench.tasks) + (list(bench.submission) if submission else [])
    missing = [t for t in wanted if t not in names]
    if missing:
        raise EvalError(f"{bench.name}: no task written for {', '.join(missing)} (no stand-in or variant)")
    return [names[t] for t in wanted]


@contextlib.contextmanager
def _quiet_lmms():
    """lmms-eval logs through loguru at INFO per task; keep warnings and errors."""
    try:
        from loguru import logger as loguru_logger
    except ImportError:  # pragma: no cover - lmms-eval depends on loguru
        yield
        return
    import sys

    loguru_logger.remove()
    handle = loguru_logger.add(sys.stderr, level=os.environ.get("LLAVAKD_LMMS_LOG_LEVEL", "WARNING"))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            loguru_logger.remove(handle)


def model_fingerprint(model_dir: Path) -> str:
    """What identifies a checkpoint's weights: its completion marker (sizes and sha256 of its files,
    when llavakd wrote it) and the name, size and mtime of each of its files."""
    h = hashlib.sha256()
    for p in sorted(model_dir.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if p.name == COMPLETE_MARKER:
                h.update(p.read_bytes())
    return h.hexdigest()


def _tasks_hash(tasks_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(tasks_dir.glob("*")):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _reusable(out: Path, bench: Benchmark, request: dict) -> bool:
    """A finished benchmark from an earlier run of the same request: both files there, same request."""
    path, samples = out / f"{bench.name}.json", out / f"{bench.name}.samples.jsonl"
    if not (path.is_file() and samples.is_file()):
        return False
    try:
        return json.loads(path.read_text()).get("request") == request
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


# the date-time lmms-eval's tasks put in submission file names: 2026-11-29-06-55-28 (VQAv2), 2026-1129-0655-28 (VizWiz)
_TIMESTAMP = re.compile(r"[-_]\d{4}-?\d{2}-?\d{2}[-_]\d{2}-?\d{2}-?\d{2}(?=\.\w+$)")


def _keep_submissions(work: Path, out: Path, bench: Benchmark) -> list[str]:
    """Copy the files lmms-eval wrote for the evaluation server to fixed names beside the result file:
    ``<out>/<benchmark>.submissions/<name without its timestamp>``; returns those paths, relative to ``out``."""
    files = sorted((work / "submissions").glob("*"))
    if bench.submission and not files:
        raise EvalError(f"{bench.name}: lmms-eval wrote no submission file for {', '.join(bench.submission)}")
    dest = out / f"{bench.name}.submissions"
    shutil.rmtree(dest, ignore_errors=True)
    kept = []
    for f in files:
        name = _TIMESTAMP.sub("", f.name)
        if (dest / name).exists():
            raise EvalError(f"{bench.name}: two submission files are both named {name} once their timestamps go")
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest / name, f.read_text())
        kept.append(f"{dest.name}/{name}")
    return kept


def _interval(bench: Benchmark, res: dict, local: dict[str, str], task_manager, work: Path, seed: int,
              score: float) -> dict:
    """The headline's 95% interval over the scored documents (llavakd.eval.interval), from the values
    lmms-eval aggregated; recomputing the headline through the tasks' aggregation must give it back."""
    from lmms_eval.tasks import get_task_dict

    from llavakd.eval.interval import document_interval

    tasks = {t: get_task_dict([name], task_manager)[name] for t, name in local.items()}
    items = {t: [s[bench.metric] for s in res["samples"][name]] for t, name in local.items()}
    scratch = work / "interval"  # aggregations that write files (MMBench's) write them here, not into submissions/
    try:
        interval = document_interval(bench, items, tasks, scratch, seed)
    except ValueError as e:
        raise EvalError(str(e)) from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not math.isclose(interval["value"], round(score, 4), abs_tol=1e-3):
        raise EvalError(f"{bench.name}: the interval's recomputed headline {interval['value']} is not lmms-eval's "
                        f"{score:.4f}")
    return interval


def run_benchmark(bench: Benchmark, model, out: Path, *, task_manager, names: dict[str, str], tiny: bool = False,
                  protocol: str = DEFAULT_PROTOCOL, limit=None, batch_size: int = 1, seed: int = 0,
                  model_path: str | None = None, submission: bool = False, request: dict | None = None) -> dict:
    """Evaluate one benchmark and write its two files; returns the result record."""
    import numpy as np
    import torch
    from lmms_eval.evaluator import simple_evaluate

    tasks = task_names(bench, names, submission)
    work = out / ".work" / bench.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cli_args = argparse.Namespace(output_path=str(work), process_with_media=True)
    try:
        res = simple_evaluate(model=model, tasks=tasks, batch_size=batch_size, limit=limit,
                              task_manager=task_manager, log_samples=True, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                              cli_args=cli_args)
    except LlavaKDError:
        raise
    except Exception as e:  # lmms-eval raises assorted types (missing data, bad task YAML, ...)
        raise EvalError(f"{bench.name}: lmms-eval failed on {', '.join(tasks)}: {type(e).__name__}: {e}") from e
    if not res or "results" not in res:
        raise EvalError(f"{bench.name}: lmms-eval returned no results for {', '.join(tasks)}")

    local = task_names(bench, names, False)
    per_task, samples, counts = {}, {}, {}
    for official, name in zip(bench.tasks, local):
        raw = res["results"].get(name)
        n = int((res.get("n-samples", {}).get(name) or {}).get("effective", 0))
        task_samples = res.get("samples", {}).get(name, [])
        if raw is None or n == 0 or not task_samples:
            raise EvalError(f"{bench.name}: task {name} scored no documents (check its data and --limit)")
        per_task[official] = _task_metrics(raw, bench.filter)
        metric_names = [m for m in per_task[official] if not m.endswith("_stderr")]
        samples[official] = [_sample_record(official, s, metric_names) for s in task_samples]
        counts[official] = n
    # per-sample metric records (MME's carry the category its headline divisor counts)
    records = {t: [s[bench.metric] for s in samples[t] if isinstance(s.get(bench.metric), dict)] for t in samples}
    score = headline(bench, per_task, records)
    interval = _interval(bench, res, dict(zip(bench.tasks, local)), task_manager, work, seed, score)
    record = {
        "benchmark": bench.name, "column": bench.column, "headline": round(score, 4), "scale": bench.scale,
        "paper_split": bench.paper_split,
        "local_split_differs": bool(bench.submission),
        "mode": "tiny-standin" if tiny else "official", "protocol": protocol,
        "tasks": {t: {"lmms_eval_task": n, "metrics": per_task[t], "docs": counts[t],
                      "config_hash": config_hash(res.get("configs", {}).get(n, {}))}
                  for t, n in zip(bench.tasks, local)},
        "pooled": {m: pooled_value(bench, m, [s[m] for t in bench.tasks for s in samples[t] if isinstance(s.get(m), dict)])
                   for m, _ in bench.pooled},
        "submission_files": _keep_submissions(work, out, bench) if submission else [],
        "model": model_path, "seed": seed, "limit": limit,
        "lmms_eval_version": version("lmms_eval"), "request": request,
        "interval95": interval,
    }
    atomic_write_text(out / f"{bench.name}.samples.jsonl",
                  "".join(json.dumps(s, sort_keys=True) + "\n" for t in bench.tasks for s in samples[t]))
    atomic_write_text(out / f"{bench.name}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def evaluate(model, benchmarks, out, *, standins=None, limit=None, batch_size: int = 1, seed: int = 0,
             device: str = "auto", dtype: str = "float32", submission: bool = False, hf_home=None,
             recompute: bool = False, protocol: str = DEFAULT_PROTOCOL, pope_questions=None) -> dict:
    """Run the named benchmarks; returns {benchmark: record}. Raises EvalError on the first failure
    (benchmarks already finished keep their files; the failing one has none).

    ``model`` is a checkpoint folder, or an lmms-eval model object (tests drive the runner with a
    scripted one). ``standins``: a task writer ``folder -> {registry task: task name}`` that swaps
    the official tasks for stand-ins (tiny mode: ``llavakd.tiny.tasks.standin_tasks(world)``); it is
    passed in, not imported, so the runner knows nothing of the tiny world. ``pope_questions``: the
    paper protocol reads POPE from upstream's question files in this folder (llavakd.eval.pope_files)."""
    from lmms_eval.api.model import lmms

    from llavakd.eval.tasks import task_manager, write_protocol_yamls, write_task_yamls

    benches = resolve(benchmarks)
    out = Path(out)
    fingerprint = None  # a scripted model object has none: it is never reused
    if isinstance(model, lmms):
        model_path = f"<{type(model).__name__}>"
    else:
        model_dir = Path(model)
        if not (model_dir / "config.json").is_file():
            raise EvalError(f"{model_dir}: not a checkpoint folder (no config.json)")
        model_path = str(model_dir.resolve())
        fingerprint = model_fingerprint(model_dir)
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")
    if pope_questions and protocol != "paper":
        raise EvalError("--pope-questions gives the paper protocol's POPE data; add --protocol paper")
    if hf_home:  # a pre-filled Hugging Face cache: the official task data without any network access
        from llavakd.eval.prefetch import benchmark_datasets, missing, use_cache

        use_cache(hf_home, offline=True)  # the CLI did this before any import; here for late importers
        gone = [] if standins is not None else missing(benchmark_datasets(benches, submission))
        if gone:
            raise EvalError(f"not in the Hugging Face cache {hf_home}: {', '.join(d.label() for d in gone)}; fill it "
                            "on a machine with network access (llavakd prefetch-benchmarks / snakemake prefetch_benchmarks)")
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPLETE_MARKER).unlink(missing_ok=True)  # the folder is complete again only when this run is
    for stale in out.glob(".*.tmp-*"):  # a killed run's half-written files
        stale.unlink(missing_ok=True)
    tasks_dir = out / ".work" / "tasks"
    names = write_protocol_yamls(tasks_dir, (standins or write_task_yamls)(tasks_dir), protocol, pope_questions)
    request = None if fingerprint is None else {
        "model": model_path, "model_fingerprint": fingerprint, "seed": seed, "limit": limit, "dtype": dtype,
        "submission": submission, "protocol": protocol, "tasks_hash": _tasks_hash(tasks_dir),
        "lmms_eval_version": version("lmms_eval"), "scoring_revision": SCORING_REVISION,
        "hf_offline": os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_DATASETS_OFFLINE") == "1"}
    results, todo = {}, []
    for b in benches:
        if request is not None and not recompute and _reusable(out, b, request):
            log.info("reusing %s: finished earlier for this model and settings", b.name)
            results[b.name] = json.loads((out / f"{b.name}.json").read_text())
            continue
        for suffix in (".json", ".samples.jsonl"):  # an older result must not look current
            (out / f"{b.name}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(out / f"{b.name}.submissions", ignore_errors=True)
        todo.append(b)
    if not todo:
        write_marker(out)
        return results
    with _quiet_lmms():
        manager = task_manager(tasks_dir, stock=standins is None)
        if not isinstance(model, lmms):
            from llavakd.eval.adapter import LlavaKD

            model = LlavaKD(pretrained=model_path, batch_size=batch_size, device=device, dtype=dtype)
        for b in todo:
            log.info("evaluating %s (%s)", b.name, ", ".join(b.tasks))
            results[b.name] = run_benchmark(b, model, out, task_manager=manager,
                                            names=names, tiny=standins is not None, protocol=protocol, limit=limit,
                                            batch_size=batch_size, seed=seed, model_path=model_path,
                                            submission=submission, request=request)
    write_marker(out)
    return {b.name: results[b.name] for b in benches}
