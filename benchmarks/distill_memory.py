"""Peak memory and time of the naive vs chunked distillation objective, printed as JSON.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.distill_memory            # paper shape, fp32, CPU
    .venv/bin/python -m benchmarks.distill_memory --vocab 4096 --answer 64    # a quick small run
    .venv/bin/python -m benchmarks.distill_memory --device cuda --dtype bfloat16   # on a GPU

Default shape (issue 4): Qwen's V = 151,936; two samples, each with one 384px image (728 visual
positions) and 512 supervised answer tokens (1,024 in all); full objective CE + L_res + L_vis +
L_rel, forward and backward. Each implementation runs in a fresh subprocess; on the CPU "peak
extra" is the rise of the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs) above what the inputs already hold, so it counts every intermediate and
the gradient of the student logits (which both implementations must produce). On CUDA it is
torch.cuda.max_memory_allocated above the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def run_one(args) -> dict:
    import torch

    from llavakd.distill import LossConfig, distill_loss
    from llavakd.labels import IGNORE_INDEX

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    B, n_vis, n_ans, prompt = 2, args.visual, args.answer, 24
    L = prompt + n_vis + prompt + n_ans
    g = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    labels[:, L - n_ans:] = torch.randint(0, args.vocab, (B, n_ans), generator=g)
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[:, prompt:prompt + n_vis] = True
    # labels[:, i+1] supervised for n_ans - 1 rows per sample plus the row before the answer
    student = torch.empty(B, L, args.vocab, dtype=dtype, device=dev).normal_(0, 2, generator=None)
    teacher = torch.empty(B, L, args.vocab, dtype=dtype, device=dev).normal_(0, 2, generator=None)
    student.requires_grad_(True)
    labels, vm = labels.to(dev), vm.to(dev)
    cfg = LossConfig(implementation=args.impl)
    if dev.type == "cuda":  # one untimed pass: kernel selection and allocator warm-up stay out of the numbers
        distill_loss(student, teacher, labels, vm, cfg).total.backward()
        student.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _rss_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    out = distill_loss(student, teacher, labels, vm, cfg)
    out.total.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kb("VmHWM") * 1024
    return {
        "impl": args.impl, "seconds": round(seconds, 3),
        "peak_extra_mb": round((peak - base) / 2**20, 1),
        "inputs_mb": round(2 * student.numel() * student.element_size() / 2**20, 1),
        "supervised_tokens": int((labels[:, 1:] != IGNORE_INDEX).sum()), "visual_positions": int(vm.sum()),
        "parts": {k: round(v, 6) for k, v in out.parts.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--visual", type=int, default=728, help="visual positions per sample")
    p.add_argument("--answer", type=int, default=512, help="supervised answer tokens per sample")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--impl", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.impl:  # child process
        print(json.dumps(run_one(args)))
        return 0
    results = {}
    for impl in ("naive", "chunked"):
        cmd = [sys.executable, "-m", "benchmarks.distill_memory", "--impl", impl] + (argv or sys.argv[1:])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    n, c = results["naive"], results["chunked"]
    report = {
        "shape": {"vocab": args.vocab, "visual_per_sample": args.visual, "answer_per_sample": args.answer,
                  "batch": 2, "dtype": args.dtype, "device": args.device,
                  "threads": int(os.environ.get("OMP_NUM_THREADS", "1"))},
        "naive": n, "chunked": c,
        "memory_ratio_chunked_over_naive": round(c["peak_extra_mb"] / n["peak_extra_mb"], 3),
        "time_ratio_chunked_over_naive": round(c["seconds"] / n["seconds"], 3),
        "max_part_abs_diff": max(abs(n["parts"][k] - c["parts"][k]) for k in n["parts"]),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
