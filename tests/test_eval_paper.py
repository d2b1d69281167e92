"""The paper protocol: each column's prompt as upstream's scripts build it, upstream's parsing, and both
protocols scored side by side through lmms-eval on the stand-ins."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import pytest
import yaml
from test_eval_runner import LIMIT, Scripted, docs, world  # noqa: F401  (the world fixture, shared)

from llavakd.eval.paper import (
    SUFFIX,
    VARIANTS,
    gqa_answer,
    mmbench_doc_to_text,
    mmmu_choice,
    mmmu_doc_to_visual,
    mmmu_process_results,
    pope_answer,
    sqa_doc_to_text,
    sqa_letter,
    sqa_process_results,
    textvqa_doc_to_text,
)
from llavakd.eval.registry import load_registry
from llavakd.eval.runner import evaluate
from llavakd.tiny.score import gold_answer as gold
from llavakd.tiny.tasks import standin_tasks

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def test_pope_parser_as_upstream():
    """Fantasyele/LLaVA-KD llavakd/eval/eval_pope.py:11-20: the text before the first '.', commas removed,
    split on single spaces; 'No', 'not' or 'no' among the words means no, anything else yes."""
    assert pope_answer("No, there is not.") == "no" and pope_answer("There is no dog in it.") == "no"
    assert pope_answer("Yes. It is not red.") == "yes"  # line 13: the first sentence only
    assert pope_answer("Yes, there is a circle.") == "yes" and pope_answer("Nothing") == "yes"
    assert pope_answer("Not sure") == "yes"  # line 17: 'Not' (capital) is not one of the three words
    assert pope_answer("no.") == "no" and pope_answer("No") == "no"


def test_scienceqa_parser_as_upstream():
    """Fantasyele/LLaVA-KD llavakd/eval/eval_science_qa.py:65-75 on the answer stripped by
    model_vqa_science.py:81: the letter alone (65), 'X. ' at the start (67), else 'The answer is ([A-Z]).'
    found exactly once (70-75); a letter past the choices is wrong (get_pred_idx, 32-35)."""
    cases = {"B": "B", "  B \n": "B", "B. one": "B", "B.one": "FAILED", "b": "FAILED", "B.": "FAILED", "": "FAILED",
             "The answer is C.": "C", "The answer is DX": "D", "So: The answer is B, surely": "B",
             "The answer is D": "FAILED",  # the regex's '.' needs one more character
             "The answer is B\nbecause": "FAILED",  # ... and it does not match a newline
             "The answer is A. The answer is B.": "FAILED",  # two matches (line 72: exactly one)
             "The answer is F.": "F"}
    assert {a: sqa_letter(a) for a in cases} == cases
    doc = {"choices": ["x", "y", "z"], "answer": 1}
    assert sqa_process_results(doc, ["B"])["exact_match"] == 1.0
    assert sqa_process_results(doc, ["The answer is F."])["exact_match"] == 0.0  # index -1 (line 35)
    assert sqa_process_results(doc, ["The answer is D."])["exact_match"] == 0.0  # past the three choices


def test_scienceqa_prompt_as_llavas_question_file():
    """haotian-liu/LLaVA scripts/convert_sqa_to_llava_base_prompt.py: the context is the hint or 'N/A'
    (lines 6-12), options '(A) x (B) y' (15-22), the CQM layout (47), double spaces collapsed once (97);
    then upstream's model_vqa_science.py:59 instruction."""
    doc = {"hint": "", "question": "Which is  heavier?", "choices": ["a rock", "a leaf"]}
    assert sqa_doc_to_text(doc) == ("Context: N/A\nQuestion: Which is heavier?\nOptions: (A) a rock (B) a leaf\n"
                                    "Answer with the option's letter from the given choices directly.")
    doc = {"hint": "Look at the picture. ", "question": "Q?", "choices": ["x", "y", "z"]}
    assert sqa_doc_to_text(doc).startswith("Context: Look at the picture.\nQuestion: Q?\nOptions: (A) x (B) y (C) z\n")
    assert sqa_doc_to_text({**doc, "hint": None}).startswith("Context: N/A\n")


def test_gqa_parser_as_upstream():
    """Fantasyele/LLaVA-KD scripts/convert_gqa_for_eval.py:14: trailing full stops removed, lower case."""
    assert gqa_answer("Red.") == "red" and gqa_answer("red!") == "red!" and gqa_answer("Red..") == "red"


MMMU_OPTS = {"A": "Paris", "B": "Rome", "C": "Madrid", "D": "Berlin"}


def _mmmu(response, seed="42:q"):
    return mmmu_choice(response, list(MMMU_OPTS), MMMU_OPTS, random.Random(seed))


def test_mmmu_parser_as_upstream():
    """Fantasyele/LLaVA-KD llavakd/eval/model_vqa_mmmu.py:29-81."""
    guess = random.Random("42:q").choice(list(MMMU_OPTS))
    assert _mmmu("B") == "B" and _mmmu("B.") == "B"  # line 34: end punctuation stripped; 36: padded
    assert _mmmu("(C)") == "C" and _mmmu("It is (C).") == "C"  # 41-44: '(X)'
    assert _mmmu("(C) or rather (A)") == "A"  # 60-67, 77: several: the last by rfind
    assert _mmmu("A or B") == "B"  # 47-49, 69-71: ' X ' with a space each side
    assert _mmmu("B. Rome") == guess  # no ' B ' and only two words: 58-59, a random letter
    assert _mmmu("Madrid") == guess  # an option's text counts only in answers of more than five words (52)
    assert _mmmu("I am quite sure it is Madrid") == "C"  # 52-56
    assert _mmmu("I would say Rome and not Berlin") == "D"  # 73-75: the text found last
    for seed in ("42:a", "42:b", "42:c", "42:d", "42:e", "42:f"):  # the guess is the seeded stream's
        assert _mmmu("?", seed) == random.Random(seed).choice(list(MMMU_OPTS))


def _mmmu_doc(question, images, qtype="multiple-choice", answer="B"):
    from PIL import Image

    doc = {"id": "validation_Art_7", "question": question, "options": str(list(MMMU_OPTS.values())),
           "question_type": qtype, "answer": answer}
    for i in range(1, 8):
        doc[f"image_{i}"] = Image.new("RGB", (8, 8), (i, 0, 0)) if i <= images else None
    return doc


def test_mmmu_feeds_one_image_and_guesses_without_it():
    """model_vqa_mmmu.py:104-114 (one image, or none), 138-143 (no image: a random letter, or the invalid
    string for an open question, without asking the model)."""
    one = _mmmu_doc("<image 1> Which city?", 1)
    several = _mmmu_doc("Compare <image 1> and <image 2>: which city?", 2)
    assert [im.getpixel((0, 0)) for im in mmmu_doc_to_visual(one)] == [(1, 0, 0)]
    assert mmmu_doc_to_visual(several) == []
    right = mmmu_process_results(one, ["B"])["mmmu_acc"]["parsed_pred"]
    assert right == ["B"]
    guess = random.Random("42:validation_Art_7").choice(list(MMMU_OPTS))
    for said in ("B", "A", "(D)"):  # the model's answer to a question it was not shown is not read
        assert mmmu_process_results(several, [said])["mmmu_acc"]["parsed_pred"] == [guess]
    open_q = _mmmu_doc("Name the city in <image 1> and <image 2>.", 2, qtype="open", answer="Rome")
    parsed = mmmu_process_results(open_q, ["Rome"])["mmmu_acc"]["parsed_pred"]
    assert "rome" not in [str(p).lower() for p in parsed[0]]


def test_mmbench_prompt_as_upstream():
    """Fantasyele/LLaVA-KD llavakd/eval/model_vqa_mmbench.py:94-99: the hint (unless is_none, 32-41) on the
    line before the question, then 'X. option' lines until the first missing option (43-49)."""
    doc = {"question": "Which shape?", "hint": "Look closely.", "A": "circle", "B": "square", "C": float("nan"),
           "D": "star"}
    assert mmbench_doc_to_text(doc) == "Look closely.\nWhich shape?\nA. circle\nB. square"
    for none in (None, float("nan"), "nan", "None"):
        assert mmbench_doc_to_text({**doc, "hint": none}) == "Which shape?\nA. circle\nB. square"
    assert mmbench_doc_to_text({**doc, "hint": " nan"}).startswith(" nan\n")  # no strip in is_none


def test_textvqa_prompt_with_zero_and_several_ocr_tokens():
    """LLaVA-1.5's TextVQA question file (upstream's textvqa.sh reads it): the question, then
    'Reference OCR token: ' and the tokens joined by ', ' (empty when there are none)."""
    doc = {"question": "what is written?"}
    assert textvqa_doc_to_text({**doc, "ocr_tokens": []}) == "what is written?\nReference OCR token: "
    assert textvqa_doc_to_text({**doc, "ocr_tokens": ["7", "stop", "A1"]}) == \
        "what is written?\nReference OCR token: 7, stop, A1"


def test_paper_variants_decode_as_upstream(tmp_path):
    """Up to 128 new tokens (model_vqa_loader.py:145, model_vqa_pope.py:144) or 1,024 (model_vqa_mmbench.py:138,
    model_vqa_science.py:75, model_vqa_mmmu.py:133), and no stop string (the keyword criterion is commented
    out, model_vqa_loader.py:98-99, 112): the variants as lmms-eval loads them."""
    from lmms_eval.utils import load_yaml_config

    from llavakd.eval.paper import write_paper_yamls
    from llavakd.eval.tasks import HOOKS_MODULE, task_yaml, write_task_yamls

    names = write_task_yamls(tmp_path)
    variants = write_paper_yamls(tmp_path, names, lambda t, n: task_yaml(tmp_path, t, n), HOOKS_MODULE)
    long_tasks = {"mmbench_en_dev_static", "mmbench_cn_dev_static", "scienceqa_img", "mmmu_val"}

    for task, variant in variants.items():
        if task not in VARIANTS:  # a column the paper never scored: its stock task under both protocols
            assert variant == task and not (tmp_path / f"{task}{SUFFIX}.yaml").exists()
            continue
        cfg = load_yaml_config(str(tmp_path / f"{variant}.yaml"), mode="simple")
        gen = cfg["generation_kwargs"]
        assert gen["max_new_tokens"] == (1024 if task in long_tasks else 128), task
        assert gen["until"] == [], task
        assert "stopped by the end token only" in (tmp_path / f"{variant}.yaml").read_text()


def test_every_paper_column_task_has_a_variant_naming_its_differences():
    reg = load_registry()
    for bench in reg.values():
        for task in (*bench.tasks, *bench.submission):
            assert bool(task in VARIANTS and VARIANTS[task].differences) == bench.paper, task  # the newer: stock only


def hand_prompt(task: str, d: dict) -> str:
    """Each column's prompt written out from upstream's format (LLaVA-1.5 question files, MMMU's script)."""
    q = d["question"]
    if task in ("vqav2_val", "gqa") or task.startswith("pope"):
        return q + SHORT
    if task == "vizwiz_vqa_val":
        return q + "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
    if task == "scienceqa_img":
        opts = " ".join(f"({'ABCDE'[i]}) {c}" for i, c in enumerate(d["choices"]))
        return f"Context: {d['hint'] or 'N/A'}\nQuestion: {q}\nOptions: {opts}" + LETTER
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
        self.prompts, self.images, self.gen_kwargs = {}, {}, {}

    def generate_until(self, requests):
        for req in requests:
            context, gen_kwargs, to_visual, doc_id, task, split = req.args
            key = (self.local[task.removesuffix("_paper")], doc_id)
            self.prompts[key] = context
            self.images[key] = len(to_visual(self.task_dict[task][split][doc_id]))
            self.gen_kwargs[key] = gen_kwargs
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
    tasks = [t for b in load_registry().values() if b.paper for t in b.tasks]
    for task in tasks:
        for i, d in enumerate(docs(world, task)[:3]):
            assert model.prompts[(task, i)] == hand_prompt(task, d), task
        assert model.gen_kwargs[(task, 0)]["until"] == [], task  # lmms-eval adds no blank-line stop
    assert model.images[("mmmu_val", 0)] == 1 and max(v for (t, _), v in model.images.items() if t == "mmmu_val") <= 1
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


def _pope_folder(root, counts=None):
    """Upstream's POPE layout in miniature: llava_pope_test.jsonl, coco/coco_pope_<split>.json, val2014/."""
    import json

    from PIL import Image

    counts = counts or {"adversarial": 4, "popular": 4, "random": 5}
    (root / "coco").mkdir(parents=True)
    (root / "val2014").mkdir()
    questions, qid = [], 0
    for split, n in counts.items():
        labels = []
        for i in range(n):
            qid += 1
            img = f"COCO_val2014_{qid:012d}.jpg"
            Image.new("RGB", (16, 16), (qid * 9 % 255, 0, 0)).save(root / "val2014" / img)
            questions.append({"question_id": qid, "image": img, "text": f"Is there a thing {qid} in the image?",
                              "category": split})
            labels.append({"question_id": qid, "image": img, "text": "x", "label": "yes" if i % 2 == 0 else "no"})
        (root / "coco" / f"coco_pope_{split}.json").write_text("".join(json.dumps(x) + "\n" for x in labels))
    (root / "llava_pope_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return root


def test_pope_reads_upstreams_question_files_pairing_labels_by_position(tmp_path):
    """Fantasyele/LLaVA-KD llavakd/eval/eval_pope.py:6 (labels in file order), 78 (the category's answers in
    question-file order), 22-33 (paired by position)."""
    from llavakd.errors import LlavaKDError
    from llavakd.eval.pope_files import pope_documents, pope_file_doc_to_visual

    root = _pope_folder(tmp_path / "pope")
    docs = pope_documents(root, "random")
    assert [d["question_id"] for d in docs] == ["9", "10", "11", "12", "13"]
    assert [d["answer"] for d in docs] == ["yes", "no", "yes", "no", "yes"]
    assert docs[0]["question"] == "Is there a thing 9 in the image?" and docs[0]["image_path"].endswith("09.jpg")
    assert pope_file_doc_to_visual(docs[0])[0].getpixel((0, 0))[0] == 81  # its own image (9 * 9)
    (root / "coco" / "coco_pope_popular.json").write_text('{"label": "yes"}\n')
    with pytest.raises(LlavaKDError, match="1 labels for 4 popular questions"):
        pope_documents(root, "popular")
    (root / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(LlavaKDError, match="question 1: image .* is missing"):
        pope_documents(root, "adversarial")


@pytest.mark.slow
def test_pope_paper_scores_upstreams_files_when_given(world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    root = _pope_folder(tmp_path / "pope")
    model = Scripted()
    model.local |= {f"{k}_paper": v for k, v in model.local.items()}
    res = evaluate(model, "pope", tmp_path / "out", standins=standin_tasks(world), protocol="paper",
                   pope_questions=root)
    assert {t: r["docs"] for t, r in res["pope"]["tasks"].items()} == {"pope_adv": 4, "pope_pop": 4, "pope_random": 5}
    header = (tmp_path / "out/.work/tasks/llavakd_tiny_pope_random_paper.yaml").read_text()
    assert f"data: upstream's question files under {root} (5 questions)" in header
    lmms = (tmp_path / "lab")
    evaluate(model, "pope", lmms, standins=standin_tasks(world), protocol="paper", limit=LIMIT)
    assert "lmms-lab's POPE has 3,000 questions per split" in \
        (lmms / ".work/tasks/llavakd_tiny_pope_random_paper.yaml").read_text()
    with pytest.raises(Exception, match="add --protocol paper"):
        evaluate(model, "pope", tmp_path / "x", standins=standin_tasks(world), pope_questions=root)


def test_textvqa_scores_as_upstreams_m4c_evaluator():
    """Fantasyele/LLaVA-KD llavakd/eval/m4c_evaluator.py: answers normalised by EvalAIAnswerProcessor
    (number words to digits, lines 137-150; articles dropped, 151 and 198-205; punctuation, 186-196), then
    the leave-one-out soft score min(1, matches among the other nine / 3), averaged (221-257). The paper
    variant keeps the stock task's scorer, which computes the same."""
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    assert "process_results" not in VARIANTS["textvqa_val"].hooks
    gt = ["2", "2"] + ["3"] * 8

    def score(pred):
        return textvqa_process_results({"answers": list(gt), "question_id": 1}, [pred])["exact_match"]

    assert score("Two.") == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6, derived by hand
    assert score("the 3") == 1.0 and score("three") == 1.0
    assert score("2 apples") == 0.0


# -- evals/: the committed task files -------------------------------------------------------------
EVALS = Path(__file__).resolve().parents[1] / "evals"


def _evals_differences(a: Path, b: Path) -> list[str]:
    """Files that one folder has and the other lacks, or whose bytes differ (README.md aside)."""
    def names(d):
        return {p.name for p in d.iterdir() if p.name != "README.md" and p.suffix in (".yaml", ".py")}
    return sorted(names(a) ^ names(b)) + [n for n in sorted(names(a) & names(b))
                                          if (a / n).read_bytes() != (b / n).read_bytes()]


def test_the_evals_folder_is_what_lmms_tasks_writes_and_names_no_absolute_path(tmp_path):
    import shutil

    from llavakd.cli import main

    assert main(["lmms-tasks", "--out", str(tmp_path / "out"), "--protocol", "paper"]) == 0
    stale_note = "evals/ is stale: llavakd lmms-tasks --out evals --protocol paper"
    assert _evals_differences(EVALS, tmp_path / "out") == [], stale_note
    for f in EVALS.iterdir():
        text = f.read_text()
        assert "site-packages" not in text and "include:" not in text and str(EVALS.parent) not in text, f.name
    stale = shutil.copytree(EVALS, tmp_path / "stale")  # the negative control: one changed byte is found
    (stale / "gqa_paper.yaml").write_text((stale / "gqa_paper.yaml").read_text().replace("128", "64", 1))
    assert _evals_differences(stale, tmp_path / "out") == ["gqa_paper.yaml"]


@pytest.mark.slow
def test_a_paper_variant_from_a_copy_of_evals_scores_a_tiny_model_through_the_lmms_eval_cli(standin_world,
                                                                                          tiny_student, tmp_path):
    """evals/ copied elsewhere; gqa_paper pointed at the tiny GQA stand-in by a one-file include beside it
    (the data only: prompts, decoding, parsing and hooks are the variant's); the stock CLI scores it."""
    import os
    import shutil
    import subprocess
    import sys

    moved = shutil.copytree(EVALS, tmp_path / "elsewhere" / "tasks")
    (moved / "tiny_gqa_paper.yaml").write_text(yaml.safe_dump({
        "include": "gqa_paper.yaml", "task": "tiny_gqa_paper", "dataset_path": "parquet", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"testdev": str(standin_world / "bench" / "gqa" / "testdev.parquet")}},
        "test_split": "testdev", "process_docs": None}))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "llavakd", "--model_args",
                        f"pretrained={tiny_student}", "--include_path", str(moved), "--tasks", "tiny_gqa_paper",
                        "--limit", "4", "--batch_size", "2", "--output_path", str(out)],
                       cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                                              HF_DATASETS_OFFLINE="1"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out.rglob("*_results.json")]
    assert results and "exact_match,none" in results[0]["results"]["tiny_gqa_paper"]
    config = results[0]["configs"]["tiny_gqa_paper"]
    assert config["generation_kwargs"]["max_new_tokens"] == 128 and "gqa_process_results" in str(config["process_results"])
