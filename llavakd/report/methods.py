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
from llavakd.layout import RunDir, model_name, parse_model
from llavakd.plan import Arm
from llavakd.report.averages import PAPER, average
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
    budget: int | None = None  # the budget (methods.budgets) the row belongs to
    matched: str | None = None  # a compute-matched ce: the method whose FLOPs it spends
    steps: int | None = None  # the job's optimizer steps
    paired_compute: dict[str, Paired] = field(default_factory=dict)  # per column, against the compute-matched ce
    flops: float | None = None  # the job's model FLOPs (llavakd.plan.sample_flops x its samples)
    cost: dict[str, float] = field(default_factory=dict)  # hours: job, teacher_inference, teacher_training, students
    variance: dict[str, float] = field(default_factory=dict)  # the headline's paired difference, split (variance_split)

    @property
    def label(self) -> str:
        """What the Method column says: the method, or the control and the method it is matched to."""
        return self.method if self.matched is None else f"{self.method} = {self.matched} ({self.steps} steps)"


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
    """Mean seconds per optimizer step and peak memory (MB) of the models' last training jobs, over the
    jobs that ran start to end in one process: a resumed job's metadata times only its last process (which
    may have trained a few steps, or none) against all its steps, and peaks at what that process held."""
    steps, peaks = [], []
    for m in models:
        name = parse_model(m)
        meta = Path(RunDir(study.layout.run_dir(name.llm, name.seed, name.chain)).metadata)
        if meta.is_file():
            d = json.loads(meta.read_text())
            if d.get("resumed_from"):
                continue
            if d.get("steps"):
                steps.append(d["wall_time_s"] / d["steps"])
            if d.get("peak_memory_mb") is not None:
                peaks.append(d["peak_memory_mb"])
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)  # noqa: E731
    return mean(steps), mean(peaks)


def _replicates(study, model: str, protocol: str, columns) -> list[float] | None:
    """The headline average's bootstrap replicates over documents for one model: its benchmarks' replicates
    (each result file's interval95; lmms-eval's own aggregation) averaged replicate by replicate."""
    from llavakd.report.collect import read_scores

    scores = read_scores(study.layout.eval_dir(model, protocol), columns.benchmarks)
    reps = {c: (r.get("interval95") or {}).get("replicates") for c, r in scores.items()}
    if not reps or any(not v for v in reps.values()) or len({len(v) for v in reps.values()}) != 1:
        return None
    avg = next((a for a in columns.averages if a.key == columns.headline), None)
    if avg is None:
        return None
    out = [average({c: v[b] for c, v in reps.items()}, avg.of) for b in range(len(next(iter(reps.values()))))]
    return None if any(x is None for x in out) else out


DOCUMENT_FACTORS = (0.25, 4.0)  # the variance split's what-ifs: a quarter of the documents, and four times them


def variance_split(diffs: list[float], replicates: list[list[float]], k: int = 1,
                   factors=DOCUMENT_FACTORS) -> dict[str, float]:
    """Split the variance of a paired difference over seeds into evaluation sampling and training.

    ``diffs``: the difference of each seed (method minus control); ``replicates``: per seed, bootstrap
    replicates of that difference over documents, replicate b drawing the same documents for every model
    and seed (the result files' replicates are drawn with one seed per benchmark).

    Every seed is scored on the same documents, so a seed's document error has two parts: one common to
    every seed (the method does better or worse on these particular documents, whatever the seed: a
    ``shared`` part the between-seed spread never sees, and the t-test does not either) and one of its own
    (``evaluation``: which of its answers the documents happen to catch). Replicate b of two seeds shares
    the documents, so the covariance of their replicates is the shared part, and the mean replicate
    variance minus it is the seed's own part (the mean over pairs of var(r_s - r_t) / 2). The
    between-seed variance of the differences is training plus the seed's own part; training is the rest
    (at least 0). Returns the variances, the evaluation share of the between-seed variance, and the
    smallest difference ``len(diffs)`` seeds detect with 80% power at Holm's strictest level for ``k``
    comparisons (0.05 / k, two-sided), as measured (``detectable``) and with each of ``factors`` times
    the documents (``detectable_docs_x<f>``: the evaluation part scaled by 1 / f, as a mean over
    documents is)."""
    import numpy as np

    n = len(diffs)
    reps = np.asarray(replicates, dtype=float)
    if reps.ndim != 2 or reps.shape[0] != n or reps.shape[1] < 2:
        raise ValueError(f"variance_split: {n} differences need {n} equal-length lists of replicates")
    between = statistics.variance(diffs)
    own = reps.var(axis=1, ddof=1)
    total = float(own.mean())
    # the mean covariance over pairs of seeds, from the variance of their sum: sum_st cov = var(sum_s r_s)
    shared = (float(reps.sum(axis=0).var(ddof=1)) - float(own.sum())) / (n * (n - 1)) if n > 1 else 0.0
    evaluation = max(total - shared, 0.0)
    training = max(between - evaluation, 0.0)
    t = _t(1 - LEVEL / (2 * max(k, 1)), n - 1) + _t(0.8, n - 1)
    out = {"seeds": n, "comparisons": k, "between": between, "evaluation": evaluation, "training": training,
           "shared": shared, "evaluation_share": evaluation / between if between > 0 else float("nan"),
           "detectable": t * math.sqrt(between / n)}
    for f in factors:
        out[f"detectable_docs_x{f:g}"] = t * math.sqrt((training + evaluation / f) / n)
    return out


def collect_methods(study, protocol: str | None = None, gpu_hours: dict[str, float] | None = None) -> list[MethodRow]:
    """One row per (student, arm): every compared method at every budget, ce first, then the
    compute-matched controls; each method paired by seed with the step-matched ce of its budget and,
    with ``methods.compute_matched``, with the ce trained for its FLOPs. Holm runs over the methods of
    one (budget, control) family. ``gpu_hours``: per method, a price to show (default: the planner's)."""
    from llavakd.methods import CONTROL

    protocol = protocol or study.protocols[0]
    columns = study.columns()
    from llavakd.plan import job_price, job_steps

    price = job_price(study) if study.cfg.cost is not None else None
    rows: list[MethodRow] = []
    for llm in study.method_students():
        arms = study.method_arms(llm)
        for budget in dict.fromkeys(a.budget for a, _ in arms):
            per: dict[str, MethodRow] = {}
            models: dict[str, list[str]] = {}
            for arm, chain in (x for x in arms if x[0].budget == budget):
                mine = [model_name(llm, seed, chain) for seed in study.seeds]
                row = collect_row({"label": arm.label, "role": arm.method, "llm": llm,
                                   "eval_dirs": [study.layout.eval_dir(m, protocol) for m in mine]}, columns)
                step_s, peak = _cost(study, mine)
                r = MethodRow(arm.method, llm, study.methods[arm.method].follows, row.cells,
                              agreement=_agreement(study, mine), step_s=step_s, peak_mb=peak, budget=budget,
                              matched=arm.matched, steps=job_steps(study, llm, chain))
                if price is not None:
                    r.cost = price(llm, chain)
                    r.flops = r.cost["flops"]
                    r.gpu_hours = r.cost["job"]
                if gpu_hours and arm.matched is None:
                    r.gpu_hours = gpu_hours.get(arm.method, r.gpu_hours)
                per[arm.label] = r
                models[arm.label] = mine
            control = next(r for r in per.values() if r.method == CONTROL and r.matched is None)
            others = [r for r in per.values() if r.method != CONTROL]
            matched = {r.matched: r for r in per.values() if r.matched is not None}
            refs = {"paired": {r.method: control for r in others},
                    "paired_compute": {r.method: matched.get(r.method) for r in others}}
            for col in (columns.headline, *columns.benchmarks):
                for attr, against in refs.items():
                    pairs = []
                    for r in others:
                        ref = against[r.method]
                        if ref is not None and col in r.cells and col in ref.cells:
                            p = Paired([a - b for a, b in zip(r.cells[col].values, ref.cells[col].values)])
                            p.p = paired_test(p.diffs)
                            getattr(r, attr)[col] = p
                            pairs.append(p)
                    holm(pairs)
            if study.cfg.methods.budgets:
                for r in others:
                    mine = models[Arm(r.method, budget).label]
                    ref = models[Arm(CONTROL, budget).label]
                    reps = [(_replicates(study, a, protocol, columns), _replicates(study, b, protocol, columns))
                            for a, b in zip(mine, ref)]
                    p = r.paired.get(columns.headline)
                    missing = [m for m, (x, y) in zip(mine, reps) if not (x and y)]
                    if missing:
                        r.variance = {"missing": "no bootstrap replicates of the headline for " + ", ".join(missing)}
                    elif len({len(v) for pair in reps for v in pair}) > 1:
                        r.variance = {"missing": "replicates of unequal count, not paired draw by draw: "
                                                 + ", ".join(mine)}
                    elif not p or len(p.diffs) < 2:
                        r.variance = {"missing": "fewer than 2 seeds"}
                    else:
                        r.variance = variance_split(p.diffs, [[u - v for u, v in zip(x, y)] for x, y in reps],
                                                    k=len(others))
            others.sort(key=lambda r: -(r.paired[columns.headline].mean if columns.headline in r.paired else -math.inf))
            rows += [control, *others, *sorted(matched.values(), key=lambda r: (r.steps or 0, r.matched))]
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
    n = len(study.seeds)
    if study.cfg.methods.budgets or study.cfg.methods.compute_matched:
        return budgets_caption(rows, study)
    mde = detectable(rows, k, columns.headline)
    paired = [(r.method, r.paired[columns.headline]) for r in rows if r.paired.get(columns.headline)]
    beat = sorted({m for m, p in paired if p.beats})
    below = sorted({m for m, p in paired if p.below})
    others = sorted({m for m, p in paired if not p.beats and not p.below})
    return (f"Methods on one footing ({n} seeds, paired by seed with ce, the step-matched control; Holm-adjusted "
            f"95% intervals over {k} comparisons). Beat ce on {avg}: {', '.join(beat) or 'none'}. Below ce: "
            f"{', '.join(below) or 'none'}. Not shown to differ from ce: {', '.join(others) or 'none'}."
            + (f" The smallest {avg} difference {n} seeds detect (80% power, strictest Holm level): {mde:.1f}."
               if mde is not None else ""))


def clears(rows: list[MethodRow], attr: str, key: str) -> list[tuple[int | None, str, str]]:
    """(budget, method, "above" | "below") for every method whose Holm interval against a control
    (``attr``: ``paired`` step-matched, ``paired_compute`` compute-matched) clears zero on ``key``."""
    out = []
    for r in rows:
        p = getattr(r, attr).get(key)
        if p is not None and (p.beats or p.below):
            out.append((r.budget, r.method, "above" if p.beats else "below"))
    return out


def budgets_caption(rows: list[MethodRow], study) -> str:
    """Where, if anywhere, a method's Holm interval clears the step-matched and the compute-matched ce."""
    columns = study.columns()
    key, avg = columns.headline, columns.header(columns.headline)
    k = max(len(study.compared_methods()) - 1, 1)
    budgets = " and ".join(str(b) for b in study.cfg.methods.budgets)
    parts = [(f"Methods at {budgets} DFT steps, " if budgets else "Methods at the stage's DFT steps, ")
             + f"{len(study.seeds)} seeds, each paired by seed with ce for as many steps (step-matched)"
             + (" and ce for as many FLOPs (compute-matched)" if study.cfg.methods.compute_matched else "")
             + f"; Holm over the {k} methods of each (budget, control)."]
    for attr, name in (("paired", "step-matched"), ("paired_compute", "compute-matched")):
        if attr == "paired_compute" and not study.cfg.methods.compute_matched:
            continue
        found = clears(rows, attr, key)
        text = "; ".join(f"{m} {side} at {b}" for b, m, side in found) if found else "no method, at no budget"
        parts.append(f"Interval of Δ {avg} clearing the {name} ce: {text}.")
    return " ".join(parts)


def _unit(rows: list[MethodRow], cpu: bool) -> str:
    return "CPU-h" if cpu else "GPU-h (paper scale)"


def write_methods(rows: list[MethodRow], text: str, stem: str | Path, chance: dict[str, float] | None = None,
                  formats=("md", "csv", "tex", "html"), columns: Columns = PAPER, cpu: bool = False) -> list[Path]:
    """The table in the requested formats (md/tex/html share one layout; csv has a row per method and
    column). A study with budgets or compute-matched controls gets their columns, a priced one the cost
    block (the job, the teacher's inference inside it, the teacher's own training), and a budgets study
    the variance split of each paired difference."""
    from llavakd.eval.agreement import MEASURES
    from llavakd.methods import CONTROL

    cols = [columns.headline, *columns.benchmarks]
    budgets = any(r.budget is not None for r in rows)
    matched = any(r.matched is not None for r in rows)
    priced = any(r.cost for r in rows)
    avg = columns.header(columns.headline)
    ref = chance_line(chance, columns).values if chance else {}
    head = (["Method", "LLM"] + (["budget"] if budgets else []) + ["seeds"] + [columns.header(c) for c in cols]
            + [f"Δ {avg} vs {'step-matched ' if matched else ''}ce (Holm 95%)", "per-seed Δ"]
            + ([f"Δ {avg} vs compute-matched ce (Holm 95%)"] if matched else [])
            + [m.replace("_", " ") for m in MEASURES] + ["s/step ÷ ce"] + (["FLOPs/step ÷ ce"] if priced else [])
            + ["peak mem ÷ ce", _unit(rows, cpu)])
    body = []
    if chance:
        lead = 4 if budgets else 3
        body.append(["chance (best constant answer)"] + [""] * (lead - 1)
                    + [f"{ref[c]:.1f}" if ref.get(c) is not None else "-" for c in cols]
                    + ["-"] * (len(head) - lead - len(cols)))
    control = {(r.llm, r.budget): r for r in rows if r.method == CONTROL and r.matched is None}
    rel = (lambda a, b: f"{a / b:.2f}" if a is not None and b else "-")  # noqa: E731
    for r in rows:
        ce = control.get((r.llm, r.budget))
        p = r.paired.get(columns.headline)
        per_step = (lambda x: x.flops / x.steps if x and x.flops and x.steps else None)  # noqa: E731
        body.append([r.label, display_llm(r.llm)] + ([str(r.budget)] if budgets else [])
                    + [str(len(next(iter(r.cells.values())).values) if r.cells else 0)]
                    + [_cell(r.cells.get(c), ref.get(c), f"{r.method} {r.llm} {c}") for c in cols]
                    + [_paired(p), ", ".join(f"{d:+.1f}" for d in p.diffs) if p else "-"]
                    + ([_paired(r.paired_compute.get(columns.headline))] if matched else [])
                    + [_cell(r.agreement.get(m)) for m in MEASURES]
                    + [rel(r.step_s, ce.step_s if ce else None)]
                    + ([rel(per_step(r), per_step(ce))] if priced else [])
                    + [rel(r.peak_mb, ce.peak_mb if ce else None),
                       f"{r.gpu_hours:.1f}" if r.gpu_hours is not None else "-"])
    note = ("Mean ± 95% t-interval over seeds; Δ: the method minus ce, paired by seed, ± the Holm-adjusted 95% "
            "interval, ✓ where it lies above zero and ✗ where below (in Holm's order). Agreement with the "
            "teacher: answer agreement (%), answer KL and visual KL (nats), means over the benchmarks. Cost: "
            "seconds per optimizer step and peak memory relative to ce in this study; GPU-h: the planner's "
            "price of the method's job at paper scale."
            + (" ° not above chance." if chance else ""))
    if budgets or matched:
        note = ("Mean ± 95% t-interval over seeds. Δ: the method minus ce, paired by seed, ± the Holm-adjusted 95% "
                "interval; ✓ above zero, ✗ below (in Holm's order). Holm runs over the methods of one (budget, "
                "control) family: against the step-matched ce (as many optimizer steps), and against the "
                "compute-matched ce (as many model FLOPs, the teacher's forward included: llavakd.plan.sample_flops). "
                "Agreement with the teacher: answer agreement (%), answer KL and visual KL (nats). s/step and "
                "FLOPs/step ÷ ce: measured seconds (loading included; jobs resumed from a checkpoint left out, their "
                "clock covers only their last process) and counted FLOPs per optimizer step relative to the "
                f"step-matched ce of the budget; {_unit(rows, cpu)}: the planner's price of the job."
                + (" ° not above chance." if chance else ""))
    blocks = _cost_block(rows, cpu) + _variance_block(rows, avg)
    stem = Path(stem)
    out = []
    for ext in formats:
        if ext == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            extra = (["budget", "steps", "matched", "diff_vs_compute_ce", "holm_half_compute", "holm_level_compute",
                      "p_value_compute", "beats_compute_ce", "below_compute_ce", "per_seed_diffs_compute",
                      "s_per_step"] if budgets or matched else [])
            extra += ["flops", "job_hours", "teacher_inference_hours", "teacher_training_hours",
                      "students_of_teacher"] if priced else []
            w.writerow(["method", "llm", "follows", "column", "mean", "ci95", "diff_vs_ce", "holm_half", "holm_level",
                        "p_value", "beats_ce", "below_ce", "per_seed_diffs"] + extra)
            for r in rows:
                for c in cols:
                    cell, p = r.cells.get(c), r.paired.get(c)
                    if cell is None:
                        continue
                    line = [r.method, r.llm, r.follows, c, f"{cell.mean:.4f}",
                            "" if cell.ci95 is None else f"{cell.ci95:.4f}", *_paired_csv(p)]
                    if budgets or matched:
                        q = r.paired_compute.get(c)
                        line += ["" if r.budget is None else r.budget, "" if r.steps is None else r.steps,
                                 r.matched or "", *_paired_csv(q),
                                 "" if r.step_s is None else f"{r.step_s:.4f}"]
                    if priced:
                        line += [f"{r.flops:.6g}" if r.flops else ""] + [
                            f"{r.cost[k]:.6g}" if r.cost else "" for k in
                            ("job", "teacher_inference", "teacher_training", "students")]
                    w.writerow(line)
            out.append(atomic_write_text(stem.with_name(stem.name + ".csv"), buf.getvalue()))
        elif ext == "md":
            md = ["**Distillation methods on one footing**", "", text, "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body] + ["", note, ""]
            for title, bhead, bbody, bnote in blocks:
                md += [f"**{title}**", "", "| " + " | ".join(bhead) + " |", "|" + "---|" * len(bhead)]
                md += ["| " + " | ".join(x) + " |" for x in bbody] + ["", bnote, ""]
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


def _paired_csv(p: Paired | None) -> list:
    return ["" if p is None else f"{p.mean:.4f}", "" if p is None or p.half is None else f"{p.half:.4f}",
            "" if p is None or p.level is None else f"{p.level:.4g}", "" if p is None or p.p is None else f"{p.p:.4g}",
            "" if p is None else bool(p.beats), "" if p is None else bool(p.below),
            "" if p is None else ";".join(f"{d:.4f}" for d in p.diffs)]


def _cost_block(rows: list[MethodRow], cpu: bool) -> list[tuple]:
    """The teacher's cost, stated: per method job, the job, the teacher's inference inside it, the teacher's
    own training, and what a job is charged when the teacher exists or was trained for these students."""
    priced = [r for r in rows if r.cost and r.matched is None]
    if not priced:
        return []
    unit = "CPU-h" if cpu else "GPU-h"
    head = ["Method", "LLM", "budget", f"the job ({unit})", "teacher's inference in it", "teacher's training",
            "student models sharing it", "charged: teacher exists", "charged: teacher trained for these students"]
    body = []
    for r in priced:
        c, n = r.cost, int(r.cost["students"])
        body.append([r.method, display_llm(r.llm), "-" if r.budget is None else str(r.budget), f"{c['job']:.3g}",
                     f"{c['teacher_inference']:.3g}", f"{c['teacher_training']:.3g}" if n else "-",
                     str(n) if n else "-", f"{c['job']:.3g}",
                     f"{c['job'] + c['teacher_training'] / n:.3g}" if n else f"{c['job']:.3g}"])
    note = (f"One seed's job, priced by the planner (llavakd.plan.job_price; {unit}). The teacher's training (every "
            "job of its chain, PT+SFT) is charged to no job when the teacher exists, and divided over the student "
            "models this comparison distils from it (every method, seed and budget trains its own) when it was "
            "trained for them.")
    return [("The teacher's cost", head, body, note)]


def _variance_block(rows: list[MethodRow], avg: str) -> list[tuple]:
    split = [r for r in rows if r.variance and "missing" not in r.variance]
    missing = [r for r in rows if "missing" in r.variance]
    if not split and not missing:
        return []
    factors = [f"with {f:g}x the documents" for f in DOCUMENT_FACTORS]
    head = ["Method", "LLM", "budget", f"sd of Δ {avg} over seeds", "evaluation sd", "training sd",
            "evaluation share", "shared documents sd", "smallest detectable Δ", *factors]
    body = [[r.method, display_llm(r.llm), "-" if r.budget is None else str(r.budget),
             f"{math.sqrt(r.variance['between']):.2f}", f"{math.sqrt(r.variance['evaluation']):.2f}",
             f"{math.sqrt(r.variance['training']):.2f}", f"{r.variance['evaluation_share']:.0%}",
             f"{math.copysign(math.sqrt(abs(r.variance['shared'])), r.variance['shared']):.2f}",
             f"{r.variance['detectable']:.1f}"] + [f"{r.variance[f'detectable_docs_x{f:g}']:.1f}"
                                                 for f in DOCUMENT_FACTORS] for r in split]
    body += [[r.method, display_llm(r.llm), "-" if r.budget is None else str(r.budget),
              f"not split: {r.variance['missing']}"] + [""] * (len(head) - 4)
             for r in missing]
    note = ("The variance of each paired difference against the step-matched ce, split into evaluation sampling "
            "(bootstrap over documents, both models resampled on the same documents: each seed's own part) and "
            "training (between seeds, the rest). Shared documents: the part of the document error common to every"
            " seed (the covariance of the seeds' replicates; negative: noise), which no number of seeds averages "
            "away and the between-seed spread does not show. The smallest difference the seeds detect with 80% "
            "power at Holm's strictest level for the methods of one budget, as measured and with fewer or more "
            "documents per stand-in (the evaluation part scaled as a mean over documents; "
            "llavakd.report.methods.variance_split).")
    return [(f"Where the spread of Δ {avg} comes from", head, body, note)]


def write_variance(rows: list[MethodRow], path: str | Path) -> Path:
    """``variance.csv``: the variance split of each method's paired headline difference, per budget (a row
    that could not be split says why in ``missing``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = ["seeds", "comparisons", "between", "evaluation", "training", "shared", "evaluation_share", "detectable",
            *[f"detectable_docs_x{f:g}" for f in DOCUMENT_FACTORS]]
    w.writerow(["method", "llm", "budget", *keys, "missing"])
    for r in rows:
        if r.variance:
            w.writerow([r.method, r.llm, "" if r.budget is None else r.budget]
                       + [f"{r.variance[k]:.6g}" if k in r.variance else "" for k in keys]
                       + [r.variance.get("missing", "")])
    return atomic_write_text(Path(path), buf.getvalue())
