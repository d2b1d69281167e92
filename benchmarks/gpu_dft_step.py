"""A DFT step at the paper's real shapes on one GPU: tokens/s, peak memory, MFU. Prints JSON.

    python -m benchmarks.gpu_dft_step                       # SigLIP-so400m-384 + Qwen2-0.5B <- Qwen2-1.5B
    python -m benchmarks.gpu_dft_step --student Qwen2.5-0.5B --teacher Qwen2.5-3B --seq 2048 --steps 5
    python -m benchmarks.gpu_dft_step --breakdown 3 --profile /tmp/prof  # + parts of 3 steps, torch.profiler tables
    python -m benchmarks.gpu_dft_step --device cpu --seq 1024 --student-layers 2 --teacher-layers 2  # smoke

Random weights built from configs (no download), bf16 weights and compute, one sample per step
of ``--seq`` tokens holding one 384px image (728 visual positions) and supervised answer tokens
for the rest, gradient checkpointing on the student as in the paper's recipe. Timed: student
forward + teacher forward (no grad) + CE + L_res + L_vis + L_rel (chunked) + backward + AdamW.
MFU = (6 N_student + 2 N_teacher) x tokens/s / peak bf16 FLOP/s (``--peak-tflops``; H100 SXM
dense bf16 989, H200 the same), with N the LLM parameter counts (vision and attention FLOPs left
out, so this is a lower bound of the work done).
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    p.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="also time the parts of N more steps (student fwd, teacher fwd, loss, backward, "
                        "optimizer), synchronised between parts; the median of each part is reported")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="profile one more step with torch.profiler; write the top operators by self device "
                        "time and by self CPU time to DIR/profile_<student>.txt")
    args = p.parse_args(argv)

    import torch
    from transformers import LlavaForConditionalGeneration

    from llavakd.distill import LossConfig, distill_loss
    from llavakd.labels import IGNORE_INDEX
    from llavakd.model.build import llava_config
    from llavakd.model.shapes import count_llm_params, qwen_config, siglip_config

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
        return model, count_llm_params(text)

    student, n_student = build(args.student, args.student_layers)
    teacher, n_teacher = build(args.teacher, args.teacher_layers)
    teacher.eval().requires_grad_(False)
    student.model.vision_tower.requires_grad_(False)
    student.gradient_checkpointing_enable()
    student.train()
    opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=1e-5, fused=dev.type == "cuda")

    n_img = 728
    if args.seq < n_img + 64:
        p.error(f"--seq {args.seq} cannot hold the image's {n_img} visual positions and an answer; use >= {n_img + 64}")
    ids = torch.randint(0, 151000, (1, args.seq), device=dev)
    ids[0, 10:10 + n_img] = image_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 10 + n_img + 20:] = ids[0, 10 + n_img + 20:]
    vm = ids == image_id
    pixels = torch.randn(1, 3, 384, 384, device=dev, dtype=dtype)
    cfg = LossConfig()

    def step():
        out = student(input_ids=ids, pixel_values=pixels)
        with torch.no_grad():
            tl = teacher(input_ids=ids, pixel_values=pixels).logits
        res = distill_loss(out.logits, tl, labels, vm, cfg)
        res.total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return res.parts

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    step()  # warm-up
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        parts = step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    parts_s = None
    if args.breakdown:  # more steps, synchronised between their parts
        runs = []
        for _ in range(args.breakdown):
            marks = []

            def mark(name, marks=marks):
                sync()
                marks.append((name, time.perf_counter()))

            mark("start")
            out = student(input_ids=ids, pixel_values=pixels)
            mark("student_forward")
            with torch.no_grad():
                tl = teacher(input_ids=ids, pixel_values=pixels).logits
            mark("teacher_forward")
            res = distill_loss(out.logits, tl, labels, vm, cfg)
            mark("loss_forward")
            res.total.backward()
            mark("backward")
            opt.step()
            opt.zero_grad(set_to_none=True)
            mark("optimizer")
            runs.append({b[0]: b[1] - a[1] for a, b in zip(marks, marks[1:])})
        parts_s = {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}
        parts_s["all_runs"] = [{k: round(v, 4) for k, v in r.items()} for r in runs]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile, record_function

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            with record_function("student_forward"):
                out = student(input_ids=ids, pixel_values=pixels)
            with record_function("teacher_forward"), torch.no_grad():
                tl = teacher(input_ids=ids, pixel_values=pixels).logits
            with record_function("loss_forward"):
                res = distill_loss(out.logits, tl, labels, vm, cfg)
            with record_function("backward"):
                res.total.backward()
            with record_function("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            sync()
        folder = Path(args.profile)
        folder.mkdir(parents=True, exist_ok=True)
        ka = prof.key_averages()
        device_key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        text = [f"# {args.student} <- {args.teacher}, seq {args.seq}: one step under torch.profiler\n",
                "## by self device time\n", ka.table(sort_by=device_key, row_limit=30, max_name_column_width=60),
                "\n## by self CPU time\n", ka.table(sort_by="self_cpu_time_total", row_limit=30,
                                                     max_name_column_width=60)]
        (folder / f"profile_{args.student}.txt").write_text("\n".join(text))
    tok_s = args.seq / dt
    flops = (6 * n_student + 2 * n_teacher) * tok_s
    print(json.dumps({
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "student": args.student, "teacher": args.teacher, "seq": args.seq, "visual_positions": n_img,
        "student_llm_params": n_student, "teacher_llm_params": n_teacher,
        "step_s": round(dt, 4), "tokens_per_s": round(tok_s, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
        "mfu_estimate": round(flops / (args.peak_tflops * 1e12), 4), "loss_parts": parts,
        "step_breakdown_s": parts_s,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
