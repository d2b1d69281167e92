# Shared set-up: the validated study, paths, wildcard constraints, the command prefix.
import os
import sys

from snakemake.exceptions import WorkflowError

from llavakd.errors import ConfigError
from llavakd.eval.registry import resolve
from llavakd.plan import Study, cost_report
from llavakd.report.render import render_for_rule

try:
    STUDY = Study.load(config, source="snakemake config")
except ConfigError as err:
    raise WorkflowError(str(err))

R = STUDY.root
REPORTS = f"reports/{STUDY.run}"
TINY = STUDY.mode == "tiny"
WORLD = [f"{R}/world/COMPLETE"] if TINY else []
BENCHMARKS = [b.name for b in resolve(config["eval"].get("benchmarks", "all"))]
TABLE_FORMATS = ["md", "csv", "tex", "html"]
FIGURES = [
    f"{REPORTS}/figures/{name}.png"
    for name in ("benchmarks", "overview", "training_curves")
] + ([f"{REPORTS}/figures/protocol_offset.png"] if config.get("released") else [])
# Shell commands run the interpreter that runs Snakemake (it has llavakd installed), named through
# the environment so that its path stays out of the rules' provenance: moving the checkout or the
# virtual environment does not make finished jobs look out of date.
os.environ.setdefault("LLAVAKD_PY", sys.executable)


wildcard_constraints:
    llm=r"[A-Za-z0-9._-]+",
    seed=r"\d+",
    chain=r"(pt|sft|dpt|dft)(~[a-z+]+)?(--(pt|sft|dpt|dft)(~[a-z+]+)?)*",
    model=r"[A-Za-z0-9._-]+/(s\d+/[a-z~+-]+|given)|released/[A-Za-z0-9._-]+",


def res(rule_name, key, default):
    return STUDY.resources(rule_name).get(key, default)


if workflow.is_main_process and config.get("cost"):
    print(cost_report(STUDY, BENCHMARKS), file=sys.stderr)


# -- input and parameter functions of the rules --------------------------------------------
def parent(path):
    return os.path.dirname(path)


def train_cmd(wildcards, threads, resources):
    """The training launcher: torchrun over the job's GPUs when it has several."""
    gpus = int(resources.gpu)
    py = (
        f"$LLAVAKD_PY -m torch.distributed.run --standalone --nproc_per_node {gpus}"
        if gpus > 1
        else "$LLAVAKD_PY"
    )
    return f"$LLAVAKD_PY -m llavakd.launch --gpus {gpus} -- {py} -m llavakd.cli train"


def eval_inputs(wc):
    if os.path.basename(wc.model) == "given" or wc.model.startswith("released"):
        return {"world": WORLD}  # a given checkpoint is a parameter, not a job input
    return {
        "model": os.path.join(STUDY.model_dir(wc.model), "COMPLETE"),
        "world": WORLD,
    }


def eval_files(models):
    return [f"{R}/eval/{m}/{b}.json" for m in models for b in BENCHMARKS]


def ablation_eval_files(kind):
    groups = (
        STUDY.ablation_loss_models()
        if kind == "losses"
        else STUDY.ablation_stage_models()
    )
    return eval_files([m for ms in groups.values() for m in ms])


def kd_run_markers():
    """Every stage of every LLaVA-KD student (first seed): the training curves read them."""
    chain = STUDY.variants["llava_kd"].split("--")
    return [
        f"{R}/runs/{s}/s{STUDY.seeds[0]}/{'--'.join(chain[:i + 1])}/final/COMPLETE"
        for s in STUDY.students()
        for i in range(len(chain))
    ]
