"""Overhead of distillation: DFT step time over (teacher forward + student SFT step). JSON.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.dft_step            # tiny models, CPU
    .venv/bin/python -m benchmarks.dft_step --student qwen1.5-0.5b --teacher qwen1.5-4b --steps 8

On the tiny world and tiny components (random weights; timing does not depend on them), in one
process and one run, with the same batches for every variant, the median over --steps of:
  teacher   teacher forward under no_grad
  sft       student forward + CE (our chunked objective) + backward + AdamW step
  dft       student forward + teacher forward + CE + L_res + L_vis + L_rel + backward + AdamW step
Target (issue 5): dft / (teacher + sft) <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="qwen1.5-0.5b")
    p.add_argument("--teacher", default="qwen1.5-4b")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    import torch

    from benchmarks._tiny import tiny_setup
    from llavakd.data.dataset import Collator, LlavaDataset
    from llavakd.distill import LossConfig, distill_loss
    from llavakd.model.build import build_llava

    tmp = tiny_setup(llms=[args.student, args.teacher])
    vision = tmp / "comp" / "vision" / "siglip"
    student, proc, _ = build_llava(vision, tmp / "comp" / "llm" / args.student, strategy="full")
    teacher, _, _ = build_llava(vision, tmp / "comp" / "llm" / args.teacher, strategy="full")
    teacher.eval().requires_grad_(False)
    student.train()
    student.model.vision_tower.requires_grad_(False)
    ds = LlavaDataset(tmp / "world" / "train" / "instruct.json", tmp / "world" / "images", proc)
    collate = Collator(proc.tokenizer)
    batches = [collate([ds[b * args.batch_size + i] for i in range(args.batch_size)]) for b in range(args.steps + 1)]
    opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=1e-5)

    def fwd_inputs(b):
        return {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values") if b[k] is not None}

    def t_teacher(b):
        with torch.no_grad():
            teacher(**fwd_inputs(b))

    def step(b, distill: bool):
        out = student(**fwd_inputs(b))
        tl = None
        if distill:
            with torch.no_grad():
                tl = teacher(**fwd_inputs(b)).logits
        cfg = LossConfig() if distill else LossConfig(res=False, vis=False, rel=False)
        distill_loss(out.logits, tl, b["labels"], b["visual_mask"], cfg).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn):
        times = []
        for i, b in enumerate(batches):
            t0 = time.perf_counter()
            fn(b)
            if i:  # the first batch warms up
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    teacher_s = timed(t_teacher)
    sft_s = timed(lambda b: step(b, False))
    dft_s = timed(lambda b: step(b, True))
    print(json.dumps({
        "student": args.student, "teacher": args.teacher, "batch_size": args.batch_size,
        "steps_timed": args.steps, "threads": torch.get_num_threads(),
        "teacher_forward_s": round(teacher_s, 4), "student_sft_step_s": round(sft_s, 4),
        "dft_step_s": round(dft_s, 4), "ratio_dft_over_teacher_plus_sft": round(dft_s / (teacher_s + sft_s), 3),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
