"""The DFT training step on one GPU, one factor at a time, and the trainer at the best setting: MFU.

    python -m benchmarks.gpu_mfu --out benchmarks/measured/gpu-mfu/mfu.json     # what gpu_mfu.sh runs
    python -m benchmarks.gpu_mfu --shrink --device cpu --out /tmp/mfu.json     # the CPU smoke run (tests)

The starting point is a DFT job of ``--config`` (config/paper.yaml) for ``--student``
(qwen1.5-1.8b <- its family's teacher, qwen1.5-4b): its per-device batch, loss implementation,
checkpointing (the planner's choice for ``auto``), attention, liger and compile switches and the
shared vision pass, all read from the job's config as the planner writes it. Models are built from
the shapes (random weights, nothing downloaded): the student with float32 weights under bf16
autocast and the teacher in bf16, as ``llavakd train`` runs them on a GPU; both hold the same
SigLIP-so400m-384. Each sample is ``data.max_length`` positions with one image (its visual
positions) and supervised answer tokens after it.

Then one factor moves at a time from that start (``--factors``): per-device batch 1/4/8/16;
fused vs chunked objective; one vs two vision passes; checkpointing every layer vs every 2nd;
torch.compile of the student's decoder layers; liger-kernel's Qwen2 kernels (CUDA and the package
needed; otherwise the entry says why it did not run). A measurement is the mean of ``--steps``
optimizer steps after one warm-up step: seconds a step, tokens/s, peak memory, model FLOPs (from
``llavakd.flops.step_flops``, the count the planner's price uses: the vision tower once per image,
recomputation not counted) and MFU = FLOPs/s over ``--peak-tflops``. Each result is written to
``--out`` as soon as it exists; an out-of-memory setting is a result (``oom``), any other error a
failure.

Last, ``KDTrainer`` itself (the training loop a job runs: DeepSpeed ZeRO-2 on one GPU when
DeepSpeed is importable, else the plain loop) trains ``--trainer-steps`` steps at the best setting
whose peak memory is at most ``--memory-budget-gib`` (the paper's 80 GB GPUs), and its tokens/s is
compared with the sweep's for the same setting (``trainer.ratio``; the check asks for 0.9 or more).
The exit status is 1 when any setting failed or that check did not hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTORS = ("batch", "implementation", "vision", "checkpointing", "compile", "liger")
SHRINK_LLM = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 4, "head_dim": 16, "vocab_size": 512}
SHRINK_VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                 "num_hidden_layers": 1, "num_attention_heads": 2}


def start_setting(config: str, student: str) -> tuple[dict, dict]:
    """The DFT job of ``student`` in ``config``, as the planner writes it, reduced to the factors; and the
    shapes the models are built with, from the study's components (their configs, else the paper's)."""
    import yaml

    from llavakd.plan import Study, train_jobs

    study = Study.load(yaml.safe_load(Path(config).read_text()), source=config)
    job = next(((llm, seed, chain) for llm, seed, chain in train_jobs(study, study.table1_models())
                if llm == student and chain.last.name == "dft"), None)
    if job is None:
        raise SystemExit(f"{config}: no DFT job for student {student!r}")
    cfg = study.stage_config(*job)
    shapes = {"vision": asdict(study.vision_shape()[0]), "vision_source": study.vision_shape()[1],
              "student": asdict(study.llm_shape(student)), "teacher": asdict(study.llm_shape(study.teacher_of(student)))}
    return shapes, {"student": student, "teacher": study.teacher_of(student), "seq": cfg.data.max_length,
            "batch": cfg.train.per_device_batch, "implementation": cfg.loss.implementation,
            "vision": 1 if cfg.train.share_vision_tower else 2,
            "checkpointing": int(cfg.train.gradient_checkpointing), "compile": cfg.train.compile,
            "liger": cfg.train.liger_kernels, "attn": cfg.train.attn_implementation}


def variations(start: dict, factors) -> list[dict]:
    """The start, then each factor moved to each of its other values, the rest as at the start."""
    values = {"batch": [1, 4, 8, 16], "implementation": ["fused", "chunked"], "vision": [1, 2],
              "checkpointing": [1, 2], "compile": [False, True], "liger": [False, True]}
    out = [dict(start, factor="start")]
    for f in factors:
        out += [dict(start, factor=f, **{f: v}) for v in values[f] if v != start[f]]
    return out


class Bench:
    """Models built once; each setting is applied to them (checkpointing, compile, vision sharing
    and liger switch in place) and timed."""

    def __init__(self, args, start: dict, shapes: dict):
        import torch

        from llavakd.model.build import image_token_count, llava_config
        from llavakd.model.shapes import LLMShape, VisionShape, llm_config, siglip_config

        self.torch, self.args = torch, args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        # an id inside every LLM's vocabulary: after Qwen's tokenizer entries, else the last one (Llama, SmolLM)
        self.image_id = 3 if args.shrink else min(151646, min(shapes[r]["vocab_size"] for r in ("student", "teacher")) - 1)
        vision = siglip_config(VisionShape(**shapes["vision"]), **(SHRINK_VISION if args.shrink else {}))
        self.n_img = image_token_count(vision.image_size, vision.patch_size, "default")
        self.image_size = vision.image_size
        self.texts = {}
        models = []
        for role, dtype in (("student", torch.float32), ("teacher", torch.bfloat16 if self.cuda else torch.float32)):
            text = llm_config(LLMShape(**shapes[role]), **(SHRINK_LLM if args.shrink else {}))
            self.texts[role] = text
            cfg = llava_config(vision, text, self.image_id, "default", -2)
            with torch.device(self.dev):
                from transformers import LlavaForConditionalGeneration

                models.append(LlavaForConditionalGeneration._from_config(cfg, dtype=dtype,
                                                                         attn_implementation=start["attn"]))
        self.student, self.teacher = models
        with torch.no_grad():  # one SigLIP, as the paper's pairs hold
            self.teacher.model.vision_tower.load_state_dict(self.student.model.vision_tower.state_dict())
        self.student.model.vision_tower.requires_grad_(False)
        self.teacher.eval().requires_grad_(False)
        self.vision_shape = vision
        from llavakd.train.trainer import LLMTaps

        self.taps = (LLMTaps(self.student), LLMTaps(self.teacher))  # once: each holds a forward's hidden states

    # -- one setting ------------------------------------------------------------------------
    def run(self, s: dict) -> dict:
        torch = self.torch
        from llavakd.distill import LossConfig, distill_loss, fused_distill_loss
        from llavakd.flops import llm_shape, step_flops, vision_shape
        from llavakd.labels import IGNORE_INDEX
        from llavakd.train.run import apply_checkpointing, apply_liger, compile_layers
        from llavakd.train.trainer import lm_head_weight
        from llavakd.train.vision import SharedVisionPass

        student, teacher = self.student, self.teacher
        if s["liger"]:
            if not self.cuda:
                return {"not_run": "liger-kernel is Triton: CUDA only"}
            try:
                apply_liger(student)
                apply_liger(teacher)
            except Exception as err:  # noqa: BLE001  not installed: said in the entry
                return {"not_run": str(err)}
        student.gradient_checkpointing_disable()
        apply_checkpointing(student, s["checkpointing"])
        layers = student.model.language_model.layers
        for layer in layers:
            layer._compiled_call_impl = None
        if s["compile"]:
            compile_layers(student)
        shared = SharedVisionPass()
        if s["vision"] == 1:
            shared.install(student, teacher)
        student.train()
        s_taps, t_taps = self.taps
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5, fused=self.cuda)
        batch, seq, n_img = s["batch"], s["seq"], self.n_img
        ids, labels, vm, pixels, mask = self.inputs(batch, seq)
        keep = {"logits_to_keep": 1} if s["implementation"] == "fused" else {}
        cfg = LossConfig(implementation=s["implementation"])
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        sync = torch.cuda.synchronize if self.cuda else (lambda: None)

        def step(i):
            shared.begin()
            with autocast:
                out = student(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False, **keep)
                h_s, _ = s_taps.take()
                with torch.no_grad():
                    t_out = teacher(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False, **keep)
                h_t, _ = t_taps.take()
            if s["implementation"] == "fused":
                res = fused_distill_loss(h_s, lm_head_weight(student), h_t, lm_head_weight(teacher), labels, vm, cfg,
                                         step=i)
            else:
                res = distill_loss(out.logits, t_out.logits, labels, vm, cfg)
            res.total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return res

        try:
            if self.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            step(0)  # warm-up (compilation, allocator, optimizer state)
            sync()
            t0 = time.perf_counter()
            for i in range(self.args.steps):
                res = step(i + 1)
            sync()
            dt = (time.perf_counter() - t0) / self.args.steps
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            return {"oom": True}
        finally:
            s_taps.take(), t_taps.take()
        rows = int((labels[0] != IGNORE_INDEX).sum() + vm[0].sum()) if s["implementation"] == "fused" else seq
        flops = step_flops(student=llm_shape(self.texts["student"]), teacher=llm_shape(self.texts["teacher"]), seq=seq,
                           visual_tokens=n_img, vision=vision_shape(self.vision_shape), head_rows_student=rows,
                           head_rows_teacher=rows)["total"]
        return {"step_s": round(dt, 4), "tokens_per_s": round(batch * seq / dt, 1),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None,
                "mfu": round(flops * batch / dt / (self.args.peak_tflops * 1e12), 4), "flops_per_sample": flops,
                "vision_passes_run": shared.passes + (0 if s["vision"] == 1 else 2 * (self.args.steps + 1)),
                "loss_parts": res.parts}

    def inputs(self, batch: int, seq: int):
        """Token ids with one image's visual positions after a short prompt, answers after it."""
        torch = self.torch
        from llavakd.labels import IGNORE_INDEX

        g = torch.Generator().manual_seed(0)
        vocab = self.texts["student"].vocab_size
        ids = torch.randint(self.image_id + 1, vocab, (batch, seq), generator=g)
        ids[:, 10:10 + self.n_img] = self.image_id
        labels = torch.full_like(ids, IGNORE_INDEX)
        answer = 10 + self.n_img + 20
        labels[:, answer:] = ids[:, answer:]
        pixels = torch.randn(batch, 3, self.image_size, self.image_size, generator=g)
        dev = self.dev
        return (ids.to(dev), labels.to(dev), (ids == self.image_id).to(dev),
                pixels.to(dev, torch.bfloat16 if self.cuda else torch.float32), torch.ones_like(ids).to(dev))


# -- the trainer at the best setting ---------------------------------------------------------------
def trainer_run(bench: Bench, s: dict, steps: int) -> dict:
    """KDTrainer (what a job runs) for ``steps`` steps at setting ``s`` on the bench's models:
    tokens/s over the steps after the first."""
    torch = bench.torch
    from transformers import TrainerCallback, TrainingArguments

    from llavakd.config import LossConfig
    from llavakd.train.run import apply_checkpointing
    from llavakd.train.trainer import KDTrainer

    engine = "plain"
    ds_config = None
    if bench.cuda:
        try:
            import deepspeed  # noqa: F401

            engine = "deepspeed-zero2"
            ds_config = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
                         "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                         "gradient_clipping": "auto", "train_batch_size": "auto"}
            for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1",
                         "LOCAL_RANK": "0"}.items():
                os.environ.setdefault(k, v)
        except ImportError:
            engine = "plain (DeepSpeed is not importable here)"
    ids, labels, vm, pixels, mask = bench.inputs(s["batch"], s["seq"])
    records = [{"input_ids": ids[i].cpu(), "labels": labels[i].cpu(), "visual_mask": vm[i].cpu(),
                "pixel_values": pixels[i].cpu(), "attention_mask": mask[i].cpu()} for i in range(s["batch"])]
    dataset = records * (steps + 1)

    def collate(items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kw):
            if bench.cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    student = bench.student
    student.gradient_checkpointing_disable()
    apply_checkpointing(student, s["checkpointing"])
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1,
                                 max_steps=steps, learning_rate=1e-5, bf16=bench.cuda, save_strategy="no",
                                 logging_steps=steps, report_to=[], remove_unused_columns=False,
                                 use_cpu=not bench.cuda, deepspeed=ds_config, disable_tqdm=True,
                                 optim="adamw_torch_fused" if bench.cuda else "adamw_torch",
                                 logging_nan_inf_filter=False)
        trainer = KDTrainer(model=student, args=args, train_dataset=dataset, data_collator=collate,
                            loss_config=LossConfig(implementation=s["implementation"]), teacher=bench.teacher,
                            share_vision=s["vision"] == 1, callbacks=[clock])
        trainer.train()
    dt = (clock.times[-1] - clock.times[0]) / max(len(clock.times) - 1, 1)
    return {"engine": engine, "steps": steps, "step_s": round(dt, 4),
            "tokens_per_s": round(s["batch"] * s["seq"] / dt, 1), "vision_pass": trainer.vision.decision,
            "loss_implementation_used": trainer.loss_implementation}


MIN_TRAINER_RATIO = 0.9  # the trainer at the chosen setting within 10% of the sweep's tokens/s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config" / "paper.yaml"))
    p.add_argument("--student", default="qwen1.5-1.8b")
    p.add_argument("--factors", default=",".join(FACTORS), help=f"comma list of {', '.join(FACTORS)}")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up step)")
    p.add_argument("--trainer-steps", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--memory-budget-gib", type=float, default=80.0)
    p.add_argument("--shrink", action="store_true", help="tiny shapes (the CPU smoke run): same code, small numbers")
    p.add_argument("--seq", type=int, default=None, help="positions per sample (default: the job's data.max_length)")
    p.add_argument("--batches", default=None, help="override the batch factor's values, e.g. 1,2 (smoke runs)")
    p.add_argument("--out", required=True, help="JSON written after every measurement")
    p.add_argument("--min-trainer-ratio", type=float, default=MIN_TRAINER_RATIO,
                   help=f"exit 1 when the trainer's tokens/s is below this fraction of the sweep's best (default "
                   f"{MIN_TRAINER_RATIO}; the CPU smoke run passes 0: tiny steps on a CPU time too noisily to gate on)")
    args = p.parse_args(argv)
    factors = [f for f in args.factors.split(",") if f]
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        p.error(f"unknown factor(s) {', '.join(unknown)}; choose from {', '.join(FACTORS)}")

    import torch

    torch.manual_seed(0)
    shapes, start = start_setting(args.config, args.student)
    if args.seq:
        start["seq"] = args.seq
    settings = variations(start, factors)
    if args.batches:
        wanted = [int(b) for b in args.batches.split(",")]
        settings = [x for x in settings if x["factor"] != "batch"] + \
            [dict(start, factor="batch", batch=b) for b in wanted if b != start["batch"]]
        if args.shrink:  # keep the smoke run small: the start at the first listed batch
            for x in settings:
                if x["factor"] != "batch":
                    x["batch"] = wanted[0]
    settings.sort(key=lambda x: (x["liger"], x["compile"]))  # liger patches classes for good: last
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "config": args.config, "student": start["student"],
              "teacher": start["teacher"], "start": start, "shrink": args.shrink, "steps": args.steps,
              "peak_tflops": args.peak_tflops, "vision_shape": shapes["vision_source"], "runs": [], "failures": 0}

    def save():
        out.write_text(json.dumps(report, indent=2) + "\n")

    save()
    bench = Bench(args, start, shapes)
    report["visual_positions"] = bench.n_img
    for s in settings:
        t0 = time.perf_counter()
        try:
            result = bench.run(s)
        except Exception:  # noqa: BLE001  a failed setting is recorded and the sweep goes on
            result = {"error": traceback.format_exc(limit=3)}
            report["failures"] += 1
        entry = {**s, "per_device_batch": s["batch"], **result, "wall_s": round(time.perf_counter() - t0, 1)}
        report["runs"].append(entry)
        save()
        print(json.dumps({k: v for k, v in entry.items() if k != "loss_parts"}), file=sys.stderr, flush=True)

    ok = [r for r in report["runs"] if "tokens_per_s" in r and
          (r["peak_memory_gib"] is None or r["peak_memory_gib"] <= args.memory_budget_gib)]
    if ok:
        best = max(ok, key=lambda r: r["tokens_per_s"])
        report["chosen"] = {k: best[k] for k in ("batch", "implementation", "vision", "checkpointing", "compile",
                                                  "liger", "mfu", "tokens_per_s", "peak_memory_gib")}
        save()
        try:
            tr = trainer_run(bench, best, args.trainer_steps)
            tr["ratio"] = round(tr["tokens_per_s"] / best["tokens_per_s"], 3)
            tr["within_10_percent"] = tr["ratio"] >= MIN_TRAINER_RATIO
        except Exception:  # noqa: BLE001
            tr = {"error": traceback.format_exc(limit=3), "within_10_percent": False}
        report["trainer"] = tr
        save()
        print(json.dumps({"chosen": report["chosen"], "trainer": tr}), file=sys.stderr, flush=True)
    return exit_status(report, args.min_trainer_ratio)


def exit_status(report: dict, min_trainer_ratio: float = MIN_TRAINER_RATIO) -> int:
    """1 when a setting failed, none fit, the trainer run failed, or its tokens/s fell below
    ``min_trainer_ratio`` of the best setting's; else 0."""
    trainer = report.get("trainer") or {}
    failed = (report["failures"] > 0 or "chosen" not in report or "ratio" not in trainer
              or trainer["ratio"] < min_trainer_ratio)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
