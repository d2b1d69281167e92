"""The methods table: distillation methods on one footing, each against the step-matched control.

    rows, caption = methods_table(study)            # from results/<run>/{eval,agreement,runs}
    write_methods(rows, caption, "reports/demo/methods")   # .md .csv .tex .html

Per method (and student): Avg10 and every benchmark, mean ± the 95% t-interval over seeds (° not
above chance in tiny mode); the **seed-paired** difference to ``ce`` (every method's run of a seed
starts from that seed's PT+SFT model, as ce's does), mean ± a Holm-adjusted 95% interval and the
per-seed differences; agreement with the teacher (answer agreement, answer KL, visual KL over the
benchmarks); cost relative to ce measured in the same study (seconds per optimizer step and peak
memory, from each job's metadata.json); and the paper-scale GPU-hours of the method's job from
the planner's price. Rows are sorted by the paired Avg10 difference.

Holm: the k comparisons with ce are ordered by their paired t-test p-value; the i-th smallest
(i = 0..k-1) is tested at 0.05 / (k - i), and its interval uses the t quantile of that level, so a
method "beats ce" only when its adjusted interval lies above zero and every comparison with a
smaller p-value was rejected too ("below ce" likewise, with its interval below zero).
The smallest detectable difference: (t_{1-0.05/(2k)} + t_{0.8}) x sd / sqrt(n), with n seeds and
sd the standard deviation of the paired Avg10 differences pooled over methods (80% power at the
strictest Holm level).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from llavakd.eval.registry import Columns
from llavakd.io import atomic_write_text
from llavakd.layout import RunDir, parse_model
from llavakd.report.averages import PAPER
from llavakd.report.collect import Cell, collect_row
from llavakd.report.reference import display_llm
from llavakd.report.tables import NOT_ABOVE, chance_line

LEVEL = 0.05


@dataclass
class Paired:
    diffs: list[float]  # method - ce, per seed
    p: float | None = None
    half: float | None = None  # Holm-adjusted half-width
    level: float | None = None  # the Holm level this comparison was tested at
    beats: bool | None = None  # the adjusted interval lies above zero, in Holm's order
    below: bool | None = None  # the adjusted interval lies below zero, in Holm's order

    @property
    def mean(self) -> float:
        return sum(self.diffs) / len(self.diffs)


@dataclass
class MethodRow:
    method: str
    llm: str
    follows: str
    cells: dict[str, Cell]
    paired: dict[str, Paired] = field(default_factory=dict)  # per column (the headline average and each benchmark)
    agreement: dict[str, Cell] = field(default_factory=dict)  # measure -> over seeds
    step_s: float | None = None
    peak_mb: float | None = None
    gpu_hours: float | None = None


def _t(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def paired_test(diffs: list[float]) -> float | None:
    """Two-sided p-value of the paired t-test (None with fewer than 2 seeds; 0 or 1 without spread)."""
    n = len(diffs)
    if n < 2:
        return None
    sd = statistics.stdev(diffs)
    mean = sum(diffs) / n
    if sd == 0:
        return 0.0 if mean != 0 else 1.0
    from scipy.stats import t

    return float(2 * t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def holm(pairs: list[Paired]) -> None:
    """Set each comparison's Holm level, adjusted interval and verdict, in place."""
    k = len(pairs)
    ordered = sorted((p for p in pairs if p.p is not None), key=lambda p: p.p)
    still = True
    for i, p in enumerate(ordered):
        p.level = LEVEL / (k - i)
        n = len(p.diffs)
        p.half = _t(1 - p.level / 2, n - 1) * statistics.stdev(p.diffs) / math.sqrt(n)
        still = still and p.p < p.level
        p.beats = still and p.mean - p.half > 0
        p.below = still and p.mean + p.half < 0


def detectable(rows: list[MethodRow], k: int, headline: str = PAPER.headline) -> float | None:
    """The smallest paired difference of the headline average (Avg10 over the paper's ten) this many seeds
    detect with 80% power at Holm's strictest level."""
    diffs = [r.paired[headline] for r in rows if headline in r.paired and len(r.paired[headline].diffs) > 1]
    if not diffs:
        return None
    n = len(diffs[0].diffs)
    pooled = math.sqrt(sum(statistics.variance(d.diffs) for d in diffs) / len(diffs))
    return (_t(1 - LEVEL / (2 * max(k, 1)), n - 1) + _t(0.8, n - 1)) * pooled / math.sqrt(n)


def _agreement(study, models) -> dict[str, Cell]:
    from llavakd.eval.agreement import MEASURES

    per_seed = []
    for m in models:
        folder = Path(study.layout.agreement_dir(m))
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        per_seed.append({f.stem: json.loads(f.read_text()) for f in files})
    out = {}
    for measure in MEASURES:
        scale = 100.0 if measure == "answer_agreement" else 1.0
        vals = []
        for s in per_seed:
            xs = [r[measure] for r in s.values() if r.get(measure) is not None]
            if xs:
                vals.append(scale * sum(xs) / len(xs))
        if vals and len(vals) == len(per_seed):
            out[measure] = Cell(vals)
    return out


def _cost(study, models) -> tuple[float | None, float | None]:
    """Mean seconds per optimizer step and peak memory (MB) of the models' last training jobs."""
    steps, peaks = [], []
    for m in models:
        name = parse_model(m)
        meta = Path(RunDir(study.layout.run_dir(name.llm, name.seed, name.chain)).metadata)
        if meta.is_file():
            d = json.loads(meta.read_text())
            if d.get("steps"):
                steps.append(d["wall_time_s"] / d["steps"])
            if d.get("peak_memory_mb") is not None:
                peaks.append(d["peak_memory_mb"])
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)  # noqa: E731
    return mean(steps), mean(peaks)


def collect_methods(study, protocol: str | None = None, gpu_hours: dict[str, float] | None = None) -> list[MethodRow]:
    """One row per (student, compared method), the paired comparisons with ce filled in."""
    from llavakd.methods import CONTROL

    protocol = protocol or study.protocols[0]
    columns = study.columns()
    models = study.method_models()
    rows: list[MethodRow] = []
    for llm in study.method_students():
        per = {}
        for name in study.compared_methods():
            mine = [m for m in models[name] if parse_model(m).llm == llm]
            row = collect_row({"label": name, "role": name, "llm": llm,
                               "eval_dirs": [study.layout.eval_dir(m, protocol) for m in mine]}, columns)
            step_s, peak = _cost(study, mine)
            per[name] = MethodRow(name, llm, study.methods[name].follows, row.cells, agreement=_agreement(study, mine),
                                  step_s=step_s, peak_mb=peak, gpu_hours=(gpu_hours or {}).get(name))
        control = per[CONTROL]
        others = [r for n, r in per.items() if n != CONTROL]
        for col in (columns.headline, *columns.benchmarks):
            pairs = []
            for r in others:
                if col in r.cells and col in control.cells:
                    r.paired[col] = Paired([a - b for a, b in zip(r.cells[col].values, control.cells[col].values)])
                    r.paired[col].p = paired_test(r.paired[col].diffs)
                    pairs.append(r.paired[col])
            holm(pairs)
        others.sort(key=lambda r: -(r.paired[columns.headline].mean if columns.headline in r.paired else -math.inf))
        rows += [control, *others]
    return rows


def _cell(c: Cell | None, chance: float | None = None, where: str = "") -> str:
    if c is None:
        return "-"
    s = f"{c.mean:.1f}" + (f" ± {c.ci95:.1f}" if c.ci95 is not None else "")
    return s + (NOT_ABOVE if chance is not None and c.low95(where) <= chance else "")


def _paired(p: Paired | None) -> str:
    if p is None:
        return "-"
    s = f"{p.mean:+.1f}" + (f" ± {p.half:.1f}" if p.half is not None else "")
    return s + (" ✓" if p.beats else " ✗" if p.below else "")


def caption(rows: list[MethodRow], study) -> str:
    k = max(len(study.compared_methods()) - 1, 1)
    columns = study.columns()
    avg = columns.header(columns.headline)
    mde = detectable(rows, k, columns.headline)
    paired = [(r.method, r.paired[columns.headline]) for r in rows if r.paired.get(columns.headline)]
    beat = sorted({m for m, p in paired if p.beats})
    below = sorted({m for m, p in paired if p.below})
    others = sorted({m for m, p in paired if not p.beats and not p.below})
    n = len(study.seeds)
    return (f"Methods on one footing ({n} seeds, paired by seed with ce, the step-matched control; Holm-adjusted "
            f"95% intervals over {k} comparisons). Beat ce on {avg}: {', '.join(beat) or 'none'}. Below ce: "
            f"{', '.join(below) or 'none'}. Not shown to differ from ce: {', '.join(others) or 'none'}."
            + (f" The smallest {avg} difference {n} seeds detect (80% power, strictest Holm level): {mde:.1f}."
               if mde is not None else ""))


def write_methods(rows: list[MethodRow], text: str, stem: str | Path, chance: dict[str, float] | None = None,
                  formats=("md", "csv", "tex", "html"), columns: Columns = PAPER) -> list[Path]:
    """The table in the requested formats (md/tex/html share one layout; csv has a row per method)."""
    from llavakd.eval.agreement import MEASURES

    cols = [columns.headline, *columns.benchmarks]
    ref = chance_line(chance, columns).values if chance else {}
    head = (["Method", "LLM", "seeds"] + [columns.header(c) for c in cols]
            + [f"Δ {columns.header(columns.headline)} vs ce (Holm 95%)", "per-seed Δ"]
            + [m.replace("_", " ") for m in MEASURES] + ["s/step ÷ ce", "peak mem ÷ ce", "GPU-h (paper scale)"])
    body = []
    if chance:
        body.append(["chance (best constant answer)", "", ""] + [f"{ref[c]:.1f}" if ref.get(c) is not None else "-"
                                                                  for c in cols] + ["-"] * (len(head) - 3 - len(cols)))
    from llavakd.methods import CONTROL

    control = {r.llm: r for r in rows if r.method == CONTROL}
    for r in rows:
        ce = control.get(r.llm)
        rel = (lambda a, b: f"{a / b:.2f}" if a is not None and b else "-")  # noqa: E731
        p = r.paired.get(columns.headline)
        body.append([r.method, display_llm(r.llm), str(len(next(iter(r.cells.values())).values) if r.cells else 0)]
                    + [_cell(r.cells.get(c), ref.get(c), f"{r.method} {r.llm} {c}") for c in cols]
                    + [_paired(p), ", ".join(f"{d:+.1f}" for d in p.diffs) if p else "-"]
                    + [_cell(r.agreement.get(m)) for m in MEASURES]
                    + [rel(r.step_s, ce.step_s if ce else None), rel(r.peak_mb, ce.peak_mb if ce else None),
                       f"{r.gpu_hours:.1f}" if r.gpu_hours is not None else "-"])
    note = ("Mean ± 95% t-interval over seeds; Δ: the method minus ce, paired by seed, ± the Holm-adjusted 95% "
            "interval, ✓ where it lies above zero and ✗ where below (in Holm's order). Agreement with the "
            "teacher: answer agreement (%), answer KL and visual KL (nats), means over the benchmarks. Cost: "
            "seconds per optimizer step and peak memory relative to ce in this study; GPU-h: the planner's "
            "price of the method's job at paper scale."
            + (" ° not above chance." if chance else ""))
    stem = Path(stem)
    out = []
    for ext in formats:
        if ext == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["method", "llm", "follows", "column", "mean", "ci95", "diff_vs_ce", "holm_half", "holm_level",
                        "p_value", "beats_ce", "below_ce", "per_seed_diffs"])
            for r in rows:
                for c in cols:
                    cell, p = r.cells.get(c), r.paired.get(c)
                    if cell is None:
                        continue
                    w.writerow([r.method, r.llm, r.follows, c, f"{cell.mean:.4f}",
                                "" if cell.ci95 is None else f"{cell.ci95:.4f}",
                                "" if p is None else f"{p.mean:.4f}", "" if p is None or p.half is None else f"{p.half:.4f}",
                                "" if p is None or p.level is None else f"{p.level:.4g}",
                                "" if p is None or p.p is None else f"{p.p:.4g}", "" if p is None else bool(p.beats),
                                "" if p is None else bool(p.below),
                                "" if p is None else ";".join(f"{d:.4f}" for d in p.diffs)])
            out.append(atomic_write_text(stem.with_name(stem.name + ".csv"), buf.getvalue()))
        elif ext == "md":
            md = ["**Distillation methods on one footing**", "", text, "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body] + ["", note, ""]
            out.append(atomic_write_text(stem.with_name(stem.name + ".md"), "\n".join(md)))
        elif ext == "tex":
            esc = (lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("÷", "/")  # noqa: E731
                   .replace("Δ", r"$\Delta$").replace("✓", r"$\checkmark$")
                   .replace("✗", r"$\times$").replace("°", r"$^\circ$"))
            tex = [r"\begin{table}", r"\centering", r"\caption{" + esc(text) + "}",
                   r"\begin{tabular}{" + "l" * len(head) + "}", " & ".join(esc(h) for h in head) + r" \\", r"\hline"]
            tex += [" & ".join(esc(c) for c in b) + r" \\" for b in body]
            tex += [r"\end{tabular}", r"\end{table}", ""]
            out.append(atomic_write_text(stem.with_name(stem.name + ".tex"), "\n".join(tex)))
        elif ext == "html":
            import html

            rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in b) + "</tr>" for b in body)
            page = (f"<html><body><p>{html.escape(text)}</p><table><tr>"
                    + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{rows_html}</table>"
                    + f"<p>{html.escape(note)}</p></body></html>\n")
            out.append(atomic_write_text(stem.with_name(stem.name + ".html"), page))
    return out
