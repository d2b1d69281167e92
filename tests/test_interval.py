"""The headline's 95% interval over documents (llavakd.eval.interval): Wilson for proportions, a
bootstrap over clusters otherwise, against references computed here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from llavakd.eval.interval import REPLICATES, Z95, document_interval, wilson
from llavakd.eval.registry import Benchmark, resolve


def _wilson_by_root(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval as its definition: the p where |k/n - p| = z * sqrt(p(1-p)/n)."""
    phat = k / n
    f = lambda p: (phat - p) ** 2 - Z95 ** 2 * p * (1 - p) / n  # noqa: E731
    low = 0.0 if k == 0 else brentq(f, 1e-12, min(phat, 1 - 1e-12))  # bracketed away from the root at phat
    high = 1.0 if k == n else brentq(f, max(phat, 1e-12), 1 - 1e-12)
    return low, high


@pytest.mark.parametrize("k,n", [(0, 20), (3, 20), (8, 20), (20, 20), (61, 150)])
def test_wilson_is_the_score_interval(k, n):
    assert wilson(k, n) == pytest.approx(_wilson_by_root(k, n), abs=1e-9)


class _Task:
    """What document_interval reads of an lmms-eval task: its aggregation per metric."""

    def __init__(self, metric, fn):
        self.metric, self.fn = metric, fn

    def aggregation(self):
        return {self.metric: self.fn}


def _mean(items):
    return sum(items) / len(items)


def _bench(name="gqa") -> Benchmark:
    return resolve(name)[0]


def test_a_proportion_gets_wilson_and_seeded_replicates(tmp_path):
    bench = _bench("gqa")  # one task, exact_match, percent
    items = [1.0] * 13 + [0.0] * 27
    task = {"gqa": _Task(bench.metric, _mean)}
    got = document_interval(bench, {"gqa": items}, task, tmp_path, seed=0)
    low, high = wilson(13, 40)
    assert got["method"] == "wilson" and got["low"] == round(100 * low, 4) and got["high"] == round(100 * high, 4)
    assert got["value"] == pytest.approx(32.5) and got["documents"] == got["clusters"] == 40
    assert len(got["replicates"]) == REPLICATES
    assert np.mean(got["replicates"]) == pytest.approx(32.5, abs=1.0)  # resamples of the same documents
    assert document_interval(bench, {"gqa": items}, task, tmp_path, seed=0) == got  # seeded: same file twice
    assert document_interval(bench, {"gqa": items}, task, tmp_path, seed=1)["replicates"] != got["replicates"]


def test_a_soft_score_is_bootstrapped_over_documents(tmp_path):
    bench = _bench("vqav2")
    items = [1.0, 0.6, 0.3, 0.0] * 10  # VQA's soft accuracy: not a proportion
    got = document_interval(bench, {"vqav2_val": items}, {"vqav2_val": _Task(bench.metric, _mean)}, tmp_path)
    reps = np.array(got["replicates"])
    assert got["method"] == "bootstrap"
    assert got["low"] == pytest.approx(np.percentile(reps, 2.5), abs=1e-4)
    assert got["low"] < got["value"] < got["high"]
    se = 100 * np.std(items, ddof=0) / math.sqrt(len(items))  # the bootstrap's spread is the mean's standard error
    assert np.std(reps) == pytest.approx(se, rel=0.1)


def test_mmbench_circular_passes_are_one_cluster(tmp_path):
    """Circular passes (index i + k * 1e6) count once, right only when every pass is: a proportion of
    questions, so Wilson on questions, not on passes."""
    bench = _bench("mmb")

    def circular(items):  # the fraction of questions whose every pass is right, in percent (as MMBench's)
        by_q = {}
        for it in items:
            by_q.setdefault(it["index"] % 1_000_000, []).append(it["prediction"] == it["answer"])
        return 100 * sum(all(v) for v in by_q.values()) / len(by_q)

    items = []
    for q in range(30):
        for k in range(3):  # question q right in every pass for q < 12; pass 2 wrong for 12 <= q < 20
            right = q < 12 or (q < 20 and k < 2)
            items.append({"index": q + k * 1_000_000, "category": "c", "answer": "A",
                          "prediction": "A" if right else "B"})
    task = {bench.tasks[0]: _Task(bench.metric, circular)}
    got = document_interval(bench, {bench.tasks[0]: items}, task, tmp_path)
    low, high = wilson(12, 30)
    assert got["method"] == "wilson" and got["clusters"] == 30 and got["documents"] == 90
    assert (got["low"], got["high"]) == (round(100 * low, 4), round(100 * high, 4))


def test_pope_f1_over_three_splits_is_bootstrapped_by_the_tasks_own_aggregation(tmp_path):
    bench = _bench("pope")
    rng = np.random.default_rng(0)

    def f1(items):
        tp = sum(i["p"] == i["g"] == 1 for i in items)
        fp = sum(i["p"] == 1 and i["g"] == 0 for i in items)
        fn = sum(i["p"] == 0 and i["g"] == 1 for i in items)
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    items = {t: [{"question_id": f"{t}_{i}", "g": int(g), "p": int(g if rng.random() < 0.75 else 1 - g)}
                 for i, g in enumerate(rng.integers(0, 2, 60))] for t in bench.tasks}
    tasks = {t: _Task(bench.metric, f1) for t in bench.tasks}
    got = document_interval(bench, items, tasks, tmp_path)
    value = 100 * np.mean([f1(items[t]) for t in bench.tasks])
    assert got["method"] == "bootstrap" and got["value"] == pytest.approx(value, abs=1e-4)
    assert got["low"] < value < got["high"] and got["clusters"] == got["documents"] == 180
    reps = np.array(got["replicates"])
    assert (got["low"], got["high"]) == (pytest.approx(np.percentile(reps, 2.5), abs=1e-4),
                                         pytest.approx(np.percentile(reps, 97.5), abs=1e-4))


def test_mme_pairs_drawn_twice_count_twice_through_lmms_evals_own_aggregation(tmp_path):
    """MME with unequal categories (its score is not a mean over pairs: bootstrapped) through lmms-eval's
    own ``mme_aggregate_results``, which refuses an image with more than two answers: a pair drawn twice
    in a resample is two pairs."""
    from lmms_eval.tasks.mme.utils import mme_aggregate_results

    bench = _bench("mme")
    items = []
    for cat, pairs, right in (("color", 12, 9), ("count", 4, 1), ("OCR", 7, 3)):
        for q in range(pairs):
            for k in range(2):  # pair q: both right for q < right, one right for the next one, else none
                score = 1.0 if q < right or (q == right and k == 0) else 0.0
                items.append({"question_id": f"{cat}/{q}.png", "category": cat, "score": score})
    task = {"mme": _Task(bench.metric, mme_aggregate_results)}
    got = document_interval(bench, {"mme": items}, task, tmp_path)
    full = mme_aggregate_results(items) / (2 * 3)  # registry.headline: the categories' sum over 2 x categories
    assert got["method"] == "bootstrap" and got["value"] == pytest.approx(full, abs=1e-4)
    assert got["clusters"] == 23 and got["documents"] == 46
    assert got["low"] < full < got["high"]


@pytest.mark.parametrize("name", ["gqa", "pope"])
def test_two_models_replicates_resample_the_same_documents(tmp_path, name):
    """The variance split (llavakd.report.methods.variance_split) reads the difference of two models'
    replicates as the paired difference's bootstrap over documents: replicate b of each model must
    resample the same documents. With a linear aggregation (a mean), model a's replicates minus model
    b's equal the replicates of the per-document differences, on the one-task path (gqa) and on the
    per-task path (POPE's three splits); drawn with another seed (the control), they do not."""
    bench = _bench(name)
    rng = np.random.default_rng(3)
    a = {t: [float(x) for x in rng.integers(0, 2, 50)] for t in bench.tasks}
    b = {t: [float(x) for x in rng.integers(0, 2, 50)] for t in bench.tasks}
    tasks = {t: _Task(bench.metric, _mean) for t in bench.tasks}
    diff = {t: [x - y for x, y in zip(a[t], b[t])] for t in bench.tasks}
    ra = np.array(document_interval(bench, a, tasks, tmp_path, seed=0)["replicates"])
    rb = np.array(document_interval(bench, b, tasks, tmp_path, seed=0)["replicates"])
    rd = np.array(document_interval(bench, diff, tasks, tmp_path, seed=0)["replicates"])
    np.testing.assert_allclose(ra - rb, rd, atol=2e-4)
    other = np.array(document_interval(bench, b, tasks, tmp_path, seed=1)["replicates"])
    assert np.abs(ra - other - rd).max() > 1.0
