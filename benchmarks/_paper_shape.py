"""Shared set-up of the objective benchmarks (distill_memory, liger_compare): the paper's shape,
random hidden states and heads, one measured step, and one fresh child process per implementation.

Peak memory on the CPU is the rise of the process's resident-set high-water mark (VmHWM, reset
through /proc/self/clear_refs) above what the inputs already hold; on CUDA it is
torch.cuda.max_memory_allocated above the inputs, after one untimed warm-up step. The children run
with glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``, 1 MiB) so that VmHWM measures the
memory a step holds, not what the allocator keeps: by default glibc raises the threshold to the
size of the last freed mmapped block (up to 32 MiB), the fused path's [chunk x V] blocks are
~32 MB, and the heap's freed space may or may not go back (the same code measured 1,062 and
1,294 MB in two runs). Blocks of 1.5 GB (the naive path's) are mmapped either way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

MMAP_THRESHOLD = 1 << 20


def add_shape_args(p: argparse.ArgumentParser, dtypes=("float32", "bfloat16", "float16")) -> None:
    p.add_argument("--vocab", type=int, default=151_936)
    from llavakd.model.shapes import PAPER_IMAGE_TOKENS

    p.add_argument("--visual", type=int, default=PAPER_IMAGE_TOKENS, help="visual positions per sample (the paper's)")
    p.add_argument("--answer", type=int, default=512, help="supervised answer tokens per sample")
    p.add_argument("--student-hidden", type=int, default=1024)
    p.add_argument("--teacher-hidden", type=int, default=2560)
    p.add_argument("--dtype", default="float32", choices=list(dtypes))
    p.add_argument("--device", default="cpu")


def shape(args, **extra) -> dict:
    return {"vocab": args.vocab, "visual_per_sample": args.visual, "answer_per_sample": args.answer,
            "student_hidden": args.student_hidden, "teacher_hidden": args.teacher_hidden, "batch": 2,
            "dtype": args.dtype, "device": args.device, "threads": threads(), **extra}


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "1"))


def inputs(args) -> SimpleNamespace:
    """Two samples, each a prompt, one image's visual positions, a prompt and a supervised answer;
    student hidden states and head require grad (the head is trained)."""
    import torch

    from llavakd.labels import IGNORE_INDEX

    torch.set_num_threads(threads())
    torch.manual_seed(0)
    dtype, dev = getattr(torch, args.dtype), torch.device(args.device)
    B, n_vis, n_ans, prompt = 2, args.visual, args.answer, 24
    L = prompt + n_vis + prompt + n_ans
    g = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    labels[:, L - n_ans:] = torch.randint(0, args.vocab, (B, n_ans), generator=g)
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[:, prompt:prompt + n_vis] = True
    ds, dt = args.student_hidden, args.teacher_hidden
    x = SimpleNamespace(
        labels=labels.to(dev), vm=vm.to(dev),
        h_s=torch.empty(B, L, ds, dtype=dtype, device=dev).normal_(0, 1),
        h_t=torch.empty(B, L, dt, dtype=dtype, device=dev).normal_(0, 1),
        w_s=torch.empty(args.vocab, ds, dtype=dtype, device=dev).normal_(0, ds ** -0.5),
        w_t=torch.empty(args.vocab, dt, dtype=dtype, device=dev).normal_(0, dt ** -0.5),
    )
    x.h_s.requires_grad_(True)
    x.w_s.requires_grad_(True)
    return x


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(step, x: SimpleNamespace, device: str):
    """Run ``step()`` (forward + backward) once, measured; returns (its value, seconds, peak extra MB)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":  # kernel selection and allocator warm-up stay out of the numbers
        step()
        x.h_s.grad = x.w_s.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _rss_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    value = step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kb("VmHWM") * 1024
    return value, round(seconds, 3), round((peak - base) / 2**20, 1)


def run_children(module: str, flag: str, names, argv, pin_malloc: bool = True, extra=None) -> dict:
    """``python -m module flag NAME argv...`` for each name in a fresh process; the last stdout line of
    each is JSON. ``extra(name)`` adds arguments. Exits with the child's status if one fails."""
    argv = list(sys.argv[1:] if argv is None else argv)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)} if pin_malloc else dict(os.environ)
    out = {}
    for name in names:
        cmd = [sys.executable, "-m", module, flag, name, *(extra(name) if extra else []), *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            sys.exit(proc.returncode)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out
