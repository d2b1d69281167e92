"""The objective from bf16 inputs against float64 on the same values, at the paper's shape. Prints JSON.

    OMP_NUM_THREADS=2 python -m benchmarks.distill_precision               # paper shape, CPU (a few minutes)
    python -m benchmarks.distill_precision --device cuda                    # the GPU path (mm with float32 out)
    python -m benchmarks.distill_precision --vocab 2000 --visual 16 --answer 16 --student-hidden 64 \\
        --teacher-hidden 96                                                 # smoke

Inputs as benchmarks/distill_memory.py draws them (two samples, 728 visual positions and 512
answer tokens each, V = 151,936; student d = 1,024, teacher d = 2,560), rounded to bf16. The fused
objective (the trainer's) runs once on the bf16 tensors and once on the same values in float64;
the report gives each part's relative difference and the gradients' relative norm difference, and
whether they meet the issue's bound (1% for L_rel, 1e-3 for CE, L_res and L_vis).
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks._paper_shape import add_shape_args, inputs, shape

BOUNDS = {"ce": 1e-3, "res": 1e-3, "vis": 1e-3, "rel": 1e-2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(p, dtypes=("bfloat16",))
    p.set_defaults(dtype="bfloat16")
    args = p.parse_args(argv)

    import torch

    from llavakd.distill import LossConfig, fused_distill_loss

    x = inputs(args)

    def run(dtype):
        h_s = x.h_s.detach().to(dtype).requires_grad_(True)
        w_s = x.w_s.detach().to(dtype).requires_grad_(True)
        out = fused_distill_loss(h_s, w_s, x.h_t.detach().to(dtype), x.w_t.detach().to(dtype), x.labels, x.vm,
                                 LossConfig())
        out.total.backward()
        return out.parts, h_s.grad.double(), w_s.grad.double()

    low, low_h, low_w = run(torch.bfloat16)
    ref, ref_h, ref_w = run(torch.float64)  # the bf16 values, exactly, in float64
    rel = {k: abs(low[k] - ref[k]) / max(abs(ref[k]), 1e-300) for k in ref}
    grads = {"hidden": float((low_h - ref_h).norm() / ref_h.norm()), "head": float((low_w - ref_w).norm() / ref_w.norm())}
    report = {"shape": shape(args), "parts_float64": ref, "parts_bf16": low,
              "relative_difference": {k: float(f"{v:.3g}") for k, v in rel.items()},
              "gradient_relative_norm_difference": {k: float(f"{v:.3g}") for k, v in grads.items()},
              "bounds": BOUNDS, "meets_bounds": all(rel[k] <= BOUNDS[k] for k in rel)}
    print(json.dumps(report))
    return 0 if report["meets_bounds"] else 1


if __name__ == "__main__":
    sys.exit(main())
