"""Micro-benchmarks at tiny shapes under pytest-benchmark (``make bench``; a slowdown shows as a ratio).

    make bench                                             # runs these, saves the JSON, compares with the last run
    .venv/bin/pytest benchmarks/micro --benchmark-only     # the same, nothing saved

What each times, on the tiny world and a tiny random student (timing does not depend on weights):
  dataset_item     one instruction record: JSON -> image decode + SigLIP preprocessing -> template
  collate          16 records into a padded batch
  objective_step   the fused objective (CE + L_res + L_vis + L_rel) forward + backward from hidden states
  train_step       a student forward + CE + backward + AdamW step on one batch
  generate         the evaluation adapter's grouped greedy generation, 16 prompts, 8 new tokens
The paper-shape memory benchmark stays a script (``python -m benchmarks.distill_memory``): it
needs fresh processes to measure peak memory.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

BATCH = 16


@pytest.fixture(scope="module")
def tiny():
    from benchmarks._tiny import tiny_setup
    from llavakd.data.dataset import Collator, LlavaDataset
    from llavakd.model.build import build_llava

    torch.manual_seed(0)
    tmp = tiny_setup(llms=["qwen1.5-0.5b"])
    model, proc, _ = build_llava(tmp / "comp" / "vision" / "siglip", tmp / "comp" / "llm" / "qwen1.5-0.5b",
                                 strategy="full")
    ds = LlavaDataset(tmp / "world" / "train" / "instruct.json", tmp / "world" / "images", proc)
    items = [ds[i] for i in range(BATCH)]
    return {"tmp": tmp, "model": model, "proc": proc, "ds": ds, "collate": Collator(proc.tokenizer), "items": items}


def test_dataset_item(benchmark, tiny):
    ds, counter = tiny["ds"], iter(range(10**9))
    benchmark(lambda: ds[next(counter) % len(ds)])


def test_collate(benchmark, tiny):
    batch = benchmark(tiny["collate"], tiny["items"])
    assert batch["input_ids"].shape[0] == BATCH


def test_objective_step(benchmark):
    from llavakd.distill import LossConfig, fused_distill_loss

    g = torch.Generator().manual_seed(0)
    B, L, d_s, d_t, V = 4, 96, 64, 96, 512
    h_s = torch.randn(B, L, d_s, generator=g, requires_grad=True)
    w_s = torch.randn(V, d_s, generator=g, requires_grad=True)
    h_t, w_t = torch.randn(B, L, d_t, generator=g), torch.randn(V, d_t, generator=g)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[:, :40] = -100
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[:, 2:34] = True

    def step():
        h_s.grad = w_s.grad = None
        fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm, LossConfig()).total.backward()

    benchmark(step)


def test_train_step(benchmark, tiny):
    model, batch = tiny["model"], tiny["collate"](tiny["items"])
    model.train()
    model.model.vision_tower.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"], labels=batch["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


def test_generate(benchmark, tiny):
    from PIL import Image

    from llavakd.eval.adapter import generate_grouped
    from llavakd.model.chat import render_prompt

    model, proc = tiny["model"].eval(), tiny["proc"]
    images = sorted((tiny["tmp"] / "world" / "images").rglob("*.png"))[:BATCH]
    text = render_prompt("Is there a red shape in the image? Answer yes or no.", n_images=1)
    enc = [proc(text=text, images=[Image.open(p).convert("RGB")], return_tensors="pt") for p in images]
    answers = benchmark.pedantic(generate_grouped, args=(model, proc, enc, [8] * len(enc), BATCH), rounds=3)
    assert len(answers) == len(enc)
