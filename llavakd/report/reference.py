"""The paper's reference numbers (llavakd/report/paper/*.csv) and how our rows map onto them."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pandas as pd

from llavakd.report.averages import COLUMNS, PAPER
from llavakd.stages import DEFAULT_TERMS, SEPARATOR, Chain, Step

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


THIRDPARTY = "ablations_thirdparty.csv"  # ablation rows from a third-party summary (paper/SOURCE.md)
THIRDPARTY_SOURCE = "third-party summary, unverified"  # how the reports label them: never "paper"


def thirdparty_chain(table: str, variant: str, terms: dict[str, float | None]) -> Chain:
    """The chain a third-party ablation row describes. A stages row names its chain (``DPT+SFT+DFT``);
    a losses row distils in the one stage it names, with the terms marked 1 (a term not stated is
    read as off): ``DPT res`` is ``dpt~res--sft`` (DPT+SFT with L_res only), ``DFT res+vis`` is
    ``pt--sft--dft~res+vis`` (PT+SFT, then DFT with L_res and L_vis)."""
    if table == "stages":
        return Chain.parse(variant.lower().replace("+", SEPARATOR))
    stage = variant.split(" ", 1)[0].lower()
    on = tuple(t for t in DEFAULT_TERMS if terms.get(t) == 1)
    if stage == "dpt":
        return Chain.of(Step("dpt", on), Step("sft"))
    if stage == "dft":
        return Chain.of(Step("pt"), Step("sft"), Step("dft", on))
    raise ValueError(f"{THIRDPARTY}: a losses row names DPT or DFT first, got {variant!r}")


def thirdparty_rows(table: str) -> list[dict]:
    """The third-party rows of one ablation table (``stages`` | ``losses``): student (the paper's spelling),
    variant as the summary writes it, the chain it describes, and its Avg10."""
    ref = load_paper(THIRDPARTY)
    out = []
    for _, r in ref[ref["table"] == table].iterrows():
        terms = {t: (None if pd.isna(r[t]) else float(r[t])) for t in DEFAULT_TERMS}
        out.append({"student": r["student"], "variant": r["variant"],
                    "chain": str(thirdparty_chain(table, r["variant"], terms)),
                    PAPER.paper_average: float(r[PAPER.paper_average])})
    return out
