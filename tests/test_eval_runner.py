"""The evaluation runner: paper-convention headlines, fixed files, failures that leave nothing."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from lmms_eval.api.model import lmms

from llavakd.eval.registry import load_registry, resolve
from llavakd.eval.runner import EvalError, evaluate
from llavakd.tiny.score import gold_answer as gold
from llavakd.tiny.tasks import TASK_FILES, standin_tasks

LIMIT = 12
STANDIN_FILE = {  # registry task -> stand-in parquet, relative to <world>/bench
    "vqav2_val": "vqav2/validation", "gqa": "gqa/testdev", "vizwiz_vqa_val": "vizwiz_vqa/val",
    "scienceqa_img": "scienceqa/test", "textvqa_val": "textvqa/validation", "mme": "mme/test",
    "mmbench_en_dev_static": "mmbench_en/dev", "mmbench_cn_dev_static": "mmbench_cn/dev",
    "pope_adv": "pope/adversarial", "pope_pop": "pope/popular", "pope_random": "pope/random",
    "mmmu_val": "mmmu/validation",
}


@pytest.fixture(scope="module")
def world(standin_world):
    return standin_world


def docs(world, task):
    return pd.read_parquet(world / "bench" / f"{STANDIN_FILE[task]}.parquet").head(LIMIT).to_dict("records")


def letters(task, doc) -> str:
    if task == "scienceqa_img":
        return "ABCDE"[:len(doc["choices"])]
    if task == "mmmu_val":
        return "ABCDEFG"[:len(ast.literal_eval(doc["options"]))]
    return "ABCD"


def scripted_answer(task, doc, doc_id) -> str:
    """Right on two documents in three, wrong on the third, in each task's answer space."""
    g = gold(task, doc)
    if doc_id % 3:
        return g
    if g in ("yes", "no", "Yes", "No"):
        return {"yes": "no", "no": "yes", "Yes": "No", "No": "Yes"}[g]
    if task in ("scienceqa_img", "mmbench_en_dev_static", "mmbench_cn_dev_static", "mmmu_val"):
        opts = letters(task, doc)
        return opts[(opts.index(g) + 1) % len(opts)]
    return "zzzz"


SERVER_SPLIT_OF = {"vqav2_test": "vqav2_val", "vizwiz_vqa_test": "vizwiz_vqa_val"}  # stand-in: the val docs


class Scripted(lmms):
    """An lmms-eval model that answers from the documents by a fixed rule (no network, no weights)."""

    is_simple = True

    def __init__(self, fail_on: str | None = None):
        super().__init__()
        self.fail_on = fail_on
        self.local = {v: k for k, v in _tiny_names().items()}

    def generate_until(self, requests):
        out = []
        for req in requests:
            _, _, _, doc_id, task, split = req.args
            if self.fail_on and self.fail_on in task:
                raise RuntimeError("scripted failure")
            local = SERVER_SPLIT_OF.get(self.local[task], self.local[task])
            out.append(scripted_answer(local, self.task_dict[task][split][doc_id], doc_id))
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError


def _tiny_names():
    return {t: f"llavakd_tiny_{t}" for t in TASK_FILES}


def hand_score(task, world) -> float:
    """Each headline from first principles, independent of lmms-eval's code."""
    ds = docs(world, task)
    right = [scripted_answer(task, d, i) == gold(task, d) for i, d in enumerate(ds)]
    if task == "mme":  # per category: mean over image pairs of (accuracy + accuracy+), each in %
        cats = {}
        for d, r in zip(ds, right):
            cats.setdefault(d["category"], {}).setdefault(d["question_id"], []).append(r)
        total = sum(sum(100 * sum(p) / 2 + 100 * all(p) for p in q.values()) / len(q) for q in cats.values())
        return total / (2 * len(cats))
    if task.startswith("pope"):
        return 100 * pope_hand([task], world)[0]
    return 100 * sum(right) / len(right)


def pope_hand(tasks, world) -> tuple[float, float]:
    """F1 with "yes" as the positive class, and accuracy, over the documents of ``tasks`` together."""
    pairs = [(scripted_answer(t, d, i), d["answer"]) for t in tasks for i, d in enumerate(docs(world, t))]
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), sum(p == g for p, g in pairs) / len(pairs)


@pytest.mark.slow
def test_every_headline_equals_the_hand_computed_score(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = evaluate(Scripted(), "all", tmp_path / "out", standins=standin_tasks(world), limit=LIMIT)
    registry = {name: b for name, b in load_registry().items() if b.paper}  # "all": the paper's ten
    assert list(res) == list(registry)
    proportions = []
    for name, bench in registry.items():
        expected = sum(hand_score(t, world) for t in bench.tasks) / len(bench.tasks)
        assert res[name]["headline"] == pytest.approx(expected, abs=1e-3), name
        assert 0 < expected < 100  # the fixture mixes right and wrong answers everywhere
        on_disk = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert on_disk == res[name]
        lines = (tmp_path / "out" / f"{name}.samples.jsonl").read_text().splitlines()
        assert len(lines) == LIMIT * len(bench.tasks)
        assert on_disk["lmms_eval_version"] == "0.7.3" and on_disk["seed"] == 0
        assert all(len(t["config_hash"]) == 16 for t in on_disk["tasks"].values())
        # the interval over the scored documents, from the tasks' own aggregation (llavakd.eval.interval)
        ci = on_disk["interval95"]
        assert ci["value"] == pytest.approx(expected, abs=1e-3) and ci["documents"] == LIMIT * len(bench.tasks)
        assert ci["low"] < ci["value"] < ci["high"] and len(ci["replicates"]) == 1000, name
        # a column of right-or-wrong answers (one task, every document 0 or 100) is a proportion: Wilson
        per_doc = [json.loads(x)[bench.metric] for x in lines]
        proportion = len(bench.tasks) == 1 and all(v in (0, 1) for v in per_doc if not isinstance(v, dict))
        if proportion and not any(isinstance(v, dict) for v in per_doc):
            from llavakd.eval.interval import wilson

            k = sum(per_doc)
            assert ci["method"] == "wilson" and ci["low"] == pytest.approx(100 * wilson(int(k), LIMIT)[0], abs=1e-4)
            proportions.append(name)
    assert len(proportions) >= 4, proportions  # the exact-match columns
    assert res["pope"]["interval95"]["method"] == "bootstrap" and res["mme"]["interval95"]["method"] == "bootstrap"
    pope = res["pope"]  # F1 and accuracy per split and pooled over the three
    for task in registry["pope"].tasks:
        f1, acc = pope_hand([task], world)
        assert pope["tasks"][task]["metrics"]["pope_f1_score"] == pytest.approx(f1)
        assert pope["tasks"][task]["metrics"]["pope_accuracy"] == pytest.approx(acc)
    f1, acc = pope_hand(registry["pope"].tasks, world)
    assert pope["pooled"] == pytest.approx({"pope_f1_score": f1, "pope_accuracy": acc})
    assert res["mme"]["pooled"] == {}


def test_pooled_pope_is_over_all_documents_not_the_mean_of_splits():
    from llavakd.eval.registry import pooled_value

    pope = load_registry()["pope"]
    rec = lambda p, g: {"prediction": p, "ground_truth": g, "score": float(p == g)}  # noqa: E731
    a = [rec("yes", "yes")] * 3 + [rec("yes", "no")] * 3  # F1 2/3, accuracy 1/2
    b = [rec("no", "yes")] * 3 + [rec("yes", "yes")] + [rec("no", "no")] * 2  # F1 2/5, accuracy 1/2
    assert pooled_value(pope, "pope_f1_score", a + b) == pytest.approx(2 * (4 / 7) * (4 / 7) / (8 / 7))
    assert pooled_value(pope, "pope_accuracy", a + b) == pytest.approx(0.5)
    assert pooled_value(pope, "pope_f1_score", a + b) != pytest.approx((2 / 3 + 2 / 5) / 2)


def test_registry_conventions():
    reg = load_registry()
    assert [b.column for b in reg.values() if b.paper] == ["VQAv2", "GQA", "VizWiz", "SciQA", "TextVQA", "MME", "MMB",
                                                          "MMB-CN", "POPE", "MMMU"]
    assert [b.column for b in reg.values() if not b.paper] == ["MMStar", "AI2D", "OCRBench", "RealWorldQA"]
    assert reg["ai2d"].filter == "flexible-extract" and all(b.standin is None for b in reg.values() if not b.paper)
    assert reg["pope"].tasks == ("pope_adv", "pope_pop", "pope_random") and reg["pope"].metric == "pope_f1_score"
    assert reg["vqav2"].submission == ("vqav2_test",) and reg["vizwiz"].submission == ("vizwiz_vqa_test",)
    assert all(t in TASK_FILES for b in reg.values() if b.standin for t in b.tasks)


def test_mme_headline_is_perception_over_twenty_on_the_full_benchmark():
    from llavakd.eval.registry import MME_PERCEPTION, headline

    bench = load_registry()["mme"]
    samples = {"mme": [{"category": c} for c in MME_PERCEPTION]}
    assert headline(bench, {"mme": {"mme_perception_score": 1510.7}}, samples) == pytest.approx(75.535)


def test_bad_registry_lists_every_problem(tmp_path):
    from llavakd.errors import ConfigError

    bad = tmp_path / "b.yaml"
    bad.write_text("benchmarks:\n  gqa:\n    column: GQA\n    tasks: gqa\n    scale: percnt\n    colour: red\n"
                   "    yaml: {other: gqa/gqa.yaml}\n")
    with pytest.raises(ConfigError) as e:
        load_registry(bad)
    text = str(e.value)
    for part in ("gqa.colour: unknown key", "gqa.metric: missing", "gqa.paper_split: missing", "gqa.scale",
                 "gqa.tasks: expected a list", "gqa.yaml: name the YAML of each task",
                 "gqa: give its tiny stand-in per task (standin) or why there is none (no_standin)"):
        assert part in text
    old = tmp_path / "old.yaml"  # the format before averages: benchmarks at the top level
    old.write_text("gqa:\n  column: GQA\n")
    with pytest.raises(ConfigError, match="expected 'benchmarks'"):
        load_registry(old)


def test_unknown_benchmark_is_refused_with_the_known_names():
    with pytest.raises(Exception, match="unknown benchmark.*vqa3.*known: vqav2, gqa"):
        resolve("gqa,vqa3")


@pytest.mark.slow
def test_a_raised_error_leaves_no_result_file(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    evaluate(Scripted(), "gqa,mme", out, standins=standin_tasks(world), limit=4)
    assert (out / "mme.json").is_file()
    with pytest.raises(EvalError, match="mme: lmms-eval failed.*scripted failure"):
        evaluate(Scripted(fail_on="mme"), "gqa,mme", out, standins=standin_tasks(world), limit=4)
    assert (out / "gqa.json").is_file()  # finished before the failure: kept, and complete
    assert not (out / "mme.json").exists() and not (out / "mme.samples.jsonl").exists()  # the old one is gone too


@pytest.mark.slow
def test_zero_scored_documents_is_a_failure(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = tmp_path / "world"
    shutil.copytree(world, w)
    path = w / "bench" / "gqa" / "testdev.parquet"
    pd.read_parquet(path).head(0).to_parquet(path)
    with pytest.raises(EvalError, match="gqa"):
        evaluate(Scripted(), "gqa", tmp_path / "out", standins=standin_tasks(w))
    assert not list((tmp_path / "out").glob("*.json"))


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llavakd.cli", "eval", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.slow
def test_cli_failures_exit_non_zero_without_files(world, tiny_student, tmp_path):
    out = tmp_path / "out"
    r = _cli("--model", tiny_student, "--world", world, "--benchmarks", "gqa,vqa3", "--out", out, cwd=tmp_path)
    assert r.returncode == 2 and "unknown benchmark(s) vqa3" in r.stderr
    w = tmp_path / "world"
    shutil.copytree(world, w)
    (w / "bench" / "mme" / "test.parquet").unlink()
    r = _cli("--model", tiny_student, "--world", w, "--benchmarks", "mme", "--out", out, cwd=tmp_path)
    assert r.returncode == 2 and "mme" in r.stderr and "missing" in r.stderr
    r = _cli("--model", tmp_path / "nope", "--world", world, "--benchmarks", "mme", "--out", out, cwd=tmp_path)
    assert r.returncode == 2 and "nope" in r.stderr
    assert not out.exists() or not list(out.glob("*.json"))


@pytest.mark.slow
def test_batch_size_and_reruns_give_identical_files(world, tiny_student, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = "vqav2,mme,mmb,pope,mmmu"
    runs = {}
    for tag, bs in (("a", 1), ("b", 8), ("c", 8)):
        evaluate(tiny_student, names, tmp_path / tag, standins=standin_tasks(world), limit=6, batch_size=bs)
        runs[tag] = {p.name: p.read_bytes() for p in sorted((tmp_path / tag).glob("*.json*"))}
    assert len(runs["a"]) == 10
    assert runs["a"] == runs["b"] == runs["c"]


MMB_FORMS = ("{g}", "{l}", "({g})", "The answer is {g}", "{w}", "{w}. {g}")  # as a small model may answer


def mmb_answer(task, doc, doc_id) -> str:
    """A letter in one of several surface forms; right on five documents in six."""
    g = gold(task, doc)
    opts = [c for c in "ABCDE" if isinstance(doc.get(c), str)]
    wrong = opts[(opts.index(g) + 1) % len(opts)]
    return MMB_FORMS[doc_id % len(MMB_FORMS)].format(g=g, l=g.lower(), w=wrong)


class ScriptedMMB(Scripted):
    def generate_until(self, requests):
        out = []
        for req in requests:
            _, _, _, doc_id, task, split = req.args
            out.append(mmb_answer(self.local[task], self.task_dict[task][split][doc_id], doc_id))
        return out


@pytest.mark.slow
def test_mmbench_quick_score_equals_simple_evaluate(world, tmp_path, monkeypatch):
    """The stand-ins' quick score and the full runner score the same answers the same way (lmms-eval's matcher)."""
    from llavakd.tiny.score import quick_score

    monkeypatch.chdir(tmp_path)
    res = evaluate(ScriptedMMB(), "mmb,mmb_cn", tmp_path / "out", standins=standin_tasks(world), limit=LIMIT)
    for bench, task, standin in (("mmb", "mmbench_en_dev_static", "mmbench_en_dev"),
                                 ("mmb_cn", "mmbench_cn_dev_static", "mmbench_cn_dev")):
        ds = docs(world, task)
        preds = [mmb_answer(task, d, i) for i, d in enumerate(ds)]
        quick = quick_score(standin, ds, preds)
        assert quick == pytest.approx(res[bench]["headline"], abs=1e-4), bench  # the file rounds to 4 places
        first_letter = 100 * sum(p.strip().upper()[:1] == gold(task, d) for p, d in zip(preds, ds)) / len(ds)
        assert quick != pytest.approx(first_letter)  # the old first-character rule scores these differently


@pytest.mark.slow
def test_submission_files_have_fixed_names_and_runs_are_identical(world, tmp_path, monkeypatch):
    """--submission: the server files land under fixed names, listed in the result file; nothing depends on time."""
    import time

    monkeypatch.chdir(tmp_path)
    runs = {}
    for tag in ("a", "b"):
        res = evaluate(Scripted(), "vqav2,vizwiz", tmp_path / tag, standins=standin_tasks(world), limit=LIMIT,
                       submission=True)
        assert res["vqav2"]["submission_files"] == ["vqav2.submissions/vqav2-test-submission.json"]
        assert res["vizwiz"]["submission_files"] == ["vizwiz.submissions/vizwiz_vqa-test-submission.json"]
        runs[tag] = {str(p.relative_to(tmp_path / tag)): p.read_bytes()
                     for p in sorted((tmp_path / tag).rglob("*")) if p.is_file() and ".work" not in p.parts
                     and p.name != "COMPLETE"}
        time.sleep(1.1)  # lmms-eval's own file names carry the time to the second
    assert runs["a"] == runs["b"]
    sub = json.loads(runs["a"]["vqav2.submissions/vqav2-test-submission.json"])
    ds = docs(world, "vqav2_val")
    assert [r["question_id"] for r in sub] == [d["question_id"] for d in ds]  # one answer per stand-in question


def test_a_benchmark_reads_its_metric_under_its_own_filter():
    from llavakd.eval.runner import _task_metrics

    raw = {"exact_match,none": 0.1, "exact_match,flexible-extract": 0.6, "alias": "ai2d"}
    assert _task_metrics(raw) == {"exact_match": 0.1}
    assert _task_metrics(raw, load_registry()["ai2d"].filter) == {"exact_match": 0.6}


def test_ocrbenchs_stateful_aggregation_gives_the_same_value_when_called_again(tmp_path):
    """lmms-eval's OCRBench aggregation adds into a module-level table it never resets; the interval
    calls aggregations many times, so ours zeroes that table first (without it the second call doubles)."""
    import lmms_eval.tasks.ocrbench.utils as ocr

    from llavakd.eval.interval import aggregate

    class Task:
        def aggregation(self):
            return {"ocrbench_accuracy": ocr.ocrbench_aggregate_accuracy}

    items = [{"question_type": "Regular Text Recognition", "score": 1}] * 3 + \
            [{"question_type": "Doc-oriented VQA", "score": 1}] * 2
    first = aggregate(Task(), "ocrbench_accuracy", items, tmp_path)
    assert first == aggregate(Task(), "ocrbench_accuracy", items, tmp_path) == 5 / 1000
    doubled = ocr.ocrbench_aggregate_accuracy(items, args=__import__("argparse").Namespace(
        output_path=str(tmp_path), process_with_media=False))
    assert doubled == 10 / 1000  # the negative control: the stock function called twice
