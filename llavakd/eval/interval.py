"""The 95% interval of a benchmark's headline over the documents it scored.

With one seed a cell's value alone says little: on 20 documents a model that guesses can land a few
points above chance. The reports therefore call a single-seed cell *above chance* only when the
lower end of this interval is (``llavakd.report.tables.not_above``). It is computed where the
scores are, by the task's own lmms-eval aggregation, and written into the result file:

- **Wilson** when the headline is a proportion: the benchmark has one task and its aggregate is the
  mean, over clusters, of a score that is 0 or 100 on the paper's scale in every cluster scored (MME
  excepted: an image pair can score 25, so it is always bootstrapped). A cluster is a document, or
  the documents that are scored together (MMBench's circular passes of one question, ``index`` mod
  1e6; MME's two questions about one image, ``question_id``). That the aggregate is such a mean is
  checked, not assumed: each cluster is aggregated on its own and the mean of those must give the
  task's aggregate back.
- **Bootstrap** otherwise (POPE's mean F1 over three splits, MME's perception score, a soft VQA
  score): ``REPLICATES`` resamples of the clusters with replacement, within each task, each
  aggregated by the task's own aggregation and combined by ``registry.headline``; the 2.5th and
  97.5th percentiles.

Either way the record keeps ``REPLICATES`` bootstrap replicates of the headline (seeded by the
benchmark's name and the evaluation seed, so two runs write the same file): the reports average them
replicate by replicate for the interval of Avg7 and Avg10. Written here rather than taken from
lmms-eval, whose ``*_stderr`` metrics are normal approximations per task that do not follow
clusters or combine several tasks (and are not computed for functions such as POPE's F1).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import math
import zlib
from pathlib import Path

from llavakd.eval.registry import Benchmark, headline

REPLICATES = 1000
Z95 = 1.959963984540054
MMBENCH_CIRCULAR = 1_000_000  # MMBench's circular passes of question i carry index i + k * 1e6


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n, as fractions."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# Aggregations that add into a module-level table and never reset it (lmms-eval 0.7.3's OCRBench): right
# when lmms-eval calls them once per process, wrong on the second call. Zeroed before each of ours.
STATEFUL_AGGREGATIONS = {"ocrbench_aggregate_accuracy": "OCRBench_score"}


def _reset_module_state(fn) -> None:
    table = STATEFUL_AGGREGATIONS.get(getattr(fn, "__name__", ""))
    state = getattr(inspect.getmodule(fn), table, None) if table else None
    if isinstance(state, dict):
        for k in state:
            state[k] = 0


def aggregate(task, metric: str, items: list, work: Path):
    """``metric`` over ``items`` by the task's own aggregation, called as lmms-eval's evaluator calls it
    (MMBench's prints its table, swallowed here, and writes a file under ``work``: pass a scratch folder)."""
    fn = task.aggregation()[metric]
    _reset_module_state(fn)
    with contextlib.redirect_stdout(io.StringIO()):
        if "args" in inspect.signature(fn).parameters:
            return fn(items, args=argparse.Namespace(output_path=str(work), process_with_media=False))
        return fn(items)


def cluster_key(item, position: int):
    """The documents scored together: MMBench's circular passes, MME's image pairs; else the document."""
    if isinstance(item, dict):
        if "index" in item and "category" in item:  # MMBench
            return ("index", int(item["index"]) % MMBENCH_CIRCULAR)
        if "question_id" in item:
            return ("question", str(item["question_id"]))
    return ("doc", position)


def _clusters(items: list) -> list[list]:
    groups: dict = {}
    for i, item in enumerate(items):
        groups.setdefault(cluster_key(item, i), []).append(item)
    return list(groups.values())


def _copy_of(item, draw: int):
    """A resampled document as the ``draw``-th cluster of the replicate: a cluster drawn twice must count
    as two (MME's aggregation refuses an image with four answers), so its ``question_id`` gets the draw.
    MMBench's circular groups are never resampled here: its aggregate is a mean over them (Wilson)."""
    if isinstance(item, dict) and "question_id" in item:
        return {**item, "question_id": f"{item['question_id']}#{draw}"}
    return item


def _value(bench: Benchmark, per_task: dict[str, float], records: dict[str, list]) -> float:
    return headline(bench, {t: {bench.metric: v} for t, v in per_task.items()}, records)


def _records(items: list) -> list[dict]:
    return [x for x in items if isinstance(x, dict)]


def _rng(bench: Benchmark, seed: int):
    import numpy as np

    return np.random.default_rng([zlib.crc32(bench.name.encode()), seed])


def document_interval(bench: Benchmark, items: dict[str, list], tasks: dict, work: Path, seed: int = 0) -> dict:
    """``items``: {registry task: the per-document values of ``bench.metric`` lmms-eval aggregated};
    ``tasks``: {registry task: its lmms-eval task object}. Returns the result file's ``interval95``."""
    import numpy as np

    rng = _rng(bench, seed)
    clusters = {t: _clusters(items[t]) for t in bench.tasks}
    full = _value(bench, {t: float(aggregate(tasks[t], bench.metric, items[t], work)) for t in bench.tasks},
                  {t: _records(items[t]) for t in bench.tasks})
    documents = sum(len(items[t]) for t in bench.tasks)
    if len(bench.tasks) == 1:
        (t,) = bench.tasks
        scores = np.array([_value(bench, {t: float(aggregate(tasks[t], bench.metric, c, work))}, {t: _records(c)})
                           for c in clusters[t]])
        if math.isclose(scores.mean(), full, rel_tol=1e-9, abs_tol=1e-9):  # the headline is a mean over clusters
            picks = rng.integers(0, len(scores), size=(REPLICATES, len(scores)))
            replicates = scores[picks].mean(axis=1)
            if bench.scale != "mme_perception" and set(np.unique(scores)) <= {0.0, 100.0}:  # a pair scores 25 too
                low, high = wilson(int((scores == 100.0).sum()), len(scores))
                return _record("wilson", 100 * low, 100 * high, full, documents, len(scores), replicates)
            return _record("bootstrap", *np.percentile(replicates, [2.5, 97.5]), full, documents, len(scores),
                           replicates)
    if any(cluster_key(c[0], 0)[0] == "index" for t in bench.tasks for c in clusters[t]):
        # resampled circular groups would merge with their copies under MMBench's own grouping
        raise ValueError(f"{bench.name}: MMBench's score is not a mean over its questions here (a --limit that "
                         "splits a question's circular passes?); no interval over documents")
    replicates = []
    for _ in range(REPLICATES):
        per_task, records = {}, {}
        for t in bench.tasks:
            draws = rng.integers(0, len(clusters[t]), size=len(clusters[t]))
            picked = [_copy_of(x, j) for j, i in enumerate(draws) for x in clusters[t][i]]
            per_task[t] = float(aggregate(tasks[t], bench.metric, picked, work))
            records[t] = _records(picked)
        replicates.append(_value(bench, per_task, records))
    replicates = np.array(replicates)
    return _record("bootstrap", *np.percentile(replicates, [2.5, 97.5]), full, documents,
                   sum(len(c) for c in clusters.values()), replicates)


def _record(method: str, low: float, high: float, value: float, documents: int, clusters: int, replicates) -> dict:
    return {"method": method, "low": round(float(low), 4), "high": round(float(high), 4), "value": round(value, 4),
            "documents": documents, "clusters": clusters, "replicates": [round(float(r), 4) for r in replicates]}
