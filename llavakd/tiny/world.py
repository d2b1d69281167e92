"""The synthetic world on disk: images, LLaVA-format training sets and the ten benchmark stand-ins.

    llavakd synth-world --out results/tiny/world --seed 0 --size tiny

Everything derives from ``--seed``: the same seed gives byte-identical files. Scenes and questions
come from ``scenes``, the stand-in rows from ``standins`` (its ``WRITERS`` table).

    images/<split>/<id>.png          every image (train and benchmark)
    train/captions.json              pre-training captions, blip_laion_cc_sbu_558k.json format
    train/instruct.json              instructions, llava_v1_5_mix665k.json format (multi-turn,
                                     short answers, yes/no, multiple choice EN/CN, counting,
                                     reading digits, unanswerable, ~10% text-only)
    bench/<task>/<split>.parquet     one held-out stand-in per benchmark, in the columns its
                                     lmms-eval task reads (images embedded)
    manifest.json                    counts, seed, size and a sha256 of every file
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from llavakd.tiny.scenes import (
    IMAGE_SIZE,
    YES_NO_CHECKS,
    caption,
    instruction_turns,
    png_bytes,
    render,
    sample_scene,
    text_only_turns,
)
from llavakd.tiny.standins import WRITERS

SIZES = {  # images per split; "checks": yes/no checks per image (YES_NO_CHECKS), "text_only": text-only records (on)
    "tiny": {"train": 1500, "bench": 40},
    "small": {"train": 6000, "bench": 150},
    # the demo's world (config/config.yaml): tiny's training images, taught in 10 minutes on 2 cores.
    # Without the yes/no checks (a one-bit answer teaches least per turn and is the slowest, most
    # seed-dependent skill: MME and POPE are not taught and stay at chance) and the text-only records;
    # 100 images per stand-in, so that one seed's interval over documents can tell learning from chance
    "demo": {"train": 1500, "bench": 100, "checks": 0, "text_only": False},
    # small's training data, byte for byte, and 600 images per stand-in (small's 150 images first): scoring more
    # documents narrows the evaluation's share of a paired difference (docs/results/when-distillation-pays.md)
    "small600": {"train": 6000, "bench": 600},
}

BENCHMARKS = tuple(WRITERS)  # the stand-ins, in the order they are written


# ----------------------------------------------------------------------------- writers


def _conversation(turns: list[tuple[str, str]], with_image: bool) -> list[dict]:
    conv = []
    for k, (q, a) in enumerate(turns):
        prefix = "<image>\n" if (k == 0 and with_image) else ""
        conv += [{"from": "human", "value": prefix + q}, {"from": "gpt", "value": a}]
    return conv


def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _write_parquet(path: Path, rows: list[dict], image_cols: tuple[str, ...]) -> None:
    """Rows -> parquet with images as {"bytes", "path"} structs (the datasets Image feature)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {}
    for key in rows[0]:
        vals = [r[key] for r in rows]
        if key in image_cols:
            cols[key] = pa.array([None if v is None else {"bytes": v, "path": None} for v in vals], type=img_type)
        else:
            arr = pa.array(vals)
            cols[key] = arr.cast(pa.string()) if pa.types.is_null(arr.type) else arr  # an all-empty column
    table = pa.table(cols)
    feats = {k: ({"_type": "Image"} if k in image_cols else _feature_of(table.schema.field(k).type))
             for k in table.column_names}
    meta = {b"huggingface": json.dumps({"info": {"features": feats}}).encode()}
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, compression="snappy", write_statistics=False)


def _feature_of(t) -> dict:
    import pyarrow as pa

    if pa.types.is_list(t):
        return {"feature": _feature_of(t.value_type), "_type": "List"}
    if pa.types.is_struct(t):
        return {f.name: _feature_of(f.type) for f in t}
    name = {"int64": "int64", "double": "float64", "string": "string", "bool": "bool"}.get(str(t), "string")
    return {"dtype": name, "_type": "Value"}


class World:
    def __init__(self, out: Path, seed: int, size: str):
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
        self.out, self.seed, self.size = Path(out), seed, size
        self.counts = SIZES[size]

    def rng(self, stream: str) -> np.random.Generator:
        key = int.from_bytes(hashlib.sha256(f"{self.seed}:{stream}".encode()).digest()[:8], "little")
        return np.random.default_rng(key)

    def images(self, split: str, n: int):
        """n (id, objects, png bytes) for a split, written under images/<split>/."""
        rng = self.rng(f"images:{split}")
        folder = self.out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for i in range(n):
            objs = sample_scene(rng)
            data = png_bytes(render(objs, rng))
            iid = f"{split}_{i:05d}"
            (folder / f"{iid}.png").write_bytes(data)
            out.append((iid, objs, data))
        return out

    def write_train(self):
        imgs = self.images("train", self.counts["train"])
        rng = self.rng("train:text")
        captions, instruct = [], []
        for iid, objs, _ in imgs:
            captions.append({"id": iid, "image": f"train/{iid}.png",
                             "conversations": _conversation([("", caption(objs))], True)})
            turns = instruction_turns(objs, rng, checks=self.counts.get("checks", YES_NO_CHECKS))
            instruct.append({"id": iid, "image": f"train/{iid}.png", "conversations": _conversation(turns, True)})
        n_text = len(imgs) // 9 if self.counts.get("text_only", True) else 0  # ~10% of the set is text-only
        for i in range(n_text):
            instruct.append({"id": f"text_{i:05d}", "conversations": _conversation(text_only_turns(rng), False)})
        order = rng.permutation(len(instruct))
        instruct = [instruct[i] for i in order]
        _dump_json(self.out / "train" / "captions.json", captions)
        _dump_json(self.out / "train" / "instruct.json", instruct)
        return {"captions": len(captions), "instruct": len(instruct), "text_only": n_text}

    def write_benchmarks(self) -> dict:
        counts = {}
        for name in BENCHMARKS:
            imgs = self.images(f"bench_{name}", self.counts["bench"])
            rng = self.rng(f"bench:{name}")
            splits = WRITERS[name](imgs, rng)
            for split, (rows, image_cols) in splits.items():
                _write_parquet(self.out / "bench" / name / f"{split}.parquet", rows, image_cols)
                counts[f"{name}/{split}"] = len(rows)
        return counts

    def write(self) -> dict:
        train = self.write_train()
        bench = self.write_benchmarks()
        files = sorted(p for p in self.out.rglob("*") if p.is_file() and p.name != "manifest.json")
        manifest = {
            "seed": self.seed, "size": self.size, "image_size": IMAGE_SIZE,
            "train": train, "bench": bench,
            "sha256": {str(p.relative_to(self.out)): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in files if "images" not in p.parts},
            "images": len([p for p in files if "images" in p.parts]),
        }
        _dump_json(self.out / "manifest.json", manifest)
        return manifest


def write_world(out: str | Path, seed: int = 0, size: str = "tiny") -> dict:
    return World(Path(out), seed, size).write()
