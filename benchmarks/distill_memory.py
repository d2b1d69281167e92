"""Peak memory and time of the naive, chunked and fused distillation objectives, printed as JSON.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.distill_memory            # paper shape, fp32, CPU
    .venv/bin/python -m benchmarks.distill_memory --vocab 4096 --answer 64    # a quick small run
    .venv/bin/python -m benchmarks.distill_memory --device cuda --dtype bfloat16   # on a GPU
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.distill_memory --rel-check    # L_rel from bf16 inputs

Default shape: Qwen's V = 151,936; student hidden 1,024 (Qwen1.5-0.5B), teacher hidden 2,560
(Qwen1.5-4B); two samples, each with one 384px image (728 visual positions) and 512 supervised
answer tokens; full objective CE + L_res + L_vis + L_rel, forward and backward. Every
implementation starts from the hidden states and the heads and includes the head matmuls: naive
and chunked compute the [positions x V] logits (student h @ W_s^T with autograd, teacher under
no_grad) and run the objective on them; fused never builds them (``fused_distill_loss``; "fused"
takes L_rel's Gram matrices through the identity H (W^T W) H^T, "fused_chunks" over vocabulary
chunks). The teacher's W^T W is computed once per run: it is timed apart
(``teacher_head_gram_seconds``) and the timed step is a steady-state one. The
student head is trainable, so its own gradient (0.6 GB) counts in every implementation. Each
implementation runs in a fresh subprocess, with glibc's mmap threshold pinned; "peak extra" is what
the step holds above the inputs (benchmarks/_paper_shape.py says how it is measured, and why the
pin; ``--glibc-default`` leaves glibc alone). The last line is one JSON object with
``fused_over_naive_memory`` and ``fused_over_naive_time`` (same run).

Every loss term registered after the paper's four (llavakd.terms: LLaVADI's ``feat``, ``tok``,
``bild``, Align-KD's ``attn`` and ``vtok``, ...) gets a line of its own under ``terms``: the fused
objective with that term alone at the same shape, forward and backward, its learnable parts built
(attention inputs: random queries and keys of Qwen1.5-0.5B's 16 and Qwen1.5-4B's 20 heads), with
its peak extra memory and time (and both as a share of the naive full objective's).

``--rel-check``: L_rel at the paper's shape from bf16 hidden states and heads (random, as above),
through the fused objective (identity and chunks; Gram products in float32, cosine in float64),
against the float64 value computed from the same bf16 inputs; one JSON line with each value and
its relative error (the target: within 1%).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks._paper_shape import add_shape_args, inputs, measure, run_children, shape

IMPLS = ("naive", "chunked", "fused", "fused_chunks")


def new_terms() -> list[str]:
    """The registered terms beyond the paper's four (each gets a line of its own)."""
    from llavakd import terms

    return [n for n in terms.names() if terms.spec(n).added]


def run_term(args) -> dict:
    """One new term alone through the fused objective, with every input it reads."""
    import torch

    from llavakd.config import LossConfig
    from llavakd.distill import fused_distill_loss
    from llavakd.distill.parts import build_parts
    from llavakd.terms import Dims

    x = inputs(args)
    B, L = x.labels.shape
    heads_s, heads_t, hd = 16, 20, 64
    g = torch.Generator(device="cpu").manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=args.device, dtype=getattr(torch, args.dtype))

    cfg = LossConfig().only([args.term])
    parts = build_parts(cfg, Dims(args.student_hidden, args.teacher_hidden, heads_s, heads_t))
    if parts is not None:
        parts = parts.to(device=args.device, dtype=getattr(torch, args.dtype))
    f_s = rand(B, L, args.student_hidden).requires_grad_(True)
    q_s, k_s = rand(B, heads_s, L, hd).requires_grad_(True), rand(B, heads_s, L, hd).requires_grad_(True)
    extra = dict(student_features=f_s, teacher_features=rand(B, L, args.teacher_hidden), parts=parts,
                 student_attention=(q_s, k_s), teacher_attention=(rand(B, heads_t, L, hd), rand(B, heads_t, L, hd)))

    def step():
        out = fused_distill_loss(x.h_s, x.w_s, x.h_t, x.w_t, x.labels, x.vm, cfg, **extra)
        out.total.backward()
        return out

    out, seconds, peak = measure(step, x, args.device)
    return {"term": args.term, "seconds": seconds, "peak_extra_mb": peak,
            "part_params": sum(p.numel() for p in parts.parameters()) if parts is not None else 0,
            "value": round(out.parts[args.term], 6)}


def run_one(args) -> dict:
    import torch

    from llavakd.distill import LossConfig, distill_loss, fused_distill_loss
    from llavakd.distill.objective import head_gram
    from llavakd.labels import IGNORE_INDEX

    x = inputs(args)
    precompute = 0.0
    if args.impl == "fused":  # the frozen teacher's W^T W: once per run, kept on its head
        t0 = time.perf_counter()
        head_gram(x.w_t, torch.float32)
        if x.w_t.is_cuda:
            torch.cuda.synchronize()
        precompute = time.perf_counter() - t0

    def step():
        if args.impl.startswith("fused"):
            cfg = LossConfig(rel_gram="chunks" if args.impl == "fused_chunks" else "identity")
            out = fused_distill_loss(x.h_s, x.w_s, x.h_t, x.w_t, x.labels, x.vm, cfg)
        else:
            with torch.no_grad():
                teacher = x.h_t @ x.w_t.T
            out = distill_loss(x.h_s @ x.w_s.T, teacher, x.labels, x.vm, LossConfig(implementation=args.impl))
        out.total.backward()
        return out

    out, seconds, peak = measure(step, x, args.device)
    return {
        "impl": args.impl, "seconds": seconds, "teacher_head_gram_seconds": round(precompute, 3),
        "peak_extra_mb": peak,
        "inputs_mb": round(sum(t.numel() * t.element_size() for t in (x.h_s, x.h_t, x.w_s, x.w_t)) / 2**20, 1),
        "head_grad_mb": round(x.w_s.numel() * x.w_s.element_size() / 2**20, 1),
        "supervised_tokens": int((x.labels[:, 1:] != IGNORE_INDEX).sum()), "visual_positions": int(x.vm.sum()),
        "parts": {k: round(v, 6) for k, v in out.parts.items()},
    }


def rel_check(args) -> dict:
    """L_rel from bf16 inputs: fused (identity, chunks) against float64 on the same inputs."""
    import torch

    from llavakd.distill import LossConfig, fused_distill_loss
    from llavakd.terms.rel import relation_value

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    dev = torch.device(args.device)
    B, n_vis, L = 2, args.visual, args.visual + 8
    vm = torch.zeros(B, L, dtype=torch.bool, device=dev)
    vm[:, 4:4 + n_vis] = True
    labels = torch.full((B, L), -100, dtype=torch.long, device=dev)
    h_s = torch.randn(B, L, args.student_hidden, device=dev).to(torch.bfloat16)
    h_t = torch.randn(B, L, args.teacher_hidden, device=dev).to(torch.bfloat16)
    w_s = (torch.randn(args.vocab, args.student_hidden, device=dev) * args.student_hidden ** -0.5).to(torch.bfloat16)
    w_t = (torch.randn(args.vocab, args.teacher_hidden, device=dev) * args.teacher_hidden ** -0.5).to(torch.bfloat16)
    out = {}
    for gram in ("identity", "chunks"):
        cfg = LossConfig(ce=False, res=False, vis=False, rel=True, rel_gram=gram)
        t0 = time.perf_counter()
        out[f"rel_bf16_fused_{gram}"] = fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm, cfg).parts["rel"]
        out[f"seconds_{gram}"] = round(time.perf_counter() - t0, 2)
    grams = []  # float64 Z Z^T of each sample, over vocabulary chunks of Z = H W^T from the bf16 values
    for h, w in ((h_s, w_s), (h_t, w_t)):
        per_sample = []
        for b in range(B):
            z_rows = h[b][vm[b]].double()
            R = torch.zeros(n_vis, n_vis, dtype=torch.float64, device=dev)
            for c in range(0, args.vocab, 8192):
                Z = z_rows @ w[c:c + 8192].double().T
                R += Z @ Z.T
            per_sample.append(R)
        grams.append(per_sample)
    ref = float(relation_value(grams[0], grams[1], LossConfig()))
    out["rel_float64_same_inputs"] = ref
    for gram in ("identity", "chunks"):
        out[f"relative_error_{gram}"] = abs(out[f"rel_bf16_fused_{gram}"] - ref) / ref
    out["within_1_percent"] = all(out[f"relative_error_{g}"] <= 0.01 for g in ("identity", "chunks"))
    out["shape"] = {"vocab": args.vocab, "visual_positions": B * n_vis, "student_hidden": args.student_hidden,
                    "teacher_hidden": args.teacher_hidden, "dtype": "bfloat16", "device": args.device}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p)
    p.add_argument("--rel-check", action="store_true", help="L_rel from bf16 inputs against float64 (one JSON line)")
    p.add_argument("--glibc-default", action="store_true",
                   help="leave glibc's dynamic mmap threshold alone in the children (peaks then vary by run)")
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--term", help=argparse.SUPPRESS)
    p.add_argument("--no-terms", action="store_true", help="skip the line per loss term beyond the paper's four")
    args = p.parse_args(argv)
    if args.rel_check:
        print(json.dumps(rel_check(args)))
        return 0
    if args.impl:  # child process
        print(json.dumps(run_one(args)))
        return 0
    if args.term:  # child process
        print(json.dumps(run_term(args)))
        return 0
    results = run_children("benchmarks.distill_memory", "--impl", IMPLS, argv, pin_malloc=not args.glibc_default)
    n = results["naive"]
    added = [] if args.no_terms else new_terms()
    per_term = run_children("benchmarks.distill_memory", "--term", added, argv, pin_malloc=not args.glibc_default)
    for r in per_term.values():
        r["over_naive_memory"] = round(r["peak_extra_mb"] / n["peak_extra_mb"], 3)
        r["over_naive_time"] = round(r["seconds"] / n["seconds"], 3)
    report = {
        "shape": shape(args, malloc_mmap_threshold=None if args.glibc_default else 1 << 20),
        **results,
        **{f"{impl}_over_naive_memory": round(results[impl]["peak_extra_mb"] / n["peak_extra_mb"], 3)
           for impl in IMPLS[1:]},
        **{f"{impl}_over_naive_time": round(results[impl]["seconds"] / n["seconds"], 3) for impl in IMPLS[1:]},
        "max_part_abs_diff": max(abs(n["parts"][k] - r["parts"][k]) for r in results.values() for k in n["parts"]),
        "terms": per_term,
    }
    print(json.dumps(report))  # one line: the figures of every implementation, measured in one run
    return 0


if __name__ == "__main__":
    sys.exit(main())
