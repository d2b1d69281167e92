"""lmms-eval task YAMLs that llavakd adds: rule-only MMBench-CN, and the stand-ins for tiny mode.

    llavakd lmms-tasks --out evals_tasks [--world results/demo/world]
    python -m lmms_eval --model llavakd --model_args pretrained=DIR --include_path evals_tasks \\
        --tasks mmbench_cn_dev_static            # or llavakd_tiny_gqa, ... with --world

``write_task_yamls(folder)`` always writes ``mmbench_cn_dev_static``: lmms-eval 0.7.3's own
``mmbench_cn_dev`` asks an OpenAI judge whenever its rule parser fails (and retries five times
per item offline); this task keeps its prompts and data and swaps only the aggregation for the
rule-based one. MMBench-EN has a stock static task (``mmbench_en_dev_static``).

With a world it also writes ``llavakd_tiny_<task>`` for every task in the registry: each YAML
``include``s the installed lmms-eval task file (prompts, generation settings, scoring functions
stay lmms-eval's own) and overrides only where the data comes from: the stand-in's local parquet.
GQA's ``process_docs`` (which fetches the images from the hub) is switched off, since the
stand-in embeds its images.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llavakd.errors import LlavaKDError
from llavakd.eval.standins import STANDIN_TASKS

# registry task name -> (the lmms-eval YAML it comes from, relative to lmms_eval/tasks; its stand-in)
TASK_FILES = {
    "vqav2_val": ("vqav2/vqav2_val.yaml", "vqav2_val"),
    "gqa": ("gqa/gqa.yaml", "gqa"),
    "vizwiz_vqa_val": ("vizwiz_vqa/vizwiz_vqa_val.yaml", "vizwiz_vqa_val"),
    "scienceqa_img": ("scienceqa/scienceqa_img.yaml", "scienceqa_img"),
    "textvqa_val": ("textvqa/textvqa_val.yaml", "textvqa_val"),
    "mme": ("mme/mme.yaml", "mme"),
    "mmbench_en_dev_static": ("mmbench/mmbench_en_dev_static.yaml", "mmbench_en_dev"),
    "mmbench_cn_dev_static": ("mmbench/mmbench_cn_dev.yaml", "mmbench_cn_dev"),
    "pope_adv": ("pope/pope_adv.yaml", "pope_adv"),
    "pope_pop": ("pope/pope_pop.yaml", "pope_pop"),
    "pope_random": ("pope/pope_random.yaml", "pope_random"),
    "mmmu_val": ("mmmu/mmmu_val.yaml", "mmmu_val"),
}

HOOKS_MODULE = "llavakd_task_hooks"  # written beside the YAMLs: `!function` resolves from there
CN_STATIC_METRIC = ("metric_list:\n  - metric: gpt_eval_score\n"
                    f"    aggregation: !function {HOOKS_MODULE}.mmbench_cn_dev_static\n"
                    "    higher_is_better: true\n")


def mmbench_cn_dev_static(results, args=None) -> float:
    """MMBench-CN dev accuracy with rule-based answer extraction only (no judge model)."""
    from lmms_eval.tasks.mmbench.cn_utils import mmbench_evaluator

    overall_acc, _, _ = mmbench_evaluator.eval_result(results, eval_method="static")
    return overall_acc * 100


def _lmms_tasks_root() -> Path:
    import lmms_eval.tasks as tasks_pkg

    return Path(tasks_pkg.__file__).parent


def write_task_yamls(folder: str | Path, world: str | Path | None = None) -> dict[str, str]:
    """Write the YAMLs into ``folder``; returns {registry task: lmms-eval task name to run}."""
    root, folder = _lmms_tasks_root(), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{HOOKS_MODULE}.py").write_text("from llavakd.eval.tiny_tasks import mmbench_cn_dev_static  # noqa: F401\n")
    cn = {"include": str(root / TASK_FILES["mmbench_cn_dev_static"][0]), "task": "mmbench_cn_dev_static"}
    (folder / "mmbench_cn_dev_static.yaml").write_text(yaml.safe_dump(cn, sort_keys=False) + CN_STATIC_METRIC)
    names = {t: t for t in TASK_FILES}
    if world is None:
        return names
    world = Path(world).resolve()
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
        if task == "mmbench_cn_dev_static":  # a `!function` tag, which safe_dump cannot write
            text += CN_STATIC_METRIC
        (folder / f"{name}.yaml").write_text(text)
        names[task] = name
    return names
