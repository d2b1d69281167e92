"""The synthetic world: deterministic, loadable by our dataset, and in lmms-eval's task schemas."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest

from llavakd.tiny.score import STANDIN_TASKS, doc_score, generic_exact_match, gold_answer
from llavakd.tiny.world import BENCHMARKS, write_world

TASKS = STANDIN_TASKS
gold = gold_answer
score_of = doc_score
_generic_exact_match = generic_exact_match


def wrong_answer(task: str, doc: dict) -> str:
    """A parsable but wrong answer (MMMU guesses at random on unparsable ones)."""
    if task in ("mmmu_val", "scienceqa_img") or task.startswith("mmbench"):
        right = gold(task, doc)
        return next(x for x in "ABCD" if x != right)
    return "zebra"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, seed=0, size="tiny")
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_worlds(world, tmp_path):
    write_world(tmp_path / "again", seed=0, size="tiny")
    assert _digest(world) == _digest(tmp_path / "again")
    write_world(tmp_path / "other", seed=1, size="tiny")
    other = _digest(tmp_path / "other")
    assert other["train/instruct.json"] != _digest(world)["train/instruct.json"]


def test_manifest_lists_every_benchmark(world):
    m = json.loads((world / "manifest.json").read_text())
    assert {k.split("/")[0] for k in m["bench"]} == set(BENCHMARKS)
    assert all(n > 0 for n in m["bench"].values())
    assert m["train"]["text_only"] > 0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_standin_runs_through_the_lmms_eval_task_code(world, task):
    import datasets

    folder, split, module, prefix, kwargs = TASKS[task]
    utils = importlib.import_module(f"lmms_eval.tasks.{module}")
    ds = datasets.load_dataset("parquet", data_files={split: str(world / "bench" / folder / f"{split}.parquet")})[split]
    assert len(ds) > 0
    scores, wrong = [], []
    for doc in ds:
        visual = getattr(utils, f"{prefix}_doc_to_visual")(doc)
        assert len(visual) == 1 and visual[0].size == (32, 32)
        text = getattr(utils, f"{prefix}_doc_to_text")(doc, dict(kwargs))
        assert isinstance(text, str) and text.strip()
        process = getattr(utils, f"{prefix}_process_results", None) or _generic_exact_match
        scores.append(score_of(task, process(dict(doc), [gold(task, doc)])))
        wrong.append(score_of(task, process(dict(doc), [wrong_answer(task, doc)])))
    assert scores == [1.0] * len(scores), f"{task}: gold answers must score 1"
    assert max(wrong) == 0.0, f"{task}: a wrong answer must score 0"


def test_training_sets_load_through_our_dataset(world, tiny_student):
    from transformers import AutoProcessor

    from llavakd.data.report import data_report

    proc = AutoProcessor.from_pretrained(tiny_student)
    caps = data_report(world / "train" / "captions.json", world / "images", proc, template="pretrain", progress=False)
    inst = data_report(world / "train" / "instruct.json", world / "images", proc, template="chat", progress=False)
    assert caps["bad"] == {} and inst["bad"] == {}
    assert caps["good"] == caps["records"] == caps["with_image"]
    assert 0.05 < inst["text_only"] / inst["records"] < 0.15
    assert inst["gpt_turns"]["max"] >= 4  # multi-turn


def test_instruction_set_covers_every_answer_format(world):
    text = (world / "train" / "instruct.json").read_text(encoding="utf-8")
    for marker in ("Answer the question using a single word or phrase.",
                   "Answer with the option's letter from the given choices directly.",
                   "请直接回答选项字母", "unanswerable", "is there a", "how many", "where is",
                   "what number is written"):
        assert marker in text, marker


def test_score_standins_runs_every_task(world, tiny_student):
    from llavakd.tiny.score import score_standins

    res = score_standins(tiny_student, world, tasks=["pope_random", "mmbench_en_dev", "textvqa_val"])
    for task, r in res.items():
        assert r["n"] > 0 and 0 <= r["score"] <= 100 and 0 < r["chance"] <= 100
    assert res["pope_random"]["chance"] == 50.0  # balanced yes/no


def test_score_standins_on_a_folder_that_is_not_a_world(tmp_path, tiny_student, capsys):
    from llavakd.cli import main

    rc = main(["score-standins", "--model", str(tiny_student), "--world", str(tmp_path), "--tasks", "mme"])
    err = capsys.readouterr().err
    assert rc == 2 and "bench/mme/test.parquet does not exist" in err and "Traceback" not in err


def test_choice_questions_offer_only_absent_objects_as_wrong_options():
    import numpy as np

    from llavakd.tiny.scenes import COLORS_CN, SHAPES_CN, _cn_version, _options, choice_questions, sample_scene

    rng = np.random.default_rng(7)
    kinds = set()
    for _ in range(300):
        objs = sample_scene(rng)
        colors = {o.color for o in objs if o.kind == "shape"}
        shapes = {o.shape for o in objs if o.kind == "shape"}
        for qa in choice_questions(objs, rng):
            kinds.add(qa.kind)
            present = {"colour_choice": colors, "shape_choice": shapes,
                       "text": {o.digit for o in objs if o.kind == "digit"}}[qa.kind]
            opts, k = _options(qa, rng)
            assert opts[k] == qa.answer and qa.answer in present
            if qa.kind != "text":
                assert not present & (set(opts) - {qa.answer}), (qa, opts, present)
                cn = _cn_version(qa)
                table = COLORS_CN if qa.kind == "colour_choice" else SHAPES_CN
                assert cn.answer == table[qa.answer] and cn.options == tuple(table[x] for x in qa.options)
    assert kinds == {"colour_choice", "shape_choice", "text"}


def test_letter_choice_standins_mix_binding_and_presence_questions(world):
    import datasets

    questions = []
    for folder, split, col in (("mmbench_en", "dev", "question"), ("mmmu", "validation", "question"),
                               ("scienceqa", "test", "question")):
        ds = datasets.load_dataset("parquet", data_files={split: str(world / "bench" / folder / f"{split}.parquet")})
        questions += [q.lower() for q in ds[split][col]]
    presence = [q for q in questions if "in the image" in q]
    assert 0.15 < len(presence) / len(questions) < 0.6, len(presence) / len(questions)
    assert any(q.startswith(("what color is the shape at", "where is", "<image 1> where is")) for q in questions)



def test_options_follow_the_worlds_fixed_order():
    import numpy as np

    from llavakd.tiny.scenes import CELLS, COLORS, QA, _options

    rng = np.random.default_rng(0)
    for answer in COLORS:
        opts, k = _options(QA("colour", "q", answer, tuple(COLORS)), rng)
        assert opts == list(COLORS) and opts[k] == answer  # whole pool: the letter is fixed per answer
    assert _options(QA("position", "q", "top right", CELLS), rng) == (list(CELLS), 1)
    for _ in range(50):  # ten digits: five of them, the answer among them, in ascending order
        opts, k = _options(QA("text", "q", "7", tuple("0123456789")), rng)
        assert len(opts) == 5 and opts[k] == "7" and opts == sorted(opts)


def _claim_truth(question: str, objs) -> bool:
    """Whether a yes/no claim of the world holds for a scene; fails on a form it does not know."""
    import re

    from llavakd.tiny.scenes import CELLS, COLORS, COUNT_WORDS, SHAPES

    shapes = [o for o in objs if o.kind == "shape"]
    q = question.split("?")[0] + "?"
    named = [w for w in re.findall(r"[a-z]+", q.lower()) if w in COLORS or w in SHAPES]
    assert len(named) <= 1, f"a yes/no claim names more than one attribute: {q!r}"
    if m := re.fullmatch(r"Is there a (\w+) in the image\?", q):
        assert m[1] in SHAPES, q
        return any(o.shape == m[1] for o in shapes)
    if m := re.fullmatch(r"Is there a (\w+) shape in the image\?", q):
        assert m[1] in COLORS, q
        return any(o.color == m[1] for o in shapes)
    if m := re.fullmatch(r"(?:Is there one shape|Are there (\w+) shapes) in the image\?", q):
        return len(shapes) == (COUNT_WORDS.index(m[1]) if m[1] else 1)
    if m := re.fullmatch(r"Is there a shape at (.+)\?", q):
        return any(o.cell == CELLS.index(m[1]) for o in shapes)
    if m := re.fullmatch(r"Is the number (\d) written in the image\?", q):
        return any(o.kind == "digit" and o.digit == m[1] for o in objs)
    raise AssertionError(f"unknown yes/no form: {q!r}")


def _scenes(n=300, seed=3):
    import numpy as np

    from llavakd.tiny.scenes import sample_scene

    rng = np.random.default_rng(seed)
    return rng, [(f"i{k}", sample_scene(rng), b"") for k in range(n)]


def test_training_yes_no_checks_are_true_balanced_and_about_one_attribute():
    from llavakd.tiny.scenes import verification_turns

    rng, images = _scenes()
    answers = []
    for _, objs, _ in images:
        for _ in range(4):
            [(q, a)] = verification_turns(objs, rng)
            assert a == ("yes" if _claim_truth(q, objs) else "no"), (q, a, objs)
            answers.append(a)
    assert abs(answers.count("yes") / len(answers) - 0.5) < 0.05


def test_mme_pairs_a_true_and_a_false_claim_about_one_attribute():
    from llavakd.tiny.standins import mme

    rng, images = _scenes()
    rows, _ = mme(images, rng)["test"]
    scene = {f"{iid}.png": objs for iid, objs, _ in images}
    assert [r["answer"] for r in rows] == ["Yes", "No"] * len(images)
    for r in rows:
        objs = scene[r["question_id"].split("/", 1)[1]]
        assert _claim_truth(r["question"], objs) == (r["answer"] == "Yes"), r["question"]
    assert {r["category"] for r in rows} == {"existence", "color", "count", "position", "OCR"}


def test_pope_negatives_follow_the_three_sampling_rules():
    from collections import Counter

    from llavakd.tiny.scenes import ITEMS, item_text, present_items
    from llavakd.tiny.standins import pope

    rng, images = _scenes()
    scene = {iid: objs for iid, objs, _ in images}
    text_to_item = {f"Is there {item_text(it)} in the image?": it for it in ITEMS}
    splits = pope(images, rng)
    freq = Counter(it for _, objs, _ in images for it in present_items(objs))
    for split, (rows, _) in splits.items():
        assert [r["answer"] for r in rows] == ["yes", "no"] * len(images)
        for pos, neg in zip(rows[::2], rows[1::2]):
            objs = scene[neg["image_source"]]
            present = present_items(objs)
            p, n = text_to_item[pos["question"]], text_to_item[neg["question"]]
            assert p in present and n not in present and p[0] == n[0]
            absent = [it for it in ITEMS if it[0] == n[0] and it not in present]
            if split == "popular":
                assert freq[n] == max(freq[it] for it in absent)
    negatives = {s: Counter(text_to_item[r["question"]] for r in rows[1::2]) for s, (rows, _) in splits.items()}
    assert negatives["random"] != negatives["popular"] != negatives["adversarial"]


# the training sets of the tiny world (seed 0) as they were before the demo's world existed (commit
# 8dd82e3): the sizes the studies use draw exactly what they drew before (small differs from tiny only
# in its counts, through the same code)
TINY_SEED0_SHA256 = {
    "train/captions.json": "e46e978bf145518990f770882b729a2dec6dba653c3770384b92b7247b02dc17",
    "train/instruct.json": "36fe955fc8c13515bcc4466498245c395c80cb141d015a2608c82b47000a8814",
}


def test_the_tiny_world_is_what_it_was_before_the_demo_world(world):
    assert {k: v for k, v in _digest(world).items() if k in TINY_SEED0_SHA256} == TINY_SEED0_SHA256


@pytest.mark.slow
def test_the_demo_world_teaches_no_yes_no_checks(tmp_path):
    """The demo's world: the tiny world's training images, conversations without yes/no checks or
    text-only records (the other formats all there), 100 images per stand-in."""
    from llavakd.tiny.world import SIZES

    m = write_world(tmp_path, seed=0, size="demo")
    assert m["train"]["captions"] == SIZES["tiny"]["train"] and m["train"]["text_only"] == 0
    records = json.loads((tmp_path / "train" / "instruct.json").read_text(encoding="utf-8"))
    yes_no = [r["conversations"][i - 1]["value"] for r in records for i, t in enumerate(r["conversations"])
              if t["from"] == "gpt" and t["value"] in ("yes", "no")]
    assert yes_no  # VQAv2's open "is there a red shape ?" questions stay ...
    assert not [q for q in yes_no if "in the image" in q]  # ... MME's and POPE's checks ("... in the image?") go
    assert len(records) == SIZES["tiny"]["train"] and all("image" in r for r in records)  # no text-only record
    text = (tmp_path / "train" / "instruct.json").read_text(encoding="utf-8")
    for marker in ("Answer the question using a single word or phrase.",
                   "Answer with the option's letter from the given choices directly.",
                   "请直接回答选项字母", "unanswerable", "how many", "where is", "what number is written"):
        assert marker in text, marker
    for b, n in m["bench"].items():
        assert n >= 70, (b, n)  # 100 images per stand-in (TextVQA keeps the images with a digit)


def test_more_documents_per_stand_in_leave_the_training_data_and_the_first_images_as_they_were(tmp_path, monkeypatch):
    """small600 is small with more documents per stand-in: the bench count must not move the training data
    (its images and conversations, byte for byte) nor the stand-ins' first images, which the smaller world
    also scores. Checked on two small presets that differ only in their bench count."""
    from llavakd.tiny import world as w

    monkeypatch.setitem(w.SIZES, "few", {"train": 40, "bench": 6})
    monkeypatch.setitem(w.SIZES, "more", {"train": 40, "bench": 24})
    few, more = write_world(tmp_path / "few", seed=0, size="few"), write_world(tmp_path / "more", seed=0, size="more")
    for name in ("captions.json", "instruct.json"):
        assert few["sha256"][f"train/{name}"] == more["sha256"][f"train/{name}"], name
    for png in (tmp_path / "few" / "images" / "train").iterdir():
        assert png.read_bytes() == (tmp_path / "more" / "images" / "train" / png.name).read_bytes()
    firsts = list((tmp_path / "few" / "images").glob("bench_*/*.png"))
    assert len(firsts) == 6 * len(BENCHMARKS)
    assert all(p.read_bytes() == (tmp_path / "more" / p.relative_to(tmp_path / "few")).read_bytes() for p in firsts)
    assert len(list((tmp_path / "more" / "images").glob("bench_*/*.png"))) == 24 * len(BENCHMARKS)
