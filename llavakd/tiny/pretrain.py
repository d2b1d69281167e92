"""Stand-ins for *pretrained* components: train the tiny tower and LLMs on the synthetic world.

    llavakd tiny-models --out results/demo/components --world results/demo/world --seed 0

The real recipe freezes a pretrained SigLIP and starts from a pretrained base LLM; random tiny
ones would make PT/DPT meaningless (docs/world.md, "Why the components are pre-trained"). So:

* vision tower: a per-cell classifier (empty / digit 0-9 / 5 colours x 3 shapes = 26 classes) on
  the mean of each cell's patch features at layer -2 (the layer LLaVA reads), trained on the
  world's training images and probed on held-out ones; the head is thrown away;
* each LLM: a short causal-LM pre-training on the world's text alone (captions and Q/A turns,
  no image, no chat template), as a base model knows the language but not the task.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llavakd.errors import LlavaKDError
from llavakd.labels import IGNORE_INDEX
from llavakd.study import ComponentsSection
from llavakd.tiny.components import write_tiny_components
from llavakd.tiny.scenes import CELLS, COLORS, SHAPES

CLASSES = ["empty"] + [f"digit {d}" for d in range(10)] + [f"{c} {s}" for c in COLORS for s in SHAPES]
_ITEM = re.compile(r"(?:a (\w+) (\w+)|the number (\d)) at (top left|top right|bottom left|bottom right) \.")

_DEFAULTS = ComponentsSection()  # the study's defaults (llavakd.study), the one home of these numbers


def warmup_cosine(opt, steps: int, warmup: int):
    """Linear warm-up over ``warmup`` steps times a cosine decay to 0 at ``steps``.

    Not transformers' ``get_cosine_schedule_with_warmup``: that one starts its cosine after the
    warm-up, this one multiplies the warm-up ramp into a cosine that runs from step 0. Every tiny
    component (and so every tiny number measured so far) was trained with this one; switching would
    change them all for no gain in what the world tests."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def cell_labels(caption: str) -> list[int]:
    """Per-cell class ids from a world caption ("a red circle at top left . the number 7 ...")."""
    labels = [0, 0, 0, 0]
    for color, shape, digit, where in _ITEM.findall(caption):
        cls = f"digit {digit}" if digit else f"{color} {shape}"
        labels[CELLS.index(where)] = CLASSES.index(cls)
    return labels


def load_world_images(world: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All training images as normalised pixels [N, 3, S, S] and their per-cell labels [N, 4]."""
    from PIL import Image

    path = world / "train" / "captions.json"
    if not path.is_file():
        raise LlavaKDError(f"{world} is not a synthetic world (no train/captions.json); run llavakd synth-world")
    records = json.loads(path.read_text(encoding="utf-8"))
    pixels, labels = [], []
    for rec in records:
        arr = np.asarray(Image.open(world / "images" / rec["image"]).convert("RGB"), dtype=np.float32)
        pixels.append(torch.from_numpy(arr).permute(2, 0, 1))
        labels.append(cell_labels(rec["conversations"][1]["value"]))
    x = torch.stack(pixels) / 255.0
    return (x - 0.5) / 0.5, torch.tensor(labels)  # SigLIP normalisation (mean = std = 0.5)


def _cell_features(tower, pixels: torch.Tensor, layer: int = -2) -> torch.Tensor:
    hs = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]  # [B, P, H]
    B, P, H = hs.shape
    g = int(math.isqrt(P))
    grid = hs.view(B, g, g, H)
    half = g // 2
    cells = [grid[:, r * half:(r + 1) * half, c * half:(c + 1) * half].mean((1, 2)) for r in (0, 1) for c in (0, 1)]
    return torch.stack(cells, 1)  # [B, 4, H]


def pretrain_vision(tower, world: Path, seed: int, steps: int = _DEFAULTS.vision_steps, batch: int = 64, lr: float = 1e-3,
                    holdout: float = 0.1, progress: bool = True) -> dict:
    """Train the tower (in place) on per-cell classification; return probe accuracy and timing."""
    x, y = load_world_images(world)
    n_probe = max(1, int(len(x) * holdout))
    xtr, ytr, xpr, ypr = x[n_probe:], y[n_probe:], x[:n_probe], y[:n_probe]
    torch.manual_seed(seed)
    head = torch.nn.Linear(tower.config.hidden_size, len(CLASSES))
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warmup=50)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    t0 = time.perf_counter()
    losses = []
    for step in tqdm(range(steps), desc="vision pre-training", disable=not progress, unit="step"):
        idx = torch.randint(0, len(xtr), (batch,), generator=gen)
        logits = head(_cell_features(tower, xtr[idx]))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ytr[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    tower.eval()
    with torch.no_grad():
        pred = torch.cat([head(_cell_features(tower, xpr[i:i + 256])).argmax(-1) for i in range(0, len(xpr), 256)])
    acc = (pred == ypr).float().mean().item()
    return {"probe_cell_accuracy": round(acc, 4), "probe_images": n_probe, "steps": steps, "batch": batch,
            "lr": lr, "loss_first": round(float(np.mean(losses[:20])), 4),
            "loss_last": round(float(np.mean(losses[-20:])), 4), "seconds": round(time.perf_counter() - t0, 1)}


def world_text(world: Path) -> list[str]:
    """Plain text documents from the world: each caption, and each record's Q/A turns."""
    docs = []
    for name in ("captions.json", "instruct.json"):
        for rec in json.loads((world / "train" / name).read_text(encoding="utf-8")):
            conv = rec["conversations"]
            parts = []
            for k in range(0, len(conv) - 1, 2):
                q = conv[k]["value"].replace("<image>", "").strip()
                parts.append(f"{q} {conv[k + 1]['value']}".strip())
            docs.append(" ".join(parts))
    return docs


def pretrain_llm(lm, tokenizer, world: Path, seed: int, steps: int = _DEFAULTS.llm_steps, batch: int = 32, lr: float = 1e-3,
                 max_tokens: int = 64, progress: bool = True, name: str = "llm") -> dict:
    """Causal-LM pre-training (in place) on the world's text; returns loss before/after."""
    docs = world_text(world)
    eos = tokenizer.eos_token_id
    encoded = [tokenizer(d, add_special_tokens=False)["input_ids"][: max_tokens - 1] + [eos] for d in docs]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warmup=max(1, int(0.03 * steps)))
    lm.train()
    losses = []
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc=f"LM pre-training {name}", disable=not progress, unit="step"):
        idx = torch.randint(0, len(encoded), (batch,), generator=gen).tolist()
        seqs = [encoded[i] for i in idx]
        L = max(len(s) for s in seqs)
        ids = torch.full((batch, L), eos, dtype=torch.long)
        labels = torch.full((batch, L), IGNORE_INDEX, dtype=torch.long)
        att = torch.zeros((batch, L), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            labels[b, : len(s)] = torch.tensor(s)
            att[b, : len(s)] = 1
        loss = lm(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    lm.eval()
    return {"steps": steps, "batch": batch, "lr": lr, "documents": len(docs),
            "loss_first": round(float(np.mean(losses[:10])), 4), "loss_last": round(float(np.mean(losses[-10:])), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def write_pretrained_components(out, world: Path, *, seed: int = _DEFAULTS.seed,
                                vision_steps: int = _DEFAULTS.vision_steps, llm_steps: int = _DEFAULTS.llm_steps,
                                min_probe: float = _DEFAULTS.min_probe, llms: list[str] | None = None) -> dict:
    """The tiny components, pre-trained on ``world``: the tower until its held-out probe reaches
    ``min_probe`` (else LlavaKDError, nothing written), each LLM for ``llm_steps``. ``llms``: only these
    (default all six; each LLM is seeded by its name, so a subset's weights equal the full family's)."""
    world = Path(world)

    def train_vision(tower):
        rep = pretrain_vision(tower, world, seed=seed, steps=vision_steps)
        if rep["probe_cell_accuracy"] < min_probe:
            raise LlavaKDError(
                f"vision pre-training reached a held-out cell accuracy of {rep['probe_cell_accuracy']:.3f} "
                f"< --min-probe {min_probe}; raise --vision-steps"
            )
        print(f"vision tower: held-out cell accuracy {rep['probe_cell_accuracy']:.3f} ({rep['seconds']} s)")
        return rep

    def train_llm(name, lm, tok):
        rep = pretrain_llm(lm, tok, world, seed=seed, steps=llm_steps, name=name)
        print(f"{name}: LM loss {rep['loss_first']:.3f} -> {rep['loss_last']:.3f} ({rep['seconds']} s)")
        return rep

    return write_tiny_components(out, seed=seed, llms=llms, train_vision=train_vision, train_llm=train_llm)
