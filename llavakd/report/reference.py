"""The paper's reference numbers (llavakd/report/paper/*.csv) and how our rows map onto them."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pandas as pd

from llavakd.report.averages import COLUMNS

PAPER_DIR = Path(str(importlib.resources.files("llavakd.report") / "paper"))  # package data
TEACHER_METHOD = "TinyLLaVA†"  # the TinyLLaVA-recipe models the authors trained (teachers and baselines)
ROLE_METHOD = {"teacher": TEACHER_METHOD, "baseline": TEACHER_METHOD, "llava_kd": "LLaVA-KD"}


def load_paper(name: str = "table1_v3.csv") -> pd.DataFrame:
    path = PAPER_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"paper reference table {path} is missing")
    return pd.read_csv(path)


def display_llm(name: str) -> str:
    """Our LLM key -> the paper's spelling: qwen1.5-0.5b -> Qwen1.5-0.5B."""
    m = re.fullmatch(r"qwen(\d(?:\.\d)?)-(\d+(?:\.\d+)?)b", name.lower())
    return f"Qwen{m.group(1)}-{m.group(2)}B" if m else name


def paper_row(paper: pd.DataFrame, role: str, llm: str) -> dict | None:
    """The paper's numbers for (role, LLM), e.g. ('llava_kd', 'qwen1.5-0.5b'); None if not reported."""
    method = ROLE_METHOD.get(role)
    hit = paper[(paper["method"] == method) & (paper["llm"] == display_llm(llm))]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return {c: (None if pd.isna(row[c]) else float(row[c])) for c in COLUMNS}


def llm_size_billions(llm: str) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)B$", llm)
    return float(m.group(1)) if m else None
