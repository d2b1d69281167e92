"""Table 1 and the ablation tables: paper rows, our rows and per-cell deltas, in four formats.

    tables = table1(rows_by_family, paper)      # -> Table
    write_table(tables, "reports/demo/table1")  # .md .csv .tex .html

Our cells show the mean over seeds and, with several seeds, the 95% interval (``62.3 ± 1.2``); each
of our lines names the evaluation protocol that scored it (``lmms-eval``: the stock tasks; ``paper``:
upstream's prompts and parsing, llavakd.eval.paper). With both, a third line gives their difference.
``*`` marks a cell scored on a local split where the paper's number comes from an evaluation
server (VQAv2 test-dev, VizWiz test): compare those with care. ``-``: not reported / not run.
In tiny mode a ``chance`` line holds the stand-ins' chance (the best constant answer, scored by
lmms-eval: llavakd.tiny.chance) and ``°`` marks each of our cells that is not above it: the lower end
of its 95% interval (with one seed, the value itself) is at or below chance.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from llavakd.eval.registry import Columns
from llavakd.io import atomic_write_text
from llavakd.report.averages import PAPER, averages
from llavakd.report.collect import Row
from llavakd.report.reference import TEACHER_METHOD, THIRDPARTY_SOURCE, display_llm, paper_row

NOTE = ("Ours: mean over seeds, ± the 95% t-interval when there are several; [protocol]: the evaluation protocol "
        "that scored the line. * local val split where the paper used the evaluation server (VQAv2 test-dev, "
        "VizWiz test). Δ = ours − paper; Δ protocol = ours [paper] − ours [lmms-eval]. - : not reported.")
CHANCE_NOTE = (" chance: the best constant answer on each stand-in, scored by lmms-eval; ° not above chance: the "
               "lower end of the cell's 95% interval is at or below it (over seeds with several; with one seed, over "
               "the documents scored: Wilson for a proportion, a bootstrap for POPE, MME and the averages).")
THIRDPARTY_NOTE = (f" {THIRDPARTY_SOURCE}: {PAPER.header(PAPER.paper_average)} of an ablation row as an AI-written "
                   "summary of the paper gives it, "
                   "not checked against the paper (llavakd/report/paper/SOURCE.md); shown under our run of "
                   "the chain it describes.")
NOT_ABOVE = "°"
# the rows of one student in Table 1, in order, and what its Method column says
ROLE_LABEL = {"teacher": f"{TEACHER_METHOD} (teacher)", "baseline": f"{TEACHER_METHOD} (baseline)",
              "baseline_plus": f"{TEACHER_METHOD} (baseline+, step-matched)", "llava_kd": "LLaVA-KD"}


@dataclass
class Line:
    method: str
    llm: str
    source: str                                   # paper | ours | delta | protocol-delta | info
    values: dict[str, float | None] = field(default_factory=dict)
    ci95: dict[str, float | None] = field(default_factory=dict)
    local: set[str] = field(default_factory=set)
    seeds: int | None = None
    text: str | None = None                      # a line that is a remark (e.g. "paper: not available")
    protocol: str | None = None                  # ours and delta lines: the evaluation protocol that scored them
    not_above: set[str] = field(default_factory=set)  # tiny mode: cells not above chance

    @property
    def label(self) -> str:
        """What the Source column says."""
        base = {"delta": "Δ", "protocol-delta": "Δ protocol", "third-party": THIRDPARTY_SOURCE}.get(self.source,
                                                                                                 self.source)
        return f"{base} [{self.protocol}]" if self.protocol and self.source in ("ours", "delta") else base

    def cell(self, c: str) -> str:
        v = self.values.get(c)
        if v is None:
            return "-"
        if self.source in ("delta", "protocol-delta"):
            return f"{v:+.1f}"
        s = f"{v:.1f}"
        if self.ci95.get(c) is not None:
            s += f" ± {self.ci95[c]:.1f}"
        return s + ("*" if c in self.local else "") + (NOT_ABOVE if c in self.not_above else "")


@dataclass
class Table:
    title: str
    lines: list[Line]
    note: str = NOTE
    caption: str | None = None  # said before the table (the demo: what one seed can and cannot show)
    columns: Columns = PAPER    # the benchmark columns and averages shown (llavakd.eval.registry)


def chance_line(chance: dict[str, float], columns: Columns = PAPER) -> Line:
    vals = {c: chance.get(c) for c in columns.benchmarks}
    vals.update(averages(vals, columns))
    return Line("chance (best constant answer)", "", "chance", vals)


def not_above(row: Row, chance: dict[str, float] | None, columns: Columns = PAPER) -> set[str]:
    """Columns (averages included) where the row is not above chance: the lower end of its 95% interval
    (over seeds with several; over the scored documents with one, so that noise alone does not clear
    chance) is at or below chance."""
    if not chance:
        return set()
    ref = chance_line(chance, columns).values
    out = set()
    for c, cell in row.cells.items():
        if ref.get(c) is None:
            continue
        if cell.low95(f"{row.label} {row.llm} {c}") <= ref[c]:
            out.add(c)
    return out


def _paper_line(method, llm, values, columns: Columns = PAPER) -> Line:
    vals = dict(values)
    vals.update(averages(values, columns))
    return Line(method, display_llm(llm), "paper", vals)


def _ours_line(method, row: Row, protocol: str | None = None, chance: dict | None = None,
               columns: Columns = PAPER) -> Line:
    return Line(method, display_llm(row.llm), "ours", {c: row.cells[c].mean for c in row.cells},
                {c: row.cells[c].ci95 for c in row.cells}, {c for c, x in row.cells.items() if x.local_split},
                seeds=row.seeds, protocol=protocol, not_above=not_above(row, chance, columns))


def _delta(method, llm, base: Line, ours: Line, source: str = "delta", columns: Columns = PAPER) -> Line:
    """ours − base, per column (both present)."""
    vals = {c: (ours.values[c] - base.values[c]) if ours.values.get(c) is not None
            and base.values.get(c) is not None else None for c in columns.keys}
    return Line(method, llm, source, vals, local=set(ours.local), protocol=ours.protocol if source == "delta" else None)


def _groups(fam: dict) -> list[tuple[str, str, Row]]:
    """(role, Method label, Row) of a family's teacher and of each student's variants, in table order."""
    groups = [("teacher", ROLE_LABEL["teacher"], fam["teacher"])]
    for st in fam["students"]:
        groups += [(role, ROLE_LABEL.get(role, role), row) for role, row in st.items()]
    return groups


def table1(by_protocol: dict[str, list[dict]], paper, chance: dict[str, float] | None = None,
           caption: str | None = None, columns: Columns = PAPER) -> Table:
    """``by_protocol``: {protocol: [{"name", "teacher": Row, "students": [{role: Row}]}]}, the same
    families scored under each protocol (the first is the main one); roles: baseline, baseline_plus,
    llava_kd. ``chance`` (tiny mode): {column: the stand-ins' chance}, a line of its own and the marks.
    ``columns``: the paper's ten, and any the study adds (no paper numbers there)."""
    protocols = list(by_protocol)
    lines = [chance_line(chance, columns)] if chance else []
    for f, fam in enumerate(by_protocol[protocols[0]]):
        for g, (role, method, row) in enumerate(_groups(fam)):
            llm = display_llm(row.llm)
            ref = paper_row(paper, role, row.llm)
            p = _paper_line(method, row.llm, ref, columns) if ref is not None else Line(method, llm, "paper", {})
            lines.append(p)
            ours = {}
            for proto in protocols:
                ours[proto] = _ours_line(method, _groups(by_protocol[proto][f])[g][2], proto, chance, columns)
                lines.append(ours[proto])
                if ref is not None:
                    lines.append(_delta(method, llm, p, ours[proto], columns=columns))
            if len(protocols) > 1:
                lines.append(_delta(method, llm, ours[protocols[0]], ours[protocols[1]], "protocol-delta", columns))
    return Table("Table 1: the paper's numbers, ours, and the difference", lines,
                 NOTE + (CHANCE_NOTE if chance else ""), caption, columns)


def ablation_table(title: str, rows: list[tuple[str, str, Row]], protocol: str | None = None,
                   chance: dict[str, float] | None = None, caption: str | None = None,
                   thirdparty: list[dict] | None = None, columns: Columns = PAPER) -> Table:
    """``rows``: (variant name, chain, Row), scored under ``protocol``. The paper's ablation numbers are not
    available; ``thirdparty`` (reference.thirdparty_rows) rows follow our row of the same chain and
    student, labelled as a third-party summary, and those no run of ours matches come last."""
    note = "the paper's ablation numbers are not available (see docs/method.md, Ablations)"
    lines = [Line("paper", "", "info", text=note)] + ([chance_line(chance, columns)] if chance else [])
    left = list(thirdparty or [])

    def reference_line(ref: dict, matched: bool) -> Line:
        what = f"{ref['variant']} ({ref['chain']})" + ("" if matched else "; no run of ours")
        return Line(what, ref["student"], "third-party", {columns.paper_average: ref[columns.paper_average]})

    for name, chain, row in rows:
        lines.append(_ours_line(f"{name} ({chain})", row, protocol, chance, columns))
        same = [r for r in left if r["chain"] == str(chain) and r["student"] == display_llm(row.llm)]
        lines += [reference_line(r, True) for r in same]
        left = [r for r in left if r not in same]
    lines += [reference_line(r, False) for r in left]
    return Table(title, lines, NOTE + (CHANCE_NOTE if chance else "") + (THIRDPARTY_NOTE if thirdparty else ""),
                 caption, columns)


# -- renderers ----------------------------------------------------------------------------
def to_markdown(t: Table) -> str:
    keys = t.columns.keys
    head = ["Method", "LLM", "Source"] + [t.columns.header(c) for c in keys]
    out = [f"**{t.title}**", ""] + ([f"*{t.caption}*", ""] if t.caption else [])
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * len(keys)]
    for ln in t.lines:
        if ln.text:
            out.append(f"| {ln.method} | {ln.llm} | {ln.source} | " + ln.text + " |" + " |" * (len(keys) - 1))
            continue
        out.append("| " + " | ".join([ln.method, ln.llm, ln.label] + [ln.cell(c) for c in keys]) + " |")
    return "\n".join(out + ["", t.note, ""])


def to_csv(t: Table) -> str:
    keys = t.columns.keys
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "llm", "source", "protocol", "seeds", *keys, *(f"{c}_ci95" for c in keys), "local_split",
                "not_above_chance", "remark"])
    for ln in t.lines:
        vals = ["" if ln.values.get(c) is None else f"{ln.values[c]:.4f}" for c in keys]
        cis = ["" if ln.ci95.get(c) is None else f"{ln.ci95[c]:.4f}" for c in keys]
        w.writerow([ln.method, ln.llm, ln.source, ln.protocol or "", ln.seeds or "", *vals, *cis,
                    ";".join(sorted(ln.local)), ";".join(c for c in keys if c in ln.not_above), ln.text or ""])
    return buf.getvalue()


def _tex(s: str) -> str:
    return (s.replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%").replace("_", "\\_")
            .replace("†", "$^\\dagger$").replace("±", "$\\pm$").replace("Δ", "$\\Delta$").replace("−", "-")
            .replace("*", "$^*$").replace("°", "$^\\circ$"))


def to_latex(t: Table) -> str:
    keys = t.columns.keys
    cols = "lll" + "r" * len(keys)
    out = ["% generated by llavakd.report.tables; needs \\usepackage{booktabs}", "\\begin{table*}[t]", "\\centering",
           "\\scriptsize", f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
           " & ".join(["Method", "LLM", "Source"] + [_tex(t.columns.header(c)) for c in keys]) + " \\\\", "\\midrule"]
    for i, ln in enumerate(t.lines):
        if ln.text:
            out.append(f"{_tex(ln.method)} & & & \\multicolumn{{{len(keys)}}}{{l}}{{{_tex(ln.text)}}} \\\\")
            continue
        out.append(" & ".join(_tex(x) for x in [ln.method, ln.llm, ln.label] + [ln.cell(c) for c in keys]) + " \\\\")
        if ln.source in ("delta", "protocol-delta") and i + 1 < len(t.lines) and t.lines[i + 1].source == "paper":
            out.append("\\midrule")
    caption = f"{_tex(t.caption)} " if t.caption else ""
    out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{_tex(t.title)}. {caption}{_tex(t.note)}}}",
            "\\end{table*}", ""]
    return "\n".join(out)


def to_html(t: Table) -> str:
    esc = html.escape
    keys = t.columns.keys
    head = "".join(f"<th>{esc(h)}</th>" for h in ["Method", "LLM", "Source"] + [t.columns.header(c) for c in keys])
    body = []
    for ln in t.lines:
        if ln.text:
            body.append(f"<tr class='info'><td>{esc(ln.method)}</td><td></td><td>{esc(ln.source)}</td>"
                        f"<td colspan='{len(keys)}'>{esc(ln.text)}</td></tr>")
            continue
        cells = "".join(f"<td>{esc(ln.cell(c))}</td>" for c in keys)
        body.append(f"<tr class='{ln.source}'><td>{esc(ln.method)}</td><td>{esc(ln.llm)}</td>"
                    f"<td>{esc(ln.label)}</td>{cells}</tr>")
    style = ("table{border-collapse:collapse;font:13px sans-serif}td,th{padding:3px 7px;border-bottom:1px solid #ddd;"
             "text-align:right}td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}tr.ours{background:#eef5ff}"
             "tr.delta,tr.protocol-delta{color:#555;font-style:italic}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(t.title)}</title><style>{style}</style>"
            f"</head><body><h3>{esc(t.title)}</h3>" + (f"<p><em>{esc(t.caption)}</em></p>" if t.caption else "")
            + f"<table><thead><tr>{head}</tr></thead><tbody>\n"
            + "\n".join(body) + f"\n</tbody></table><p>{esc(t.note)}</p></body></html>\n")


WRITERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}


def write_table(t: Table, stem: str | Path, formats=tuple(WRITERS)) -> list[Path]:
    stem = Path(stem)
    return [atomic_write_text(stem.with_name(f"{stem.name}.{ext}"), WRITERS[ext](t)) for ext in formats]


def seed_table(families: list[dict], seeds: list[int], chance: dict[str, float] | None = None,
               columns: Columns = PAPER) -> tuple[str, str]:
    """Per-seed averages (Avg7, Avg10, and the study's own when it adds columns) of every trained row, with
    mean, standard deviation and 95% interval: (markdown, csv). ``chance`` (tiny mode): a chance row, and °
    on each value not above it (the csv says it in a column)."""
    keys = [a.key for a in columns.averages]
    names = [columns.header(k) for k in keys]
    head = ["Method", "LLM", "average"] + [f"seed {s}" for s in seeds] + ["mean", "sd", "95% CI ±"]
    md = [f"**Seed variance: {', '.join(names[:-1])} and {names[-1]} per seed**", "", "| " + " | ".join(head) + " |",
          "|" + "---|" * 3 + "---:|" * (len(seeds) + 3)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "llm", "average", *[f"seed_{s}" for s in seeds], "mean", "sd", "ci95"]
               + (["not_above_chance"] if chance else []))
    ref = chance_line(chance, columns).values if chance else {}
    for avg in keys if chance else ():
        value = "-" if ref.get(avg) is None else f"{ref[avg]:.1f}"
        md.append("| " + " | ".join(["chance (best constant answer)", "", columns.header(avg), *["-"] * len(seeds),
                                     value, "-", "-"]) + " |")
        w.writerow(["chance (best constant answer)", "", avg, *["-"] * len(seeds), value, "-", "-", ""])
    for fam in families:
        for _, method, row in _groups(fam):
            for avg in keys:
                cell = row.cells.get(avg)
                vals = list(cell.values) if cell else []
                below = [ref.get(avg) is not None and cell.seed_low(i, f"{method} {row.llm} {avg} seed {s}") <= ref[avg]
                         for i, s in enumerate(seeds[:len(vals)])]
                per = [f"{v:.1f}{NOT_ABOVE if b else ''}" for v, b in zip(vals, below)] + ["-"] * (len(seeds) - len(vals))
                if cell and cell.sd is not None:
                    tail = [f"{cell.mean:.1f}", f"{cell.sd:.2f}", f"{cell.ci95:.1f}"]
                else:
                    tail = [f"{cell.mean:.1f}" if cell else "-", "-", "-"]
                md.append("| " + " | ".join([method, display_llm(row.llm), columns.header(avg), *per, *tail]) + " |")
                flags = [";".join(f"seed_{s}" for s, b in zip(seeds, below) if b)] if chance else []
                w.writerow([method, display_llm(row.llm), avg, *[p.rstrip(NOT_ABOVE) for p in per], *tail, *flags])
    md += ["", "Teachers are trained once (first seed); students once per seed. sd: sample standard deviation."
           + (" ° not above chance (the best constant answer on each stand-in, scored by lmms-eval): the seed's 95% "
              "interval over its documents reaches down to it." if chance else ""),
           ""]
    return "\n".join(md), buf.getvalue()
