"""Tiny-mode lmms-eval tasks: the stock task definitions, pointed at the synthetic stand-ins.

    write_tiny_tasks(world, folder)  ->  {"mme": "llavakd_tiny_mme", ...}
    simple_evaluate(model="llavakd", tasks=[...], task_manager=TaskManager(include_path=folder))

Each YAML ``include``s the installed lmms-eval task file (prompts, generation settings, scoring
functions stay lmms-eval's own) and overrides only where the data comes from: local parquet.
GQA's ``process_docs`` (which fetches the images from the hub) is switched off, since the
stand-in embeds its images. MMBench answers are extracted by rules only: EN through lmms-eval's
own static task, CN through ``mmbench_cn_dev_static`` below (lmms-eval's CN aggregation would ask
an OpenAI judge whenever its rule parser fails).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llavakd.eval.standins import STANDIN_TASKS

# our stand-in task name -> the lmms-eval YAML that defines it (relative to lmms_eval/tasks)
TASK_FILES = {
    "vqav2_val": "vqav2/vqav2_val.yaml", "gqa": "gqa/gqa.yaml", "vizwiz_vqa_val": "vizwiz_vqa/vizwiz_vqa_val.yaml",
    "scienceqa_img": "scienceqa/scienceqa_img.yaml", "textvqa_val": "textvqa/textvqa_val.yaml", "mme": "mme/mme.yaml",
    "mmbench_en_dev": "mmbench/mmbench_en_dev_static.yaml",  # rule-only answer extraction, no OpenAI judge
    "mmbench_cn_dev": "mmbench/mmbench_cn_dev.yaml",
    "pope_adv": "pope/pope_adv.yaml", "pope_pop": "pope/pope_pop.yaml", "pope_random": "pope/pope_random.yaml",
    "mmmu_val": "mmmu/mmmu_val.yaml",
}


HOOKS_MODULE = "llavakd_tiny_hooks"  # written beside the YAMLs: `!function` resolves from there


def mmbench_cn_dev_static(results, args=None) -> float:
    """MMBench-CN dev accuracy with rule-based answer extraction only (no judge model)."""
    from lmms_eval.tasks.mmbench.cn_utils import mmbench_evaluator

    overall_acc, _, _ = mmbench_evaluator.eval_result(results, eval_method="static")
    return overall_acc * 100


def write_tiny_tasks(world: str | Path, folder: str | Path) -> dict[str, str]:
    import lmms_eval.tasks as tasks_pkg

    root = Path(tasks_pkg.__file__).parent
    world, folder = Path(world).resolve(), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for task, rel in TASK_FILES.items():
        stand_folder, split, *_ = STANDIN_TASKS[task]
        data = world / "bench" / stand_folder / f"{split}.parquet"
        if not data.is_file():
            raise FileNotFoundError(f"stand-in {data} is missing; run llavakd synth-world")
        name = f"llavakd_tiny_{task}"
        spec = {
            "include": str(root / rel), "task": name, "dataset_path": "parquet", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data)}}, "test_split": split,
        }
        if task == "gqa":
            spec["process_docs"] = None
        text = yaml.safe_dump(spec, sort_keys=False)
        if task == "mmbench_cn_dev":  # a `!function` tag, which safe_dump cannot write
            text += ("metric_list:\n  - metric: gpt_eval_score\n"
                     f"    aggregation: !function {HOOKS_MODULE}.mmbench_cn_dev_static\n"
                     "    higher_is_better: true\n")
        (folder / f"{name}.yaml").write_text(text)
        names[task] = name
    (folder / f"{HOOKS_MODULE}.py").write_text("from llavakd.eval.tiny_tasks import mmbench_cn_dev_static  # noqa: F401\n")
    return names
