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

import yaml

from llavakd.errors import LlavaKDError
from llavakd.eval.tasks import CN_STATIC, CN_STATIC_METRIC, CN_STATIC_SOURCE, lmms_tasks_root, write_task_yamls
from llavakd.tiny.score import STANDIN_TASKS

# registry task name -> (the lmms-eval YAML it comes from, relative to lmms_eval/tasks; its stand-in)
TASK_FILES = {
    "vqav2_val": ("vqav2/vqav2_val.yaml", "vqav2_val"),
    "gqa": ("gqa/gqa.yaml", "gqa"),
    "vizwiz_vqa_val": ("vizwiz_vqa/vizwiz_vqa_val.yaml", "vizwiz_vqa_val"),
    "scienceqa_img": ("scienceqa/scienceqa_img.yaml", "scienceqa_img"),
    "textvqa_val": ("textvqa/textvqa_val.yaml", "textvqa_val"),
    "mme": ("mme/mme.yaml", "mme"),
    "mmbench_en_dev_static": ("mmbench/mmbench_en_dev_static.yaml", "mmbench_en_dev"),
    CN_STATIC: (CN_STATIC_SOURCE, "mmbench_cn_dev"),
    "pope_adv": ("pope/pope_adv.yaml", "pope_adv"),
    "pope_pop": ("pope/pope_pop.yaml", "pope_pop"),
    "pope_random": ("pope/pope_random.yaml", "pope_random"),
    "mmmu_val": ("mmmu/mmmu_val.yaml", "mmmu_val"),
    # the server-scored splits (--submission): the stock test task, run on the local stand-in
    "vqav2_test": ("vqav2/vqav2_test.yaml", "vqav2_val"),
    "vizwiz_vqa_test": ("vizwiz_vqa/vizwiz_vqa_test.yaml", "vizwiz_vqa_val"),
}


def write_standin_yamls(folder: str | Path, world: str | Path) -> dict[str, str]:
    """Write llavakd's tasks and the stand-ins into ``folder``; returns {registry task: task to run}."""
    folder = Path(folder)
    names = write_task_yamls(folder)
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
        text = yaml.safe_dump(spec, sort_keys=False)
        if task == CN_STATIC:  # a `!function` tag, which safe_dump cannot write
            text += CN_STATIC_METRIC
        (folder / f"{name}.yaml").write_text(text)
        names[task] = name
    return names


def standin_tasks(world: str | Path):
    """The task writer ``evaluate(..., standins=...)`` takes: score on this world's stand-ins."""
    return lambda folder: write_standin_yamls(folder, world)
