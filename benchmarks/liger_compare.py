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
distill_memory benchmark's shape and inputs), forward + backward, each in a fresh process with
glibc's mmap threshold pinned (benchmarks/_paper_shape.py); liger's rows per chunk are set to ours (``--liger-chunk``).
The last line is one JSON object: each side's seconds and peak extra memory, and the largest
relative difference of the loss parts and of the gradients (hidden states, head).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from benchmarks._paper_shape import add_shape_args, inputs, measure, run_children, shape

SIDES = ("ours", "liger")


def run_side(args) -> dict:
    import torch

    from llavakd.distill import LossConfig, fused_distill_loss
    from llavakd.distill.objective import DEFAULT_CHUNK_ELEMENTS
    from llavakd.labels import IGNORE_INDEX

    x = inputs(args)
    cfg = LossConfig(rel=False)
    if args.side == "ours":
        def step():
            out = fused_distill_loss(x.h_s, x.w_s, x.h_t, x.w_t, x.labels, x.vm, cfg)
            out.total.backward()
            return {k: float(v) for k, v in out.parts.items()}
    else:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        chunk = args.liger_chunk or max(1, DEFAULT_CHUNK_ELEMENTS // args.vocab)
        target = torch.full_like(x.labels, IGNORE_INDEX)
        target[:, :-1] = x.labels[:, 1:]  # position i predicts token i + 1
        target = target.flatten()
        sup = (target != IGNORE_INDEX).nonzero().flatten()
        vis = x.vm.flatten().nonzero().flatten()
        res_loss = LigerFusedLinearJSDLoss(weight_hard_loss=cfg.ce_weight, weight_soft_loss=cfg.res_weight, beta=0.0,
                                           compiled=args.compiled, chunk_size=chunk, return_soft_hard_loss=True)
        vis_loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=cfg.vis_weight, beta=0.0,
                                           compiled=args.compiled, chunk_size=chunk, return_soft_hard_loss=True)

        def step():
            hs, ht = x.h_s.reshape(-1, x.h_s.shape[-1]), x.h_t.reshape(-1, x.h_t.shape[-1])
            total_a, res, ce = res_loss(hs[sup], x.w_s, ht[sup], x.w_t, target[sup])
            total_b, vis_part, _ = vis_loss(hs[vis], x.w_s, ht[vis], x.w_t, torch.zeros_like(vis))
            (total_a + total_b).backward()
            return {"ce": float(ce), "res": float(res), "vis": float(vis_part)}

    parts, seconds, peak = measure(step, x, args.device)
    torch.save({"h_s": x.h_s.grad.cpu(), "w_s": x.w_s.grad.cpu()}, args.grads)
    return {"side": args.side, "seconds": seconds, "peak_extra_mb": peak, "parts": parts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, dtypes=("float32", "bfloat16"))
    p.add_argument("--compiled", action="store_true", help="let liger torch.compile its chunk step (GPU)")
    p.add_argument("--liger-chunk", type=int, default=0, help="liger's rows per chunk (default: ours)")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--grads", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:  # child process
        print(json.dumps(run_side(args)))
        return 0
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        results = run_children("benchmarks.liger_compare", "--side", SIDES, argv,
                               extra=lambda side: ["--grads", os.path.join(tmp, f"{side}.pt")])
        grads = {side: torch.load(os.path.join(tmp, f"{side}.pt")) for side in SIDES}

    def rel(a, b):
        return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))

    ours, liger = results["ours"], results["liger"]
    report = {
        "shape": shape(args, compiled=args.compiled),
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
