"""The paper protocol: each column's prompt as upstream's scripts build it, upstream's parsing, and both
protocols scored side by side through lmms-eval on the stand-ins."""

from __future__ import annotations

import ast

import pytest
from test_eval_runner import LIMIT, Scripted, docs, world  # noqa: F401  (the world fixture, shared)

from llavakd.eval.paper import VARIANTS, gqa_answer, pope_answer, sqa_letter
from llavakd.eval.registry import load_registry
from llavakd.eval.runner import evaluate
from llavakd.tiny.score import gold_answer as gold
from llavakd.tiny.tasks import standin_tasks

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def test_upstream_parsers_on_crafted_answers():
    assert pope_answer("No, there is not.") == "no" and pope_answer("There is no dog in it.") == "no"
    assert pope_answer("Yes. It is not red.") == "yes"  # only the first sentence counts
    assert pope_answer("Yes, there is a circle.") == "yes" and pope_answer("Nothing") == "yes"
    assert [sqa_letter(a) for a in ("B", "B. one", "The answer is C.", "The answer is D", "b", "B.", "")] == \
        ["B", "B", "C", "D", "FAILED", "FAILED", "FAILED"]
    assert gqa_answer("Red.") == "red" and gqa_answer("red!") == "red!"


def test_every_registry_task_has_a_variant_naming_its_differences():
    reg = load_registry()
    for bench in reg.values():
        for task in (*bench.tasks, *bench.submission):
            assert task in VARIANTS and VARIANTS[task].differences, task


def hand_prompt(task: str, d: dict) -> str:
    """Each column's prompt written out from upstream's format (LLaVA-1.5 question files, MMMU's script)."""
    q = d["question"]
    if task in ("vqav2_val", "gqa") or task.startswith("pope"):
        return q + SHORT
    if task == "vizwiz_vqa_val":
        return q + "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
    if task == "scienceqa_img":
        opts = "".join(f"\n{'ABCDE'[i]}. {c}" for i, c in enumerate(d["choices"]))
        return (f"Context: {d['hint']}\n" if d["hint"] else "") + q + opts + LETTER
    if task == "textvqa_val":
        return f"{q}\nReference OCR token: {', '.join(d['ocr_tokens'])}" + SHORT
    if task == "mme":
        return q.replace(" Please answer yes or no.", "") + SHORT
    if task.startswith("mmbench"):
        opts = "".join(f"\n{c}. {d[c]}" for c in "ABCDE" if isinstance(d.get(c), str))
        return q + opts + (LETTER if task.startswith("mmbench_en") else "\n请直接回答选项字母。")
    if task == "mmmu_val":
        opts = "".join(f"({'ABCDEFG'[i]}) {o}\n" for i, o in enumerate(ast.literal_eval(d["options"])))
        return f"{q}\n\n{opts}\n\n" + LETTER.strip()
    raise KeyError(task)


class Recording(Scripted):
    """The scripted model, remembering every prompt it was given."""

    def __init__(self):
        super().__init__()
        self.prompts = {}

    def generate_until(self, requests):
        for req in requests:
            context, _, _, doc_id, task, _ = req.args
            self.prompts[(self.local[task.removesuffix("_paper")], doc_id)] = context
        return super().generate_until(requests)


@pytest.fixture(scope="module")
def recorded(world, tmp_path_factory):  # noqa: F811
    model = Recording()
    model.local |= {f"{k}_paper": v for k, v in model.local.items()}
    out = tmp_path_factory.mktemp("paper")
    res = evaluate(model, "all", out / "eval", standins=standin_tasks(world), limit=LIMIT, protocol="paper")
    return model, res, out


@pytest.mark.slow
def test_each_column_prompt_is_upstream_format(recorded, world):  # noqa: F811
    model, res, _ = recorded
    tasks = [t for b in load_registry().values() for t in b.tasks]
    for task in tasks:
        for i, d in enumerate(docs(world, task)[:3]):
            assert model.prompts[(task, i)] == hand_prompt(task, d), task
    assert all(r["protocol"] == "paper" for r in res.values())
    assert all(t["lmms_eval_task"].endswith("_paper") for r in res.values() for t in r["tasks"].values())


class Crafted(Scripted):
    """Right answers in the surface forms where upstream's parsing and lmms-eval's disagree."""

    def generate_until(self, requests):
        out = []
        for req in requests:
            _, _, _, doc_id, task, split = req.args
            local = self.local[task.removesuffix("_paper")] if task.endswith("_paper") else self.local[task]
            g = gold(local, self.task_dict[task][split][doc_id])
            out.append({"pope": "No, there is not." if g == "no" else "Yes, there is.",
                        "scienceqa_img": f"The answer is {g}.", "mme": g[:1].lower(),
                        "gqa": f"{g}!"}[local[:4] if local.startswith("pope") else local])
        return out


@pytest.mark.slow
def test_crafted_answers_score_as_each_protocol_parses_them(world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    model = Crafted()
    model.local |= {f"{k}_paper": v for k, v in model.local.items()}
    names = "pope,sciqa,mme,gqa"
    paper = evaluate(model, names, tmp_path / "paper", standins=standin_tasks(world), limit=LIMIT, protocol="paper")
    stock = evaluate(model, names, tmp_path / "stock", standins=standin_tasks(world), limit=LIMIT)
    assert paper["pope"]["headline"] == 100.0 and stock["pope"]["headline"] == 0.0  # "No, there is not." -> no
    assert paper["sciqa"]["headline"] == 100.0 and stock["sciqa"]["headline"] == 0.0  # "The answer is B."
    assert paper["mme"]["headline"] == 0.0 < stock["mme"]["headline"]  # "y": lmms-eval reads yes, MME does not
    assert paper["gqa"]["headline"] == 0.0 and stock["gqa"]["headline"] == 100.0  # "red!" is not "red"
    assert paper["pope"]["protocol"] == "paper" and stock["pope"]["protocol"] == "lmms-eval"
