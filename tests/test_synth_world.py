"""The synthetic world: deterministic, loadable by our dataset, and in lmms-eval's task schemas."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest

from llavakd.data.synth import BENCHMARKS, write_world

# lmms-eval task -> (our stand-in folder, split, utils module, function prefix, task kwargs)
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
TASKS = {
    "vqav2_val": ("vqav2", "validation", "vqav2.utils", "vqav2", {"pre_prompt": "", "post_prompt": SHORT}),
    "gqa": ("gqa", "testdev", "gqa.utils", "gqa", {"pre_prompt": "", "post_prompt": SHORT}),
    "vizwiz_vqa_val": ("vizwiz_vqa", "val", "vizwiz_vqa.utils", "vizwiz_vqa", {"pre_prompt": "", "post_prompt": SHORT}),
    "scienceqa_img": ("scienceqa", "test", "scienceqa.utils", "sqa",
                      {"format": "default", "pre_prompt": "", "post_prompt": LETTER}),
    "textvqa_val": ("textvqa", "validation", "textvqa.utils", "textvqa",
                    {"pre_prompt": "", "post_prompt": SHORT, "ocr": True}),
    "mme": ("mme", "test", "mme.utils", "mme", {"pre_prompt": "", "post_prompt": SHORT}),
    "mmbench_en_dev": ("mmbench_en", "dev", "mmbench.en_utils", "mmbench", {"pre_prompt": "", "post_prompt": LETTER}),
    "mmbench_cn_dev": ("mmbench_cn", "dev", "mmbench.cn_utils", "mmbench", {"pre_prompt": "", "post_prompt": LETTER}),
    "pope_adv": ("pope", "adversarial", "pope.utils", "pope", {"pre_prompt": "", "post_prompt": SHORT}),
    "pope_pop": ("pope", "popular", "pope.utils", "pope", {"pre_prompt": "", "post_prompt": SHORT}),
    "pope_random": ("pope", "random", "pope.utils", "pope", {"pre_prompt": "", "post_prompt": SHORT}),
    "mmmu_val": ("mmmu", "validation", "mmmu.utils", "mmmu",
                 {"multiple_choice_prompt": LETTER.strip(), "open_ended_prompt": SHORT.strip(), "prompt_type": "format"}),
}


def gold(task: str, doc: dict) -> str:
    if task.startswith("vqav2"):
        return doc["answers"][0]["answer"]
    if task in ("vizwiz_vqa_val", "textvqa_val"):
        return doc["answers"][0]
    if task == "scienceqa_img":
        return "ABCDE"[doc["answer"]]
    return doc["answer"]


def wrong_answer(task: str, doc: dict) -> str:
    """A parsable but wrong answer (MMMU guesses at random on unparsable ones)."""
    if task in ("mmmu_val", "scienceqa_img") or task.startswith("mmbench"):
        right = gold(task, doc)
        return next(x for x in "ABCD" if x != right)
    return "zebra"


def _generic_exact_match(doc: dict, results: list[str]) -> dict:
    """GQA has no process_results: lmms-eval scores it with its generic exact_match metric."""
    from lmms_eval.api.metrics import exact_match_hf_evaluate

    out = exact_match_hf_evaluate([results[0]], [doc["answer"]], ignore_case=True, ignore_punctuation=True)
    return {"exact_match": out["exact_match"]}


def score_of(task: str, out: dict) -> float:
    """The per-document score in each task's own process_results output."""
    if "exact_match" in out:
        return out["exact_match"]
    if task == "mme":
        return float(next(iter(out.values()))["score"] > 0)
    if task.startswith("pope"):
        return out["pope_accuracy"]["score"]
    if task.startswith("mmbench"):
        rec = out["gpt_eval_score"]
        return float(rec["prediction"] == rec["answer"])
    if task == "mmmu_val":
        rec = out["mmmu_acc"]
        return float(rec["parsed_pred"][0] == rec["answer"])
    raise KeyError(task)


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
