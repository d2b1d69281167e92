"""Is data loading ever the bottleneck? Dataset + collator samples/s against a training step.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.data_throughput            # tiny world, CPU
    .venv/bin/python -m benchmarks.data_throughput --batches 20 --batch-size 32

Builds the tiny world and the tiny components (random weights: step time does not depend on
them) in a temporary folder, then times, in one process and one run: producing batches (JSON
record -> image decode + SigLIP preprocessing -> template -> collate), and a forward + backward
+ AdamW step of the smallest student and of the largest teacher on the same batches. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    import torch

    from benchmarks._tiny import tiny_setup
    from llavakd.data.dataset import Collator, LlavaDataset
    from llavakd.model.build import build_llava

    tmp = tiny_setup()
    result = {"batch_size": args.batch_size, "batches": args.batches,
              "threads": torch.get_num_threads()}
    for name in ("qwen1.5-0.5b", "qwen1.5-4b"):
        model, proc, _ = build_llava(tmp / "comp" / "vision" / "siglip", tmp / "comp" / "llm" / name, strategy="full")
        ds = LlavaDataset(tmp / "world" / "train" / "instruct.json", tmp / "world" / "images", proc)
        collate = Collator(proc.tokenizer)
        n = args.batches * args.batch_size
        t0 = time.perf_counter()
        batches = [collate([ds[i] for i in range(b * args.batch_size, (b + 1) * args.batch_size)])
                   for b in range(args.batches)]
        data_s = time.perf_counter() - t0
        model.train()
        model.model.vision_tower.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        t0 = time.perf_counter()
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        pixel_values=batch["pixel_values"], labels=batch["labels"])
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        step_s = time.perf_counter() - t0
        result[name] = {
            "data_samples_per_s": round(n / data_s, 1),
            "train_samples_per_s": round(n / step_s, 1),
            "data_over_train_speed": round((n / data_s) / (n / step_s), 2),
            "mean_tokens": round(float(sum(b["attention_mask"].sum() for b in batches)) / n, 1),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
