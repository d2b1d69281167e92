"""Run one training stage (any of llavakd.stages.STAGES) from a validated StageConfig.

    llavakd train --stage dft --config config/stages/dft.yaml train.lr=5e-4 --resume

Run directory (``output_dir``; the names come from ``llavakd.layout.RunDir``):
    config.yaml            the resolved configuration
    metrics.jsonl          one line per logging step: loss, loss_ce/res/vis/rel, lr, grad_norm, tokens/s
    checkpoints/           checkpoint-N folders (staged, renamed, COMPLETE marker last) + TensorBoard runs/
    final/                 the trained model + processor (plain transformers loads it), COMPLETE last
    metadata.json          git commit, versions, world size and batch decomposition, precision,
                           template, seed, dataset fingerprint, tokens/s, peak memory, wall time
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import time
from pathlib import Path

import torch
import yaml

from llavakd.config import StageConfig, to_dict
from llavakd.distill.parts import attach, build_parts, dims_of
from llavakd.errors import LlavaKDError
from llavakd.io import COMPLETE_MARKER, publish_dir, sha256_of
from llavakd.layout import FINAL_METADATA, RunDir
from llavakd.preempt import StoppedForResume, StopRequest, write_note

DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def batch_decomposition(global_batch: int, per_device: int, world_size: int) -> int:
    """Gradient-accumulation steps so that per_device x accumulation x world = global batch."""
    denom = per_device * world_size
    if global_batch % denom:
        raise LlavaKDError(
            f"train.global_batch {global_batch} is not divisible by per_device_batch {per_device} x "
            f"world size {world_size}; choose values whose product divides it"
        )
    return global_batch // denom


def apply_freeze_plan(model, trainable: tuple[str, ...]) -> dict[str, int]:
    """Vision tower always frozen; projector trains; the LLM (and lm_head) in SFT/DFT only."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if "llm" in trainable:
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    counts = {"trainable": 0, "frozen": 0}
    for p in model.parameters():
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


def dataset_fingerprint(json_path: str) -> str:
    return sha256_of(Path(json_path))[:16]


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("llavakd", "torch", "transformers", "accelerate", "deepspeed", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _teacher_placement(teacher) -> str | None:
    """How the frozen teacher ran: a ZeRO-3 sharded engine, a replicated engine, or a plain module."""
    if teacher is None:
        return None
    zero = getattr(teacher, "zero_optimization_stage", None)
    if callable(zero):
        return f"deepspeed-zero{zero()}" + ("-sharded" if zero() == 3 else "-replicated")
    return "module"


def _teacher_partition(teacher) -> list[dict] | None:
    """Under ZeRO-3, how much of the teacher each rank holds, from DeepSpeed's partition metadata:
    its partitions (``ds_tensor``), what is resident in full (small persistent parameters), and the
    teacher's size (``ds_numel``). A collective call: every rank reaches it at the end of a run."""
    params = [p for p in getattr(getattr(teacher, "module", None), "parameters", list)() if hasattr(p, "ds_numel")]
    if not params:
        return None
    import torch.distributed as dist

    mine = {"rank": dist.get_rank() if dist.is_initialized() else 0,
            "partition_numel": sum(p.ds_tensor.numel() for p in params),
            "resident_numel": sum(p.data.numel() for p in params),
            "total_numel": sum(p.ds_numel for p in params)}
    if not dist.is_initialized():
        return [mine]
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every


def prepare_run_dir(cfg: StageConfig, resume: bool, overwrite: bool) -> Path:
    from llavakd.train.trainer import complete_checkpoints

    out, run = Path(cfg.output_dir), RunDir(cfg.output_dir)
    if (Path(run.final) / COMPLETE_MARKER).exists() and not overwrite:
        raise LlavaKDError(f"{out} holds a finished run ({run.final}/{COMPLETE_MARKER}); pass --overwrite to train it again")
    if overwrite and out.exists():
        shutil.rmtree(out)
    if complete_checkpoints(run.checkpoints) and not resume:
        raise LlavaKDError(f"{out} has checkpoints from an earlier run; pass --resume to continue it or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(out: Path, cfg: StageConfig, resume: bool) -> None:
    """Resuming continues the same run: refuse when its stored config differs (every key listed)."""
    from llavakd.train.trainer import complete_checkpoints

    run = RunDir(str(out))
    stored = Path(run.config)
    if not (resume and stored.is_file() and complete_checkpoints(run.checkpoints)):
        return
    old, new = _flat(yaml.safe_load(stored.read_text()) or {}), _flat(to_dict(cfg))
    ignore = {"train.stop_after_steps"}  # when to stop is not part of what is trained
    diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if diff:
        lines = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise LlavaKDError(f"{out}: cannot resume, the config changed since its checkpoints were written ({lines}); "
                           "pass --overwrite to start this run again")


def load_student(cfg: StageConfig, dtype):
    from transformers import LlavaForConditionalGeneration

    from llavakd.model.build import check_tied, load_processor, resolve

    src = resolve(cfg.model, "model")
    model = LlavaForConditionalGeneration.from_pretrained(src.ref, dtype=dtype, **src.kwargs,
                                                          attn_implementation=cfg.train.attn_implementation)
    check_tied(model, f"model {src.ref}")
    processor = load_processor(src.ref, **src.kwargs)
    return model, processor


def load_teacher(cfg: StageConfig, student, dtype):
    from transformers import LlavaForConditionalGeneration

    from llavakd.model.build import check_same_vocab, resolve

    check_same_vocab(cfg.teacher, cfg.model)
    src = resolve(cfg.teacher, "teacher")
    teacher = LlavaForConditionalGeneration.from_pretrained(src.ref, dtype=dtype, **src.kwargs,
                                                            attn_implementation=cfg.train.attn_implementation)
    if teacher.config.image_seq_length != student.config.image_seq_length:
        raise LlavaKDError(
            f"teacher {cfg.teacher} places {teacher.config.image_seq_length} visual tokens per image but the "
            f"student {cfg.model} places {student.config.image_seq_length}; the visual losses need the same positions"
        )
    if teacher.config.image_token_id != student.config.image_token_id:
        raise LlavaKDError("teacher and student use different <image> token ids")
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def apply_checkpointing(model, setting: bool | int) -> list[int]:
    """Recompute the chosen decoder layers of the student's LLM in the backward pass
    (``train.gradient_checkpointing``: none, all, or every k-th; llavakd.memory.checkpointed_layers)
    through transformers' per-layer switch; returns their indices."""
    from llavakd.memory import checkpointed_layers

    layers = model.model.language_model.layers
    chosen = checkpointed_layers(len(layers), setting)
    if chosen:
        model.gradient_checkpointing_enable()  # what Trainer(gradient_checkpointing=True) calls: every layer
        keep = set(chosen)
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = i in keep
    return chosen


def apply_liger(model) -> None:
    """liger-kernel's kernels (RMSNorm, RoPE, SwiGLU) for the LLM's family (``FamilyFacts.liger``:
    qwen2, qwen3, llama, smollm3) on a LLaVA's LLM, in place. Never its cross-entropy nor its
    fused-linear cross-entropy: they would hide the logits the objective distils (llavakd.distill.fused
    says why the objective stays ours)."""
    import importlib

    from llavakd.model.shapes import family

    model_type = model.config.get_text_config().model_type
    name = family(model_type).liger
    if name is None:
        raise LlavaKDError(f"train.liger_kernels: liger-kernel has no kernels for {model_type!r}; switch it off")
    try:
        patch = getattr(importlib.import_module("liger_kernel.transformers"), name)
    except ImportError as err:
        raise LlavaKDError("train.liger_kernels: liger-kernel is not installed (pip install 'llavakd[cuda]')") from err
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False,
          model=model.model.language_model)


def compile_layers(model) -> int:
    """torch.compile every decoder layer of the LLM in place; returns how many."""
    layers = model.model.language_model.layers
    for layer in layers:
        layer.compile()
    return len(layers)


def setup_models(cfg: StageConfig):
    """Student (freeze plan applied, checkpointing set) and, for a distillation stage, the frozen teacher."""
    cuda = torch.cuda.is_available()
    if not cuda and cfg.train.precision == "fp16":
        raise LlavaKDError("train.precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
    if not cuda and cfg.train.liger_kernels:
        raise LlavaKDError("train.liger_kernels needs a GPU (liger-kernel is Triton, CUDA only); switch it off on the CPU")
    dtype = DTYPE[cfg.train.precision]
    # weights stay fp32 under mixed precision; the Trainer autocasts
    model, processor = load_student(cfg, dtype if cfg.train.precision in ("fp32", "fp64") else torch.float32)
    counts = apply_freeze_plan(model, cfg.spec.trainable)
    apply_checkpointing(model, cfg.train.gradient_checkpointing)
    if cfg.train.liger_kernels:
        apply_liger(model)
    if cfg.train.compile:
        compile_layers(model)
    t_dtype = dtype if (cuda or cfg.train.precision == "fp64") else torch.float32
    teacher = load_teacher(cfg, model, t_dtype) if cfg.distill else None
    if teacher is not None and cfg.train.liger_kernels:
        apply_liger(teacher)
    parts = build_parts(cfg.loss, dims_of(model, teacher), seed=cfg.train.seed)  # the objective's own weights
    if parts is not None:
        attach(model, parts)
        counts["loss_parts"] = sum(p.numel() for p in parts.parameters())
    return model, processor, teacher, counts


def setup_data(cfg: StageConfig, processor):
    """The stage's dataset in its template (nothing is read beyond the JSON until a batch is drawn)."""
    from llavakd.data.dataset import LlavaDataset

    drop: set[int] = set()
    if cfg.data.skip_records:
        report = Path(cfg.data.skip_records)
        if not report.is_file():
            raise LlavaKDError(f"data.skip_records: {report} does not exist (run llavakd validate-data first)")
        drop = set(json.loads(report.read_text())["bad_records"])
    return LlavaDataset(cfg.data.json, cfg.data.images, processor, template=cfg.spec.template,
                        max_length=cfg.data.max_length, skip_bad=cfg.data.skip_bad,
                        subset=(cfg.data.subset_fraction, cfg.data.subset_seed), drop=drop)


def setup_training_args(cfg: StageConfig, out: Path, world: int):
    """transformers' TrainingArguments for the stage; the global batch is kept whatever the world size."""
    from transformers import TrainingArguments

    accum = batch_decomposition(cfg.train.global_batch, cfg.train.per_device_batch, world)
    args = TrainingArguments(
        output_dir=RunDir(str(out)).checkpoints,
        per_device_train_batch_size=cfg.train.per_device_batch,
        gradient_accumulation_steps=accum,
        learning_rate=cfg.train.lr,
        lr_scheduler_type=cfg.train.schedule if cfg.train.schedule != "constant" else "constant_with_warmup",
        warmup_steps=cfg.train.warmup_ratio,  # below 1: a fraction of the steps (llavakd.train.hf_contract)
        weight_decay=cfg.train.weight_decay,
        num_train_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        seed=cfg.train.seed,
        data_seed=cfg.train.seed,
        bf16=cfg.train.precision == "bf16",
        fp16=cfg.train.precision == "fp16",
        max_grad_norm=cfg.train.grad_clip,
        gradient_checkpointing=False,  # applied per layer by apply_checkpointing (setup_models)
        deepspeed=cfg.train.deepspeed,
        save_strategy="steps",
        save_steps=cfg.train.save_steps,
        logging_steps=cfg.train.logging_steps,
        logging_nan_inf_filter=False,  # its check waits for the device every micro-batch; the guard stops on NaN
        report_to=["tensorboard"],
        remove_unused_columns=False,
        dataloader_num_workers=cfg.data.num_workers,
        optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",  # one kernel per step on CUDA
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    return args, accum


def setup_trainer(cfg: StageConfig, out: Path, model, processor, teacher, dataset, args, stop=None):
    """KDTrainer with the objective, the guards, the metrics log, the checkpoint policy and, given a
    ``StopOnSignal``, the stop at a checkpoint that a scheduler's signal asks for."""
    from llavakd.data.dataset import Collator
    from llavakd.train.trainer import JsonlLogger, KDTrainer, NonFiniteGradGuard, StopAfter

    guard = NonFiniteGradGuard(model)
    callbacks = [guard, JsonlLogger(Path(RunDir(str(out)).metrics))] + ([stop] if stop is not None else [])
    if cfg.train.stop_after_steps:
        callbacks.append(StopAfter(cfg.train.stop_after_steps))
    trainer = KDTrainer(model=model, args=args, train_dataset=dataset, data_collator=Collator(processor.tokenizer),
                        loss_config=cfg.loss, teacher=teacher, keep_checkpoints=cfg.train.keep_checkpoints,
                        group_by_modality_length=cfg.train.group_by_modality_length,
                        share_vision=cfg.train.share_vision_tower, tokenizer=processor.tokenizer,
                        callbacks=callbacks)
    guard.trainer = trainer  # under DeepSpeed the guard reads the engine's verdict on each step
    if teacher is not None and not trainer.is_deepspeed_enabled:
        teacher.to(args.device)  # under DeepSpeed the trainer wraps it into an engine at the first step
    return trainer


def run_metadata(cfg: StageConfig, trainer, dataset, counts: dict, *, world: int, accum: int, start, elapsed: float):
    """What metadata.json (and final/llavakd_run.json) records about the run."""
    cuda = torch.cuda.is_available()
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "stage": cfg.stage, "git_commit": _git_commit(), "versions": _versions(),
        "world_size": world, "per_device_batch": cfg.train.per_device_batch, "grad_accumulation": accum,
        "global_batch": cfg.train.global_batch, "precision": cfg.train.precision,
        "template": cfg.spec.template, "seed": cfg.train.seed, "trainable_modules": list(cfg.spec.trainable),
        "parameters": counts, "dataset": {"json": cfg.data.json, "records": len(dataset),
                                          "records_in_file": dataset.records_in_file,
                                          "listed_bad_left_out": dataset.dropped,
                                          "subset": {"fraction": cfg.data.subset_fraction, "seed": cfg.data.subset_seed},
                                          "sha256_16": dataset_fingerprint(cfg.data.json),
                                          "skipped": dict(dataset.skipped), "truncated": dataset.truncated},
        "steps": trainer.state.global_step, "tokens_per_s": round(trainer.tokens_seen / max(elapsed, 1e-9), 1),
        "group_by_modality_length": cfg.train.group_by_modality_length,
        "checkpointed_layers": [i for i, layer in enumerate(trainer.model.model.language_model.layers)
                                if getattr(layer, "gradient_checkpointing", False)],
        "padding_fraction": round(trainer.padding_fraction, 4),
        "peak_memory_mb": round(peak / 2**20, 1), "wall_time_s": round(elapsed, 1),
        "resumed_from": str(start) if start else None,
        "device": "cuda" if cuda else "cpu", "loss": dataclasses.asdict(cfg.loss),
        "loss_implementation_used": trainer.loss_implementation,
        "vision_pass": trainer.vision.decision if trainer.teacher is not None else None,
        "kernels": {"attn_implementation": cfg.train.attn_implementation, "liger": cfg.train.liger_kernels,
                    "compiled_layers": len(trainer.model.model.language_model.layers) if cfg.train.compile else 0},
        "teacher_placement": _teacher_placement(trainer.teacher),
        "teacher_partition": _teacher_partition(trainer.teacher),
    }


def save_final(trainer, processor, out: Path, meta: dict, *, trained: bool) -> Path:
    """Write metadata.json and final/ (the run's completion, marked last) from the main process.

    Every rank takes part (under ZeRO-3 saving gathers the weights), into one staging folder that
    the main process then marks and renames: a rank never renames a half-written folder."""
    run = RunDir(str(out))
    staging, main = Path(run.final_staging), trainer.args.should_save
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if trained:
        trainer.save_model(str(staging))  # writes on the main process only
    elif main:  # loaded from the last checkpoint in this process: a plain module, nothing to gather
        trainer._save(str(staging))
    trainer.accelerator.wait_for_everyone()
    if main:
        Path(run.metadata).write_text(json.dumps(meta, indent=2) + "\n")
        processor.save_pretrained(str(staging))
        shutil.copy(run.metadata, staging / FINAL_METADATA)
        publish_dir(staging, Path(run.final))
    trainer.accelerator.wait_for_everyone()
    return Path(run.final)


def newest_checkpoint(out: Path) -> str | None:
    """The name of a run's newest complete checkpoint (its progress, for llavakd.attempts), or None."""
    from llavakd.train.trainer import complete_checkpoints

    found = complete_checkpoints(RunDir(str(out)).checkpoints)
    return found[-1].name if found else None


def run_stage(cfg: StageConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train one stage; returns the final model folder (or the run dir if stopped early by
    ``train.stop_after_steps``). A stop signal (llavakd.preempt) ends it at a checkpoint with
    ``StoppedForResume``. Rank 0 records the attempt (llavakd.attempts) and refuses a third one after
    two failures the same way without a new checkpoint in one workflow session."""
    from llavakd.attempts import Attempts

    out = prepare_run_dir(cfg, resume, overwrite)
    check_resume_config(out, cfg, resume)
    recorded = contextlib.nullcontext()
    if int(os.environ.get("RANK", "0")) == 0:
        recorded = Attempts(RunDir(str(out)).attempts, job=f"training job {out}").attempt(lambda: newest_checkpoint(out))
    with recorded, StopRequest() as stop:  # a signal now asks for a stop at the next step boundary
        return _run_stage(cfg, out, stop, resume)


def _stopped(out: Path, stop, step: int) -> StoppedForResume:
    """The stop a signal asked for, told to the supervisor (llavakd.preempt.write_note) and the user. A
    signal that came while the models loaded stops the run after its first step (the ranks agree on
    the step at each step's end: llavakd.train.trainer.StopOnSignal)."""
    line = (f"{out}: stopped on {stop.name or 'a signal to another rank'} after step {step} with "
            f"{newest_checkpoint(out)} written; run it again with --resume to continue")
    write_note(line)
    return StoppedForResume(line)


def _run_stage(cfg: StageConfig, out: Path, stop, resume: bool) -> Path:
    from transformers import set_seed

    from llavakd.train.trainer import StopOnSignal, intact_checkpoints, last_step_reached

    t0 = time.perf_counter()
    run = RunDir(str(out))
    Path(run.config).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    set_seed(cfg.train.seed)
    model, processor, teacher, counts = setup_models(cfg)
    dataset = setup_data(cfg, processor)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args, accum = setup_training_args(cfg, out, world)
    on_signal = StopOnSignal(stop)
    trainer = setup_trainer(cfg, out, model, processor, teacher, dataset, args, stop=on_signal)

    ckpts, damaged = intact_checkpoints(run.checkpoints) if resume else ([], [])
    for line in damaged:
        print(line)
    if damaged and not ckpts:
        raise LlavaKDError(f"{out}: every checkpoint is damaged ({damaged[-1]}); pass --overwrite to start again")
    start = ckpts[-1] if ckpts else None
    finished = bool(start) and last_step_reached(start)
    if finished:
        print(f"resuming from {start}: it holds the last step; writing final/ from it")
        trainer.finish_from_checkpoint(start)
    else:
        if start:
            print(f"resuming from {start}")
            trainer.load_sampling_state(start)
        try:
            trainer.train(resume_from_checkpoint=str(start) if start else None)
        except BaseException:
            with contextlib.suppress(LlavaKDError):  # finish the marker being written; the first error stands
                trainer.wait_for_checkpoints()
            raise
        trainer.wait_for_checkpoints()  # the last checkpoint's marker (written in the background)
    state = trainer.state
    if on_signal.stopped_at is not None and state.global_step < state.max_steps:
        trainer.accelerator.wait_for_everyone()  # no rank leaves before rank 0's marker: torchrun or srun
        raise _stopped(out, stop, on_signal.stopped_at)  # would stop the others when the first one exits
    if cfg.train.stop_after_steps and state.global_step < state.max_steps:
        return out
    meta = run_metadata(cfg, trainer, dataset, counts, world=world, accum=accum, start=start,
                        elapsed=time.perf_counter() - t0)  # every rank: the teacher's partition is gathered
    save_final(trainer, processor, out, meta, trained=not finished)
    if dataset.skipped:
        print(dataset.skip_report())
    return Path(run.final)
