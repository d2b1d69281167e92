"""The ``llavakd`` command line: one console script, one subcommand per job.

    llavakd --help
    llavakd tiny-models --out results/tiny/components --seed 0
    llavakd build --vision results/tiny/components/vision/siglip \
        --llm results/tiny/components/llm/qwen1.5-0.5b --strategy full --out results/tiny/student0
    llavakd convert-upstream SRC DST [--tokenizer Qwen/Qwen1.5-0.5B]
    llavakd export-upstream MODEL DST

Errors in the input (a missing path, a malformed file, an inconsistent model) print one message
naming the culprit and exit with status 2; nothing half-written is left looking complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.model.chat import DEFAULT_TEMPLATE, TEMPLATES
from llavakd.preempt import StoppedForResume
from llavakd.stages import NAMES as STAGE_NAMES


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not torch.cuda.is_available():  # say it, rather than let DeepSpeed warn on every command
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_tiny_models(args: argparse.Namespace) -> int:
    from llavakd.io import atomic_dir
    from llavakd.tiny.components import write_tiny_components
    from llavakd.tiny.pretrain import write_pretrained_components

    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        llms = [n.strip() for n in args.llms.split(",") if n.strip()] if args.llms else None
        if args.world is None:
            manifest = write_tiny_components(tmp, seed=args.seed, llms=llms)
        else:
            manifest = write_pretrained_components(tmp, args.world, seed=args.seed, vision_steps=args.vision_steps,
                                                   llm_steps=args.llm_steps, min_probe=args.min_probe, llms=llms)
    print(f"wrote tiny components to {args.out}: vision tower + {len(manifest['llms'])} LLMs "
          f"({'pre-trained on ' + str(args.world) if args.world else 'random initialisation'})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from llavakd.io import atomic_dir
    from llavakd.model.build import build_llava, save_llava

    model, processor, prov = build_llava(
        args.vision, args.llm, tokenizer=args.tokenizer, image_tokens=args.image_tokens,
        strategy=args.strategy, feature_layer=args.feature_layer, dtype=args.dtype, seed=args.seed,
        chat=args.template,
    )
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        save_llava(model, processor, tmp, prov)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: LlavaForConditionalGeneration, {n / 1e6:.2f}M parameters, "
          f"{model.config.image_seq_length} visual tokens per image")
    return 0


def cmd_convert_upstream(args: argparse.Namespace) -> int:
    from llavakd.io import atomic_dir
    from llavakd.model.build import save_llava
    from llavakd.model.convert import convert_upstream

    model, processor = convert_upstream(
        args.src, tokenizer=args.tokenizer, image_processor=args.image_processor, dtype=args.dtype
    )
    with atomic_dir(args.dst, overwrite=args.overwrite) as tmp:
        save_llava(model, processor, tmp, {"converted_from": str(args.src)})
    print(f"converted {args.src} -> {args.dst}")
    return 0


def cmd_export_upstream(args: argparse.Namespace) -> int:
    from llavakd.io import atomic_dir
    from llavakd.model.convert import export_upstream

    with atomic_dir(args.dst, overwrite=args.overwrite) as tmp:
        export_upstream(args.model, tmp)
    print(f"exported {args.model} -> {args.dst} (TinyLLaVA single-file layout)")
    return 0


class _Formatter(argparse.HelpFormatter):
    """Keeps every subcommand's explanation on its own line (argparse sizes the column too early)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=110)
        self._action_max_length = 22


class _RawFormatter(argparse.RawDescriptionHelpFormatter, _Formatter):
    """A subcommand whose description is its module's docstring (the exact invocations)."""


def _doc(module: str) -> str:
    import importlib

    return importlib.import_module(module).__doc__


def cmd_synth_world(args: argparse.Namespace) -> int:
    from llavakd.io import atomic_dir
    from llavakd.tiny.world import write_world

    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        manifest = write_world(tmp, seed=args.seed, size=args.size)
    print(f"wrote the {args.size} synthetic world (seed {args.seed}) to {args.out}: "
          f"{manifest['images']} images, {manifest['train']['captions']} captions, "
          f"{manifest['train']['instruct']} instruction records, {len(manifest['bench'])} benchmark splits")
    return 0


def cmd_data_report(args: argparse.Namespace) -> int:
    from llavakd.data.report import data_report, format_report
    from llavakd.model.build import load_processor, resolve

    src = resolve(args.processor, "processor")
    processor = load_processor(src.ref, **src.kwargs)
    report = data_report(args.json, args.images, processor, template=args.template, max_length=args.max_length)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json_output else format_report(report))
    return 1 if report["bad"] and args.strict else 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from llavakd.data.prepare import load_manifest, prepare
    from llavakd.io import atomic_write_text

    fetched: list = []
    todo = prepare(load_manifest(args.manifest), args.root, only=args.only.split(",") if args.only else None,
                   fetched=fetched)
    if todo:
        raise LlavaKDError("manual step(s) left: " + " | ".join(todo))
    if args.done:
        atomic_write_text(args.done, "".join(f"{n}\t{p}\t{size}\t{sha}\n" for n, p, size, sha in fetched))
    print(f"{len(fetched)} file(s) in place under {args.root}")
    return 0


def cmd_validate_data(args: argparse.Namespace) -> int:
    from llavakd.data.report import data_report, format_report
    from llavakd.io import atomic_write_text
    from llavakd.model.build import load_processor, resolve

    src = resolve(args.processor, "processor")
    processor = load_processor(src.ref, **src.kwargs)
    report = data_report(args.json, args.images, processor, template=args.template, max_length=args.max_length)
    n_bad = len(report["bad_records"])
    report["max_bad_fraction"] = args.max_bad_fraction
    text = format_report(report)
    atomic_write_text(f"{args.out}.report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(f"{args.out}.report.md", "```\n" + text + "\n```\n")
    print(text)
    if n_bad > args.max_bad_fraction * report["records"]:
        raise LlavaKDError(f"{args.json}: {n_bad} of {report['records']} records are bad, more than "
                           f"data.max_bad_fraction {args.max_bad_fraction:g} allows; see {args.out}.report.md")
    if n_bad:
        print(f"{n_bad} bad record(s) listed in {args.out}.report.json: training leaves them out")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from llavakd.config import load_stage_config
    from llavakd.train.run import run_stage

    if args.config is None and args.stage is None:
        raise LlavaKDError("give --config FILE (a stage config) or --stage with key=value overrides")
    cfg = load_stage_config(args.config, args.overrides, stage=args.stage)
    final = run_stage(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"{cfg.stage}: wrote {final}")
    return 0


def cmd_chance(args: argparse.Namespace) -> int:
    from llavakd.tiny.chance import write_chance

    res = write_chance(args.world, args.out, args.benchmarks, args.limit)
    print(f"{'benchmark':10s} {'chance':>7s}  best constant answer")
    for name, r in res.items():
        print(f"{name:10s} {r['headline']:7.2f}  " + ", ".join(f"{t}: {a!r}" for t, a in r["answers"].items()))
    return 0


def cmd_score_standins(args: argparse.Namespace) -> int:
    from llavakd.tiny.score import STANDIN_TASKS, score_standins

    tasks = args.tasks.split(",") if args.tasks else None
    unknown = [t for t in tasks or [] if t not in STANDIN_TASKS]
    if unknown:
        raise LlavaKDError(f"unknown stand-in task(s) {unknown}; known: {', '.join(STANDIN_TASKS)}")
    res = score_standins(args.model, args.world, tasks=tasks, batch_size=args.batch_size)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    print(f"{'task':16s} {'n':>4s} {'score':>6s} {'chance':>6s}")
    for task, r in res.items():
        print(f"{task:16s} {r['n']:4d} {r['score']:6.1f} {r['chance']:6.1f}")
    return 0


def _attempt(kind: str, out: str):
    """An evaluation's attempt, recorded in its folder (llavakd.attempts; progress: its finished files)."""
    from llavakd.attempts import Attempts, finished_files
    from llavakd.layout import RUN_ATTEMPTS

    return Attempts(Path(out) / RUN_ATTEMPTS, job=f"{kind} job {out}").attempt(lambda: finished_files(out))


def cmd_eval(args: argparse.Namespace) -> int:
    import logging

    from llavakd.eval.runner import evaluate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    standins = None
    if args.world is not None:
        from llavakd.tiny.tasks import standin_tasks

        standins = standin_tasks(args.world)
    with _attempt("evaluation", args.out):
        res = evaluate(args.model, args.benchmarks, args.out, standins=standins, limit=args.limit,
                       batch_size=args.batch_size, seed=args.seed, device=args.device, dtype=args.dtype,
                       submission=args.submission, hf_home=args.hf_home, recompute=args.recompute,
                       protocol=args.protocol, pope_questions=args.pope_questions)
    print(f"protocol: {args.protocol}")
    print(f"{'benchmark':10s} {'column':8s} {'score':>8s}  docs")
    for name, r in res.items():
        docs = sum(t["docs"] for t in r["tasks"].values())
        note = "  (local val split; the paper's split is server-scored)" if r["local_split_differs"] else ""
        print(f"{name:10s} {r['column']:8s} {r['headline']:8.2f}  {docs}{note}")
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    from llavakd.eval.agreement import MEASURES, agreement

    standins = None
    if args.world is not None:
        from llavakd.tiny.tasks import standin_tasks

        standins = standin_tasks(args.world)
    if args.hf_home:
        from llavakd.eval.prefetch import use_cache

        use_cache(args.hf_home, offline=True)
    with _attempt("agreement", args.out):
        res = agreement(args.student, args.teacher, args.out, benchmarks=args.benchmarks, standins=standins,
                        limit=args.limit, dtype=args.dtype, device=args.device)
    print(f"{'benchmark':10s} " + " ".join(f"{m:>17s}" for m in MEASURES))
    for name, r in res.items():
        print(f"{name:10s} " + " ".join("                -" if r[m] is None else f"{r[m]:17.4f}" for m in MEASURES))
    print(f"wrote {args.out}")
    return 0


def cmd_prefetch_benchmarks(args: argparse.Namespace) -> int:
    from llavakd.eval.prefetch import benchmark_datasets, missing, prefetch
    from llavakd.eval.registry import resolve

    wanted = benchmark_datasets(resolve(args.benchmarks), submission=args.submission)
    if args.check:
        gone = missing(wanted)
        for d in gone:
            print(f"missing: {d.label()} (for {d.used_by})")
        print(f"{len(wanted) - len(gone)} of {len(wanted)} datasets are in {args.hf_home}")
        return 1 if gone else 0
    prefetch(wanted, args.hf_home)
    if args.done:
        from llavakd.io import atomic_write_text

        atomic_write_text(args.done, "".join(f"{d.label()}\n" for d in wanted))
    print(f"{len(wanted)} datasets are in {args.hf_home}")
    return 0


def cmd_lmms_tasks(args: argparse.Namespace) -> int:
    from llavakd.eval.tasks import write_protocol_yamls

    if args.world is None:
        from llavakd.eval.tasks import write_task_yamls

        names = write_task_yamls(args.out)
    else:
        from llavakd.tiny.tasks import write_standin_yamls

        names = write_standin_yamls(args.out, args.world)
    names = write_protocol_yamls(args.out, names, args.protocol)
    extra = sorted(n for t, n in names.items() if n != t) or ["mmbench_cn_dev_static"]
    print(f"wrote {len(extra)} task YAML(s) to {args.out}; use: python -m lmms_eval --model llavakd "
          f"--model_args pretrained=DIR --include_path {args.out} --tasks {','.join(extra)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from llavakd.protocols import DEFAULT_PROTOCOL, PROTOCOLS
    from llavakd.study import ComponentsSection, EvalSection, WorldSection

    comp, ev, world = ComponentsSection(), EvalSection(), WorldSection()
    DTYPES = list(typing.get_args(typing.get_type_hints(EvalSection)["dtype"]))  # noqa: N806

    p = argparse.ArgumentParser(
        prog="llavakd",
        description="Reproduce LLaVA-KD: build, distill, evaluate and report multimodal LLMs.",
        formatter_class=_Formatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("tiny-models",
                       help="write the tiny offline SigLIP and Qwen2/Qwen3/Llama LLMs (component checkpoints)")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--seed", type=int, default=comp.seed, help=f"initialisation seed (default {comp.seed})")
    s.add_argument("--world", type=Path, help="a synth-world folder: pre-train the tower and LLMs on it")
    s.add_argument("--vision-steps", type=int, default=comp.vision_steps,
                   help=f"vision pre-training steps (batch 64; default {comp.vision_steps})")
    s.add_argument("--llm-steps", type=int, default=comp.llm_steps,
                   help=f"LM pre-training steps per LLM (batch 32; default {comp.llm_steps})")
    s.add_argument("--min-probe", type=float, default=comp.min_probe,
                   help=f"fail unless the tower's held-out cell accuracy reaches this (default {comp.min_probe})")
    s.add_argument("--llms", help="comma list of the tiny LLMs to write (default: all six; each is seeded by its "
                   "name, so a subset's weights equal the whole family's)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=cmd_tiny_models)

    s = sub.add_parser("build", help="assemble a LLaVA model from a SigLIP and a causal-LM checkpoint")
    s.add_argument("--vision", required=True, help="SigLIP checkpoint folder or hub id")
    s.add_argument("--llm", required=True, help="causal-LM checkpoint folder or hub id (Qwen2/Qwen3/Llama/SmolLM3 "
                   "families: docs/models.md)")
    s.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the LLM's)")
    s.add_argument("--out", required=True, type=Path, help="output folder (a HF checkpoint)")
    s.add_argument("--image-tokens", type=int, default=None,
                   help="expected visual tokens per image; refuse a tower that gives another count (paper: 728)")
    s.add_argument("--strategy", choices=["default", "full"], default="default",
                   help="'default' drops the first patch (paper: 729 -> 728); 'full' keeps all")
    s.add_argument("--template", choices=list(TEMPLATES), default=DEFAULT_TEMPLATE,
                   help="conversation template stored in the processor (default: phi, the paper's; chatml for "
                   "Qwen2.5/SmolLM2, qwen3 or qwen3-think for Qwen3, llama3 for Llama-3.x)")
    s.add_argument("--feature-layer", type=int, default=-2, help="vision layer to read (default -2)")
    s.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype the checkpoint is saved in (default float32)")
    s.add_argument("--seed", type=int, default=1234, help="projector initialisation seed")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("convert-upstream", help="convert a TinyLLaVA / LLaVA-KD checkpoint to our HF layout")
    s.add_argument("src", type=Path, help="upstream checkpoint folder")
    s.add_argument("dst", type=Path, help="output folder")
    s.add_argument("--tokenizer", help="tokenizer folder or hub id, if SRC ships none")
    s.add_argument("--image-processor", help="image processor folder or hub id (default: SigLIP's)")
    s.add_argument("--dtype", choices=DTYPES, default=None,
                   help="dtype to save in (default: keep the dtype the weights load in)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=cmd_convert_upstream)

    s = sub.add_parser("export-upstream", help="write one of our checkpoints in upstream's TinyLLaVA layout")
    s.add_argument("model", type=Path, help="our HF LLaVA checkpoint folder")
    s.add_argument("dst", type=Path, help="output folder (model.safetensors, config.json, tokenizer, image processor)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=cmd_export_upstream)

    s = sub.add_parser("synth-world", help="generate the synthetic world: images, training sets, ten benchmark stand-ins")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--seed", type=int, default=world.seed, help="world seed (same seed, byte-identical files)")
    s.add_argument("--size", choices=list(typing.get_args(typing.get_type_hints(WorldSection)["size"])),
                   default=world.size, help=f"number of images (default {world.size})")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=cmd_synth_world)

    s = sub.add_parser("data-report", help="counts, token lengths and bad records of a LLaVA-format dataset")
    s.add_argument("json", type=Path, help="LLaVA JSON file (558K / mix665k format)")
    s.add_argument("--images", required=True, type=Path, help="image folder the records' 'image' paths are relative to")
    s.add_argument("--processor", required=True, help="a model folder (or hub id) whose processor tokenizes")
    s.add_argument("--template", choices=["chat", "pretrain"], default="chat",
                   help="conversation template the records are tokenized with: chat (SFT) or pretrain (captions)")
    s.add_argument("--max-length", type=int, default=2048,
                   help="tokens a record may have before it counts as too long (default 2048)")
    s.add_argument("--json-output", action="store_true", help="print the report as JSON")
    s.add_argument("--strict", action="store_true", help="exit 1 when any record is bad")
    s.set_defaults(func=cmd_data_report)
    s = sub.add_parser("prepare-data", help="download, verify and extract the training data a manifest lists",
                       description=_doc("llavakd.data.prepare"), formatter_class=_RawFormatter)
    s.add_argument("--manifest", required=True, type=Path, help="e.g. manifests/llava-1.5.yaml")
    s.add_argument("--root", required=True, type=Path, help="folder the manifest's destinations are under")
    s.add_argument("--only", help="comma list of item names (default: all)")
    s.add_argument("--done", type=Path, help="when everything is in place, list each file's size and sha256 here")
    s.set_defaults(func=cmd_prepare_data)
    s = sub.add_parser("validate-data", help="check every record of a LLaVA JSON against its images; "
                       "write <out>.report.{json,md}; fail above --max-bad-fraction")
    s.add_argument("json", type=Path, help="LLaVA JSON file (558K / mix665k format)")
    s.add_argument("--images", required=True, type=Path, help="image folder the records' paths are relative to")
    s.add_argument("--processor", required=True, help="a model folder (or hub id) whose processor tokenizes")
    s.add_argument("--template", choices=["chat", "pretrain"], default="chat",
                   help="conversation template the records are tokenized with: chat (SFT) or pretrain (captions)")
    s.add_argument("--max-length", type=int, default=2048,
                   help="tokens a record may have before it counts as too long (default 2048)")
    s.add_argument("--max-bad-fraction", type=float, default=0.0,
                   help="fail when more than this fraction of records is bad (default 0: any bad record fails)")
    s.add_argument("--out", required=True, help="report path without suffix (writes .report.json and .report.md)")
    s.set_defaults(func=cmd_validate_data)
    s = sub.add_parser("train", help=f"train one stage ({', '.join(STAGE_NAMES)}) from a stage config")
    s.add_argument("--stage", choices=list(STAGE_NAMES),
                   help="the stage to train; optional with --config (must then agree with its stage)")
    s.add_argument("--config", type=Path, help="stage config YAML (see llavakd/config.py); the workflow writes "
                   "one per job under results/<run>/configs/")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-3")
    s.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    s.add_argument("--overwrite", action="store_true", help="discard an existing run in output_dir")
    s.set_defaults(func=cmd_train)
    s = sub.add_parser("score-standins", help="score a model on the synthetic stand-ins with lmms-eval's task code")
    s.add_argument("--model", required=True, help="trained model folder")
    s.add_argument("--world", required=True, type=Path, help="synth-world folder")
    s.add_argument("--tasks", help="comma-separated subset (default: all)")
    s.add_argument("--batch-size", type=int, default=16, help="generation batch (default 16)")
    s.add_argument("--out", type=Path, help="also write the scores as JSON here")
    s.set_defaults(func=cmd_score_standins)
    s = sub.add_parser("chance", help="chance on the stand-ins: each task's best constant answer, scored by "
                       "lmms-eval", description=_doc("llavakd.tiny.chance"), formatter_class=_RawFormatter)
    s.add_argument("--world", required=True, type=Path, help="a synth-world folder")
    s.add_argument("--out", required=True, type=Path, help="JSON file: per benchmark, chance and the best answers")
    s.add_argument("--benchmarks", default="all", help="'all' or a comma list of llavakd/eval/benchmarks.yaml names")
    s.add_argument("--limit", type=int, help="the first N documents of each task (as llavakd eval --limit)")
    s.set_defaults(func=cmd_chance)
    s = sub.add_parser("eval", help="score a model on the paper's benchmarks through lmms-eval (fixed result files)",
                       description=_doc("llavakd.eval.runner"), formatter_class=_RawFormatter)
    s.add_argument("--model", required=True, type=Path, help="checkpoint folder (HF LlavaForConditionalGeneration)")
    s.add_argument("--benchmarks", default="all", help="'all' or a comma list of llavakd/eval/benchmarks.yaml names "
                   "(vqav2,gqa,vizwiz,sciqa,textvqa,mme,mmb,mmb_cn,pope,mmmu)")
    s.add_argument("--out", required=True, type=Path, help="folder for <benchmark>.json and <benchmark>.samples.jsonl")
    s.add_argument("--world", type=Path, help="tiny mode: score the stand-ins of this synth-world")
    s.add_argument("--limit", type=int, help="score only the first N documents of each task")
    s.add_argument("--batch-size", type=int, default=ev.batch_size,
                   help=f"generation batch (answers do not depend on it; default {ev.batch_size})")
    s.add_argument("--seed", type=int, default=0, help="lmms-eval's random seed (default 0)")
    s.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    s.add_argument("--dtype", default=ev.dtype, choices=DTYPES, help=f"weights' dtype (default {ev.dtype})")
    s.add_argument("--recompute", action="store_true",
                   help="score every benchmark again, even one finished earlier for this model and settings")
    s.add_argument("--submission", action="store_true",
                   help="also run the server-scored splits (VQAv2 test-dev, VizWiz test) to write submission files")
    s.add_argument("--hf-home", type=Path, help="a pre-filled Hugging Face cache with the official task data (offline)")
    s.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="lmms-eval: the stock tasks; paper: the variants that prompt and parse as upstream's "
                   "evaluation scripts did (llavakd.eval.paper; docs/evaluation.md)")
    s.add_argument("--pope-questions", type=Path, help="paper protocol: read POPE from upstream's files in this folder "
                   "(llava_pope_test.jsonl, coco/coco_pope_<split>.json, val2014/) instead of lmms-lab's copy")
    s.set_defaults(func=cmd_eval)
    s = sub.add_parser("agreement", help="how close a student is to its teacher: answer agreement, answer KL, "
                       "visual KL per benchmark", description=_doc("llavakd.eval.agreement"), formatter_class=_RawFormatter)
    s.add_argument("--student", required=True, type=Path, help="the student's checkpoint folder")
    s.add_argument("--teacher", required=True, type=Path, help="the teacher's checkpoint folder")
    s.add_argument("--out", required=True, type=Path, help="folder for <benchmark>.json (written whole, or not at all)")
    s.add_argument("--benchmarks", default="all", help="'all' or a comma list of llavakd/eval/benchmarks.yaml names")
    s.add_argument("--world", type=Path, help="tiny mode: the stand-ins of this synth-world")
    s.add_argument("--limit", type=int, help="the first N documents of each task (default: all)")
    s.add_argument("--dtype", default=ev.dtype, choices=DTYPES, help=f"weights' dtype (default {ev.dtype})")
    s.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    s.add_argument("--hf-home", type=Path, help="a pre-filled Hugging Face cache with the official task data (offline)")
    s.set_defaults(func=cmd_agreement)
    s = sub.add_parser("prefetch-benchmarks", help="download the benchmarks' datasets into a Hugging Face cache "
                       "(on a login node), for evaluation offline", description=_doc("llavakd.eval.prefetch"),
                       formatter_class=_RawFormatter)
    s.add_argument("--benchmarks", default="all", help="'all' or a comma list of llavakd/eval/benchmarks.yaml names")
    s.add_argument("--hf-home", required=True, type=Path, help="the cache to fill (HF_HOME of the evaluation jobs)")
    s.add_argument("--submission", action="store_true", help="also the server-scored splits' datasets")
    s.add_argument("--check", action="store_true", help="only list what the cache lacks (offline); exit 1 if anything")
    s.add_argument("--done", type=Path, help="write the list of datasets here once all are in (a workflow marker)")
    s.set_defaults(func=cmd_prefetch_benchmarks)
    s = sub.add_parser("lmms-tasks",
                       help="write llavakd's lmms-eval task YAMLs (evals/: rule-only MMBench-CN, paper variants)")
    s.add_argument("--out", required=True, type=Path, help="folder to pass to lmms-eval's --include_path")
    s.add_argument("--world", type=Path, help="also write the tiny stand-in tasks for this synth-world")
    s.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                   help="paper: also write the paper protocol's variants (<task>_paper)")
    s.set_defaults(func=cmd_lmms_tasks)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "hf_home", None):  # before transformers / datasets read the variables at import
        from llavakd.eval.prefetch import use_cache

        use_cache(args.hf_home, offline=args.command == "eval" or getattr(args, "check", False))
    _quiet_transformers()
    try:
        return args.func(args)
    except LlavaKDError as err:  # a user error: one line (ConfigError, NonFiniteError, UnknownNameError, ...)
        print(f"llavakd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except StoppedForResume as stop:  # a scheduler's signal: a checkpoint was written; run again with --resume
        print(f"llavakd {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    # anything else is a bug of ours: Python prints its traceback and exits 1


if __name__ == "__main__":
    sys.exit(main())
