"""Gather the result files of the models a report shows, seeds pooled into mean and 95% interval."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.eval.registry import Columns
from llavakd.report.averages import COLUMNS, PAPER, average


@dataclass
class Cell:
    values: list[float]            # one per seed
    local_split: bool = False      # scored on a local split where the paper used a server (VQAv2, VizWiz)
    lows: list[float | None] = field(default_factory=list)  # per seed: the lower end of its 95% interval over
    #   the documents it scored (the result file's interval95; llavakd.eval.interval); None: the file has none

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

    def seed_low(self, i: int, where: str) -> float:
        """Seed ``i``'s lower 95% end over its documents; a result file without one is an error, not a guess."""
        low = self.lows[i] if i < len(self.lows) else None
        if low is None:
            raise LlavaKDError(f"{where}: no 95% interval over documents in its result file (scored before scoring "
                               "revision 3): score the model again (snakemake plans it; llavakd eval --recompute)")
        return low

    def low95(self, where: str) -> float:
        """The lower end of the cell's 95% interval: the t-interval over seeds when there are several; with
        one seed, the interval over the documents that seed scored (Wilson or a bootstrap)."""
        if len(self.values) > 1:
            return self.mean - self.ci95
        return self.seed_low(0, where)


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


def collect_row(spec: dict, columns: Columns = PAPER) -> Row:
    """``spec``: label, role, llm, family, eval_dirs (one per seed); ``columns``: what the report shows."""
    per_seed = [read_scores(d, columns.benchmarks) for d in spec["eval_dirs"]]
    row = Row(label=spec["label"], role=spec["role"], llm=spec["llm"], family=spec.get("family", ""),
              seeds=len(per_seed))
    for c in columns.benchmarks:
        recs = [s[c] for s in per_seed if c in s]
        if recs and len(recs) != len(per_seed):
            raise LlavaKDError(f"{spec['label']} {spec['llm']}: {c} exists for {len(recs)} of {len(per_seed)} seeds")
        if recs:
            row.cells[c] = Cell([float(r["headline"]) for r in recs], local_split=bool(recs[0].get("local_split_differs")),
                                lows=[(r.get("interval95") or {}).get("low") for r in recs])
    for avg in columns.averages:  # per seed, then pooled like any column
        name, fn = avg.key, (lambda scores, of=avg.of: average(scores, of))
        vals = [fn({c: float(s[c]["headline"]) for c in s}) for s in per_seed]
        if vals and all(v is not None for v in vals):
            row.cells[name] = Cell(vals, lows=[_average_low(s, fn) for s in per_seed])
    return row


def _average_low(scores: dict[str, dict], fn) -> float | None:
    """The lower 95% end of an average over documents: the columns' bootstrap replicates (each result
    file's interval95) averaged replicate by replicate, then their 2.5th percentile; None when a column
    has no replicates."""
    reps = {c: (r.get("interval95") or {}).get("replicates") for c, r in scores.items()}
    if any(not v for v in reps.values()) or len({len(v) for v in reps.values()}) != 1:
        return None
    import numpy as np

    n = len(next(iter(reps.values())))
    averaged = [fn({c: v[b] for c, v in reps.items()}) for b in range(n)]
    if any(a is None for a in averaged):
        return None
    return float(np.percentile(averaged, 2.5))


def read_chance(path: str | Path) -> dict[str, float]:
    """{benchmark: chance headline} from the file ``llavakd chance`` writes ({benchmark: {"headline", "answers"}})."""
    path = Path(path)
    try:
        return {b: float(r["headline"]) for b, r in json.loads(path.read_text()).items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LlavaKDError(f"{path}: not a chance file written by llavakd chance ({e})") from e
