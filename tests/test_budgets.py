"""When distillation pays: budgets, the compute-matched control, the teacher's cost, the budget curves and the
variance split (llavakd.plan.method_arms / compute_matched_steps, llavakd.report.methods, figures.budgets)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import fabricate_method_job, frozen_demo

from llavakd.plan import Study, compute_matched_steps
from llavakd.tiny.tokenizer import catalogue

ROOT = Path(__file__).resolve().parents[1]
COST = {"samples": {"pt": 6000, "sft": 6666}, "tokens_per_sample": {"pt": 37, "sft": 327},
        "cpu": {"gflops": 35.0, "eval_seconds": 100, "agreement_seconds": 20, "cores": 2}}


def _study(compare, budgets=(2, 8), compute_matched=True, seeds=(0, 1, 2, 3, 4)) -> Study:
    raw = frozen_demo()
    raw["seeds"] = list(seeds)
    raw["methods"] = {"compare": list(compare), "students": ["qwen1.5-0.5b"], "budgets": list(budgets),
                      "compute_matched": compute_matched}
    raw["cost"] = json.loads(json.dumps(COST))
    return Study.load(raw, source="config.yaml", tiny_llms=catalogue())


# -- the compute-matched step count ------------------------------------------------------------------
def _hand_flops(distil: bool, vocab: int, seq: int = 327) -> float:
    """One sample's model FLOPs, counted here by hand from the tiny shapes (llavakd/tiny/family.py): the
    student (hidden 128, MLP 256, 2 layers, tied head) trains, the teacher (Qwen1.5-4B-shaped: 256, 512,
    4 layers) runs forward; SigLIP-tiny (hidden 64, MLP 256, 3 layers, 16 patches, 15 visual tokens) once per model."""
    def layers(h, i, n):  # q, k, v, o and the SwiGLU MLP, no GQA
        return n * (4 * h * h + 3 * h * i)

    s_h, t_h, d_v = 128, 256, 64
    f = 6 * layers(s_h, 256, 2) * seq + 6 * 2 * seq * seq * s_h + 6 * vocab * s_h * seq
    vision = 2 * 3 * (4 * d_v * d_v + 2 * d_v * 256) * 16 + 4 * 3 * 16 * 16 * d_v
    f += vision + 6 * (d_v * s_h + s_h * s_h) * 15
    if distil:
        f += 2 * layers(t_h, 512, 4) * seq + 2 * 4 * seq * seq * t_h + 2 * vocab * t_h * seq
        f += vision + 2 * (d_v * t_h + t_h * t_h) * 15
    return float(f)


@pytest.mark.parametrize("budget", [200, 800])
def test_the_compute_matched_step_count_equals_a_hand_count(budget):
    study = _study(["kd"], budgets=[budget])
    style = catalogue()["qwen1.5-0.5b"]["tokens"]
    vocab = (style + 63) // 64 * 64
    want = round(budget * _hand_flops(True, vocab) / _hand_flops(False, vocab))
    chain = study.method_chain("kd", budget)
    assert str(chain) == f"pt--sft--dft{budget}@kd"
    assert compute_matched_steps(study, "qwen1.5-0.5b", chain) == want
    arms = {a.label: (a, str(c)) for a, c in study.method_arms("qwen1.5-0.5b")}
    assert arms[f"ce=kd@{budget}"][1] == f"pt--sft--cft{want}"
    assert arms[f"ce@{budget}"][1] == f"pt--sft--cft{budget}"  # the step-matched control
    cfg = study.stage_config("qwen1.5-0.5b", 0, arms[f"ce=kd@{budget}"][1])
    assert cfg.train.max_steps == want and not cfg.distill  # the job trains that count, without a teacher


def test_llms_known_by_parameter_count_are_counted_once_for_the_steps_and_the_price():
    """With ``cost.params`` (6N a trained token, 2N a teacher token), the compute-matched steps and the
    job's price read the same count: the control's steps are 200 x (6 N_s + 2 N_t) / 6 N_s, and the price's
    FLOPs are that count times the job's samples."""
    from llavakd.plan import job_price, job_samples

    raw = frozen_demo()
    raw["seeds"] = [0]
    raw["methods"] = {"compare": ["kd"], "students": ["qwen1.5-0.5b"], "budgets": [200], "compute_matched": True}
    raw["cost"] = json.loads(json.dumps(COST)) | {"params": {"qwen1.5-0.5b": 5e8, "qwen1.5-4b": 4e9}}
    study = Study.load(raw, source="config.yaml", tiny_llms=catalogue())
    chain = study.method_chain("kd", 200)
    assert compute_matched_steps(study, "qwen1.5-0.5b", chain) == round(200 * (6 * 5e8 + 2 * 4e9) / (6 * 5e8))
    price = job_price(study)("qwen1.5-0.5b", chain)
    assert price["flops"] == pytest.approx((6 * 5e8 + 2 * 4e9) * 327 * job_samples(study, "qwen1.5-0.5b", chain))
    assert price["teacher_inference"] == pytest.approx(price["job"] * 8 / 11)


def test_an_on_policy_methods_control_also_pays_for_the_students_sampling():
    """gkd samples half its answers: its compute-matched ce also spends the student's forward over the prompt
    and 128 new tokens (2N a token) on half the samples, counted here from the student's parameters."""
    from llavakd.plan import llm_params, sample_flops

    study = _study(["gkd", "kd"], budgets=[200])
    gkd, kd = study.method_chain("gkd", 200), study.method_chain("kd", 200)
    gen = 0.5 * 2 * llm_params(study, "qwen1.5-0.5b") * (327 + 128)
    assert gen > 0
    f_gkd, f_kd = sample_flops(study, "qwen1.5-0.5b", gkd), sample_flops(study, "qwen1.5-0.5b", kd)
    assert f_gkd["generation"] == pytest.approx(gen) and f_kd["generation"] == 0
    ce = sample_flops(study, "qwen1.5-0.5b", study.method_chain("ce", 200))["total"]
    assert compute_matched_steps(study, "qwen1.5-0.5b", gkd) == round(200 * (f_gkd["total"]) / ce)
    assert f_gkd["total"] - f_kd["total"] == pytest.approx(gen, rel=1e-9)  # the same terms' parts, plus the sampling
    assert compute_matched_steps(study, "qwen1.5-0.5b", gkd) > compute_matched_steps(study, "qwen1.5-0.5b", kd)


def test_a_terms_parts_are_paid_at_the_positions_it_runs_on():
    """LLaVADI's projector runs on the answer tokens (feat_positions: responses): with
    cost.answer_tokens_per_sample it is paid there, 6 (s t + t^2) a token, 18 answers of the 327
    positions; with feat_positions: all at every position; without the key at every position too, and
    the dry run names the overcount. Align-KD's vtok map is paid at the 15 visual tokens only."""
    from llavakd.plan import methods_report, sample_flops

    s_h, t_h = 128, 256
    feat = 6 * (s_h * t_h + t_h * t_h)

    def parts(study, method):
        chain = study.method_chain(method, 200)
        f = sample_flops(study, "qwen1.5-0.5b", chain)
        kd = sample_flops(study, "qwen1.5-0.5b", study.method_chain("kd", 200))
        return f["total"] - kd["total"]  # the same models; the difference is the terms' parts

    study = _study(["kd", "llavadi"], budgets=[200])
    assert parts(study, "llavadi") == pytest.approx(feat * 327)  # the key is unset: every position
    assert "counts feat at every position" in methods_report(study)
    study.cfg.cost.answer_tokens_per_sample = {"sft": 18}
    assert parts(study, "llavadi") == pytest.approx(feat * 18)
    assert "counts feat at every position" not in methods_report(study)
    raw = frozen_demo()
    raw["seeds"] = [0]
    raw["methods"] = {"compare": ["kd", "llavadi_all", "align_kd"], "students": ["qwen1.5-0.5b"], "budgets": [200],
                      "compute_matched": True,
                      "define": {"llavadi_all": {"terms": ["ce", "res", "feat"], "feat_positions": "all"}}}
    raw["cost"] = json.loads(json.dumps(COST)) | {"answer_tokens_per_sample": {"sft": 18}}
    study = Study.load(raw, source="config.yaml", tiny_llms=catalogue())
    assert parts(study, "llavadi_all") == pytest.approx(feat * 327)
    align = study.stage_config("qwen1.5-0.5b", 0, study.method_chain("align_kd", 200)).loss
    from llavakd import terms

    dims = terms.Dims(s_h, t_h, 2, 4)
    others = sum(terms.spec(n).flops(align, dims) for n in align.enabled() if n != "vtok") * 327
    assert parts(study, "align_kd") == pytest.approx(6 * t_h * s_h * 15 + others)


def test_a_study_without_budgets_plans_its_bare_chains():
    raw = frozen_demo()
    raw["methods"] = {"compare": ["kd", "llava_kd_dft"], "students": ["qwen1.5-0.5b"]}
    study = Study.load(raw, source="config.yaml", tiny_llms=catalogue())
    assert {k: [m.split("/", 2)[2] for m in v] for k, v in study.method_models().items()} == {
        "ce": ["pt--sft--cft"], "kd": ["pt--sft--dft@kd"], "llava_kd_dft": ["pt--sft--dft"]}


def test_budget_and_compute_match_problems_fail_the_plan():
    from llavakd.errors import ConfigError

    raw = frozen_demo()
    raw["methods"] = {"compare": ["kd"], "budgets": [200, 200, 0], "compute_matched": True}
    with pytest.raises(ConfigError) as err:
        Study.load(raw, source="config.yaml", tiny_llms=catalogue())
    text = "\n".join(err.value.problems)
    assert "methods.budgets: 0 must be >= 1" in text and "repeats a budget" in text
    raw["methods"] = {"compare": ["kd"], "budgets": [200], "compute_matched": True}
    with pytest.raises(ConfigError) as err:
        Study.load(raw, source="config.yaml", tiny_llms=catalogue())
    assert "methods.compute_matched: needs a cost section" in "\n".join(err.value.problems)
    raw["methods"] = {"compare": ["kd", "mine"], "compute_matched": True,
                      "define": {"mine": {"terms": ["ce", "res"], "stage": "dpt"}}}
    raw["cost"] = {**json.loads(json.dumps(COST)), "tokens_per_sample": {"pt": 37}}
    with pytest.raises(ConfigError) as err:
        Study.load(raw, source="config.yaml", tiny_llms=catalogue())
    text = "\n".join(err.value.problems)
    assert "cost.tokens_per_sample.sft: missing" in text
    assert "methods.compute_matched: mine distils in dpt" in text


def test_the_dry_run_prints_every_arm_its_steps_and_the_teachers_cost():
    from llavakd.plan import job_price, methods_report

    study = _study(["kd", "llavadi"], budgets=[200, 800])
    text = methods_report(study)
    for budget in (200, 800):
        for arm, chain in study.method_arms("qwen1.5-0.5b"):
            if arm.budget == budget:
                steps = arm.steps or budget
                assert any(str(chain) in line and f" {steps} steps" in line for line in text.splitlines()), chain
    price = job_price(study)("qwen1.5-0.5b", study.method_chain("kd", 800))
    line = next(x for x in text.splitlines() if "budget   800  kd " in x and "teacher's training" in x)
    assert f"{price['teacher_training']:9.3g}" in line and "these 20 student models" in line


# -- the table, the cost block and the figure from fabricated results -------------------------------
SHIFT_STEP = {"kd": [3.0, 2.5, 3.5, 2.0, 3.1], "llavadi": [1.0, -2.0, 0.5, 2.0, -1.0]}  # vs step-matched ce
SHIFT_COMPUTE = {"kd": [-2.0, -2.6, -1.9, -2.4, -2.2], "llavadi": [0.4, -0.9, 1.1, -0.3, 0.2]}  # vs the FLOPs' ce
BASE = [40.0, 44.0, 38.0, 42.0, 41.0]


def _fabricate(study, tmp_path):
    from llavakd.report.averages import COLUMNS

    rng = np.random.default_rng(0)
    Path(study.layout.chance_file()).parent.mkdir(parents=True, exist_ok=True)
    Path(study.layout.chance_file()).write_text(json.dumps({c: {"headline": 10.0, "answers": ["x"]} for c in COLUMNS}))
    scores = {}
    for arm, chain in study.method_arms("qwen1.5-0.5b"):
        for seed in study.seeds:
            step = SHIFT_STEP.get(arm.method, [0] * 5)[seed] if arm.matched is None else 0.0
            # the compute-matched control of a method sits at (method - its compute shift)
            if arm.matched is not None:
                step = SHIFT_STEP[arm.matched][seed] - SHIFT_COMPUTE[arm.matched][seed]
            value = BASE[seed] + step + (5.0 if arm.budget == 8 else 0.0)
            m = f"qwen1.5-0.5b/s{seed}/{chain}"
            scores[m] = value
            if Path(study.layout.eval_dir(m, study.protocols[0])).is_dir():
                continue  # two compute-matched arms may share a job
            fabricate_method_job(study, m, {c: value + i for i, c in enumerate(COLUMNS)},
                                 replicates={c: list(value + i + rng.normal(0, 1.0, 50)) for i, c in enumerate(COLUMNS)})
    return scores


def test_the_budgets_table_pairs_each_method_with_both_controls_and_holm_runs_per_family(tmp_path, monkeypatch):
    """Fabricated results at budgets 2 and 8 for ce, kd and llavadi, each with its compute-matched ce: kd is
    above the step-matched ce and below the compute-matched one, llavadi neither (the negative control).
    The csv's paired differences, p-values and Holm levels equal scipy's paired t-tests computed here,
    Holm running over the 2 methods of each (budget, control) family; the cost block charges the teacher's
    training divided over the comparison's distilled students; the figure and the variance file are written."""
    import statistics

    from scipy.stats import t as student_t
    from scipy.stats import ttest_rel

    from llavakd.plan import job_samples, pricer, sample_flops
    from llavakd.report.render import render_methods

    monkeypatch.chdir(tmp_path)
    study = _study(["kd", "llavadi"])
    _fabricate(study, tmp_path)
    # kd at 8: 3 s a step, but seed 0 was resumed from a checkpoint and its clock covers one last second
    for seed in study.seeds:
        meta = Path(study.layout.run_dir("qwen1.5-0.5b", seed, study.method_chain("kd", 8))) / "metadata.json"
        meta.write_text(json.dumps({"steps": 10, "wall_time_s": 1.0 if seed == 0 else 30.0, "peak_memory_mb": 100,
                                    "resumed_from": "checkpoint-10" if seed == 0 else None}))
    paths = render_methods(study, tmp_path / "reports")
    names = {p.name for p in paths}
    assert {"methods.md", "methods.csv", "methods.png", "budgets.png", "variance.csv"} <= names
    rows = [r for r in csv.DictReader((tmp_path / "reports" / "methods.csv").open()) if r["column"] == "avg10"]
    for budget in ("2", "8"):
        got = {r["method"]: r for r in rows if r["budget"] == budget and not r["matched"]}
        for kind, shift, diff, level, pcol in (("step", SHIFT_STEP, "diff_vs_ce", "holm_level", "p_value"),
                                               ("compute", SHIFT_COMPUTE, "diff_vs_compute_ce", "holm_level_compute",
                                                "p_value_compute")):
            ps = {m: ttest_rel([b + s for b, s in zip(BASE, shift[m])], BASE).pvalue for m in shift}
            for i, m in enumerate(sorted(ps, key=ps.get)):
                assert float(got[m][diff]) == pytest.approx(sum(shift[m]) / 5, abs=1e-4), (budget, kind, m)
                assert float(got[m][pcol]) == pytest.approx(ps[m], rel=1e-3), (budget, kind, m)
                assert float(got[m][level]) == pytest.approx(0.05 / (2 - i), rel=1e-3), (budget, kind, m)
                half = student_t.ppf(1 - 0.05 / (2 - i) / 2, 4) * statistics.stdev(shift[m]) / math.sqrt(5)
                assert float(got[m][level.replace("level", "half")]) == pytest.approx(half, rel=1e-3), (budget, kind, m)
        assert float(got["kd"]["s_per_step"]) == pytest.approx(3.0 if budget == "8" else 1.0)  # the resumed job left out
        assert (got["kd"]["beats_ce"], got["kd"]["below_compute_ce"]) == ("True", "True")
        assert (got["llavadi"]["beats_ce"], got["llavadi"]["below_ce"]) == ("False", "False")  # negative control
        assert (got["llavadi"]["beats_compute_ce"], got["llavadi"]["below_compute_ce"]) == ("False", "False")
    md = (tmp_path / "reports" / "methods.md").read_text()
    assert "clearing the step-matched ce: kd above at 2; kd above at 8." in md
    assert "clearing the compute-matched ce: kd below at 2; kd below at 8." in md
    # the teacher's cost: its PT+SFT divided over the 2 methods x 2 budgets x 5 seeds distilled here
    job_hours = pricer(study)[0]
    chain = study.method_chain("kd", 8)
    teacher = sum(job_hours("qwen1.5-4b", c) for c in ("pt", "pt--sft"))
    kd8 = next(r for r in rows if r["method"] == "kd" and r["budget"] == "8" and not r["matched"])
    assert float(kd8["teacher_training_hours"]) == pytest.approx(teacher, rel=1e-5)
    assert float(kd8["students_of_teacher"]) == 20
    f = sample_flops(study, "qwen1.5-0.5b", chain)
    assert float(kd8["flops"]) == pytest.approx(f["total"] * job_samples(study, "qwen1.5-0.5b", chain), rel=1e-5)
    assert float(kd8["teacher_inference_hours"]) == pytest.approx(job_hours("qwen1.5-0.5b", chain) * f["teacher"]
                                                                  / f["total"], rel=1e-5)
    block = md[md.index("**The teacher's cost**"):].splitlines()
    line = next(x for x in block if x.startswith("| kd |") and x.split("|")[3].strip() == "8")
    assert line.split("|")[7].strip() == "20"  # the students sharing the teacher
    charged = float(line.split("|")[-2])
    assert charged == pytest.approx(float(kd8["job_hours"]) + teacher / 20, rel=2e-3)

    split = {(r["method"], r["budget"]): r for r in csv.DictReader((tmp_path / "reports" / "variance.csv").open())}
    for m in ("kd", "llavadi"):
        for budget in ("2", "8"):
            assert float(split[(m, budget)]["between"]) == pytest.approx(statistics.variance(SHIFT_STEP[m]), rel=1e-4)
            # each benchmark's replicates: independent N(0, 1) per model, so Avg10's paired difference has 2/10
            assert float(split[(m, budget)]["evaluation"]) == pytest.approx(0.2, rel=0.35)
    assert "Where the spread of Δ Avg10 comes from" in md
    from PIL import Image

    with Image.open(tmp_path / "reports" / "figures" / "budgets.png") as im:
        assert im.size[0] > 1500 and im.size[1] > 300


def test_the_budget_figure_draws_every_method_at_every_budget_with_its_intervals(tmp_path, monkeypatch):
    """The four panels of budgets.png hold the table's numbers: Avg10 ± its 95% interval per method and
    budget against steps and against the job's FLOPs (the compute-matched ce as its own points), and each
    method's paired difference ± its Holm half-width against the step-matched ce (by steps) and the
    compute-matched ce (by FLOPs)."""
    from llavakd.report import figures
    from llavakd.report.render import render_methods

    drawn = {}
    save = figures._save

    def keep(fig, out):
        if Path(out).name == "budgets.png":
            drawn["axes"] = [{c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()),
                                              [seg[1][1] - seg[0][1] for seg in c.lines[2][0].get_segments()])
                              for c in ax.containers} for ax in fig.axes]
            fig.canvas.draw()  # the labels as drawn: the steps axes at the budgets, no minor labels anywhere
            drawn["labels"] = [([t.get_text() for t in ax.get_xticklabels() if t.get_visible()],
                                [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()])
                               for ax in fig.axes]
        return save(fig, out)

    monkeypatch.setattr(figures, "_save", keep)
    monkeypatch.chdir(tmp_path)
    study = _study(["kd", "llavadi"])
    _fabricate(study, tmp_path)
    render_methods(study, tmp_path / "reports")
    rows = [r for r in csv.DictReader((tmp_path / "reports" / "methods.csv").open()) if r["column"] == "avg10"]
    table = {(r["method"], int(r["budget"]), r["matched"]): r for r in rows}
    steps, flops, step_diff, compute_diff = drawn["axes"]
    labels = drawn["labels"]
    assert labels[0][0] == labels[2][0] == ["2", "8"] and all(minor == [] for _, minor in labels)
    assert set(steps) == {"ce", "kd", "llavadi"} and set(step_diff) == set(compute_diff) == {"kd", "llavadi"}
    for m in ("ce", "kd", "llavadi"):
        want = [table[(m, b, "")] for b in (2, 8)]
        x, y, bars = steps[m]
        assert x == [2, 8]
        assert y == pytest.approx([float(r["mean"]) for r in want], abs=1e-3)
        assert bars == pytest.approx([2 * float(r["ci95"]) for r in want], abs=2e-3)
        assert flops[m][0] == pytest.approx([float(r["flops"]) for r in want], rel=1e-5)
    x, y, _ = flops["ce, compute-matched"]
    cm = [r for r in rows if r["matched"]]
    assert sorted(x) == pytest.approx(sorted(float(r["flops"]) for r in cm), rel=1e-5) and len(x) == 4
    for m in ("kd", "llavadi"):
        want = [table[(m, b, "")] for b in (2, 8)]
        x, y, bars = step_diff[m]
        assert x == [2, 8] and y == pytest.approx([sum(SHIFT_STEP[m]) / 5] * 2, abs=1e-3)
        assert bars == pytest.approx([2 * float(r["holm_half"]) for r in want], abs=2e-3)
        x, y, bars = compute_diff[m]
        assert x == pytest.approx([float(r["flops"]) for r in want], rel=1e-5)
        assert y == pytest.approx([sum(SHIFT_COMPUTE[m]) / 5] * 2, abs=1e-3)
        assert bars == pytest.approx([2 * float(r["holm_half_compute"]) for r in want], abs=2e-3)


# -- the variance split ----------------------------------------------------------------------------
def _simulate(seeds: int, training_sd: float, docs: int, rng, interaction: float = 0.3) -> tuple[list, list, float, float]:
    """Every seed's two models scored on the same ``docs`` yes/no documents, as in a study: a document's ease
    is shared by both models and all seeds, and the method does ``interaction`` better on half the documents
    and as much worse on the other half, whatever the seed (a part of the document error common to every
    seed). Per seed, the method's skill differs from the control's by 0.02 + N(0, training_sd) in
    probability. Returns each seed's difference (in points), its bootstrap replicates over documents (the
    same draws for every model and seed), the seed's own evaluation variance the design implies (the
    answers' Bernoulli variance over docs²) and the shared part (the interaction's variance / docs)."""
    ease = rng.uniform(0.35, 0.65, docs)
    tilt = np.where(np.arange(docs) % 2 == 0, interaction, -interaction)
    picks = rng.integers(0, docs, size=(400, docs))
    diffs, reps, expected = [], [], []
    for _ in range(seeds):
        gap = 0.02 + rng.normal(0, training_sd)
        pa, pb = np.clip(ease + tilt + gap, 0, 1), ease
        d = ((rng.uniform(size=docs) < pa).astype(float) - (rng.uniform(size=docs) < pb).astype(float)) * 100
        diffs.append(float(d.mean()))
        reps.append(list(d[picks].mean(axis=1)))
        expected.append(1e4 * float(np.sum(pa * (1 - pa) + pb * (1 - pb))) / docs**2)
    return diffs, reps, float(np.mean(expected)), 1e4 * float(np.var(tilt, ddof=1)) / docs


@pytest.mark.parametrize("training_sd", [0.0, 0.03])
def test_the_variance_split_recovers_a_simulated_truth(training_sd):
    """The seeds share their documents, and the method's advantage depends on the document the same way
    for every seed: the split must find the seed's own evaluation variance and the training variance, not
    count the shared part as evaluation (which would take it out of training)."""
    from llavakd.report.methods import variance_split

    rng = np.random.default_rng(7)
    n = 4000
    diffs, reps, evaluation, shared = _simulate(n, training_sd, 150, rng)
    got = variance_split(diffs, reps, k=3)
    train_var = (100 * training_sd) ** 2
    assert got["evaluation"] == pytest.approx(evaluation, rel=0.1)
    assert got["shared"] == pytest.approx(shared, rel=0.25)
    assert got["between"] == pytest.approx(train_var + evaluation, rel=0.15)
    if training_sd:
        assert got["training"] == pytest.approx(train_var, rel=0.25)
        assert got["evaluation_share"] == pytest.approx(evaluation / (evaluation + train_var), rel=0.15)
    else:  # no training spread: the split must give (nearly) all of it to evaluation
        assert got["training"] < 0.15 * evaluation and got["evaluation_share"] > 0.85
    from scipy.stats import t as student_t

    t = student_t.ppf(1 - 0.05 / 6, n - 1) + student_t.ppf(0.8, n - 1)  # Holm's strictest level for 3 comparisons
    assert got["detectable"] == pytest.approx(t * math.sqrt(got["between"] / n), rel=1e-9)
    for f in (0.25, 4):
        assert got[f"detectable_docs_x{f:g}"] == pytest.approx(
            t * math.sqrt((got["training"] + got["evaluation"] / f) / n), rel=1e-9)


def test_replicates_of_unequal_count_are_not_split(tmp_path, monkeypatch):
    """A model whose result files keep fewer bootstrap replicates cannot be paired draw by draw with its
    control: its row of variance.csv says why instead of zipping the shorter list."""
    from llavakd.report.averages import COLUMNS
    from llavakd.report.render import render_methods

    monkeypatch.chdir(tmp_path)
    study = _study(["kd", "llavadi"])
    _fabricate(study, tmp_path)
    folder = Path(study.layout.eval_dir(f"qwen1.5-0.5b/s2/{study.method_chain('kd', 8)}", study.protocols[0]))
    for c in COLUMNS:
        rec = json.loads((folder / f"{c}.json").read_text())
        rec["interval95"]["replicates"] = rec["interval95"]["replicates"][:30]
        (folder / f"{c}.json").write_text(json.dumps(rec))
    render_methods(study, tmp_path / "reports")
    split = {(r["method"], r["budget"]): r for r in csv.DictReader((tmp_path / "reports" / "variance.csv").open())}
    assert "unequal count" in split[("kd", "8")]["missing"] and not split[("kd", "8")]["between"]
    assert not split[("kd", "2")]["missing"] and float(split[("kd", "2")]["between"]) > 0
