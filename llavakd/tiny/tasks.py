"""lmms-eval tasks for the tiny world's stand-ins: the stock tasks, reading local parquet files.

    llavakd lmms-tasks --out evals_tasks --world results/demo/world
    python -m lmms_eval --model llavakd --model_args pretrained=DIR --include_path evals_tasks \\
        --tasks llavakd_tiny_gqa

``write_standin_yamls(folder, world)`` writes ``llavakd_tiny_<task>`` for every task in the
registry: each YAML ``include``s the installed lmms-eval task file (prompts, generation settings,
scoring functions stay lmms-eval's own) and overrides only where the data comes from: the
stand-in's local parquet. GQA's ``process_docs`` (which fetches the images from the hub) is
switched off, since the stand-in embeds its images. ``standin_tasks(world)`` is what
``llavakd.eval.runner.evaluate`` takes to score a model on them.
"""

from __future__ import annotations

from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.eval.registry import load_registry
from llavakd.eval.taskfiles import dump_task
from llavakd.eval.tasks import CN_STATIC, CN_STATIC_METRIC, lmms_tasks_root, stock_yaml, write_task_yamls
from llavakd.tiny.score import STANDIN_TASKS

# registry task -> the stand-in split it runs on (the registry's ``standin``: llavakd.tiny.score.STANDIN_TASKS);
# the server-scored splits (--submission) run the stock test task on the local val stand-in. A column
# without a stand-in is refused in tiny mode (llavakd.plan).
STANDIN_OF = {task: standin for bench in load_registry().values() for task, standin in (bench.standin or ())}
TASK_FILES = {task: (stock_yaml()[task], standin) for task, standin in STANDIN_OF.items()}


def write_standin_yamls(folder: str | Path, world: str | Path) -> dict[str, str]:
    """Write llavakd's tasks and the stand-ins into ``folder``; returns {registry task: task to run}."""
    folder = Path(folder)
    names = {t: n for t, n in write_task_yamls(folder).items() if t in STANDIN_OF}  # tiny mode: stand-ins only
    root, world = lmms_tasks_root(), Path(world).resolve()
    for task, (rel, standin) in TASK_FILES.items():
        stand_folder, split, *_ = STANDIN_TASKS[standin]
        data = world / "bench" / stand_folder / f"{split}.parquet"
        if not data.is_file():
            raise LlavaKDError(f"stand-in {data} is missing; is {world} a world written by llavakd synth-world?")
        name = f"llavakd_tiny_{task}"
        spec = {
            "include": str(root / rel), "task": name, "dataset_path": "parquet", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data)}}, "test_split": split,
        }
        if task == "gqa":
            spec["process_docs"] = None
        if task == CN_STATIC:
            spec["metric_list"] = CN_STATIC_METRIC
        (folder / f"{name}.yaml").write_text(dump_task(spec))
        names[task] = name
    return names


def standin_tasks(world: str | Path):
    """The task writer ``evaluate(..., standins=...)`` takes: score on this world's stand-ins."""
    return lambda folder: write_standin_yamls(folder, world)
