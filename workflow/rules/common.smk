# Shared set-up: the validated study, paths, wildcard constraints, the command prefix.
# Paths come from llavakd.layout and chains from llavakd.stages: nothing here spells either.
import os
import sys
import threading
import time

from snakemake.exceptions import WorkflowError

from llavakd.attempts import SESSION_ENV
from llavakd.errors import ConfigError
from llavakd.io import atomic_write_text
from llavakd.eval.registry import resolve
from llavakd.layout import (
    AGREEMENT,
    METHODS,
    BUDGETS,
    VARIANCE,
    MODEL_REGEX,
    NAME_REGEX,
    OFFSET_FIGURE,
    SEED_REGEX,
    SEEDS,
    STUDY_FIGURES,
    TABLE1,
    TABLE_FORMATS,
    marker,
    parse_model,
)
from llavakd.plan import Study, cost_report, memory_report, methods_report, train_jobs
from llavakd.preempt import slurm_signal_flag
from llavakd.schedule import Schedule
from llavakd.protocols import SCORING_REVISION
from llavakd.stages import CHAIN_REGEX
from llavakd.tiny.tokenizer import catalogue as tiny_catalogue

try:
    STUDY = Study.load(config, source="snakemake config", tiny_llms=tiny_catalogue())
except ConfigError as err:
    raise WorkflowError(str(err))

C = (
    STUDY.cfg
)  # the typed study (llavakd.study): every setting a rule reads, with its default
L = STUDY.layout
R = L.root
REPORTS = L.reports
REPORT_FILES = L.report_files
TINY = STUDY.mode == "tiny"
WORLD = [marker(L.world_dir())] if TINY else []
CHANCE = [L.chance_file()] if TINY else []  # the reports' chance row (tiny mode)
BENCHMARKS = [b.name for b in resolve(C.eval.benchmarks)]
# Real mode with a data manifest: prepare_data fetches it first (a local rule). Tiny mode: the world.
PREPARED_DATA = WORLD if TINY else ([L.data_prepared()] if C.data.manifest else [])
DATA_REPORTS = [L.data_report(d) for d in STUDY.datasets()]
HF_HOME = C.eval.hf_home
# Real mode with a shared Hugging Face cache: evaluation runs offline, after prefetch_benchmarks
# (a local rule: it runs where snakemake runs, a login node with network access).
PREFETCHED = [L.prefetch_marker()] if HF_HOME and not TINY else []
TABLE_FORMATS = list(TABLE_FORMATS)
FIGURES = [REPORT_FILES.figure(name) for name in STUDY_FIGURES] + (
    [REPORT_FILES.figure(OFFSET_FIGURE, ext) for ext in ("png", "csv")]
    if C.released
    else []
)
# Every job's bash survives SIGTERM: on SLURM a time limit or a pre-emption sends it to every process
# of the job, and bash's default, dying, would end the job under the trainer while it checkpoints.
# With the trap, bash waits for its command and exits with its status (llavakd.preempt). The prefix is
# not part of a rule's code, so finished jobs stay finished.
shell.prefix("set -euo pipefail; trap : TERM; ")
# Shell commands run the interpreter that runs Snakemake (it has llavakd installed), named through
# the environment so that its path stays out of the rules' provenance: moving the checkout or the
# virtual environment does not make finished jobs look out of date.
os.environ.setdefault("LLAVAKD_PY", sys.executable)


wildcard_constraints:
    llm=NAME_REGEX,
    seed=SEED_REGEX,
    chain=CHAIN_REGEX,
    model=MODEL_REGEX,


def res(rule_name, key):
    """One resource of a rule, from llavakd.study.ResourcesSection.of (defaults in one place)."""
    return STUDY.resources(rule_name)[key]


_RENDER_LOCK = threading.Lock()


def render_for_rule(*args, **kwargs):
    """The report rules' entry point (llavakd.report.render), imported when a report is drawn, so
    planning never imports the plotting libraries; one at a time, as pyplot's state is global and
    `run:` jobs share the main process (profiles/default: force-use-threads)."""
    from llavakd.report.render import render_for_rule as render

    with _RENDER_LOCK:
        return render(*args, **kwargs)


# Each training and evaluation job's SLURM time from its price, capped by resources.max_runtime; a
# job over the cap runs in segments, so its rule retries once more for each segment beyond the first
# (on top of the profile's `retries`). llavakd/schedule.py; docs/workflow.md, "Time limits".
SCHEDULE = Schedule(STUDY)
TRAIN_JOBS = train_jobs(STUDY, STUDY.all_models())
EVAL_MODELS = STUDY.all_models()
SEGMENT_RETRIES = {
    "train": Schedule.extra_retries(
        [SCHEDULE.train(llm, seed, str(chain)) for llm, seed, chain in TRAIN_JOBS]
    ),
    "agreement": Schedule.extra_retries(
        [SCHEDULE.agreement(m) for m in STUDY.student_models()]
    ),
}
for _protocol in STUDY.protocols:
    SEGMENT_RETRIES[
        "evaluate" if _protocol == "lmms-eval" else f"evaluate_{_protocol}"
    ] = Schedule.extra_retries([SCHEDULE.evaluate(m) for m in EVAL_MODELS])


def add_segment_retries():
    """At the start of a run (the Snakefile's onstart; the retries are known only then): a rule whose
    longest job runs in segments retries that many more times than the profile's `retries`.
    """
    for name, extra in SEGMENT_RETRIES.items():
        if extra:
            workflow.get_rule(name).restart_times = (
                workflow.execution_settings.retries + extra
            )


# SLURM's warning to the trainer, resources.stop_warning seconds before the time limit (llavakd.preempt)
STOP_WARNING = slurm_signal_flag(C.resources.stop_warning)
# The job's session: llavakd.attempts gives up on a job that fails twice the same way within one
# invocation of Snakemake; local and SLURM jobs (--export=ALL) inherit it.
if workflow.is_main_process:
    os.environ.update({SESSION_ENV: f"{os.getpid()}-{time.time_ns()}"})

if workflow.is_main_process and C.cost:
    print(cost_report(STUDY, BENCHMARKS), file=sys.stderr)
    if not TINY:  # the estimate knows the paper's shapes, not the tiny world's
        print(memory_report(STUDY), file=sys.stderr)
    print(
        SCHEDULE.report(TRAIN_JOBS, EVAL_MODELS, STUDY.student_models()),
        file=sys.stderr,
    )


if workflow.is_main_process and (
    C.methods.budgets or C.methods.compute_matched or (C.cost and C.methods.compare)
):
    print(methods_report(STUDY), file=sys.stderr)


# -- input and parameter functions of the rules --------------------------------------------
def parent(path):
    return os.path.dirname(path)


TRAIN_NODES = int(res("train", "nodes"))
TRAIN_GPUS = int(res("train", "gpus"))  # per node


def train_cmd(wildcards, threads, resources):
    """The training launcher: torchrun over the job's GPUs when it has several; on several nodes,
    srun starts one torchrun agent per node (llavakd.multinode) with a c10d rendezvous.
    """
    if TRAIN_NODES > 1:
        return (
            f"srun --nodes {TRAIN_NODES} --ntasks-per-node 1 --kill-on-bad-exit=1 "
            f"$LLAVAKD_PY -m llavakd.multinode --nodes {TRAIN_NODES} --gpus-per-node {TRAIN_GPUS} --"
        )
    py = (
        f"$LLAVAKD_PY -m torch.distributed.run --standalone --nproc_per_node {TRAIN_GPUS}"
        if TRAIN_GPUS > 1
        else "$LLAVAKD_PY"
    )
    return f"$LLAVAKD_PY -m llavakd.launch --gpus {TRAIN_GPUS} -- {py} -m llavakd.cli train"


# SLURM resources of a training job. One node: `gpu` (the plugin's --gpus) and one task. Several
# nodes: the plugin's MPI-style job (its jobstep runs the command, which calls srun itself) with
# one task per node and the GPUs as a per-node GRES.
TRAIN_SLURM = (
    dict(gpu=TRAIN_GPUS)
    if TRAIN_NODES == 1
    else dict(
        gpu=0,
        nodes=TRAIN_NODES,
        tasks=TRAIN_NODES,
        tasks_per_gpu=0,
        mpi="srun",
        gres=f"gpu:{TRAIN_GPUS}",
    )
)


def eval_inputs(wc):
    out = {"world": WORLD, "prefetched": PREFETCHED}
    if (
        parse_model(wc.model).kind == "run"
    ):  # a given checkpoint is a parameter, not a job input
        out["model"] = marker(STUDY.model_dir(wc.model))
    return out


def agreement_inputs(wc):
    """A student's final model and its teacher's (a given teacher is a parameter, not a job input)."""
    teacher = STUDY.teacher_model(STUDY.teacher_of(parse_model(wc.model).llm))
    out = {
        "world": WORLD,
        "prefetched": PREFETCHED,
        "student": marker(STUDY.model_dir(wc.model)),
    }
    if parse_model(teacher).kind == "run":
        out["teacher"] = marker(STUDY.model_dir(teacher))
    return out


AGREEMENT_FILES = [marker(L.agreement_dir(m)) for m in STUDY.student_models()]
METHOD_MODELS = [
    m for ms in STUDY.method_models().values() for m in ms
]  # benchmark_methods
METHOD_AGREEMENT_FILES = [marker(L.agreement_dir(m)) for m in METHOD_MODELS]
METHOD_RUN_MARKERS = [  # the cost columns read each method job's run metadata
    L.final_marker(p.llm, p.seed, p.chain) for p in map(parse_model, METHOD_MODELS)
]
# with methods.budgets: the budget curves and the variance split (none otherwise: finished trees stay finished)
BUDGET_REPORT = (
    [REPORT_FILES.figure(BUDGETS), REPORT_FILES.table(VARIANCE, "csv")]
    if C.methods.budgets
    else []
)
METHODS_REPORT = (
    [REPORT_FILES.table(METHODS, ext) for ext in TABLE_FORMATS]
    + [REPORT_FILES.figure(METHODS)]
    + BUDGET_REPORT
)
AGREEMENT_REPORT = [REPORT_FILES.table(AGREEMENT, ext) for ext in ("md", "csv")] + [
    REPORT_FILES.figure(AGREEMENT)
]


def eval_files(models):
    """What the reports wait for: each model's evaluation folder, complete (its <benchmark>.json
    files are not declared outputs, so a rerun after a kill keeps the finished ones)."""
    return [marker(L.eval_dir(m, p)) for m in models for p in STUDY.protocols]


def ablation_eval_files(kind):
    groups = (
        STUDY.ablation_loss_models()
        if kind == "losses"
        else STUDY.ablation_stage_models()
    )
    return eval_files([m for ms in groups.values() for m in ms])


def kd_run_markers():
    """Every stage of every LLaVA-KD student (first seed): the training curves read them."""
    return [
        L.final_marker(llm, seed, chain)
        for llm, seed, chain in train_jobs(
            STUDY, STUDY.variant_models("llava_kd", seeds=STUDY.seeds[:1])
        )
    ]
