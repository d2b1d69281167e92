"""The paper's evaluation protocol as lmms-eval task variants: prompts and parsing as upstream's scripts.

    llavakd eval --model DIR --benchmarks all --out DIR --protocol paper [--world W]
    llavakd lmms-tasks --out evals_tasks --protocol paper     # the YAMLs, for the stock lmms-eval CLI

The paper's numbers were made by upstream's LLaVA-1.5-style evaluation scripts (TinyLLaVA_Factory
carries them), not by lmms-eval. For each task of the registry this module writes a variant
``<task>_paper`` that ``include``s the task lmms-eval (or the tiny stand-in) runs and overrides only
what upstream does differently; each difference is named in a comment at the top of the YAML and in
``VARIANTS`` below. The functions here are our own code, written from the facts of upstream's
scripts: the prompt each one builds and the way it parses an answer.

What cannot follow upstream is said, not hidden: VQAv2 test-dev and VizWiz test are scored by
their evaluation servers (the variants score the local val split, as the stock tasks do, and
``--submission`` writes the server files); MMBench's server uses CircularEval with a GPT judge
for free-form answers (offline, lmms-eval's rule-based matcher stands in for it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from llavakd.eval.pope_files import CATEGORY as POPE_CATEGORY
from llavakd.eval.pope_files import data_overrides, pope_file_doc_to_visual, write_pope_documents  # noqa: F401
from llavakd.model.chat import LETTER_CN

SUFFIX = "_paper"  # a variant's task name: the base task's name + this


# -- upstream's prompts and parsers -----------------------------------------------------------
def _missing(value) -> bool:
    """Upstream's is_none: None, NaN, and the strings 'nan' / 'none' (any case)."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and value.lower() in ("nan", "none")))


def _kw(kwargs, key: str) -> str:
    return (kwargs or {}).get(key, "")


def textvqa_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """The question as the dataset spells it, then the OCR tokens on their own line."""
    tokens = doc.get("ocr_tokens")
    ocr = ", ".join([] if tokens is None else list(tokens))
    return (f"{_kw(lmms_eval_specific_kwargs, 'pre_prompt')}{doc['question']}\nReference OCR token: {ocr}"
            f"{_kw(lmms_eval_specific_kwargs, 'post_prompt')}")


def vizwiz_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """The question as the asker typed it, then the instructions."""
    return f"{_kw(lmms_eval_specific_kwargs, 'pre_prompt')}{doc['question']}{_kw(lmms_eval_specific_kwargs, 'post_prompt')}"


MMMU_LETTER = "Answer with the option's letter from the given choices directly."
MMMU_SHORT = "Answer the question using a single word or phrase."


def mmmu_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """MMMU's own prompt (its LLaVA-1.5 configuration): the question, a blank line, ``(A) option`` lines,
    two blank lines, the letter instruction; an open question gets the short-answer instruction."""
    import ast

    if doc["question_type"] != "multiple-choice":
        return f"{doc['question']}\n\n{MMMU_SHORT}"
    options = "".join(f"({chr(ord('A') + i)}) {o}\n" for i, o in enumerate(ast.literal_eval(doc["options"])))
    return f"{doc['question']}\n\n{options}\n\n{MMMU_LETTER}"


# upstream's MMMU (Fantasyele/LLaVA-KD llavakd/eval/model_vqa_mmmu.py): a question with its image is
# answered by the model (lines 104-111, 126-137); one its question file gives no image is not: a random
# option letter, or the invalid string for an open question (lines 138-143), from Python's random after
# transformers.set_seed(42) (line 166). The question file is not public; LLaVA-style files carry one
# image per question, so a question that refers to one image is read as having it and one that refers
# to several as having none (inferred). Upstream's single random stream runs over its question order,
# which cannot be replayed: each question here draws from its own stream, seeded by 42 and its id.
MMMU_SEED = 42
MMMU_INVALID = "INVALID GENERATION FOR MULTIPLE IMAGE INPUTS"


def mmmu_image_keys(doc) -> list[str]:
    """The image fields a question refers to (``<image N>`` in its question or options), as lmms-eval's
    mmmu_doc_to_visual finds them."""
    text = f"{doc['question']} {doc.get('options', '')}"
    return sorted({t.strip("<>").replace(" ", "_") for t in re.findall(r"<image \d+>", text)})


def mmmu_answered(doc) -> bool:
    """Whether upstream's model sees the question: it refers to exactly one image."""
    return len(mmmu_image_keys(doc)) == 1


def mmmu_doc_to_visual(doc) -> list:
    """At most one image: the question's only image; none for a question upstream does not ask."""
    return [doc[mmmu_image_keys(doc)[0]].convert("RGB")] if mmmu_answered(doc) else []


def mmmu_rng(doc):
    import random

    return random.Random(f"{MMMU_SEED}:{doc['id']}")


def mmmu_choice(response: str, all_choices: list[str], index2ans: dict[str, str], rng) -> str:
    """Upstream's parse_multi_choice_response (model_vqa_mmmu.py:29-81): end punctuation stripped; an
    option as ``(X)``, else as `` X `` with a space on each side (no ``X.`` rule), else, for an answer of
    more than five words, an option's text; several candidates: the last one; none: a random letter."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = f" {response} "
    by_letter = True
    candidates = [c for c in all_choices if f"({c})" in response]
    bracketed = bool(candidates)
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        candidates = [i for i, ans in index2ans.items() if ans.lower() in response.lower()]
        by_letter = not candidates
    if not candidates:
        return rng.choice(all_choices)
    if len(candidates) == 1:
        return candidates[0]
    if not by_letter:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    else:
        starts = [response.rfind(f"({c})" if bracketed else f" {c} ") for c in candidates]
    return candidates[max(range(len(starts)), key=lambda i: (starts[i], -i))]


def mmmu_process_results(doc, results):
    """Upstream's answer for the question (the model's, or its guess without an image), parsed as upstream
    parses it; open answers then go through MMMU's own parse_open_response and every answer through
    lmms-eval's MMMU aggregation (MMMU's evaluation code, which upstream's main_eval_only runs)."""
    import ast

    from lmms_eval.tasks.mmmu.utils import (
        extract_subset_name,
        get_multi_choice_info,
        parse_open_response,
        to_submission_answer,
    )

    rng, answered = mmmu_rng(doc), mmmu_answered(doc)
    if doc["question_type"] == "multiple-choice":
        index2ans, all_choices = get_multi_choice_info(ast.literal_eval(doc["options"]))
        output = results[0] if answered else rng.choice(all_choices)
        parsed = mmmu_choice(output, all_choices, index2ans, rng)
    else:
        parsed = parse_open_response(results[0] if answered else MMMU_INVALID)
    acc = {"id": doc["id"], "subdomain": extract_subset_name(doc["id"]), "question_type": doc["question_type"],
           "answer": doc["answer"], "parsed_pred": [parsed]}
    return {"mmmu_acc": acc, "mmmu_acc_pass_at_k": acc, "submission": {doc["id"]: to_submission_answer(parsed)}}


def mmbench_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """Hint (when there is one) and question on their own lines, then one line per option: ``A. text``."""
    text = doc["question"] if _missing(doc.get("hint")) else f"{doc['hint']}\n{doc['question']}"
    for letter in "ABCDE":  # upstream lists A-D, every option a legacy MMBench question has; E for stand-ins
        if _missing(doc.get(letter)):
            break
        text += f"\n{letter}. {doc[letter]}"
    return f"{_kw(lmms_eval_specific_kwargs, 'pre_prompt')}{text}{_kw(lmms_eval_specific_kwargs, 'post_prompt')}"


def gqa_answer(prediction: str) -> str:
    """GQA's converter: trailing full stops removed, lower case; then compared with the answer exactly."""
    return prediction.strip().rstrip(".").lower()


def gqa_process_results(doc, results):
    return {"exact_match": float(gqa_answer(results[0]) == doc["answer"])}


SQA_OPTIONS = ("A", "B", "C", "D", "E")


def sqa_doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """LLaVA's ScienceQA question file in its CQM-A format, then the letter instruction. The layout is
    the generator's (haotian-liu/LLaVA scripts/convert_sqa_to_llava_base_prompt.py: context = the hint,
    or "N/A", lines 6-12; "(A) x (B) y" options, 15-22; "Context: ...\nQuestion: ...\nOptions: ...",
    line 47; double spaces collapsed once and stripped, line 97), inferred: the released
    llava_test_CQM-A.json is not available here (a copy quoted in public code agrees). Upstream's
    model_vqa_science.py moves the image token first (lines 46, 53; our template does the same) and
    appends the instruction (line 59)."""
    context = " ".join([doc.get("hint") or "", ""]).strip() or "N/A"
    choices = " ".join(f"({SQA_OPTIONS[i]}) {c}" for i, c in enumerate(doc["choices"]))
    text = f"Context: {context}\nQuestion: {doc['question']}\nOptions: {choices}\n".replace("  ", " ").strip()
    return f"{text}\n{MMMU_LETTER}"


def sqa_letter(prediction: str) -> str:
    """ScienceQA's parser (upstream's eval_science_qa.py:65-75 on the stripped answer of
    model_vqa_science.py:81): the letter alone; ``X. `` at the start; else ``The answer is ([A-Z]).``
    (the regex dot: any character but a newline must follow) found exactly once; else FAILED. A
    letter past the question's choices scores as wrong (get_pred_idx, line 32)."""
    text = prediction.strip()
    if text in SQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = re.findall(r"The answer is ([A-Z]).", text)
    return found[0] if len(found) == 1 else "FAILED"


def sqa_process_results(doc, results):
    letter, n = sqa_letter(results[0]), len(doc["choices"])
    right = letter in SQA_OPTIONS[:n] and SQA_OPTIONS.index(letter) == int(doc["answer"])
    return {"exact_match": float(right)}


def pope_answer(prediction: str) -> str:
    """POPE's parser: the first sentence only; "No", "no" or "not" among its words means no, else yes."""
    text = prediction.split(".")[0] if "." in prediction else prediction
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_process_results(doc, results):
    from lmms_eval.tasks.pope.utils import pope_process_results as stock

    return stock(doc, [pope_answer(results[0])])  # lmms-eval's records and F1 aggregation, upstream's parsing


def mme_process_results(doc, results):
    """MME's own calculation reads "yes"/"no" from the answer (or its first four characters); unlike
    lmms-eval's parser it has no one-letter reading ("y" -> yes): such an answer is "other"."""
    from lmms_eval.tasks.mme.utils import mme_process_results as stock

    answer = results[0]
    if len(answer.lower().strip().replace(".", "")) == 1:
        answer = "other"
    return stock(doc, [answer])


# upstream's decoding (Fantasyele/LLaVA-KD llavakd/eval/): greedy, up to 128 new tokens for the short-answer
# tasks (model_vqa_loader.py:145, model_vqa_pope.py:144), 1,024 for MMBench, ScienceQA and MMMU
# (model_vqa_mmbench.py:138, model_vqa_science.py:75, model_vqa_mmmu.py:133); the keyword stopping
# criterion is commented out (model_vqa_loader.py:98-99, 112), so only the end token stops an answer
SHORT_NEW_TOKENS, LONG_NEW_TOKENS = 128, 1024


def decoding(new_tokens: int) -> tuple[str, dict]:
    """The difference note and the ``generation_kwargs`` of a variant that decodes as upstream."""
    note = (f"decoding: greedy, up to {new_tokens} new tokens, stopped by the end token only (no stop "
            "string), as upstream's scripts")
    return note, {"generation_kwargs": {"max_new_tokens": new_tokens, "until": [], "do_sample": False,
                                        "temperature": 0}}


# -- the variants -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    differences: tuple[str, ...]  # what the variant changes, or why nothing is changed
    hooks: dict[str, str] = field(default_factory=dict)  # YAML key -> function of this module
    overrides: dict = field(default_factory=dict)  # plain YAML keys
    new_tokens: int = SHORT_NEW_TOKENS  # upstream's new-token limit for the task (decoding())


_SERVER = "the paper's number comes from {}, scored on the evaluation server: this scores the local val split"
_VQAV2 = Variant((_SERVER.format("test-dev"), "prompt (LLaVA-1.5's short-answer suffix) and VQA scoring "
                  "(EvalAI answer normalisation) are the stock task's"))
_VIZWIZ = Variant((_SERVER.format("test"), "prompt: the question as typed (the stock task capitalises it), then "
                   "the 'Unanswerable' instruction and the short-answer suffix, as the stock task", "VQA scoring "
                   "(EvalAI answer normalisation) is the stock task's"),
                  hooks={"doc_to_text": "vizwiz_doc_to_text"})
_POPE = Variant(("parsing: the first sentence only; 'No', 'no' or 'not' among its words means no, anything else "
                 "yes (the stock task counts only an exact 'yes' / 'no')",
                 "F1 per category with 'yes' as the positive class, as upstream's eval_pope"),
                hooks={"process_results": "pope_process_results"})
_MMBENCH = ("prompt: hint and question on their own lines, then 'A. option' lines (the stock task joins "
            "them with spaces and adds 'There are several options:')",
            "scoring: upstream submitted to the MMBench server (CircularEval, a GPT judge for free-form "
            "answers); offline this keeps lmms-eval's rule-based matcher")

VARIANTS: dict[str, Variant] = {
    "vqav2_val": _VQAV2, "vqav2_test": _VQAV2,
    "gqa": Variant(("parsing: trailing full stops removed and lower case, then an exact match (the stock task "
                    "strips all punctuation on both sides)",),
                   hooks={"process_results": "gqa_process_results"},
                   overrides={"metric_list": [{"metric": "exact_match", "aggregation": "mean",
                                               "higher_is_better": True}]}),
    "vizwiz_vqa_val": _VIZWIZ, "vizwiz_vqa_test": _VIZWIZ,
    "scienceqa_img": Variant(("prompt: LLaVA's CQM-A question file, 'Context: <hint or N/A>', 'Question: ...', "
                              "'Options: (A) x (B) y' lines, then the letter instruction (inferred from LLaVA's "
                              "generator; the stock task writes the context only when there is one and 'A. x' "
                              "lines)",
                              "parsing: the letter alone, 'X. ...', or 'The answer is X' (the stock task also "
                              "takes a lower-case letter and 'X.' without a space, and not 'The answer is X')"),
                             hooks={"doc_to_text": "sqa_doc_to_text", "process_results": "sqa_process_results"},
                             overrides={"metric_list": [{"metric": "exact_match", "aggregation": "mean",
                                                         "higher_is_better": True}]},
                             new_tokens=LONG_NEW_TOKENS),
    "textvqa_val": Variant(("prompt: the OCR tokens in the prompt ('Reference OCR token: a, b'), the question "
                            "as the dataset spells it (the stock task leaves the tokens out and capitalises it)",),
                           hooks={"doc_to_text": "textvqa_doc_to_text"}),
    "mme": Variant(("parsing: MME's own calculation, without lmms-eval's one-letter reading ('y' -> yes)",
                    "prompt: the question with 'Please answer yes or no.' replaced by the short-answer suffix, "
                    "as the stock task (LLaVA-1.5's question file)"),
                   hooks={"process_results": "mme_process_results"}),
    "mmbench_en_dev_static": Variant(_MMBENCH, hooks={"doc_to_text": "mmbench_doc_to_text"},
                                     new_tokens=LONG_NEW_TOKENS),
    "mmbench_cn_dev_static": Variant((*_MMBENCH, "prompt: LLaVA-1.5's Chinese letter instruction "
                                      f"({LETTER_CN.strip()}) instead of the stock one"),
                                     hooks={"doc_to_text": "mmbench_doc_to_text"},
                                     overrides={"lmms_eval_specific_kwargs": {
                                         "default": {"pre_prompt": "", "post_prompt": LETTER_CN}}},
                                     new_tokens=LONG_NEW_TOKENS),
    "pope_adv": _POPE, "pope_pop": _POPE, "pope_random": _POPE,
    "mmmu_val": Variant(("prompt: MMMU's own LLaVA-1.5 format, options as '(A) text' lines between blank lines "
                         "(the stock task writes 'A. text' with single line breaks)",
                         "images: at most one; a question that refers to several images is not shown to the "
                         "model: a random letter (the invalid answer for an open question), seeded by 42 and "
                         "the question id (the stock task feeds every image)",
                         "parsing: upstream's, an option as '(X)' or ' X ' (a space each side; no 'X.' rule), "
                         "else an option's text in an answer of more than five words, else a seeded random "
                         "letter; open answers and the accuracy by MMMU's own code, as the stock task"),
                        hooks={"doc_to_text": "mmmu_doc_to_text", "doc_to_visual": "mmmu_doc_to_visual",
                               "process_results": "mmmu_process_results"},
                        new_tokens=LONG_NEW_TOKENS),
}
HOOK_FUNCTIONS = sorted({f for v in VARIANTS.values() for f in v.hooks.values()} | {"pope_file_doc_to_visual"})
POPE_LMMS_LAB = ("data: the included task's (lmms-lab's POPE has 3,000 questions per split; upstream's files have "
                 "2,910 in the random split: give --pope-questions to read them)")


def variant_yaml(task: str, base_yaml: Path, name: str, hooks_module: str, data: dict | None = None,
                 data_note: str | None = None) -> str:
    """The YAML text of ``name``, the paper variant of registry task ``task`` whose lmms-eval YAML is
    ``base_yaml``; its ``!function`` entries name this module's functions through ``hooks_module``, the
    module written beside the YAMLs that re-exports them (llavakd.eval.tasks). ``data``: YAML keys that
    replace the task's data (upstream's POPE files), named by ``data_note`` in the header."""
    from llavakd.eval.taskfiles import Function, dump_task, flat_task

    v = VARIANTS[task]
    note, generation = decoding(v.new_tokens)
    head = [f"# {name}: {task} as the paper's evaluation scripts score it (llavakd.eval.paper)"]
    head += [f"#   - {d}" for d in (*v.differences, note, *([data_note] if data_note else []))]
    hooks = dict(v.hooks, **({"doc_to_visual": "pope_file_doc_to_visual"} if data else {}))
    config = {**flat_task(base_yaml), "task": name, **generation, **v.overrides, **(data or {}),
              **{key: Function(f"{hooks_module}.{fn}") for key, fn in hooks.items()}}
    return dump_task(config, head)


def write_paper_yamls(folder: str | Path, names: dict[str, str], base_yaml, hooks_module: str,
                      pope_questions: str | Path | None = None) -> dict[str, str]:
    """Write the paper variant of every task in ``names`` ({registry task: task run}) into ``folder``;
    ``base_yaml(task, name)`` is the YAML file of the task run. ``pope_questions``: upstream's POPE
    folder (llavakd.eval.pope_files), read instead of the task's own data. Returns {registry task:
    variant name}."""
    folder = Path(folder)
    out = {}
    for task, name in names.items():
        if task not in VARIANTS:  # a column the paper never scored (MMStar, ...): its stock task is its only one
            out[task] = name
            continue
        variant = f"{name}{SUFFIX}"
        data, data_note = None, None
        if task in POPE_CATEGORY:
            data_note = POPE_LMMS_LAB
            if pope_questions:
                path, n = write_pope_documents(folder, task, pope_questions)
                data = data_overrides(path)
                data_note = f"data: upstream's question files under {pope_questions} ({n} questions)"
        (folder / f"{variant}.yaml").write_text(variant_yaml(task, base_yaml(task, name), variant, hooks_module,
                                                             data, data_note))
        out[task] = variant
    return out
