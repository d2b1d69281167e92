"""lmms-eval task YAMLs that llavakd adds to the stock ones: a rule-only MMBench-CN, and where every
task's YAML lives.

    llavakd lmms-tasks --out evals --protocol paper     # the repository's evals/ folder
    python -m lmms_eval --model llavakd --model_args pretrained=DIR --include_path evals \\
        --tasks mmbench_cn_dev_static

The YAMLs written here are relocatable: instead of ``include:`` of a stock file by its absolute path
(lmms-eval resolves an include relative to the working directory or to the including file only), a
task built on a stock one is written flat (``flat_task``): the stock file with its own includes merged
as lmms-eval merges them, and each of its ``!function utils.f`` named by absolute module
(``lmms_eval.tasks.<folder>.utils.f``, which lmms-eval imports wherever the folder sits).

lmms-eval 0.7.3's own ``mmbench_cn_dev`` asks an OpenAI judge whenever its rule parser fails (and
retries five times per item offline); ``mmbench_cn_dev_static`` keeps its prompts and data and
swaps only the aggregation for the rule-based one. MMBench-EN has a stock static task
(``mmbench_en_dev_static``). The tiny world's stand-in tasks (``llavakd.tiny.tasks``) and the paper
protocol's variants (``llavakd.eval.paper``) build on these.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

HOOKS_MODULE = "llavakd_task_hooks"  # written beside the YAMLs: `!function` resolves from there
CN_STATIC = "mmbench_cn_dev_static"
CN_STATIC_METRIC = ("metric_list:\n  - metric: gpt_eval_score\n"
                    f"    aggregation: !function {HOOKS_MODULE}.{CN_STATIC}\n"
                    "    higher_is_better: true\n")




def stock_yaml() -> dict[str, str]:
    """Every task the registry runs (submission splits included) -> its YAML, relative to lmms_eval/tasks
    (the registry's ``yaml``); CN_STATIC is ours, written into the task folder, and includes its source."""
    from llavakd.eval.registry import load_registry

    return {task: rel for bench in load_registry().values() for task, rel in bench.yaml}


class Function(str):
    """A ``!function`` entry of a task YAML (its dotted name), kept as such through a merge and a dump."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))
_Dumper.add_representer(Function, lambda dumper, f: dumper.represent_scalar("!function", str(f)))


def _absolute(value, folder: Path):
    """``!function`` names of a stock file (relative: ``utils.f``, a module beside it) made absolute."""
    if isinstance(value, Function):
        *module, fn = value.split(".")
        beside = folder / "/".join(module)
        if beside.with_suffix(".py").is_file() and lmms_tasks_root() in beside.parents:
            rel = beside.relative_to(lmms_tasks_root())
            return Function(".".join(("lmms_eval", "tasks", *rel.parts, fn)))
        return value
    if isinstance(value, dict):
        return {k: _absolute(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    return value


def flat_task(path: str | Path) -> dict:
    """A task YAML with its includes merged (each included file first, the file's own keys over them, as
    lmms-eval's ``load_yaml_config`` merges) and its functions named by absolute module."""
    path = Path(path)
    raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    out: dict = {}
    includes = raw.pop("include", [])
    for inc in [includes] if isinstance(includes, str) else includes:
        out.update(flat_task(Path(inc) if Path(inc).is_absolute() else path.parent / inc))
    out.update(_absolute(raw, path.parent))
    return out


def dump_task(config: dict, head: list[str] | None = None) -> str:
    """A task YAML's text: comment lines, then the config (``!function`` entries as such)."""
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    body = re.sub(r"!function '([\w.]+)'", r"!function \1", body)  # PyYAML quotes a tagged scalar; names need not
    return "".join(f"{line}\n" for line in head or []) + body


def mmbench_cn_dev_static(results, args=None) -> float:
    """MMBench-CN dev accuracy with rule-based answer extraction only (no judge model)."""
    from lmms_eval.tasks.mmbench.cn_utils import mmbench_evaluator

    overall_acc, _, _ = mmbench_evaluator.eval_result(results, eval_method="static")
    return overall_acc * 100


def lmms_tasks_root() -> Path:
    import lmms_eval.tasks as tasks_pkg

    return Path(tasks_pkg.__file__).parent


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
    cn = {**flat_task(lmms_tasks_root() / stock_yaml()[CN_STATIC]), "task": CN_STATIC, "metric_list": [
        {"metric": "gpt_eval_score", "aggregation": Function(f"{HOOKS_MODULE}.{CN_STATIC}"), "higher_is_better": True}]}
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
