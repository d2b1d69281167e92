"""Gather the result files of the models a report shows, seeds pooled into mean and 95% interval."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.report.averages import COLUMNS, avg7, avg10


@dataclass
class Cell:
    values: list[float]            # one per seed
    local_split: bool = False      # scored on a local split where the paper used a server (VQAv2, VizWiz)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def sd(self) -> float | None:
        """Sample standard deviation over seeds; None for a single seed."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def ci95(self) -> float | None:
        """Half-width of the t-based 95% interval of the mean; None for a single seed."""
        if self.sd is None:
            return None
        from scipy.stats import t

        n = len(self.values)
        return float(t.ppf(0.975, n - 1) * self.sd / math.sqrt(n))


@dataclass
class Row:
    label: str                      # what the table says in its Method column
    role: str                       # teacher | baseline | llava_kd | an ablation variant
    llm: str
    family: str = ""
    cells: dict[str, Cell] = field(default_factory=dict)
    seeds: int = 1

    def means(self) -> dict[str, float]:
        return {c: self.cells[c].mean for c in self.cells}


def read_scores(eval_dir: str | Path, columns=COLUMNS) -> dict[str, dict]:
    """{column: result record} for every column whose <column>.json exists in ``eval_dir``."""
    out = {}
    for c in columns:
        path = Path(eval_dir) / f"{c}.json"
        if path.is_file():
            try:
                out[c] = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise LlavaKDError(f"{path}: not valid JSON ({e})") from e
            if "headline" not in out[c]:
                raise LlavaKDError(f"{path}: no 'headline' (not written by llavakd eval?)")
    return out


def collect_row(spec: dict) -> Row:
    """``spec``: label, role, llm, family, eval_dirs (one per seed)."""
    per_seed = [read_scores(d) for d in spec["eval_dirs"]]
    row = Row(label=spec["label"], role=spec["role"], llm=spec["llm"], family=spec.get("family", ""),
              seeds=len(per_seed))
    for c in COLUMNS:
        recs = [s[c] for s in per_seed if c in s]
        if recs and len(recs) != len(per_seed):
            raise LlavaKDError(f"{spec['label']} {spec['llm']}: {c} exists for {len(recs)} of {len(per_seed)} seeds")
        if recs:
            row.cells[c] = Cell([float(r["headline"]) for r in recs], local_split=bool(recs[0].get("local_split_differs")))
    for name, fn in (("avg7", avg7), ("avg10", avg10)):  # per seed, then pooled like any column
        vals = [fn({c: float(s[c]["headline"]) for c in s}) for s in per_seed]
        if vals and all(v is not None for v in vals):
            row.cells[name] = Cell(vals)
    return row


def read_chance(path: str | Path) -> dict[str, float]:
    """{benchmark: chance headline} from the file ``llavakd chance`` writes ({benchmark: {"headline", "answers"}})."""
    path = Path(path)
    try:
        return {b: float(r["headline"]) for b, r in json.loads(path.read_text()).items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LlavaKDError(f"{path}: not a chance file written by llavakd chance ({e})") from e
