"""liger-kernel's fused-linear distillation loss against ours on CE + L_res + L_vis, printed as JSON.

    pip install liger-kernel==0.8.5                                   # not a project dependency
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.liger_compare    # paper shape, fp32, CPU
    .venv/bin/python -m benchmarks.liger_compare --device cuda --dtype bfloat16 --compiled

The evaluation issue #14 asked for before writing our own fused objective. liger's
``LigerFusedLinearJSDLoss`` (beta = 0 is forward KL(teacher || student), LLaVA-KD's default
divergence) takes student and teacher hidden states with their heads and one label vector: CE and
the divergence are both averaged over the rows whose label is not ignored. LLaVA-KD's L_res and
L_vis are averaged over different rows (the supervised positions, each sample's visual positions),
so liger takes two calls: one on the supervised rows (CE + L_res) and one on the visual rows (L_vis
only, hard-loss weight 0). L_rel (the Gram term) has no liger counterpart and is left out of both
sides. Ours is ``fused_distill_loss`` with ``rel=False``. Both run on the same inputs (the
distill_memory benchmark's shape), forward + backward, each in a fresh process with glibc's mmap
threshold pinned, as in distill_memory; liger's rows per chunk are set to ours (``--liger-chunk``).
The last line is one JSON object: each side's seconds and peak extra memory, and the largest
relative difference of the loss parts and of the gradients (hidden states, head).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIDES = ("ours", "liger")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def run_side(args) -> dict:
    import torch

    from llavakd.distill import LossConfig, fused_distill_loss
    from llavakd.distill.objective import DEFAULT_CHUNK_ELEMENTS
    from llavakd.labels import IGNORE_INDEX

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dtype, dev = getattr(torch, args.dtype), torch.device(args.device)
    B, n_vis, n_ans, prompt = 2, args.visual, args.answer, 24
    L = prompt + n_vis + prompt + n_ans
    g = torch.Generator(device="cpu").manual_seed(0)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    labels[:, L - n_ans:] = torch.randint(0, args.vocab, (B, n_ans), generator=g)
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[:, prompt:prompt + n_vis] = True
    h_s = torch.randn(B, L, args.student_hidden, generator=g).to(dtype).to(dev)
    h_t = torch.randn(B, L, args.teacher_hidden, generator=g).to(dtype).to(dev)
    w_s = (torch.randn(args.vocab, args.student_hidden, generator=g) * args.student_hidden ** -0.5).to(dtype).to(dev)
    w_t = (torch.randn(args.vocab, args.teacher_hidden, generator=g) * args.teacher_hidden ** -0.5).to(dtype).to(dev)
    h_s.requires_grad_(True)
    w_s.requires_grad_(True)
    labels, vm = labels.to(dev), vm.to(dev)
    cfg = LossConfig(rel=False)

    if args.side == "ours":
        def step():
            out = fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm, cfg)
            out.total.backward()
            return {k: float(v) for k, v in out.parts.items()}
    else:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        chunk = args.liger_chunk or max(1, DEFAULT_CHUNK_ELEMENTS // args.vocab)
        target = torch.full((B, L), IGNORE_INDEX, dtype=torch.long, device=dev)
        target[:, :-1] = labels[:, 1:]  # position i predicts token i + 1
        target = target.flatten()
        sup = (target != IGNORE_INDEX).nonzero().flatten()
        vis = vm.flatten().nonzero().flatten()
        res_loss = LigerFusedLinearJSDLoss(weight_hard_loss=cfg.ce_weight, weight_soft_loss=cfg.res_weight, beta=0.0,
                                           compiled=args.compiled, chunk_size=chunk, return_soft_hard_loss=True)
        vis_loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=cfg.vis_weight, beta=0.0,
                                           compiled=args.compiled, chunk_size=chunk, return_soft_hard_loss=True)

        def step():
            hs, ht = h_s.reshape(-1, h_s.shape[-1]), h_t.reshape(-1, h_t.shape[-1])
            total_a, res, ce = res_loss(hs[sup], w_s, ht[sup], w_t, target[sup])
            total_b, vis_part, _ = vis_loss(hs[vis], w_s, ht[vis], w_t, torch.zeros_like(vis))
            (total_a + total_b).backward()
            return {"ce": float(ce), "res": float(res), "vis": float(vis_part)}

    if dev.type == "cuda":
        step()
        h_s.grad = w_s.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _rss_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    parts = step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss_kb("VmHWM") * 1024
    torch.save({"h_s": h_s.grad.cpu(), "w_s": w_s.grad.cpu()}, args.grads)
    return {"side": args.side, "seconds": round(seconds, 3), "peak_extra_mb": round((peak - base) / 2**20, 1),
            "parts": parts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--visual", type=int, default=728, help="visual positions per sample")
    p.add_argument("--answer", type=int, default=512, help="supervised answer tokens per sample")
    p.add_argument("--student-hidden", type=int, default=1024)
    p.add_argument("--teacher-hidden", type=int, default=2560)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--compiled", action="store_true", help="let liger torch.compile its chunk step (GPU)")
    p.add_argument("--liger-chunk", type=int, default=0, help="liger's rows per chunk (default: ours)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--grads", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:  # child process
        print(json.dumps(run_side(args)))
        return 0
    import tempfile

    import torch

    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in SIDES:
            path = os.path.join(tmp, f"{side}.pt")
            cmd = [sys.executable, "-m", "benchmarks.liger_compare", "--side", side, "--grads", path]
            cmd += argv if argv is not None else sys.argv[1:]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"{side}: exit {proc.returncode}",
                      file=sys.stderr)
                return proc.returncode
            results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
            grads[side] = torch.load(path)

    def rel(a, b):
        return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))

    ours, liger = results["ours"], results["liger"]
    report = {
        "shape": {"vocab": args.vocab, "visual_per_sample": args.visual, "answer_per_sample": args.answer,
                  "student_hidden": args.student_hidden, "teacher_hidden": args.teacher_hidden, "batch": 2,
                  "dtype": args.dtype, "device": args.device, "compiled": args.compiled,
                  "threads": int(os.environ.get("OMP_NUM_THREADS", "1"))},
        **results,
        "max_part_rel_diff": max(abs(liger["parts"][k] - ours["parts"][k]) / abs(ours["parts"][k]) for k in ours["parts"]),
        "grad_hidden_rel_diff": rel(grads["liger"]["h_s"], grads["ours"]["h_s"]),
        "grad_head_rel_diff": rel(grads["liger"]["w_s"], grads["ours"]["w_s"]),
        "liger_over_ours_time": round(liger["seconds"] / ours["seconds"], 3),
        "liger_over_ours_memory": round(liger["peak_extra_mb"] / ours["peak_extra_mb"], 3),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
