"""A DFT step at the paper's real shapes on one GPU: tokens/s, peak memory, MFU. Prints JSON.

    python -m benchmarks.gpu_dft_step                       # SigLIP-so400m-384 + Qwen2-0.5B <- Qwen2-1.5B
    python -m benchmarks.gpu_dft_step --student Qwen2.5-0.5B --teacher Qwen2.5-3B --seq 2048 --steps 5
    python -m benchmarks.gpu_dft_step --device cpu --seq 1024 --student-layers 2 --teacher-layers 2  # smoke
    python -m benchmarks.gpu_dft_step --student Qwen1.5-1.8B --teacher Qwen1.5-4B \
        --per-device-batch 1,4,8 --implementation fused,chunked --out mfu.json     # a sweep, models built once

Random weights built from configs (no download), bf16 weights and compute, one sample per step
of ``--seq`` tokens holding one 384px image (728 visual positions) and supervised answer tokens
for the rest, ``--per-device-batch`` such samples a step, gradient checkpointing on the student as
in the paper's recipe. Timed: student forward + teacher forward (no grad) + CE + L_res + L_vis +
L_rel + backward + AdamW, with the objective ``--implementation`` fused (hidden states and heads,
as the trainer runs it; llavakd.train.trainer.LLMTaps) or chunked (full logits).

MFU = model FLOPs of a step x steps/s / peak bf16 FLOP/s (``--peak-tflops``; H100 SXM dense bf16
989, H200 the same). The FLOPs come from ``llavakd.flops.step_flops``, the count the planner's
price uses too: layers, causal attention, the LM heads at the rows the objective evaluates (the
supervised and visual positions for fused, every position for chunked), both vision towers once
per image, the projectors; recomputation under checkpointing is not counted. Lists in ``--per-device-batch``
and ``--implementation`` run every combination on the same models; an out-of-memory combination
is reported as such. ``--out FILE`` also writes the JSON there (the cost estimate reads such a
file: ``cost.mfu_file``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="Qwen2-0.5B")
    p.add_argument("--teacher", default="Qwen2-1.5B")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--student-layers", type=int, default=None, help="override layer count (smoke runs)")
    p.add_argument("--teacher-layers", type=int, default=None)
    p.add_argument("--per-device-batch", default="1", help="samples per step; a comma list sweeps")
    p.add_argument("--implementation", default="fused", help="fused | chunked; a comma list sweeps")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)

    import torch
    from transformers import LlavaForConditionalGeneration

    from llavakd.distill import LossConfig, distill_loss, fused_distill_loss
    from llavakd.flops import llm_shape, step_flops, vision_shape
    from llavakd.labels import IGNORE_INDEX
    from llavakd.model.build import llava_config
    from llavakd.model.shapes import PAPER_IMAGE_TOKENS, count_llm_params, qwen_config, siglip_config
    from llavakd.train.trainer import LLMTaps, lm_head_weight

    dev = torch.device(args.device)
    dtype = torch.bfloat16
    image_id = 151646  # first id after Qwen's 151,646 tokenizer entries, inside the 151,936 rows

    def build(name, layers):
        over = {"num_hidden_layers": layers} if layers else {}
        text = qwen_config(name, **over)
        vision = siglip_config(**({"num_hidden_layers": 3} if layers else {}))
        cfg = llava_config(vision, text, image_id, "default", -2)
        with torch.device(dev):
            model = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype)
        return model, count_llm_params(text), text, vision

    student, n_student, s_text, s_vision = build(args.student, args.student_layers)
    teacher, n_teacher, t_text, _ = build(args.teacher, args.teacher_layers)
    s_taps, t_taps = LLMTaps(student), LLMTaps(teacher)
    teacher.eval().requires_grad_(False)
    student.model.vision_tower.requires_grad_(False)
    student.gradient_checkpointing_enable()
    student.train()
    opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=1e-5, fused=dev.type == "cuda")

    n_img = PAPER_IMAGE_TOKENS
    if args.seq < n_img + 64:
        p.error(f"--seq {args.seq} cannot hold the image's {n_img} visual positions and an answer; use >= {n_img + 64}")
    cfg = LossConfig()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def measure(batch: int, impl: str) -> dict:
        ids = torch.randint(0, 151000, (batch, args.seq), device=dev)
        ids[:, 10:10 + n_img] = image_id
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, 10 + n_img + 20:] = ids[:, 10 + n_img + 20:]
        vm = ids == image_id
        pixels = torch.randn(batch, 3, 384, 384, device=dev, dtype=dtype)
        keep = {"logits_to_keep": 1} if impl == "fused" else {}

        def forward_and_loss():
            out = student(input_ids=ids, pixel_values=pixels, **keep)
            h_s, _ = s_taps.take()
            with torch.no_grad():
                t_out = teacher(input_ids=ids, pixel_values=pixels, **keep)
            h_t, _ = t_taps.take()
            if impl == "fused":
                return fused_distill_loss(h_s, lm_head_weight(student), h_t, lm_head_weight(teacher), labels, vm, cfg)
            return distill_loss(out.logits, t_out.logits, labels, vm, cfg)

        def step():
            res = forward_and_loss()
            res.total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return res.parts

        step()  # warm-up
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            parts = step()
        sync()
        dt = (time.perf_counter() - t0) / args.steps
        tok_s = batch * args.seq / dt
        rows = int((labels[0] != IGNORE_INDEX).sum() + vm[0].sum()) if impl == "fused" else args.seq
        flops = step_flops(student=llm_shape(s_text), teacher=llm_shape(t_text), seq=args.seq, visual_tokens=n_img,
                           vision=vision_shape(s_vision), head_rows_student=rows, head_rows_teacher=rows)["total"]
        return {
            "per_device_batch": batch, "implementation": impl,
            "step_s": round(dt, 4), "tokens_per_s": round(tok_s, 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
            "mfu": round(flops * batch / dt / (args.peak_tflops * 1e12), 4),
            "flops_per_sample": flops,
            "loss_parts": parts,
        }

    runs = []
    for impl in args.implementation.split(","):
        for batch in (int(b) for b in args.per_device_batch.split(",")):
            try:
                runs.append(measure(batch, impl))
            except torch.OutOfMemoryError:
                opt.zero_grad(set_to_none=True)
                runs.append({"per_device_batch": batch, "implementation": impl, "oom": True})
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    report = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "student": args.student, "teacher": args.teacher, "seq": args.seq, "visual_positions": n_img,
        "student_llm_params": n_student, "teacher_llm_params": n_teacher, "steps": args.steps, "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
