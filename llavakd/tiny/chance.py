"""Chance on the stand-ins: the best constant answer of each task, scored by lmms-eval's own task code.

    llavakd chance --world results/demo/world --out results/demo/chance.json [--limit 20]

A model that ignores the image and the question can still score: "yes" on POPE, the most frequent
letter on a multiple-choice split. For every task of every benchmark this tries each answer that
occurs as a gold answer in the split, as the answer to every document, through the task's own
``process_results`` and aggregation (loaded by lmms-eval from the stand-in YAMLs the evaluation
runs), and keeps the best; the benchmark's chance is its headline in the paper's scale
(``llavakd.eval.registry.headline``). The reports draw it as a row and mark every cell that is not
above it. ``limit``: the first N documents of each task, as the evaluation's ``--limit`` takes
them (chance is measured on the documents the models are).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from llavakd.eval.interval import aggregate
from llavakd.eval.registry import headline, resolve
from llavakd.io import atomic_write_text
from llavakd.tiny.score import gold_answer
from llavakd.tiny.tasks import STANDIN_OF, write_standin_yamls


def _fresh(doc: dict) -> dict:
    """A copy that process_results may change (TextVQA normalises the answer list in place)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in doc.items()}


def task_scores(task, docs: list[dict], answer: str, metric: str, work: Path) -> tuple[float, list]:
    """(aggregated ``metric``, per-document records) when every document is answered ``answer``."""
    items = [task.process_results(_fresh(d), [answer])[metric] for d in docs]
    return float(aggregate(task, metric, items, work)), items


def chance(world: str | Path, benchmarks="all", limit: int | None = None) -> dict:
    """{benchmark: {"headline": chance in the paper's scale, "answers": {task: best constant}}}."""
    import contextlib
    import io

    from lmms_eval.tasks import get_task_dict

    from llavakd.eval.tasks import task_manager

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = write_standin_yamls(tmp / "tasks", world)
        manager = task_manager(tmp / "tasks", stock=False)
        for bench in resolve(benchmarks):
            per_task, samples, answers = {}, {}, {}
            for t in bench.tasks:
                task = get_task_dict([names[t]], manager)[names[t]]
                docs = list(task.test_docs())[:limit]
                candidates = sorted({str(gold_answer(STANDIN_OF[t], d)) for d in docs})
                best = None
                for c in candidates:
                    with contextlib.redirect_stdout(io.StringIO()):  # MMBench prints its per-category table
                        value, items = task_scores(task, docs, c, bench.metric, tmp)
                    if best is None or value > best[0]:
                        best = (value, items, c)
                per_task[t] = {bench.metric: best[0]}
                samples[t] = [s for s in best[1] if isinstance(s, dict)]
                answers[t] = best[2]
            out[bench.name] = {"headline": round(headline(bench, per_task, samples), 4), "answers": answers}
    return out


def write_chance(world: str | Path, out: str | Path, benchmarks="all", limit: int | None = None) -> dict:
    result = chance(world, benchmarks, limit)
    atomic_write_text(out, json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return result
