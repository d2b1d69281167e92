"""lmms-eval task YAMLs that llavakd adds to the stock ones: a rule-only MMBench-CN, and where every
task's YAML lives.

    llavakd lmms-tasks --out evals --protocol paper     # the repository's evals/ folder
    python -m lmms_eval --model llavakd --model_args pretrained=DIR --include_path evals \\
        --tasks mmbench_cn_dev_static

The YAMLs written here are relocatable (llavakd.eval.taskfiles: a stock task merged in flat, its
functions named by absolute module, instead of an absolute ``include:``).

lmms-eval 0.7.3's own ``mmbench_cn_dev`` asks an OpenAI judge whenever its rule parser fails (and
retries five times per item offline); ``mmbench_cn_dev_static`` keeps its prompts and data and
swaps only the aggregation for the rule-based one. MMBench-EN has a stock static task
(``mmbench_en_dev_static``). The tiny world's stand-in tasks (``llavakd.tiny.tasks``) and the paper
protocol's variants (``llavakd.eval.paper``) build on these.
"""

from __future__ import annotations

from pathlib import Path

from llavakd.eval.taskfiles import Function, dump_task, flat_task, lmms_tasks_root  # noqa: F401  (re-exported)

HOOKS_MODULE = "llavakd_task_hooks"  # written beside the YAMLs: `!function` resolves from there
CN_STATIC = "mmbench_cn_dev_static"
# its metric: the stock score, aggregated by rules only (the stand-in MMBench-CN task reads it too)
CN_STATIC_METRIC = [{"metric": "gpt_eval_score", "aggregation": Function(f"{HOOKS_MODULE}.{CN_STATIC}"),
                     "higher_is_better": True}]




def stock_yaml() -> dict[str, str]:
    """Every task the registry runs (submission splits included) -> its YAML, relative to lmms_eval/tasks
    (the registry's ``yaml``); CN_STATIC is ours, written into the task folder, and includes its source."""
    from llavakd.eval.registry import load_registry

    return {task: rel for bench in load_registry().values() for task, rel in bench.yaml}


def mmbench_cn_dev_static(results, args=None) -> float:
    """MMBench-CN dev accuracy with rule-based answer extraction only (no judge model)."""
    from lmms_eval.tasks.mmbench.cn_utils import mmbench_evaluator

    overall_acc, _, _ = mmbench_evaluator.eval_result(results, eval_method="static")
    return overall_acc * 100


def write_task_yamls(folder: str | Path) -> dict[str, str]:
    """Write llavakd's task YAMLs and their hooks module into ``folder``; returns {registry task: lmms-eval
    task name} for every task of the registry (the stock tasks by their own names)."""
    from llavakd.eval.paper import HOOK_FUNCTIONS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{HOOKS_MODULE}.py").write_text(
        '"""The functions llavakd\'s task YAMLs name (`!function llavakd_task_hooks.f`), re-exported from the\n'
        'installed package; written by `llavakd lmms-tasks`."""\n\n'
        f"from llavakd.eval.paper import (  # noqa: F401\n{''.join(f'    {f},{chr(10)}' for f in HOOK_FUNCTIONS)})\n"
        f"from llavakd.eval.tasks import {CN_STATIC}  # noqa: F401\n")
    cn = {**flat_task(lmms_tasks_root() / stock_yaml()[CN_STATIC]), "task": CN_STATIC, "metric_list": CN_STATIC_METRIC}
    (folder / f"{CN_STATIC}.yaml").write_text(dump_task(cn, [
        f"# {CN_STATIC}: lmms-eval's {stock_yaml()[CN_STATIC]} scored by rule-based answer extraction only "
        "(llavakd.eval.tasks)"]))
    return {task: task for task in stock_yaml()}


def task_manager(folder: str | Path, stock: bool = True):
    """lmms-eval's TaskManager over ``folder``; ``stock=False`` leaves lmms-eval's own ~3,000 task files out of
    its index (about 10 s per process) when every task run is written in ``folder`` (stand-ins include
    the stock YAMLs by path, which needs no index)."""
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=stock)


def task_yaml(folder: str | Path, task: str, name: str) -> Path:
    """The YAML file of ``name`` (run for registry task ``task``): written into ``folder``, or lmms-eval's own."""
    written = Path(folder) / f"{name}.yaml"
    return written if written.is_file() else lmms_tasks_root() / stock_yaml()[task]


def write_protocol_yamls(folder: str | Path, names: dict[str, str], protocol: str,
                         pope_questions: str | Path | None = None) -> dict[str, str]:
    """The tasks to run under ``protocol``: ``names`` itself for lmms-eval's, the paper variants (written
    into ``folder``) for the paper's (POPE from upstream's files under ``pope_questions`` when given)."""
    from llavakd.eval.paper import write_paper_yamls
    from llavakd.protocols import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "lmms-eval":
        return dict(names)
    return write_paper_yamls(folder, names, lambda task, name: task_yaml(folder, task, name), HOOKS_MODULE,
                             pope_questions)
