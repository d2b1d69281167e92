"""The agreement report: each student's closeness to its teacher, seeds pooled (mean and 95% interval).

    rows = collect_agreement(study)                 # from results/<run>/agreement/<model>/
    write_agreement(rows, "reports/demo/agreement")  # .md and .csv

One line per (student LLM, variant, measure); one column per benchmark, then ``All`` (the mean over
benchmarks, per seed, then pooled). The measures are llavakd.eval.agreement's.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.eval.agreement import MEASURES
from llavakd.eval.registry import header, load_registry
from llavakd.io import atomic_write_text
from llavakd.layout import parse_model
from llavakd.report.collect import Cell
from llavakd.report.reference import display_llm
from llavakd.report.tables import ROLE_LABEL

MEASURE_LABEL = {"answer_agreement": "answer agreement (%)", "answer_kl": "answer KL (nats/token)",
                 "visual_kl": "visual KL (nats/position)"}
ALL = "all"


@dataclass
class AgreementRow:
    llm: str
    role: str
    measure: str
    cells: dict[str, Cell]  # benchmark (or ALL) -> values over seeds
    seeds: int


def _read(folder: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise LlavaKDError(f"{path}: not valid JSON ({e})") from e
    if not out:
        raise LlavaKDError(f"{folder}: no agreement results (run llavakd agreement)")
    return out


def collect_agreement(study) -> tuple[list[AgreementRow], list[str]]:
    """(rows, benchmark names) from every student's agreement folder, seeds pooled per variant."""
    roles = {m: role for role in study.variants for m in study.variant_models(role)}
    groups: dict[tuple[str, str], list[dict]] = {}
    for model in study.student_models():
        role = roles.get(model)
        groups.setdefault((parse_model(model).llm, role), []).append(_read(Path(study.layout.agreement_dir(model))))
    found = set(next(iter(groups.values()))[0]) if groups else set()
    benches = [b for b in load_registry() if b in found]  # the registry's (the paper's) column order
    rows = []
    for (llm, role), per_seed in groups.items():
        for measure in MEASURES:
            scale = 100.0 if measure == "answer_agreement" else 1.0
            cells = {}
            for b in benches:
                vals = [s[b][measure] for s in per_seed if s.get(b, {}).get(measure) is not None]
                if vals:
                    cells[b] = Cell([scale * v for v in vals])
            alls = []
            for s in per_seed:
                vals = [s[b][measure] for b in benches if s.get(b, {}).get(measure) is not None]
                if vals:
                    alls.append(scale * sum(vals) / len(vals))
            if alls:
                cells[ALL] = Cell(alls)
            rows.append(AgreementRow(llm, role, measure, cells, len(per_seed)))
    order = {r: i for i, r in enumerate(ROLE_LABEL)}
    rows.sort(key=lambda r: (study.students().index(r.llm), MEASURES.index(r.measure), order.get(r.role, 99)))
    return rows, benches


def _fmt(cell: Cell | None, digits: int) -> str:
    if cell is None:
        return "-"
    s = f"{cell.mean:.{digits}f}"
    return s + (f" ± {cell.ci95:.{digits}f}" if cell.ci95 is not None else "")


def write_agreement(rows: list[AgreementRow], benches: list[str], stem: str | Path) -> list[Path]:
    stem = Path(stem)
    cols = [*benches, ALL]
    head = ["Student", "Variant", "Measure"] + [header(b) for b in benches] + ["All"]
    md = ["**Teacher agreement: how close each student is to its teacher**", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(cols)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["llm", "variant", "measure", "seeds", *cols, *(f"{c}_ci95" for c in cols)])
    for r in rows:
        digits = 1 if r.measure == "answer_agreement" else 4
        md.append("| " + " | ".join([display_llm(r.llm), ROLE_LABEL.get(r.role, r.role), MEASURE_LABEL[r.measure]]
                                    + [_fmt(r.cells.get(c), digits) for c in cols]) + " |")
        w.writerow([r.llm, r.role, r.measure, r.seeds,
                    *["" if c not in r.cells else f"{r.cells[c].mean:.6f}" for c in cols],
                    *["" if c not in r.cells or r.cells[c].ci95 is None else f"{r.cells[c].ci95:.6f}" for c in cols]])
    md += ["", "Mean over seeds, ± the 95% t-interval when there are several. Answer agreement: the share of "
           "documents whose greedy answers are equal; KL(teacher || student) over the teacher's answer tokens and "
           "at the visual positions (lower is closer). All: the mean over benchmarks.", ""]
    return [atomic_write_text(stem.with_name(f"{stem.name}.md"), "\n".join(md)),
            atomic_write_text(stem.with_name(f"{stem.name}.csv"), buf.getvalue())]
