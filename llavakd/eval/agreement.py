"""Teacher agreement ("distillation fidelity"): how close a student is to its teacher, benchmark by benchmark.

    llavakd agreement --student results/demo/runs/qwen1.5-0.5b/s0/dpt--sft--dft/final \\
        --teacher results/demo/runs/qwen1.5-4b/s0/pt--sft/final --world results/demo/world --out /tmp/agree
    llavakd agreement --student S --teacher T --benchmarks gqa,pope --out DIR --hf-home /data/hf --dtype bfloat16

Accuracy cannot tell whether distillation moved a student toward its teacher: two models can score
alike and answer differently. On the documents the evaluation scores (the same lmms-eval tasks,
prompts, images and document order; ``--limit`` takes the first N of each task) this measures

  answer agreement   the fraction of documents where the student's greedy answer equals the teacher's
                     (both decoded as the evaluation decodes them, cut at the task's stop strings);
  answer KL          KL(teacher || student) of the next-token distributions over the teacher's greedy
                     answer tokens, its end token included (teacher forcing: both models read the
                     prompt and the teacher's answer), averaged over the tokens of a document;
  visual KL          the same KL at the visual positions (the distributions the models predict at each
                     image token, the positions L_vis distils).

Each benchmark's numbers are means over its documents; ``ALL`` is the mean over benchmarks. Teacher
and student must share the vocabulary and the number of visual tokens (the KL is taken position by
position, index by index): otherwise one line names both and nothing is written. The output folder
appears whole (``<benchmark>.json`` per benchmark, ``COMPLETE``) or not at all.

Written here because neither lmms-eval nor transformers compares two models' answers or next-token
distributions; documents, prompts and images come from lmms-eval's task objects.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from llavakd.errors import LlavaKDError
from llavakd.eval.registry import resolve
from llavakd.model.chat import encode_prompt, end_id

MEASURES = ("answer_agreement", "answer_kl", "visual_kl")


def kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per row, in float64: [n, V] x [n, V] -> [n]."""
    t = torch.log_softmax(teacher_logits.double(), -1)
    s = torch.log_softmax(student_logits.double(), -1)
    return (t.exp() * (t - s)).sum(-1)


@dataclass
class DocMeasure:
    agree: bool
    answer_kl: float
    visual_kl: float | None  # None: a text-only document


@torch.no_grad()
def _greedy(model, enc: dict, limit: int, eos: int) -> torch.Tensor:
    """The greedy answer's token ids, up to and including the end token when the model produced one."""
    out = model.generate(**{k: v.to(model.device) for k, v in enc.items()}, max_new_tokens=limit, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos)[0, enc["input_ids"].shape[1]:].cpu()
    ends = (out == eos).nonzero()
    return out[: int(ends[0]) + 1] if len(ends) else out


@torch.no_grad()
def measure_doc(teacher, student, processor, prompt: str, images: list, limit: int, until: list[str]) -> DocMeasure:
    """The three measures on one document (see the module docstring)."""
    from llavakd.eval.adapter import cut_at_stops  # imports lmms-eval: only when measuring

    tok = processor.tokenizer
    eos = end_id(tok)
    enc = encode_prompt(processor, prompt, images)
    t_ids, s_ids = _greedy(teacher, enc, limit, eos), _greedy(student, enc, limit, eos)
    t_text = cut_at_stops(tok.decode(t_ids, skip_special_tokens=True), until)
    s_text = cut_at_stops(tok.decode(s_ids, skip_special_tokens=True), until)
    n = enc["input_ids"].shape[1]
    full = {**enc, "input_ids": torch.cat([enc["input_ids"], t_ids[None]], 1)}
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    lt = teacher(**{k: v.to(teacher.device) for k, v in full.items()}).logits[0].cpu()
    ls = student(**{k: v.to(student.device) for k, v in full.items()}).logits[0].cpu()
    answer = slice(n - 1, n - 1 + len(t_ids))  # the positions that predict the teacher's answer tokens
    answer_kl = float(kl_rows(lt[answer], ls[answer]).mean()) if len(t_ids) else 0.0
    visual = full["input_ids"][0] == student.config.image_token_id
    visual_kl = float(kl_rows(lt[visual], ls[visual]).mean()) if visual.any() else None
    return DocMeasure(t_text == s_text, answer_kl, visual_kl)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(docs: list[DocMeasure]) -> dict:
    return {"docs": len(docs), "answer_agreement": _mean(float(d.agree) for d in docs),
            "answer_kl": _mean(d.answer_kl for d in docs), "visual_kl": _mean(d.visual_kl for d in docs)}


def check_pair(teacher, student, teacher_dir, student_dir) -> None:
    """Same vocabulary and visual-token count, or one line naming both."""
    from llavakd.model.build import check_same_vocab

    check_same_vocab(teacher_dir, student_dir)
    nt, ns = teacher.config.image_seq_length, student.config.image_seq_length
    if nt != ns:
        raise LlavaKDError(f"teacher {teacher_dir} has {nt} visual tokens per image but student {student_dir} has "
                           f"{ns}; the visual KL compares them position by position, so they must be equal")


def load_pair(student_dir, teacher_dir, dtype: str = "float32", device: str = "auto"):
    from transformers import LlavaForConditionalGeneration

    from llavakd.model.build import DTYPES, load_processor
    from llavakd.model.build import resolve as resolve_model

    for d, what in ((student_dir, "student"), (teacher_dir, "teacher")):
        resolve_model(d, what)  # a missing folder or config is named before anything loads
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    models = [LlavaForConditionalGeneration.from_pretrained(d, dtype=DTYPES[dtype], local_files_only=True).to(device)
              .eval() for d in (teacher_dir, student_dir)]
    check_pair(models[0], models[1], teacher_dir, student_dir)
    return models[0], models[1], load_processor(student_dir, local_files_only=True)


def task_documents(task_obj, limit: int | None):
    """(prompt, images, max new tokens, stop strings) of the first ``limit`` documents of one lmms-eval task,
    as its task object builds them for the evaluation."""
    from llavakd.eval.adapter import stops_and_limit  # imports lmms-eval: only when measuring

    until, limit_tokens = stops_and_limit(task_obj.config.generation_kwargs)
    for doc in list(task_obj.test_docs())[:limit]:
        images = [v.convert("RGB") for v in (task_obj.doc_to_visual(doc) or []) if v is not None]
        yield task_obj.doc_to_text(doc), images, limit_tokens, until


def agreement(student_dir, teacher_dir, out, *, benchmarks="all", standins=None, limit: int | None = None,
              dtype: str = "float32", device: str = "auto", progress: bool = True) -> dict:
    """Measure the pair on the benchmarks; write ``out`` whole (one JSON per benchmark, COMPLETE) and
    return {benchmark: record}, plus ``ALL`` (means over benchmarks)."""
    from tqdm import tqdm

    from llavakd.eval.tasks import task_manager, write_task_yamls
    from llavakd.io import atomic_dir, atomic_write_text

    if limit is not None and limit < 1:
        raise LlavaKDError(f"--limit must be at least 1, got {limit}")
    benches = resolve(benchmarks)
    teacher, student, processor = load_pair(student_dir, teacher_dir, dtype, device)
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        from lmms_eval.tasks import get_task_dict

        names = (standins or write_task_yamls)(Path(tmp) / "tasks")
        wanted = [names[t] for b in benches for t in b.tasks]
        task_objs = get_task_dict(wanted, task_manager(Path(tmp) / "tasks", stock=standins is None))
        for bench in benches:
            per_task = {}
            for task in bench.tasks:
                docs = list(task_documents(task_objs[names[task]], limit))
                per_task[task] = summarize([measure_doc(teacher, student, processor, *d) for d in
                                            tqdm(docs, desc=f"agreement {task}", disable=not progress)])
            rec = {m: _mean(per_task[t][m] for t in bench.tasks) for m in MEASURES}
            records[bench.name] = {"benchmark": bench.name, "column": bench.column, **rec,
                                   "docs": sum(r["docs"] for r in per_task.values()), "tasks": per_task,
                                   "student": str(student_dir), "teacher": str(teacher_dir), "limit": limit,
                                   "dtype": dtype}
    for rec in records.values():
        if any(v is not None and not math.isfinite(v) for v in (rec[m] for m in MEASURES)):
            raise LlavaKDError(f"{rec['benchmark']}: a non-finite agreement measure ({rec}); nothing written")
    with atomic_dir(out, overwrite=True) as folder:
        for name, rec in records.items():
            atomic_write_text(Path(folder) / f"{name}.json", json.dumps(rec, indent=2, sort_keys=True) + "\n")
    records["ALL"] = {m: _mean(r[m] for r in records.values()) for m in MEASURES}
    return records
