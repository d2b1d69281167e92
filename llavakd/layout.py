"""The one home of a study's file layout and of model names; the rules, the planner and the reports use it.

    layout = Layout("demo")
    layout.final_marker("qwen1.5-0.5b", 0, "dpt--sft")  # results/demo/runs/qwen1.5-0.5b/s0/dpt--sft/final/COMPLETE
    layout.eval_file("qwen1.5-0.5b/s0/pt--sft", "gqa")  # results/demo/eval/qwen1.5-0.5b/s0/pt--sft/gqa.json

    results/<run>/world/                          the synthetic world (tiny mode)
    results/<run>/chance.json                     chance on its stand-ins (tiny mode)
    results/<run>/components/                     tiny SigLIP + LLMs (tiny mode)
    results/<run>/models/<llm>/s<seed>/init/      the freshly assembled LLaVA a chain starts from
    results/<run>/configs/<llm>/s<seed>/<chain>.yaml   the validated config of one training job
    results/<run>/runs/<llm>/s<seed>/<chain>/     one training job (RunDir): config.yaml, metrics.jsonl,
                                                  metadata.json, checkpoints/checkpoint-N/, final/
    results/<run>/eval/<model>/<benchmark>.json   one benchmark's result for one model (lmms-eval protocol)
    results/<run>/agreement/<model>/<benchmark>.json   a student's agreement with its teacher
    results/<run>/eval-paper/<model>/...          the same under the paper's protocol (llavakd.eval.paper)
    results/<run>/logs/..., results/<run>/benchmarks/...   Snakemake logs and timings
    reports/<run>/                                tables and figures (Reports)

A *model name* is ``<llm>/s<seed>/<chain>`` for a trained run, ``<llm>/given`` for a teacher given as a
checkpoint, ``released/<name>`` for a released checkpoint. Every method accepts Snakemake wildcard
placeholders (``"{llm}"``) as well as values, so the rules build their patterns from the same code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from llavakd.io import ATTEMPTS, COMPLETE_MARKER
from llavakd.protocols import DEFAULT_PROTOCOL
from llavakd.stages import CHAIN_REGEX

NAME_REGEX = r"[A-Za-z0-9._-]+"  # an LLM or a released checkpoint's name
SEED_REGEX = r"\d+"
MODEL_REGEX = rf"{NAME_REGEX}/(?:s{SEED_REGEX}/{CHAIN_REGEX}|given)|released/{NAME_REGEX}"


@dataclass(frozen=True)
class ModelName:
    kind: str  # "run" | "given" | "released"
    llm: str  # the LLM (for "released": the checkpoint's name)
    seed: int | None = None
    chain: str | None = None


def model_name(llm: str, seed, chain) -> str:
    return f"{llm}/s{seed}/{chain}"


def given_name(llm: str) -> str:
    return f"{llm}/given"


def released_name(name: str) -> str:
    return f"released/{name}"


@functools.lru_cache(maxsize=8192)
def parse_model(name: str) -> ModelName:
    head, _, rest = name.partition("/")
    if head == "released":
        return ModelName("released", rest)
    if rest == "given":
        return ModelName("given", head)
    seed, _, chain = rest.partition("/")
    if not (seed.startswith("s") and seed[1:].isdigit() and chain):
        raise ValueError(f"bad model name {name!r}: expected <llm>/s<seed>/<chain>, <llm>/given or released/<name>")
    return ModelName("run", head, int(seed[1:]), chain)


def marker(folder: str) -> str:
    """The completion marker of an output folder (written last; a folder without one is unfinished)."""
    return f"{folder}/{COMPLETE_MARKER}"


# -- one training run's folder (a StageConfig's output_dir; llavakd.train.run writes it) ----------
RUN_CONFIG = "config.yaml"  # the resolved stage config
RUN_METRICS = "metrics.jsonl"  # one line per logging step
RUN_METADATA = "metadata.json"  # commit, versions, batch decomposition, tokens/s, peak memory, wall time
RUN_CHECKPOINTS = "checkpoints"  # checkpoint-N folders, each with its COMPLETE marker
RUN_FINAL = "final"  # the trained model + processor, COMPLETE last
RUN_FINAL_STAGING = ".final-staging"  # final/ while it is written
RUN_ATTEMPTS = ATTEMPTS  # how each attempt at the job began and ended (llavakd.attempts)
FINAL_METADATA = "llavakd_run.json"  # metadata.json's copy inside final/
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' checkpoint folder names: checkpoint-<step>
LOSS_PARTS = "loss_parts.safetensors"  # in a checkpoint: the objective's learnable parts (llavakd.distill.parts)

# -- a study's reports (reports/<run>/) ------------------------------------------------------------
TABLE_FORMATS = ("md", "csv", "tex", "html")
TABLE1, SEEDS, AGREEMENT = "table1", "seeds", "agreement"  # tables (AGREEMENT: also a figure)
STUDY_FIGURES = ("benchmarks", "overview", "training_curves")  # figures of every study
METHODS = "methods"  # benchmark_methods: a table and a figure
BUDGETS, VARIANCE = "budgets", "variance"  # benchmark_methods with methods.budgets: a figure and a csv
OFFSET_FIGURE = "protocol_offset"  # with released checkpoints: .png and .csv


@dataclass(frozen=True)
class RunDir:
    """The files of one training run's folder."""

    path: str

    def _join(self, name: str) -> str:
        return f"{self.path}/{name}"

    @property
    def config(self) -> str:
        return self._join(RUN_CONFIG)

    @property
    def metrics(self) -> str:
        return self._join(RUN_METRICS)

    @property
    def metadata(self) -> str:
        return self._join(RUN_METADATA)

    @property
    def checkpoints(self) -> str:
        return self._join(RUN_CHECKPOINTS)

    @property
    def final(self) -> str:
        return self._join(RUN_FINAL)

    @property
    def final_staging(self) -> str:
        return self._join(RUN_FINAL_STAGING)

    @property
    def attempts(self) -> str:
        return self._join(RUN_ATTEMPTS)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


@dataclass(frozen=True)
class Reports:
    """The files of a study's reports folder (reports/<run>/, or any folder the report code is given)."""

    root: str

    def table(self, name: str, ext: str) -> str:
        """A table: ``table1``, ``seeds``, ``agreement`` or ``ablation_<kind>``, in one format."""
        return f"{self.root}/{name}.{ext}"

    def stem(self, name: str) -> str:
        """A table's path without its format (what the table writers add ``.<ext>`` to)."""
        return f"{self.root}/{name}"

    def figure(self, name: str, ext: str = "png") -> str:
        return f"{self.root}/figures/{name}.{ext}"

    @staticmethod
    def ablation(kind) -> str:
        """The ablation table of one kind (``losses`` or ``stages``; a Snakemake placeholder works too)."""
        return f"ablation_{kind}"


@dataclass(frozen=True)
class Layout:
    run: str

    @property
    def root(self) -> str:
        return f"results/{self.run}"

    @property
    def reports(self) -> str:
        return f"reports/{self.run}"

    @property
    def report_files(self) -> Reports:
        return Reports(self.reports)

    def world_dir(self) -> str:
        return f"{self.root}/world"

    def components_dir(self) -> str:
        return f"{self.root}/components"

    def init_dir(self, llm, seed) -> str:
        return f"{self.root}/models/{llm}/s{seed}/init"

    def config_file(self, llm, seed, chain) -> str:
        return f"{self.root}/configs/{llm}/s{seed}/{chain}.yaml"

    def run_dir(self, llm, seed, chain) -> str:
        return f"{self.root}/runs/{llm}/s{seed}/{chain}"

    def final_dir(self, llm, seed, chain) -> str:
        return RunDir(self.run_dir(llm, seed, chain)).final

    def final_marker(self, llm, seed, chain) -> str:
        return marker(self.final_dir(llm, seed, chain))

    def metrics_file(self, llm, seed, chain) -> str:
        return RunDir(self.run_dir(llm, seed, chain)).metrics

    @staticmethod
    def eval_name(protocol: str = DEFAULT_PROTOCOL) -> str:
        """The folder (and log folder) of one evaluation protocol: ``eval`` for lmms-eval's, ``eval-<protocol>``."""
        return "eval" if protocol == DEFAULT_PROTOCOL else f"eval-{protocol}"

    def eval_dir(self, model, protocol: str = DEFAULT_PROTOCOL) -> str:
        """One model's results under one evaluation protocol."""
        return f"{self.root}/{self.eval_name(protocol)}/{model}"

    def eval_file(self, model, benchmark, protocol: str = DEFAULT_PROTOCOL) -> str:
        return f"{self.eval_dir(model, protocol)}/{benchmark}.json"

    def agreement_dir(self, model) -> str:
        """A student's agreement with its teacher (llavakd agreement): <benchmark>.json, COMPLETE."""
        return f"{self.root}/agreement/{model}"

    def chance_file(self) -> str:
        """Chance on the stand-ins (tiny mode): each benchmark's best constant answer, scored."""
        return f"{self.root}/chance.json"

    def data_report_prefix(self, name) -> str:
        """What ``llavakd validate-data --out`` gets for one dataset (``captions`` or ``instruct``)."""
        return f"{self.root}/data/{name}"

    def data_report(self, name, ext: str = "json") -> str:
        """validate-data's report of one dataset: ``<prefix>.report.json`` (bad records) or ``.md``."""
        return f"{self.data_report_prefix(name)}.report.{ext}"

    def data_prepared(self) -> str:
        """Written by prepare-data once the manifest's files are in place (real mode): each file's sha256."""
        return f"{self.root}/data/prepared.tsv"

    def prefetch_marker(self) -> str:
        """Written once the benchmarks' datasets are in eval.hf_home (real mode)."""
        return f"{self.root}/benchmarks-prefetched.txt"

    def log(self, *parts) -> str:
        return f"{self.root}/logs/{'/'.join(str(p) for p in parts)}.log"

    def timing(self, *parts) -> str:
        return f"{self.root}/benchmarks/{'/'.join(str(p) for p in parts)}.tsv"
