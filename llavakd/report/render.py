"""Render a study's reports from its result files (what the Snakemake report rules call).

    from llavakd.plan import Study
    from llavakd.report.render import render_table1
    render_table1(Study.load(config), "reports/demo")       # table1.{md,csv,tex,html}
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.io import atomic_write_text
from llavakd.layout import AGREEMENT, OFFSET_FIGURE, SEEDS, STUDY_FIGURES, TABLE1, Reports, model_name, parse_model
from llavakd.plan import STUDENT_VARIANTS
from llavakd.report.collect import collect_row, read_chance
from llavakd.report.reference import load_paper, thirdparty_rows
from llavakd.report.tables import ablation_table, seed_table, table1, write_table
from llavakd.stages import NAMES as STAGE_NAMES


def _row(study, label, role, llm, models, family="", protocol=None):
    protocol = protocol or study.protocols[0]
    return collect_row({"label": label, "role": role, "llm": llm, "family": family,
                        "eval_dirs": [study.layout.eval_dir(m, protocol) for m in models]}, study.columns())


def study_families(study, protocol=None) -> list[dict]:
    """Table 1's rows under one evaluation protocol (default: the study's first)."""
    fams = []
    for name, fam in study.families.items():
        t = fam.teacher
        entry = {"name": name, "teacher": _row(study, "teacher", "teacher", t, [study.teacher_model(t)], name, protocol),
                 "students": []}
        for s in fam.students:
            entry["students"].append({
                role: _row(study, role, role, s, [model_name(s, seed, study.variants[role]) for seed in study.seeds],
                           name, protocol)
                for role in STUDENT_VARIANTS})
        fams.append(entry)
    return fams


def study_chance(study) -> dict[str, float] | None:
    """Tiny mode: {benchmark: chance} from the study's chance file (llavakd chance); None in real mode."""
    if study.mode != "tiny":
        return None
    path = Path(study.layout.chance_file())
    if not path.is_file():
        raise LlavaKDError(f"{path}: the stand-ins' chance is missing (snakemake chance, or llavakd chance)")
    return read_chance(path)


def table_caption(study) -> str | None:
    """config ``report.caption`` (with the step counts and batch filled in), or ``report.smoke_run``: say
    that the numbers come from a smoke run, with its step counts."""
    if not study.cfg.report.smoke_run and study.cfg.report.caption is None:
        return None
    student, seed = study.students()[0], study.seeds[0]
    steps = {}
    for variant in ("baseline_plus", "llava_kd"):
        for prefix in study.variants[variant].prefixes():
            steps[prefix.last.name] = study.stage_config(student, seed, prefix).train.max_steps
    steps = [f"{name.upper()} {steps[name]} steps" for name in STAGE_NAMES if name in steps]
    batch = study.stage_config(student, seed, study.variants["llava_kd"]).train.global_batch
    if study.cfg.report.caption is not None:
        teacher = next(iter(study.families.values())).teacher
        chain = study.variants["baseline"]
        taught = [f"{p.last.name.upper()} {study.stage_config(teacher, seed, p).train.max_steps} steps"
                  for p in chain.prefixes()]
        return study.cfg.report.caption.format(steps=", ".join(steps), batch=batch,
                                               teacher_steps=", ".join(taught)).strip()
    return (f"A smoke run of the whole DAG ({', '.join(steps)}, batch {batch}): far too short for the numbers to "
            "say anything about distillation. The evidence is the tiny study (docs/results/tiny-study.md).")


def render_table1(study, reports_dir, formats=("md", "csv", "tex", "html")):
    """Table 1 in every format (rows of every configured protocol), plus ``seeds.{md,csv}`` (per-seed
    averages and their spread, under the first protocol). Tiny mode adds the stand-ins' chance."""
    by_protocol = {p: study_families(study, p) for p in study.protocols}
    fams = by_protocol[study.protocols[0]]
    chance = study_chance(study)
    paths = write_table(table1(by_protocol, load_paper(), chance, table_caption(study), study.columns()),
                        Reports(str(reports_dir)).stem(TABLE1), formats)
    md, csv_text = seed_table(fams, study.seeds, chance, study.columns())
    for ext, text in (("md", md), ("csv", csv_text)):
        paths.append(atomic_write_text(Reports(str(reports_dir)).table(SEEDS, ext), text))
    return paths


def render_ablation(study, kind: str, reports_dir, formats=("md", "csv", "tex", "html")):
    """kind: 'losses' or 'stages' (config ablations.<kind>)."""
    models = study.ablation_loss_models() if kind == "losses" else study.ablation_stage_models()
    rows = []
    for name, names in models.items():
        for s in study.ablation_students():
            mine = [m for m in names if parse_model(m).llm == s]
            chain = parse_model(mine[0]).chain
            rows.append((f"{name}, {s}", chain, _row(study, name, name, s, mine)))
    title = {"losses": "Ablation: distillation terms in DPT/DFT", "stages": "Ablation: training stages"}[kind]
    table = ablation_table(title, rows, study.protocols[0], study_chance(study), table_caption(study),
                           thirdparty_rows(kind), study.columns())
    return write_table(table, Reports(str(reports_dir)).stem(Reports.ablation(kind)), formats)


def llm_parameters(model_dir: str | Path) -> float:
    """Parameters of the language model (+ head) in a saved LLaVA, from the safetensors header only."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for key, meta in header.items():
            if key != "__metadata__" and ("language_model" in key or key.startswith("lm_head")):
                total += math.prod(meta["shape"])
    return float(total)


def render_figures(study, reports_dir) -> list[Path]:
    from llavakd.report import figures  # matplotlib: imported to draw, never to plan

    fams = study_families(study)
    paper = load_paper()
    out = Reports(str(reports_dir))
    params = {}
    for fam in study.families.values():
        for llm, model in [(fam.teacher, study.teacher_model(fam.teacher))] + [
                (s, model_name(s, study.seeds[0], study.variants["baseline"])) for s in fam.students]:
            params[llm] = llm_parameters(study.model_dir(model))
    runs = []
    seed = study.seeds[0]
    for s in study.students():
        for prefix in study.variants["llava_kd"].prefixes():
            runs.append((s, prefix.last.name, study.layout.metrics_file(s, seed, prefix)))
    chance = study_chance(study)
    bars, overview, curves = (Path(out.figure(name)) for name in STUDY_FIGURES)
    return [figures.benchmark_bars(fams, paper, bars, chance),
            figures.overview(fams, paper, params, overview, chance),
            figures.training_curves(runs, curves)]


def render_protocol_offset(study, reports_dir) -> list[Path]:
    """``figures/protocol_offset.{png,csv}``: each released checkpoint under each configured protocol."""
    from llavakd.report import figures
    from llavakd.report.collect import read_scores

    released = []
    for model in study.released_models():
        name = parse_model(model).llm
        spec = study.cfg.released[name]
        for protocol in study.protocols:
            scores = {c: float(r["headline"]) for c, r in read_scores(study.layout.eval_dir(model, protocol)).items()}
            released.append({"name": name, "method": spec.method, "llm": spec.llm, "protocol": protocol,
                             "scores": scores})
    return figures.protocol_offset(released, load_paper(), Path(Reports(str(reports_dir)).figure(OFFSET_FIGURE)))


def render_agreement(study, reports_dir) -> list[Path]:
    """``agreement.{md,csv}`` and ``figures/agreement.png`` from every student's agreement folder."""
    from llavakd.report import figures
    from llavakd.report.agreement import collect_agreement, write_agreement

    rows, benches = collect_agreement(study)
    out = Reports(str(reports_dir))
    paths = write_agreement(rows, benches, Path(out.stem(AGREEMENT)))
    return paths + [figures.agreement(rows, benches, Path(out.figure(AGREEMENT)))]


def render_methods(study, reports_dir, formats=("md", "csv", "tex", "html")) -> list[Path]:
    """``methods.{md,csv,tex,html}`` and ``figures/methods.png``: every compared method against ce
    (llavakd.report.methods), with the planner's price of each job when the study has a cost section;
    with budgets, also ``figures/budgets.png`` and ``variance.csv``."""
    from llavakd.layout import BUDGETS, METHODS, VARIANCE
    from llavakd.report import figures
    from llavakd.report.methods import caption, collect_methods, write_methods, write_variance

    rows = collect_methods(study)
    out = Reports(str(reports_dir))
    text = caption(rows, study)
    cpu = study.cfg.cost is not None and study.cfg.cost.cpu is not None
    paths = write_methods(rows, text, Path(out.stem(METHODS)), chance=study_chance(study), formats=formats,
                          columns=study.columns(), cpu=cpu)
    paths.append(figures.methods([r for r in rows if r.matched is None], Path(out.figure(METHODS)), study.columns()))
    if study.cfg.methods.budgets:
        paths.append(figures.budgets(rows, Path(out.figure(BUDGETS)), study.columns(), caption=text))
        paths.append(write_variance(rows, Path(out.table(VARIANCE, "csv"))))
    return paths


def render_for_rule(what: str, study, reports_dir, log_path, formats=("md", "csv", "tex", "html")) -> None:
    """Entry point of the Snakemake report rules: render, and list what was written in the log."""
    if what == "table1":
        paths = render_table1(study, reports_dir, formats)
    elif what in ("losses", "stages"):
        paths = render_ablation(study, what, reports_dir, formats)
    elif what == "figures":
        paths = render_figures(study, reports_dir)
    elif what == "offset":
        paths = render_protocol_offset(study, reports_dir)
    elif what == "agreement":
        paths = render_agreement(study, reports_dir)
    elif what == "methods":
        paths = render_methods(study, reports_dir, formats)
    else:
        raise ValueError(what)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(log_path).write_text("".join(f"wrote {p}\n" for p in paths))
