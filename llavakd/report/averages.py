"""The paper's averages: Avg7 and Avg10 (v3 table), AVG over nine columns (v1 table)."""

from __future__ import annotations

import math

COLUMNS = ("vqav2", "gqa", "vizwiz", "sciqa", "textvqa", "mme", "mmb", "mmb_cn", "pope", "mmmu")
AVG7 = ("gqa", "vizwiz", "sciqa", "textvqa", "mme", "mmb", "mmb_cn")
AVG9 = tuple(c for c in COLUMNS if c != "mmmu")  # the v1 table's AVG


def average(row: dict, columns=COLUMNS, partial: bool = False) -> float | None:
    """Mean over ``columns``; None unless every one has a number. ``partial``: the mean of those
    present, which is how the paper averaged a row with one blank (mPLUG-Owl2's Avg7 leaves out
    MMB-CN); the paper's other rows with blanks have no average. Our rows never use it."""
    vals = [row.get(c) for c in columns]
    present = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present or (len(present) < len(vals) and not partial):
        return None
    return sum(present) / len(present)


def avg7(row: dict, partial: bool = False) -> float | None:
    return average(row, AVG7, partial)


def avg10(row: dict, partial: bool = False) -> float | None:
    return average(row, COLUMNS, partial)
