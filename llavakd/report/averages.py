"""The reports' averages, as the registry defines them (llavakd/eval/benchmarks.yaml, ``averages``):
the paper's Avg7 and Avg10, and for a study with columns beyond the paper's ten one over all of them."""

from __future__ import annotations

import math

from llavakd.eval.registry import Columns, paper_columns, report_columns

COLUMNS = paper_columns()  # the paper's ten, in Table 1's order
PAPER = report_columns()   # what a report of the paper's ten shows: the ten, Avg7, Avg10


def average(row: dict, columns=COLUMNS, partial: bool = False) -> float | None:
    """Mean over ``columns``; None unless every one has a number. ``partial``: the mean of those
    present, which is how the paper averaged a row with one blank (mPLUG-Owl2's Avg7 leaves out
    MMB-CN); the paper's other rows with blanks have no average. Our rows never use it."""
    vals = [row.get(c) for c in columns]
    present = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present or (len(present) < len(vals) and not partial):
        return None
    return sum(present) / len(present)


def averages(row: dict, columns: Columns = PAPER, partial: bool = False) -> dict[str, float | None]:
    """{average key: its value} for every average ``columns`` shows."""
    return {a.key: average(row, a.of, partial) for a in columns.averages}
