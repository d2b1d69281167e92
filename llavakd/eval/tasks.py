"""lmms-eval task YAMLs that llavakd adds to the stock ones: a rule-only MMBench-CN.

    llavakd lmms-tasks --out evals_tasks
    python -m lmms_eval --model llavakd --model_args pretrained=DIR --include_path evals_tasks \\
        --tasks mmbench_cn_dev_static

lmms-eval 0.7.3's own ``mmbench_cn_dev`` asks an OpenAI judge whenever its rule parser fails (and
retries five times per item offline); ``mmbench_cn_dev_static`` keeps its prompts and data and
swaps only the aggregation for the rule-based one. MMBench-EN has a stock static task
(``mmbench_en_dev_static``). The tiny world's stand-in tasks build on these (``llavakd.tiny.tasks``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

HOOKS_MODULE = "llavakd_task_hooks"  # written beside the YAMLs: `!function` resolves from there
CN_STATIC = "mmbench_cn_dev_static"
CN_STATIC_SOURCE = "mmbench/mmbench_cn_dev.yaml"  # the stock task it includes, relative to lmms_eval/tasks
CN_STATIC_METRIC = ("metric_list:\n  - metric: gpt_eval_score\n"
                    f"    aggregation: !function {HOOKS_MODULE}.{CN_STATIC}\n"
                    "    higher_is_better: true\n")


def mmbench_cn_dev_static(results, args=None) -> float:
    """MMBench-CN dev accuracy with rule-based answer extraction only (no judge model)."""
    from lmms_eval.tasks.mmbench.cn_utils import mmbench_evaluator

    overall_acc, _, _ = mmbench_evaluator.eval_result(results, eval_method="static")
    return overall_acc * 100


def lmms_tasks_root() -> Path:
    import lmms_eval.tasks as tasks_pkg

    return Path(tasks_pkg.__file__).parent


def write_task_yamls(folder: str | Path) -> dict[str, str]:
    """Write llavakd's task YAMLs into ``folder``; returns {registry task: lmms-eval task name} (identity)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{HOOKS_MODULE}.py").write_text(f"from llavakd.eval.tasks import {CN_STATIC}  # noqa: F401\n")
    cn = {"include": str(lmms_tasks_root() / CN_STATIC_SOURCE), "task": CN_STATIC}
    (folder / f"{CN_STATIC}.yaml").write_text(yaml.safe_dump(cn, sort_keys=False) + CN_STATIC_METRIC)
    return {CN_STATIC: CN_STATIC}
