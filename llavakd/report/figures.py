"""The figures, with seaborn, from result files: per-benchmark bars, average vs size, training curves.

    benchmark_bars(families, paper, "reports/demo/figures/benchmarks.png")
    overview(families, paper, params, "reports/demo/figures/overview.png")
    training_curves([(label, stage, metrics.jsonl), ...], "reports/demo/figures/training_curves.png")
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from llavakd import terms  # noqa: E402
from llavakd.eval.registry import header  # noqa: E402
from llavakd.io import atomic_file  # noqa: E402
from llavakd.report.averages import COLUMNS, PAPER, average  # noqa: E402
from llavakd.report.reference import display_llm, llm_size_billions, paper_row  # noqa: E402

SOURCES = ["paper LLaVA-KD", "ours LLaVA-KD", "ours baseline (PT+SFT)", "ours baseline+ (PT+SFT+CFT)", "ours teacher"]
# one colour and marker per kind of model in every panel
KIND_STYLE = {"LLaVA-KD": ("C0", "s"), "TinyLLaVA†": ("C1", "X"), "baseline (PT+SFT)": ("C1", "X"),
              "baseline+ (PT+SFT+CFT)": ("C2", "P"),
              "teacher": ("C3", "o"), "others": ("C7", "o")}

AVG = PAPER.header(PAPER.paper_average)  # the paper's Avg10: the figures compare with the paper


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    try:
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def benchmark_bars(families: list[dict], paper, out, chance: dict[str, float] | None = None) -> Path:
    """One panel per student: each benchmark's score from the paper and from our runs; in tiny mode a
    black tick per benchmark marks chance (the best constant answer)."""
    recs = []
    for fam in families:
        teacher = fam["teacher"].means()
        for st in fam["students"]:
            kd, base, plus = st["llava_kd"], st["baseline"], st.get("baseline_plus")
            ref = paper_row(paper, "llava_kd", kd.llm) or {}
            student = f"{display_llm(kd.llm)} (teacher {display_llm(fam['teacher'].llm)})"
            plus_means = plus.means() if plus is not None else {}
            for c in COLUMNS:
                values = (ref.get(c), kd.means().get(c), base.means().get(c), plus_means.get(c), teacher.get(c))
                for source, v in zip(SOURCES, values):
                    if v is not None:
                        recs.append({"student": student, "benchmark": PAPER.header(c), "source": source, "score": v})
    df = pd.DataFrame(recs)
    sns.set_theme(style="whitegrid", font_scale=0.9)
    n = df["student"].nunique()
    g = sns.catplot(df, kind="bar", x="benchmark", y="score", hue="source", hue_order=SOURCES, col="student",
                    col_wrap=min(2, n), height=3.2, aspect=2.0, palette="deep", legend_out=True)
    g.set_titles("{col_name}")
    g.set_axis_labels("", "score (paper's scale)")
    for ax in g.axes.flat:
        ax.tick_params(axis="x", rotation=35)
        for lbl in ax.get_xticklabels():
            lbl.set_horizontalalignment("right")
    if chance:
        order = [PAPER.header(c) for c in COLUMNS if PAPER.header(c) in set(df["benchmark"])]
        for ax in g.axes.flat:
            for i, name in enumerate(order):
                c = next(k for k in COLUMNS if PAPER.header(k) == name)
                if chance.get(c) is not None:
                    ax.hlines(chance[c], i - 0.45, i + 0.45, colors="black", lw=1.6)
    sns.move_legend(g, "upper center", bbox_to_anchor=(0.5, 1.04), ncol=5, title=None, frameon=False)
    g.figure.suptitle("Per-benchmark scores: the paper's LLaVA-KD vs our reproduction, teacher and baselines"
                      + ("\n(black ticks: chance, the best constant answer on each stand-in)" if chance else ""),
                      y=1.12 if chance else 1.09)
    return _save(g.figure, out)


def overview(families: list[dict], paper, params: dict[str, float], out, chance: dict[str, float] | None = None) -> Path:
    """Avg10 against LLM size: the paper's rows (left) and ours (right, the LLMs of this run; in tiny
    mode a dashed line at chance's Avg10)."""
    sns.set_theme(style="whitegrid", font_scale=0.9)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    prec = []
    for _, r in paper.iterrows():
        vals = {c: (None if pd.isna(r[c]) else float(r[c])) for c in COLUMNS}
        size = llm_size_billions(str(r["llm"]))
        if average(vals) is not None and size is not None:
            kind = "LLaVA-KD" if r["method"] == "LLaVA-KD" else ("TinyLLaVA†" if r["method"] == "TinyLLaVA†" else "others")
            prec.append({"size (B params)": size, AVG: average(vals), "method": kind, "name": f"{r['method']} {r['llm']}"})
    pdf = pd.DataFrame(prec)
    kinds = ["LLaVA-KD", "TinyLLaVA†", "others"]
    sns.scatterplot(pdf, x="size (B params)", y=AVG, hue="method", style="method", s=70, ax=a, hue_order=kinds,
                    palette={k: KIND_STYLE[k][0] for k in kinds}, markers={k: KIND_STYLE[k][1] for k in kinds})
    a.set_title("paper (Table 1, rows with all ten columns)")
    a.legend(title=None, loc="lower right")
    ours = []
    role_name = {"teacher": "teacher", "baseline": "baseline (PT+SFT)", "baseline_plus": "baseline+ (PT+SFT+CFT)",
                 "llava_kd": "LLaVA-KD"}
    for fam in families:
        rows = [fam["teacher"]] + [r for st in fam["students"] for r in st.values()]
        for row in rows:
            m = row.means()
            if PAPER.paper_average in m and row.llm in params:
                ours.append({"LLM parameters (M)": params[row.llm] / 1e6, AVG: m[PAPER.paper_average],
                             "model": role_name.get(row.role, row.role)})
    odf = pd.DataFrame(ours, columns=["LLM parameters (M)", AVG, "model"])
    kinds = [k for k in role_name.values() if k in set(odf["model"])]
    sns.scatterplot(odf, x="LLM parameters (M)", y=AVG, hue="model", style="model", s=70, ax=b, hue_order=kinds,
                    palette={k: KIND_STYLE[k][0] for k in kinds}, markers={k: KIND_STYLE[k][1] for k in kinds})
    if chance and average(chance) is not None:
        b.axhline(average(chance), color="black", ls="--", lw=1, label="chance (best constant answer)")
    b.set_title("ours (this run)")
    if b.get_legend():
        b.legend(title=None, loc="best")
    fig.suptitle(f"Average score ({AVG}) against LLM size")
    fig.tight_layout()
    return _save(fig, out)


def read_metrics(path: str | Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if '"loss"' in line]
    return pd.DataFrame(rows)


def training_curves(runs: list[tuple[str, str, str | Path]], out) -> Path:
    """``runs``: (model label, stage, metrics.jsonl). One panel per stage, one line per loss term."""
    recs = []
    for label, stage, path in runs:
        df = read_metrics(path)
        for col in [c for c in df.columns if c.startswith("loss_")]:
            for step, v in zip(df["step"], df[col]):
                recs.append({"model": label, "stage": stage, "step": step, "term": col[5:], "loss": v})
    data = pd.DataFrame(recs)
    sns.set_theme(style="whitegrid", font_scale=0.9)
    stages = [s for s in ("pt", "dpt", "sft", "dft") if s in set(data["stage"])]
    g = sns.relplot(data, kind="line", x="step", y="loss", hue="term", style="model", col="stage",
                    hue_order=[t for t in terms.names() if t in set(data["term"])],
                    col_order=stages, facet_kws={"sharey": False, "sharex": False}, height=3.2, aspect=1.2)
    g.set_titles("{col_name}")
    for ax in g.axes.flat:
        ax.set_yscale("log")
    g.figure.suptitle("Training curves of the LLaVA-KD students, per loss term (log scale)", y=1.04)
    return _save(g.figure, out)


def protocol_offsets(released: list[dict], paper) -> pd.DataFrame:
    """Released checkpoints scored here minus the paper's numbers: one row per checkpoint, protocol and column.

    ``released``: [{"name", "method", "llm", "protocol", "scores": {column: headline}}]; the paper's row
    is looked up by its Method and LLM columns. Columns the paper does not report are left out."""
    recs = []
    for r in released:
        hit = paper[(paper["method"] == r["method"]) & (paper["llm"] == r["llm"])]
        if hit.empty:
            raise ValueError(f"released {r['name']}: no paper row with method {r['method']!r} and llm {r['llm']!r}")
        row = hit.iloc[0]
        for c in COLUMNS:
            if c in r["scores"] and not pd.isna(row[c]):
                recs.append({"checkpoint": r["name"], "method": r["method"], "llm": r["llm"], "protocol": r["protocol"],
                             "benchmark": PAPER.header(c), "ours": r["scores"][c], "paper": float(row[c]),
                             "offset": r["scores"][c] - float(row[c])})
    return pd.DataFrame(recs, columns=["checkpoint", "method", "llm", "protocol", "benchmark", "ours", "paper",
                                       "offset"])


def protocol_offset(released: list[dict], paper, out) -> list[Path]:
    """The offsets as a bar chart (``out``) and a csv beside it (same stem): ours − paper per column and protocol."""
    df = protocol_offsets(released, paper)
    out = Path(out)
    csv_path = out.with_suffix(".csv")
    with atomic_file(csv_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    plot = df.assign(checkpoint=df["checkpoint"] + " (" + df["method"] + " " + df["llm"] + ") [" + df["protocol"] + "]")
    sns.set_theme(style="whitegrid", font_scale=0.9)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    sns.barplot(plot, x="benchmark", y="offset", hue="checkpoint", ax=ax, palette="deep")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("")
    ax.set_ylabel("ours − paper (points)")
    ax.set_title("Protocol offset: released checkpoints scored by this harness minus the paper's numbers")
    ax.legend(title="[evaluation protocol]", loc="best")
    ax.tick_params(axis="x", rotation=35)
    return [_save(fig, out), csv_path]


def agreement(rows, benches: list[str], out) -> Path:
    """``rows``: llavakd.report.agreement rows. One panel per measure, bars per benchmark and variant,
    students side by side (seeds pooled; error bars: the 95% interval)."""
    from llavakd.report.agreement import ALL, MEASURE_LABEL
    from llavakd.report.tables import ROLE_LABEL

    recs = []
    for r in rows:
        for b, cell in r.cells.items():
            for v in cell.values:
                recs.append({"measure": MEASURE_LABEL[r.measure], "benchmark": "All" if b == ALL else header(b),
                             "student": display_llm(r.llm), "variant": ROLE_LABEL.get(r.role, r.role), "value": v})
    df = pd.DataFrame(recs)
    sns.set_theme(style="whitegrid", font_scale=0.85)
    g = sns.catplot(df, kind="bar", x="benchmark", y="value", hue="variant", row="measure", col="student",
                    height=2.4, aspect=2.2, sharey="row", errorbar=("ci", 95), palette="deep", legend_out=True)
    g.set_titles("{col_name}: {row_name}")
    g.set_axis_labels("", "")
    for ax in g.axes.flat:
        ax.tick_params(axis="x", rotation=30)
    g.figure.suptitle("Teacher agreement: each student against its teacher (baselines have no teacher signal)", y=1.02)
    return _save(g.figure, out)


def methods(rows, out, columns=PAPER) -> Path:
    """``rows``: llavakd.report.methods rows. Per student, each method's paired difference to ce on the
    headline average (``columns.headline``: Avg10 over the paper's ten, else the study's own) with its
    Holm-adjusted 95% interval, and the per-seed differences as dots."""
    import matplotlib.pyplot as plt

    key = columns.headline
    students = list(dict.fromkeys(r.llm for r in rows))
    fig, axes = plt.subplots(1, len(students), figsize=(5.5 * len(students), 3.2), squeeze=False)
    for ax, llm in zip(axes[0], students):
        mine = [r for r in rows if r.llm == llm and key in r.paired]
        for i, r in enumerate(mine):
            p = r.paired[key]
            ax.errorbar([p.mean], [i], xerr=[[p.half or 0.0], [p.half or 0.0]], fmt="o",
                        color="tab:green" if p.beats else "tab:orange" if p.below else "tab:gray", capsize=3)
            ax.scatter(p.diffs, [i] * len(p.diffs), s=10, color="black", alpha=0.5, zorder=3)
        ax.axvline(0, color="tab:red", lw=1)
        ax.set_yticks(range(len(mine)), [r.method if r.budget is None else f"{r.method} @{r.budget}" for r in mine])
        ax.set_xlabel(f"{columns.header(key)} − ce (paired by seed; Holm 95%)")
        ax.set_title(display_llm(llm))
    fig.tight_layout()
    return _save(fig, out)


def _readable_log_ticks(ax, steps: bool, budgets) -> None:
    """Log axes whose labels do not run into each other in a narrow panel: the steps axes are labelled
    at the study's budgets, the FLOPs axes at 1, 2 and 5 of each decade ("2e+13"); no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    if steps and budgets:
        ax.set_xticks(budgets, [str(b) for b in budgets])
    else:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))


def budgets(rows, out, columns=PAPER, caption: str = "") -> Path:
    """``rows``: llavakd.report.methods rows of a study with budgets. Per student, four panels: the
    headline average against DFT steps and against the job's model FLOPs (one line per method, the
    compute-matched ce as its own points, 95% t-intervals over seeds); the paired difference to the
    step-matched ce against steps and to the compute-matched ce against FLOPs (Holm 95%). ``caption``
    goes under the figure."""
    import matplotlib.pyplot as plt

    from llavakd.methods import CONTROL

    key = columns.headline
    avg = columns.header(key)
    students = list(dict.fromkeys(r.llm for r in rows))
    fig, axes = plt.subplots(len(students), 4, figsize=(19, 3.8 * len(students)), squeeze=False)
    for line, llm in zip(axes, students):
        mine = [r for r in rows if r.llm == llm and key in r.cells]
        methods = list(dict.fromkeys(r.method for r in mine if r.matched is None))
        colour = {m: f"C{i}" for i, m in enumerate(methods)}
        for m in methods:
            pts = sorted((r for r in mine if r.method == m and r.matched is None), key=lambda r: r.budget or 0)
            xs = [r.budget for r in pts]
            for ax, x in ((line[0], xs), (line[1], [r.flops for r in pts])):
                if any(v is None for v in x):
                    continue
                ax.errorbar(x, [r.cells[key].mean for r in pts], yerr=[r.cells[key].ci95 or 0 for r in pts],
                            marker="o", capsize=3, color=colour[m], label=m)
            if m == CONTROL:
                continue
            for ax, attr, x in ((line[2], "paired", xs), (line[3], "paired_compute", [r.flops for r in pts])):
                got = [(xv, getattr(r, attr).get(key)) for xv, r in zip(x, pts)]
                got = [(xv, p) for xv, p in got if p is not None and xv is not None]
                if got:
                    ax.errorbar([g[0] for g in got], [g[1].mean for g in got],
                                yerr=[g[1].half or 0 for g in got], marker="o", capsize=3, color=colour[m], label=m)
        cm = [r for r in mine if r.matched is not None and r.flops]
        if cm:
            line[1].errorbar([r.flops for r in cm], [r.cells[key].mean for r in cm],
                             yerr=[r.cells[key].ci95 or 0 for r in cm], fmt="D", capsize=3, color=colour[CONTROL],
                             mfc="white", label="ce, compute-matched")
        titles = (f"{avg} vs DFT steps", f"{avg} vs the job's total FLOPs", f"Δ {avg} vs step-matched ce",
                  f"Δ {avg} vs compute-matched ce")
        total = "total model FLOPs of the job (student + teacher)"
        xlabels = ("DFT optimizer steps", total, "DFT optimizer steps", total)
        for i, ax in enumerate(line):
            ax.set_title(f"{display_llm(llm)}: {titles[i]}", fontsize=9)
            ax.set_xlabel(xlabels[i])
            ax.set_xscale("log")
            _readable_log_ticks(ax, steps=i in (0, 2), budgets=sorted({r.budget for r in mine if r.budget}))
            if i >= 2:
                ax.axhline(0, color="tab:red", lw=1)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    if caption:
        fig.text(0.01, -0.02, caption, wrap=True, fontsize=8, va="top")
    fig.tight_layout()
    return _save(fig, out)
