"""Batches of similar length, images and text-only samples apart (LLaVA's group_by_modality_length).

A batch is padded to its longest sample. Drawn at random from LLaVA-style data (a short caption
next to a ten-turn conversation, 2 to 2,048 tokens), a batch is mostly padding; grouped, it is
nearly full. Upstream LLaVA groups image samples and text-only samples separately (a text-only
sample has no visual tokens and a length of another kind); we do the same:

- each sample's length is estimated from its record without reading images: the tokens of its
  turns (one batched call of the fast tokenizer; characters would miscount Chinese, which the
  byte-level vocabularies split into several tokens each), negative for a text-only sample, as
  LLaVA's ``modality_lengths`` (which counts words);
- within each modality, transformers' ``get_length_grouped_indices`` sorts random mega-batches by
  length and cuts them into groups of one optimizer step (the global batch);
- the full groups of both modalities are shuffled together; the leftovers of both form the last,
  mixed group.

The group is the global batch, never the per-device batch: a step sees the same samples whatever
its decomposition into devices x micro-batches x accumulation (``tests/test_sampler.py``).

Why not transformers' own ``group_by_length`` strategy: it measures each sample by encoding it
(here: reading and preprocessing every image once per run), groups per micro-batch rather than
per step, and mixes modalities. Order depends only on (seed, epoch): a resumed run draws the
same batches.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

IMAGE_KEY = "image"


def modality_lengths(records: list, tokenizer, batch: int = 4096) -> list[int]:
    """Each record's estimated length: the tokens of its turns' text, negative without an image
    (a malformed record counts 1; the dataset refuses it when it is drawn)."""
    texts, signs = [], []
    for rec in records:
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        turns = turns if isinstance(turns, list) else []
        texts.append(" ".join(str(t.get("value", "")) for t in turns if isinstance(t, dict)))
        signs.append(1 if isinstance(rec, dict) and rec.get(IMAGE_KEY) else -1)
    lengths: list[int] = []
    for k in range(0, len(texts), batch):
        ids = tokenizer(texts[k:k + batch], add_special_tokens=False)["input_ids"]
        lengths += [max(len(x), 1) for x in ids]
    return [s * n for s, n in zip(signs, lengths)]


def grouped_indices(lengths: list[int], group: int, generator: torch.Generator) -> list[int]:
    """A permutation of range(len(lengths)) whose consecutive ``group``-sized slices hold samples
    of one modality and similar length (except the last, mixed one)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    groups: list[list[int]] = []
    leftovers: list[int] = []
    for members in ([i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n <= 0]):
        if not members:
            continue
        order = get_length_grouped_indices([abs(lengths[i]) for i in members], group, generator=generator)
        ordered = [members[j] for j in order]
        full = len(ordered) // group * group
        groups += [ordered[k:k + group] for k in range(0, full, group)]
        leftovers += ordered[full:]
    shuffled = torch.randperm(len(groups), generator=generator).tolist()
    return [i for g in shuffled for i in groups[g]] + leftovers


def padding_fraction(lengths: list[int], batch: int) -> float:
    """Padded share of the positions when consecutive ``batch``-sized slices are right-padded."""
    total = padded = 0
    for k in range(0, len(lengths), batch):
        chunk = lengths[k:k + batch]
        padded += max(chunk) * len(chunk)
        total += sum(chunk)
    return 1.0 - total / padded if padded else 0.0


class ModalityLengthGroupedSampler(Sampler):
    """Yields ``grouped_indices`` of a dataset's records; reshuffled per epoch from ``seed``."""

    def __init__(self, lengths: list[int], group: int, seed: int):
        self.lengths = list(lengths)
        self.group = int(group)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(grouped_indices(self.lengths, self.group, generator))
