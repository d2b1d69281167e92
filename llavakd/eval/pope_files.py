"""Upstream's POPE question files as the data of the paper protocol's POPE variants.

    llavakd eval --model DIR --benchmarks pope --out DIR --protocol paper --pope-questions /data/eval/pope

Upstream (Fantasyele/LLaVA-KD ``scripts/eval/pope.sh``) reads, under one folder:
``llava_pope_test.jsonl`` (one question a line: ``question_id``, ``image``, ``text``, ``category``),
the images under ``val2014/``, and the labels from ``coco/coco_pope_<category>.json`` (one JSON a line
with a ``label``). Its scorer pairs a category's labels with that category's questions by position,
in the question file's order (``llavakd/eval/eval_pope.py:6, 22-33, 78``), and so does this module.
POPE at upstream's commit has 2,910 questions in its random split (lmms-lab's copy, which the
variants read when no folder is given, has 3,000 in each). lmms-eval has no reader for these files,
so this module writes one JSONL of documents per split, in the fields lmms-eval's POPE functions
read, and the variant's YAML points lmms-eval's ``json`` loader at it.
"""

from __future__ import annotations

import json
from pathlib import Path

from llavakd.errors import LlavaKDError

QUESTIONS = "llava_pope_test.jsonl"
IMAGES = "val2014"
LABELS = "coco/coco_pope_{}.json"
CATEGORY = {"pope_adv": "adversarial", "pope_pop": "popular", "pope_random": "random"}  # registry task -> split


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        raise LlavaKDError(f"POPE question files: {path} is missing")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LlavaKDError(f"{path}:{n}: not a JSON line ({e.msg})") from None
    return out


def pope_documents(root: str | Path, category: str) -> list[dict]:
    """One split's documents: question_id, question, answer (the label), category, image_path."""
    root = Path(root)
    questions = [q for q in _lines(root / QUESTIONS) if q.get("category") == category]
    labels = _lines(root / LABELS.format(category))
    if len(labels) != len(questions):
        raise LlavaKDError(f"{root / LABELS.format(category)}: {len(labels)} labels for {len(questions)} "
                           f"{category} questions in {root / QUESTIONS}")
    docs = []
    for n, (q, lab) in enumerate(zip(questions, labels), 1):
        missing = [k for k in ("question_id", "image", "text") if k not in q] + (["label"] if "label" not in lab else [])
        if missing:
            raise LlavaKDError(f"{root}: {category} question {n} lacks {', '.join(missing)}")
        image = root / IMAGES / q["image"]
        if not image.is_file():
            raise LlavaKDError(f"{root / QUESTIONS}: question {q['question_id']}: image {image} is missing")
        docs.append({"question_id": str(q["question_id"]), "question": q["text"],
                     "answer": "no" if lab["label"] == "no" else "yes", "category": category,
                     "image_path": str(image)})
    if not docs:
        raise LlavaKDError(f"{root / QUESTIONS}: no {category} question")
    return docs


def write_pope_documents(folder: str | Path, task: str, root: str | Path) -> tuple[Path, int]:
    """Write ``<folder>/<task>_upstream.jsonl`` for registry task ``task``; (its path, its documents)."""
    docs = pope_documents(root, CATEGORY[task])
    path = Path(folder) / f"{task}_upstream.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path, len(docs)


def pope_file_doc_to_visual(doc) -> list:
    """The question's COCO image, read from upstream's image folder."""
    from PIL import Image

    return [Image.open(doc["image_path"]).convert("RGB")]


def data_overrides(path: Path) -> dict:
    """The YAML keys that make a POPE task read ``path`` (lmms-eval's ``json`` loader)."""
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test"}
