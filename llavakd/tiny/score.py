"""Score a model on the synthetic stand-ins with lmms-eval's own task functions.

    llavakd score-standins --model results/demo/runs/.../final --world results/demo/world

For each stand-in split this runs the lmms-eval 0.7.3 task's ``doc_to_visual`` and
``doc_to_text`` (default prompt kwargs), generates greedily with our chat template, and scores
with the task's ``process_results`` (GQA: lmms-eval's generic exact_match). The number per task
is the mean per-question score; ``chance`` is the best constant answer (the most frequent gold
answer) scored by the same code, i.e. what a blind model reaches. This is the quick path used to
check that the world is learnable; the headline numbers in the paper's conventions come from the
full ``simple_evaluate`` runner.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections import Counter
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.model.chat import LETTER, SHORT, UNANSWERABLE, encode_prompt

VIZWIZ = UNANSWERABLE + SHORT

# lmms-eval task -> (stand-in folder, split, utils module, function prefix, prompt kwargs)
STANDIN_TASKS = {
    "vqav2_val": ("vqav2", "validation", "vqav2.utils", "vqav2", {"pre_prompt": "", "post_prompt": SHORT}),
    "gqa": ("gqa", "testdev", "gqa.utils", "gqa", {"pre_prompt": "", "post_prompt": SHORT}),
    "vizwiz_vqa_val": ("vizwiz_vqa", "val", "vizwiz_vqa.utils", "vizwiz_vqa", {"pre_prompt": "", "post_prompt": VIZWIZ}),
    "scienceqa_img": ("scienceqa", "test", "scienceqa.utils", "sqa",
                      {"format": "default", "pre_prompt": "", "post_prompt": LETTER}),
    "textvqa_val": ("textvqa", "validation", "textvqa.utils", "textvqa", {"pre_prompt": "", "post_prompt": SHORT}),
    "mme": ("mme", "test", "mme.utils", "mme", {"pre_prompt": "", "post_prompt": SHORT}),
    "mmbench_en_dev": ("mmbench_en", "dev", "mmbench.en_utils", "mmbench", {"pre_prompt": "", "post_prompt": LETTER}),
    "mmbench_cn_dev": ("mmbench_cn", "dev", "mmbench.cn_utils", "mmbench", {"pre_prompt": "", "post_prompt": LETTER}),
    "pope_adv": ("pope", "adversarial", "pope.utils", "pope", {"pre_prompt": "", "post_prompt": SHORT}),
    "pope_pop": ("pope", "popular", "pope.utils", "pope", {"pre_prompt": "", "post_prompt": SHORT}),
    "pope_random": ("pope", "random", "pope.utils", "pope", {"pre_prompt": "", "post_prompt": SHORT}),
    "mmmu_val": ("mmmu", "validation", "mmmu.utils", "mmmu",
                 {"multiple_choice_prompt": LETTER.strip(), "open_ended_prompt": SHORT.strip(), "prompt_type": "format"}),
}


def gold_answer(task: str, doc: dict) -> str:
    if task == "vqav2_val":
        return doc["answers"][0]["answer"]
    if task in ("vizwiz_vqa_val", "textvqa_val"):
        return doc["answers"][0]
    if task == "scienceqa_img":
        return "ABCDE"[doc["answer"]]
    return doc["answer"]


def generic_exact_match(doc: dict, results: list[str]) -> dict:
    """Tasks without process_results (GQA) use lmms-eval's generic exact_match metric."""
    from lmms_eval.api.metrics import exact_match_hf_evaluate

    out = exact_match_hf_evaluate([results[0]], [doc["answer"]], ignore_case=True, ignore_punctuation=True)
    return {"exact_match": out["exact_match"]}


def doc_score(task: str, out: dict) -> float:
    """The per-question score inside each task's process_results output."""
    if "exact_match" in out:
        return float(out["exact_match"])
    if task == "mme":
        return float(next(iter(out.values()))["score"] > 0)
    if task.startswith("pope"):
        return float(out["pope_accuracy"]["score"])
    if task.startswith("mmbench"):  # lmms-eval's own rule-based matcher, as the static aggregation runs it
        from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

        with contextlib.redirect_stdout(io.StringIO()):  # it prints per-category accuracies
            overall, _, _ = MMBench_Evaluator().eval_result([out["gpt_eval_score"]], eval_method="static")
        return float(overall)
    if task == "mmmu_val":
        rec = out["mmmu_acc"]
        return float(rec["parsed_pred"][0] == rec["answer"])
    raise KeyError(task)


def task_functions(task: str):
    folder, split, module, prefix, kwargs = STANDIN_TASKS[task]
    utils = importlib.import_module(f"lmms_eval.tasks.{module}")
    process = getattr(utils, f"{prefix}_process_results", None) or generic_exact_match
    return (getattr(utils, f"{prefix}_doc_to_visual"), getattr(utils, f"{prefix}_doc_to_text"), process, kwargs)


def load_docs(world: Path, task: str):
    import datasets

    folder, split, *_ = STANDIN_TASKS[task]
    path = Path(world) / "bench" / folder / f"{split}.parquet"
    if not path.is_file():
        raise LlavaKDError(f"stand-in {path} does not exist; is {world} a world written by llavakd synth-world?")
    return datasets.load_dataset("parquet", data_files={split: str(path)})[split]


def generate_answers(model, processor, prompts: list[str], images: list, max_new_tokens: int = 8,
                     batch_size: int = 16) -> list[str]:
    """Greedy answers with the training template (the lmms-eval adapter's generation loop)."""
    from llavakd.eval.adapter import generate_grouped  # imports lmms-eval: only when generating

    enc = [encode_prompt(processor, p, [im]) for p, im in zip(prompts, images)]
    answers = generate_grouped(model, processor, enc, [max_new_tokens] * len(enc), batch_size)
    return [a.strip() for a in answers]


def score_standins(model_dir, world, tasks=None, batch_size: int = 16, limit: int | None = None) -> dict:
    import random

    from transformers import LlavaForConditionalGeneration

    from llavakd.model.build import load_processor

    random.seed(0)  # MMMU guesses at random on an unparsable answer: keep that repeatable
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = load_processor(model_dir)
    results = {}
    for task in tasks or list(STANDIN_TASKS):
        to_visual, to_text, process, kwargs = task_functions(task)
        docs = list(load_docs(world, task))[:limit]
        prompts = [to_text(d, dict(kwargs)) for d in docs]
        images = [to_visual(d)[0] for d in docs]
        preds = generate_answers(model, processor, prompts, images, batch_size=batch_size)
        majority = Counter(gold_answer(task, d) for d in docs).most_common(1)[0][0]
        results[task] = {"n": len(docs), "score": round(quick_score(task, docs, preds), 1),
                         "chance": round(quick_score(task, docs, [majority] * len(docs)), 1),
                         "examples": [{"prompt": prompts[i][:80], "prediction": preds[i],
                                       "gold": gold_answer(task, docs[i])} for i in range(min(2, len(docs)))],
                         "predictions": preds}  # every answer, so the split can be scored again later
    return results


def quick_score(task: str, docs: list[dict], predictions: list[str]) -> float:
    """Mean per-question score (percent) of ``predictions`` on ``docs``, by the task's own lmms-eval code."""
    process = task_functions(task)[2]
    return 100 * sum(doc_score(task, process(dict(d), [p])) for d, p in zip(docs, predictions, strict=True)) / len(docs)
