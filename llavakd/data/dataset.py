"""LLaVA-format datasets (558K captions, mix665k instructions) and the batch collator.

    ds = LlavaDataset("blip_laion_cc_sbu_558k.json", "images/", processor, template="pretrain")
    batch = Collator(processor.tokenizer)([ds[0], ds[1]])
    # input_ids, attention_mask, labels, pixel_values, visual_mask, sample_ids

A record is ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value": str}, ...]}``;
``<image>`` sits in the first human turn of image records, text-only records have no "image".
Opening a dataset parses the JSON only: no image is opened and nothing is tokenized up front.
A bad record raises ``BadRecord`` naming the file and the record id; with ``skip_bad=True`` it is
replaced by the next good record, counted, and logged (``skip_report()`` summarises them).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import torch

from llavakd.data.templates import TEMPLATES, Encoder, TemplateError
from llavakd.errors import LlavaKDError
from llavakd.labels import IGNORE_INDEX
from llavakd.model.build import image_token_count
from llavakd.model.chat import IMAGE_TOKEN

log = logging.getLogger(__name__)


class BadRecord(LlavaKDError):
    def __init__(self, source: str, index: int, record_id, reason: str):
        self.source, self.index, self.record_id, self.reason = source, index, record_id, reason
        super().__init__(f"{source}: record {index} (id {record_id!r}): {reason}")


def load_records(json_path: str | Path) -> list[dict]:
    path = Path(json_path)
    if not path.is_file():
        raise LlavaKDError(f"dataset file {path} does not exist")
    try:
        with path.open() as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise LlavaKDError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    except UnicodeDecodeError as err:
        raise LlavaKDError(f"{path}: not UTF-8 text ({err})") from err
    if not isinstance(data, list):
        raise LlavaKDError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def subset_records(records: list, fraction: float, seed: int) -> list:
    """A deterministic random subset: round(fraction x n) records (at least one), in file order.
    The same file, fraction and seed give the same records on every machine."""
    k = max(1, round(fraction * len(records)))
    keep = sorted(random.Random(seed).sample(range(len(records)), k))
    return [records[i] for i in keep]


def visual_tokens_of(processor) -> int:
    size = processor.image_processor.size
    side = size["height"] if "height" in size else size["shortest_edge"]
    return image_token_count(side, processor.patch_size, processor.vision_feature_select_strategy)


def parse_record(rec, template: str) -> tuple[list[tuple[str, str]], str | None]:
    """Validate one record; return (turns as (question, answer), image file or None)."""
    if not isinstance(rec, dict):
        raise ValueError(f"a record must be a JSON object, got {type(rec).__name__}")
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError("missing or empty 'conversations'")
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"'image' must be one file name, got {type(image).__name__}")
    turns, pending = [], None
    n_tags = 0
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {k} must be {{'from': 'human'|'gpt', 'value': str}}")
        text = turn["value"]
        n_tags += text.count(IMAGE_TOKEN)
        if turn["from"] == "human":
            if pending is not None:
                raise ValueError(f"turn {k}: two human turns in a row")
            if IMAGE_TOKEN in text and turns:
                raise ValueError(f"turn {k}: {IMAGE_TOKEN} outside the first human turn")
            pending = text.replace(IMAGE_TOKEN, "").strip()
        else:
            if pending is None:
                raise ValueError(f"turn {k}: gpt turn without a preceding human turn")
            turns.append((pending, text.strip()))
            pending = None
    if not turns:
        raise ValueError("no gpt turn: nothing to supervise")
    expected = 1 if image is not None else 0
    if n_tags != expected:
        raise ValueError(f"{n_tags} {IMAGE_TOKEN} tag(s) but {expected} image(s)")
    if template == "pretrain" and image is None:
        raise ValueError("the pretrain template needs an image")
    return turns, image


class LlavaDataset(torch.utils.data.Dataset):
    def __init__(self, json_path, image_folder, processor, template: str = "chat",
                 max_length: int = 2048, skip_bad: bool = False, subset: tuple[float, int] | None = None,
                 drop: set[int] | frozenset = frozenset()):
        if template not in TEMPLATES:
            raise LlavaKDError(f"unknown template {template!r}; choose from {TEMPLATES}")
        self.source = str(json_path)
        self.records = load_records(json_path)
        self.records_in_file = len(self.records)
        out_of_range = sorted(i for i in drop if not 0 <= i < self.records_in_file)
        if out_of_range:
            raise LlavaKDError(f"{json_path}: records {out_of_range[:5]} listed as bad are not in the file "
                               f"({self.records_in_file} records); was the report made from another version of it?")
        self.dropped = len(drop)  # listed as bad by validate-data: left out up front
        self.records = [r for i, r in enumerate(self.records) if i not in drop]
        if subset is not None and subset[0] < 1:
            self.records = subset_records(self.records, *subset)
        self.image_folder = Path(image_folder)
        self.processor = processor
        self.template = template
        self.encoder = Encoder(processor.tokenizer, visual_tokens_of(processor), max_length)
        self.skip_bad = skip_bad
        self.skipped: Counter[str] = Counter()
        self.skipped_ids: list = []
        self.truncated = 0

    def __len__(self) -> int:
        return len(self.records)

    def modality_lengths(self) -> list[int]:
        """Each record's estimated length, negative without an image (llavakd.data.sampler)."""
        from llavakd.data.sampler import modality_lengths

        return modality_lengths(self.records, self.processor.tokenizer)

    def _bad(self, index: int, reason: str) -> BadRecord:
        rec = self.records[index]
        rid = rec.get("id") if isinstance(rec, dict) else None
        return BadRecord(self.source, index, rid, reason)

    def encode(self, index: int, load_pixels: bool = True) -> dict:
        """Validate and encode record ``index``; raises BadRecord."""
        rec = self.records[index]
        try:
            turns, image = parse_record(rec, self.template)
        except ValueError as err:
            raise self._bad(index, str(err)) from None
        pixel_values = None
        if image is not None:
            path = self.image_folder / image
            if not path.is_file():
                raise self._bad(index, f"image {path} does not exist")
            pixel_values = self._pixels(index, path, load_pixels)
        try:
            if self.template == "pretrain":
                enc = self.encoder.pretrain(turns[0][1])
            else:
                enc = self.encoder.chat(turns, with_image=image is not None)
        except TemplateError as err:
            raise self._bad(index, str(err)) from None
        self.truncated += enc.truncated
        return {
            "id": rec.get("id", index),
            "input_ids": torch.tensor(enc.input_ids, dtype=torch.long),
            "labels": torch.tensor(enc.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "has_image": image is not None,
        }

    def _pixels(self, index: int, path: Path, load: bool):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                if not load:
                    img.verify()
                    return None
                rgb = img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise self._bad(index, f"image {path} is unreadable ({err})") from None
        return self.processor.image_processor(images=rgb, return_tensors="pt")["pixel_values"][0]

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad:
            return self.encode(index)
        for step in range(len(self.records)):
            j = (index + step) % len(self.records)
            try:
                return self.encode(j)
            except BadRecord as err:
                if step == 0 or j not in self.skipped_ids:
                    self.skipped[err.reason.split(" (")[0][:80]] += 1
                    self.skipped_ids.append(err.record_id if err.record_id is not None else j)
                log.warning("skipping bad record: %s", err)
        raise LlavaKDError(f"{self.source}: every record is bad")

    def skip_report(self) -> str:
        if not self.skipped:
            return f"{self.source}: no bad records skipped"
        total = sum(self.skipped.values())
        lines = [f"{self.source}: skipped {total} bad record(s):"]
        lines += [f"  {n} x {reason}" for reason, n in self.skipped.most_common()]
        return "\n".join(lines)


class Collator:
    """Right-pads a list of encoded samples into a batch with per-sample visual masks."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.pad_id = tokenizer.pad_token_id
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.max_length = max_length

    def __call__(self, samples: list[dict]) -> dict:
        L = max(s["input_ids"].numel() for s in samples)
        B = len(samples)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((B, L), dtype=torch.long)
        for b, s in enumerate(samples):
            n = s["input_ids"].numel()
            input_ids[b, :n] = s["input_ids"]
            labels[b, :n] = s["labels"]
            attention[b, :n] = 1
        pixels = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "pixel_values": torch.stack(pixels) if pixels else None,
            "visual_mask": (input_ids == self.image_id) & attention.bool(),
            "sample_ids": [s["id"] for s in samples],
        }
