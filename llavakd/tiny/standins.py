"""Held-out stand-ins for the paper's ten benchmarks, in the columns their lmms-eval tasks read.

Each function takes ``images`` [(image id, objects, png bytes)] and a numpy Generator and
returns ``{split: (rows, image columns)}``. Column names and value types follow the public
datasets lmms-eval 0.7.3 loads (VQAv2, GQA, VizWiz-VQA, ScienceQA-IMG, TextVQA, MME, MMBench
EN/CN, POPE, MMMU); ``tests/test_synth_world.py`` runs each task's own ``doc_to_text``,
``doc_to_visual`` and ``process_results`` on the files.
"""

from __future__ import annotations

from collections import Counter

from llavakd.tiny.scenes import (
    CELLS,
    ITEMS,
    LETTERS,
    SQA_CONTEXT,
    Obj,
    _cn_version,
    _options,
    _shapes,
    choice_questions,
    count_claim,
    item_text,
    present_items,
    questions,
)

Image = tuple[str, list[Obj], bytes]


def _digits(objs):
    return [o for o in objs if o.kind == "digit"]


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def vqav2(images: list[Image], rng):
    rows = []
    types = {"colour": "other", "shape": "other", "count": "number", "exist": "yes/no"}
    for n, (iid, objs, png) in enumerate(images):
        qas = [q for q in questions(objs, rng) if q.kind in types]
        for k in rng.permutation(len(qas))[:2]:
            qa = qas[int(k)]
            rows.append({
                "question_id": n * 10 + int(k), "question": qa.question, "question_type": qa.kind,
                "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)],
                "multiple_choice_answer": qa.answer, "answer_type": types[qa.kind], "image_id": n, "image": png,
            })
    return {"validation": (rows, ("image",))}


def gqa(images: list[Image], rng):
    rows = []
    for n, (iid, objs, png) in enumerate(images):
        for qa in questions(objs, rng):
            if qa.kind in ("position", "shape", "colour"):
                rows.append({"id": f"{n}{len(rows)}", "imageId": iid, "question": qa.question,
                             "answer": qa.answer, "fullAnswer": f"The answer is {qa.answer}.",
                             "isBalanced": True, "image": png})
    return {"testdev": (rows, ("image",))}


def vizwiz_vqa(images: list[Image], rng):
    rows = []
    for n, (iid, objs, png) in enumerate(images):
        if _digits(objs):
            q, a, cat = "what number is written ?", _digits(objs)[0].digit, "number"
        elif rng.random() < 0.5:
            q, a, cat = "what number is written ?", "unanswerable", "unanswerable"
        else:
            qa = _pick(rng, [x for x in questions(objs, rng) if x.kind in ("colour", "shape")])
            q, a, cat = qa.question, qa.answer, "other"
        rows.append({"question_id": f"VizWiz_val_{n:08d}", "question": q, "answers": [a] * 10,
                     "category": cat, "answerable": int(a != "unanswerable"), "image": png})
    return {"val": (rows, ("image",))}


def scienceqa(images: list[Image], rng):
    rows = []
    for n, (iid, objs, png) in enumerate(images):
        qa = _pick(rng, [x for x in questions(objs, rng) if x.kind in ("colour", "shape", "count")]
                   + choice_questions(objs, rng))
        opts, ans = _options(qa, rng)
        hint = SQA_CONTEXT if rng.random() < 0.5 else ""
        rows.append({
            "image": png, "question": qa.question.capitalize(), "choices": opts, "answer": ans, "hint": hint,
            "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "shapes",
            "category": "Shapes and colours", "skill": f"Identify {qa.kind}", "lecture": "", "solution": "",
        })
    return {"test": (rows, ("image",))}


def textvqa(images: list[Image], rng):
    rows = []
    for n, (iid, objs, png) in enumerate(images):
        if not _digits(objs):
            continue
        d = _digits(objs)[0].digit
        rows.append({
            "image_id": iid, "question_id": n, "question": "what number is written ?", "answers": [d] * 10,
            "ocr_tokens": [d], "image_classes": ["shape"], "image_width": 32, "image_height": 32,
            "set_name": "val", "image": png,
        })
    return {"validation": (rows, ("image",))}


def mme(images: list[Image], rng):
    """Paired questions per image, the first true and the second false, each about one attribute:
    existence (a shape), color (a colour), count, position (is a cell taken) and OCR (a digit)."""
    rows = []
    suffix = " Please answer yes or no."
    for n, (iid, objs, png) in enumerate(images):
        shapes = _shapes(objs)
        present = present_items(objs)
        cats = ["color", "count", "position"] + (["OCR"] if _digits(objs) else [])
        if any(it not in present for it in ITEMS if it[0] == "shape"):
            cats.append("existence")
        cat = _pick(rng, sorted(cats))
        if cat in ("existence", "color"):
            kind = "shape" if cat == "existence" else "colour"
            yes = _pick(rng, [it for it in ITEMS if it[0] == kind and it in present])
            no = _pick(rng, [it for it in ITEMS if it[0] == kind and it not in present])
            pair = (f"Is there {item_text(yes)} in the image?", f"Is there {item_text(no)} in the image?")
        elif cat == "count":
            wrong = _pick(rng, [k for k in (1, 2, 3) if k != len(shapes)])
            pair = (f"{count_claim(len(shapes))} in the image?", f"{count_claim(wrong)} in the image?")
        elif cat == "position":
            taken = {s.cell for s in shapes}
            yes_cell = _pick(rng, sorted(taken))
            no_cell = _pick(rng, [c for c in range(4) if c not in taken])
            pair = (f"Is there a shape at {CELLS[yes_cell]}?", f"Is there a shape at {CELLS[no_cell]}?")
        else:
            d = _digits(objs)[0].digit
            wrong = _pick(rng, [x for x in "0123456789" if x != d])
            pair = (f"Is the number {d} written in the image?", f"Is the number {wrong} written in the image?")
        for q, a in zip(pair, ("Yes", "No")):
            rows.append({"question_id": f"{cat}/{iid}.png", "question": q + suffix, "answer": a,
                         "category": cat, "image": png})
    return {"test": (rows, ("image",))}


_MMBENCH_CATEGORY = {"colour": "attribute_recognition", "shape": "attribute_recognition",
                     "colour_choice": "object_localization", "shape_choice": "object_localization",
                     "text": "ocr", "count": "spatial_relationship", "position": "spatial_relationship"}


def _mmbench(images: list[Image], rng, chinese: bool):
    rows = []
    for n, (iid, objs, png) in enumerate(images):
        qas = [x for x in questions(objs, rng) if x.kind in ("colour", "shape")] + choice_questions(objs, rng)
        if chinese:
            qa = _cn_version(_pick(rng, [x for x in qas if x.cn is not None]))
        else:
            qa = _pick(rng, qas + [x for x in questions(objs, rng) if x.kind in ("count", "position")])
        opts, k = _options(qa, rng)
        row = {"index": n, "question": qa.question, "hint": None, "answer": LETTERS[k],
               "category": _MMBENCH_CATEGORY[qa.kind],
               "L2-category": "finegrained_perception (instance-level)", "source": "llavakd-synth",
               "split": "dev", "image": png}
        for i, letter in enumerate(LETTERS):
            row[letter] = opts[i] if i < len(opts) else None
        rows.append(row)
    return {"dev": (rows, ("image",))}


def mmbench_en(images, rng):
    return _mmbench(images, rng, chinese=False)


def mmbench_cn(images, rng):
    return _mmbench(images, rng, chinese=True)


def pope(images: list[Image], rng):
    """Object-existence questions about one item (a shape, or a colour), one present and one absent
    per image and split. The absent item is, as in POPE, random; the most frequent item in the
    split that the image lacks (popular); or the one that co-occurs most with the image's items
    (adversarial). Both items of an image are of the same kind, so the kind gives nothing away."""
    scenes = [present_items(objs) for _, objs, _ in images]
    freq = Counter(it for items in scenes for it in items)
    together = Counter((a, b) for items in scenes for a in items for b in items if a != b)
    splits = {}
    for split in ("adversarial", "popular", "random"):
        rows = []
        for n, (iid, objs, png) in enumerate(images):
            present = scenes[n]
            kind = "shape" if rng.random() < 0.5 else "colour"
            if all(it in present for it in ITEMS if it[0] == "shape"):
                kind = "colour"
            absent = [it for it in ITEMS if it[0] == kind and it not in present]
            if split == "random":
                neg = _pick(rng, absent)
            elif split == "popular":
                neg = max(absent, key=lambda it: (freq[it], -ITEMS.index(it)))
            else:
                neg = max(absent, key=lambda it: (sum(together[(p, it)] for p in present), -ITEMS.index(it)))
            pos = _pick(rng, [it for it in ITEMS if it[0] == kind and it in present])
            for item, ans in ((pos, "yes"), (neg, "no")):
                rows.append({"question_id": f"{split}_{len(rows)}", "question": f"Is there {item_text(item)} in the image?",
                             "answer": ans, "image_source": iid, "category": split, "image": png})
        splits[split] = (rows, ("image",))
    return splits


_MMMU_SUBJECT = {"colour": "Art", "shape": "Design", "count": "Math", "position": "Geography",
                 "colour_choice": "Art", "shape_choice": "Design", "text": "Math"}


def mmmu(images: list[Image], rng):
    rows = []
    for n, (iid, objs, png) in enumerate(images):
        qa = _pick(rng, [x for x in questions(objs, rng) + choice_questions(objs, rng) if x.kind in _MMMU_SUBJECT])
        opts, k = _options(qa, rng)
        q = qa.question[:-2].strip().capitalize() + "?"
        row = {"id": f"validation_{_MMMU_SUBJECT[qa.kind]}_{n + 1}", "question": f"<image 1> {q}",
               "options": str(opts), "explanation": "", "image_1": png}
        for i in range(2, 8):
            row[f"image_{i}"] = None
        row.update({"img_type": "['Diagrams']", "answer": LETTERS[k], "topic_difficulty": "Easy",
                    "question_type": "multiple-choice", "subfield": "Shapes"})
        rows.append(row)
    return {"validation": (rows, tuple(f"image_{i}" for i in range(1, 8)))}


__all__ = ["gqa", "mmbench_cn", "mmbench_en", "mme", "mmmu", "pope", "scienceqa", "textvqa", "vizwiz_vqa", "vqav2"]


# stand-in name -> writer, in the order the world writes them (the folder names under bench/)
WRITERS = {
    "vqav2": vqav2, "gqa": gqa, "vizwiz_vqa": vizwiz_vqa, "scienceqa": scienceqa, "textvqa": textvqa,
    "mme": mme, "mmbench_en": mmbench_en, "mmbench_cn": mmbench_cn, "pope": pope, "mmmu": mmmu,
}
