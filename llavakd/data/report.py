"""Counts, token-length statistics and bad records of any LLaVA-format dataset.

    llavakd data-report results/tiny/world/train/instruct.json --images results/tiny/world/images \
        --processor results/tiny/models/qwen1.5-0.5b --template chat
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from tqdm import tqdm

from llavakd.data.dataset import BadRecord, LlavaDataset
from llavakd.labels import IGNORE_INDEX


def data_report(json_path, image_folder, processor, template: str = "chat", max_length: int = 2048,
                progress: bool = True) -> dict:
    """One pass over every record (images verified, not decoded); nothing is skipped silently."""
    ds = LlavaDataset(json_path, image_folder, processor, template=template, max_length=max_length)
    lengths, supervised, turns = [], [], []
    bad: Counter[str] = Counter()
    bad_examples: list[str] = []
    bad_records: list[int] = []
    n_image = 0
    for i in tqdm(range(len(ds)), desc="checking records", disable=not progress, unit="rec"):
        try:
            s = ds.encode(i, load_pixels=False)
        except BadRecord as err:
            bad[err.reason.split(" (")[0][:80]] += 1
            bad_records.append(i)
            if len(bad_examples) < 5:
                bad_examples.append(str(err))
            continue
        lengths.append(s["input_ids"].numel())
        supervised.append(int((s["labels"] != IGNORE_INDEX).sum()))
        n_image += s["has_image"]
        conv = ds.records[i].get("conversations", [])
        turns.append(sum(t.get("from") == "gpt" for t in conv))

    def stats(xs):
        if not xs:
            return {}
        a = np.asarray(xs)
        return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "p50": int(np.percentile(a, 50)),
                "p95": int(np.percentile(a, 95)), "max": int(a.max())}

    return {
        "file": str(json_path), "template": template, "records": len(ds), "good": len(lengths),
        "with_image": n_image, "text_only": len(lengths) - n_image,
        "tokens": stats(lengths), "supervised_tokens": stats(supervised), "gpt_turns": stats(turns),
        "truncated": ds.truncated, "bad": dict(bad), "bad_examples": bad_examples, "bad_records": bad_records,
    }


def format_report(r: dict) -> str:
    lines = [f"{r['file']} ({r['template']} template)",
             f"  records {r['records']}: {r['good']} good ({r['with_image']} with an image, "
             f"{r['text_only']} text-only), {sum(r['bad'].values())} bad, {r['truncated']} truncated"]
    for key in ("tokens", "supervised_tokens", "gpt_turns"):
        if r[key]:
            s = r[key]
            lines.append(f"  {key:18s} min {s['min']}  mean {s['mean']}  p50 {s['p50']}  p95 {s['p95']}  max {s['max']}")
    for reason, n in sorted(r["bad"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  bad: {n} x {reason}")
    for ex in r["bad_examples"]:
        lines.append(f"    e.g. {ex}")
    return "\n".join(lines)
