"""The benchmarks' datasets in a Hugging Face cache, for compute nodes without network access.

    llavakd prefetch-benchmarks --benchmarks all --hf-home /data/hf      # on a login node
    llavakd eval --model DIR --benchmarks all --out DIR --hf-home /data/hf  # on a compute node: offline

``benchmark_datasets`` reads each lmms-eval task's YAML (its ``include`` chain, without building the
task, which would download) for the dataset it loads, plus the registry's ``extra_datasets`` that a
task's own code loads. ``prefetch`` downloads them into ``hf_home`` with ``datasets.load_dataset``,
as lmms-eval would; ``missing`` checks, offline, that each one is in the cache, so an evaluation
fails before any model is loaded with one line naming the dataset that is not there. Our own code
only because lmms-eval has no prefetch step: it downloads a task's data when the task first runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from llavakd.errors import LlavaKDError
from llavakd.eval.registry import Benchmark

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass(frozen=True)
class Dataset:
    path: str  # hub id
    name: str | None  # config name
    kwargs: tuple = ()  # the task's dataset_kwargs (token, ...)
    used_by: str = ""

    def label(self) -> str:
        return f"{self.path}" + (f" ({self.name})" if self.name else "")


class _Loader(yaml.SafeLoader):
    """Reads task YAMLs without resolving lmms-eval's ``!function`` tags (they import task code)."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _task_config(yaml_path: Path) -> dict:
    cfg = yaml.load(yaml_path.read_text(), Loader=_Loader) or {}
    include = cfg.pop("include", None)
    if include:
        base = _task_config((yaml_path.parent / include) if not Path(include).is_absolute() else Path(include))
        cfg = {**base, **cfg}
    return cfg


def benchmark_datasets(benches: list[Benchmark], submission: bool = False) -> list[Dataset]:
    """Every dataset the benchmarks' tasks load, each once, in order."""
    from lmms_eval.tasks import TaskManager

    from llavakd.eval.tasks import CN_STATIC, lmms_tasks_root, stock_yaml

    index = TaskManager().task_index
    ours = {CN_STATIC: lmms_tasks_root() / stock_yaml()[CN_STATIC]}  # llavakd's tasks: the stock file they include
    out: dict[tuple, Dataset] = {}
    for b in benches:
        for task in list(b.tasks) + (list(b.submission) if submission else []):
            if task in ours:
                yaml_path = ours[task]
            elif task in index and index[task]["yaml_path"] != -1:
                yaml_path = Path(index[task]["yaml_path"])
            else:
                raise LlavaKDError(f"{b.name}: lmms-eval has no task {task!r}")
            cfg = _task_config(yaml_path)
            if not cfg.get("dataset_path"):
                raise LlavaKDError(f"{b.name}: task {task} names no dataset_path")
            kwargs = tuple(sorted((k, v) for k, v in (cfg.get("dataset_kwargs") or {}).items() if k == "token"))
            key = (cfg["dataset_path"], cfg.get("dataset_name"))
            out.setdefault(key, Dataset(*key, kwargs, task))
        for path, name in b.extra_datasets:
            out.setdefault((path, name), Dataset(path, name, (("token", True),), b.name))
    return list(out.values())


def use_cache(hf_home: str | Path, offline: bool) -> None:
    """Point the hub and datasets libraries at ``hf_home`` (and, for evaluation, offline mode).

    Both libraries read these variables when first imported, so the CLI calls this before it
    imports anything that imports them; a process that imported them already is not moved."""
    os.environ["HF_HOME"] = str(hf_home)
    if offline:
        os.environ.update(OFFLINE)


def missing(datasets: list[Dataset]) -> list[Dataset]:
    """The datasets the cache of this process (``use_cache``) lacks, checked without loading data."""
    import datasets as hf_datasets

    out = []
    for d in datasets:
        try:
            hf_datasets.load_dataset_builder(d.path, d.name, **dict(d.kwargs))
        except Exception:  # noqa: BLE001 - datasets raises assorted types for "not cached"
            out.append(d)
    return out


def prefetch(datasets: list[Dataset], hf_home: str | Path, log=print) -> None:
    """Download every dataset into the cache (resumable: what is cached is not fetched again)."""
    import datasets as hf_datasets

    Path(hf_home).mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(datasets, 1):
        log(f"[{i}/{len(datasets)}] {d.label()} (for {d.used_by})")
        try:
            hf_datasets.load_dataset(d.path, d.name, **dict(d.kwargs))
        except Exception as err:  # noqa: BLE001 - network, auth, a renamed dataset
            raise LlavaKDError(f"{d.label()}: could not be fetched into {hf_home}: {type(err).__name__}: {err}") from err
