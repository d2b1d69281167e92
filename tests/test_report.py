"""Reports: the paper's averages recomputed, tables against golden files, seeds, figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from llavakd.plan import Study
from llavakd.report.averages import PAPER, average, averages
from llavakd.report.collect import Cell, Row, collect_row
from llavakd.report.reference import PAPER_DIR, display_llm, load_paper, paper_row
from llavakd.report.render import render_ablation, render_figures, render_table1

GOLDEN = Path(__file__).parent / "golden" / "report"
COLS = ["vqav2", "gqa", "vizwiz", "sciqa", "textvqa", "mme", "mmb", "mmb_cn", "pope", "mmmu"]
AVG9 = COLS[:-1]  # the v1 table's AVG: the ten without MMMU


def _row(r):
    return {c: (None if pd.isna(r[c]) else float(r[c])) for c in COLS}


def test_paper_averages_are_recomputed_exactly():
    v3 = load_paper("table1_v3.csv")
    checked = 0
    for _, r in v3.iterrows():
        for name in ("avg7", "avg10"):
            if not pd.isna(r[name]):
                assert round(averages(_row(r), partial=True)[name], 1) == pytest.approx(r[name]), (r["method"], r["llm"],
                                                                                                 name)
                checked += 1
                full = averages(_row(r))[name]  # complete rows need no partial mean
                assert full is None or round(full, 1) == pytest.approx(r[name])
    assert checked >= 30
    v1 = pd.read_csv(PAPER_DIR / "table1_v1.csv")
    n = 0
    for _, r in v1.iterrows():
        if not pd.isna(r["avg"]):
            assert round(average(_row(r), AVG9, partial=True), 1) == pytest.approx(r["avg"]), (r["method"], r["llm"])
            n += 1
    assert n >= 5


def test_paper_rows_are_found_by_role_and_llm():
    paper = load_paper()
    assert display_llm("qwen1.5-0.5b") == "Qwen1.5-0.5B" and display_llm("qwen2.5-3b") == "Qwen2.5-3B"
    kd = paper_row(paper, "llava_kd", "qwen1.5-0.5b")
    base = paper_row(paper, "baseline", "qwen1.5-0.5b")
    assert kd["mme"] == pytest.approx(64.5) and base["mme"] == pytest.approx(59.8)
    assert paper_row(paper, "llava_kd", "qwen1.5-4b") is None


def test_seed_interval_is_the_t_interval():
    c = Cell([60.0, 62.0, 64.0])
    # t(0.975, 2) = 4.3027; sd = 2; half-width = 4.3027 * 2 / sqrt(3)
    assert c.mean == 62.0 and c.ci95 == pytest.approx(4.3027 * 2 / math.sqrt(3), rel=1e-4)
    assert Cell([50.0]).ci95 is None


CHANCE = {c: 44.0 + 0.5 * j for j, c in enumerate(COLS)}
DOC_HALF = 1.0  # each fixture result's 95% interval over documents: value ± 1
SPREAD = (-2.0, -1.0, 0.0, 1.0, 2.0)  # its bootstrap replicates: an average's lower end is its value - 1.9
FIXTURE = {
    "run": "golden", "mode": "tiny", "seeds": [0, 1],
    "families": {"qwen1.5": {"teacher": "qwen1.5-4b", "students": ["qwen1.5-0.5b"]}},
    "variants": {"baseline": "pt--sft", "llava_kd": "dpt--sft--dft"},
    "train": {}, "ablations": {"students": ["qwen1.5-0.5b"], "stages": {"DPT+SFT": "dpt--sft"}},
    "eval": {"benchmarks": "all"},
}


def _write_results(root: Path, study: Study):
    """Deterministic fixture scores; MMMU missing for the baseline, VQAv2/VizWiz on local splits."""
    models = study.table1_models() + [m for ms in study.ablation_stage_models().values() for m in ms]
    kinds = list(dict.fromkeys(m.split("/")[0] + "/" + m.split("/")[-1] for m in models))
    for model in dict.fromkeys(models):
        k = kinds.index(model.split("/")[0] + "/" + model.split("/")[-1])
        d = root / study.root / "eval" / model
        d.mkdir(parents=True, exist_ok=True)
        for j, c in enumerate(COLS):
            if c == "mmmu" and model.startswith("qwen1.5-0.5b/") and model.endswith("/pt--sft"):
                continue
            seed = int(model.split("/")[1][1:]) if "/s" in model else 0
            value = 40.0 + 3 * k + j + 0.5 * seed
            rec = {"headline": value, "local_split_differs": c in ("vqav2", "vizwiz"),
                   "interval95": {"low": value - DOC_HALF, "high": value + DOC_HALF,
                                  "replicates": [value + d for d in SPREAD]}}
            (d / f"{c}.json").write_text(json.dumps(rec))
    # the stand-ins' chance (tiny mode): some fixture cells sit below it, some above
    chance = {c: {"headline": CHANCE[c], "answers": {}} for c in COLS}
    (root / study.layout.chance_file()).write_text(json.dumps(chance))


@pytest.fixture
def golden_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = Study.load(FIXTURE)
    _write_results(tmp_path, study)
    return study


@pytest.mark.parametrize("ext", ["md", "csv", "tex", "html"])
def test_table1_matches_golden(golden_study, tmp_path, ext):
    render_table1(golden_study, tmp_path / "out", formats=(ext,))
    got = (tmp_path / "out" / f"table1.{ext}").read_text()
    assert got == (GOLDEN / f"table1.{ext}").read_text()


def test_seed_table_matches_golden(golden_study, tmp_path):
    render_table1(golden_study, tmp_path / "out", formats=("md",))
    assert (tmp_path / "out" / "seeds.md").read_text() == (GOLDEN / "seeds.md").read_text()


def test_ablation_table_matches_golden(golden_study, tmp_path):
    render_ablation(golden_study, "stages", tmp_path / "out", formats=("md",))
    assert (tmp_path / "out" / "ablation_stages.md").read_text() == (GOLDEN / "ablation_stages.md").read_text()


def test_table_cells(golden_study, tmp_path):
    render_table1(golden_study, tmp_path / "out", formats=("csv",))
    df = pd.read_csv(tmp_path / "out" / "table1.csv")
    ours = df[(df.source == "ours") & (df.method == "LLaVA-KD")].iloc[0]
    paper = df[(df.source == "paper") & (df.method == "LLaVA-KD")].iloc[0]
    delta = df[(df.source == "delta") & (df.method == "LLaVA-KD")].iloc[0]
    assert ours["seeds"] == 2 and not pd.isna(ours["gqa_ci95"])
    assert delta["gqa"] == pytest.approx(ours["gqa"] - paper["gqa"], abs=1e-3)
    assert ours["local_split"] == "vizwiz;vqav2"
    assert ours["avg10"] == pytest.approx(sum(ours[c] for c in COLS) / 10, abs=1e-3)
    base = df[(df.source == "ours") & (df.method == "TinyLLaVA† (baseline)")].iloc[0]
    assert pd.isna(base["mmmu"]) and pd.isna(base["avg10"]) and not pd.isna(base["avg7"])


def test_inconsistent_seeds_are_refused(golden_study, tmp_path):
    (tmp_path / "results/golden/eval/qwen1.5-0.5b/s1/dpt--sft--dft/gqa.json").unlink()
    with pytest.raises(Exception, match="gqa exists for 1 of 2 seeds"):
        collect_row({"label": "x", "role": "llava_kd", "llm": "qwen1.5-0.5b", "eval_dirs": [
            "results/golden/eval/qwen1.5-0.5b/s0/dpt--sft--dft", "results/golden/eval/qwen1.5-0.5b/s1/dpt--sft--dft"]})


def test_figures_render_from_result_files(golden_study, tmp_path):
    root = Path(golden_study.root)
    for llm, model in (("qwen1.5-4b", golden_study.teacher_model("qwen1.5-4b")),
                       ("qwen1.5-0.5b", "qwen1.5-0.5b/s0/pt--sft")):
        d = Path(golden_study.model_dir(model))
        d.mkdir(parents=True)
        size = 64 if llm == "qwen1.5-4b" else 16
        save_file({"model.language_model.embed_tokens.weight": torch.zeros(size, 8),
                   "model.vision_tower.x": torch.zeros(1000, 8), "lm_head.weight": torch.zeros(size, 8)},
                  str(d / "model.safetensors"))
    for prefix in ("dpt", "dpt--sft", "dpt--sft--dft"):
        run = root / "runs/qwen1.5-0.5b/s0" / prefix
        run.mkdir(parents=True)
        lines = [json.dumps({"step": s, "loss": 3 / s, "loss_ce": 2 / s, "loss_res": 0.5 / s, "loss_vis": 0.4 / s,
                             "loss_rel": 0.01 / s}) for s in range(1, 11)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    paths = render_figures(golden_study, tmp_path / "out")
    assert [p.name for p in paths] == ["benchmarks.png", "overview.png", "training_curves.png"]
    assert all(p.stat().st_size > 20_000 for p in paths)


def test_protocol_offset_figure(tmp_path, monkeypatch):
    from llavakd.report.render import render_protocol_offset

    monkeypatch.chdir(tmp_path)
    cfg = dict(FIXTURE, released={"kd-1b": {"checkpoint": "/ckpt", "method": "LLaVA-KD", "llm": "Qwen1.5-0.5B"}})
    study = Study.load(cfg)
    assert study.released_models() == ["released/kd-1b"] and study.model_dir("released/kd-1b") == "/ckpt"
    d = tmp_path / study.root / "eval" / "released" / "kd-1b"
    d.mkdir(parents=True)
    for j, c in enumerate(COLS):
        (d / f"{c}.json").write_text(json.dumps({"headline": 50.0 + j}))
    path, csv_path = render_protocol_offset(study, tmp_path / "out")
    assert path.name == "protocol_offset.png" and path.stat().st_size > 20_000
    assert csv_path.name == "protocol_offset.csv"
    bad = dict(FIXTURE, released={"x": {"checkpoint": "/c", "method": "LLaVA-KD", "llm": "Qwen9-1B"}})
    (tmp_path / "results/golden/eval/released/x").mkdir(parents=True)
    with pytest.raises(ValueError, match="no paper row"):
        render_protocol_offset(Study.load(bad), tmp_path / "out")


def test_protocol_offset_csv_is_ours_minus_paper(tmp_path, monkeypatch):
    """One row per checkpoint, protocol and reported column; the arithmetic checked against the paper's csv."""
    from llavakd.report.render import render_protocol_offset

    monkeypatch.chdir(tmp_path)
    cfg = dict(FIXTURE, eval={"benchmarks": "all", "protocol": ["lmms-eval", "paper"]},
               released={"kd-1b": {"checkpoint": "/ckpt", "method": "LLaVA-KD", "llm": "Qwen1.5-0.5B"}})
    study = Study.load(cfg)
    for protocol, base in (("lmms-eval", 50.0), ("paper", 60.0)):
        d = tmp_path / study.layout.eval_dir("released/kd-1b", protocol)
        d.mkdir(parents=True)
        for j, c in enumerate(COLS):
            (d / f"{c}.json").write_text(json.dumps({"headline": base + j}))
    _, csv_path = render_protocol_offset(study, tmp_path / "out")
    got = pd.read_csv(csv_path)
    paper = paper_row(load_paper(), "llava_kd", "qwen1.5-0.5b")
    assert len(got) == 2 * len(COLS)  # every column of this row is reported
    for _, r in got.iterrows():
        c = COLS[[PAPER.header(x) for x in COLS].index(r["benchmark"])]
        ours = (50.0 if r["protocol"] == "lmms-eval" else 60.0) + COLS.index(c)
        assert r["ours"] == pytest.approx(ours) and r["paper"] == pytest.approx(paper[c])
        assert r["offset"] == pytest.approx(ours - paper[c], abs=1e-4)


def test_two_protocols_give_both_rows_and_their_difference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = Study.load(dict(FIXTURE, eval={"benchmarks": "all", "protocol": ["lmms-eval", "paper"]}))
    _write_results(tmp_path, study)
    for model in study.table1_models():  # the paper protocol scores everything 2.5 points higher here
        src, dst = tmp_path / study.layout.eval_dir(model), tmp_path / study.layout.eval_dir(model, "paper")
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.json"):
            rec = json.loads(f.read_text())
            (dst / f.name).write_text(json.dumps(dict(rec, headline=rec["headline"] + 2.5)))
    render_table1(study, tmp_path / "out", formats=("csv", "md"))
    df = pd.read_csv(tmp_path / "out" / "table1.csv")
    kd = df[df.method == "LLaVA-KD"]
    assert list(kd.source) == ["paper", "ours", "delta", "ours", "delta", "protocol-delta"]
    assert list(kd.protocol.fillna("")) == ["", "lmms-eval", "lmms-eval", "paper", "paper", ""]
    lm, pp, diff = kd.iloc[1], kd.iloc[3], kd.iloc[5]
    for c in (*COLS, "avg7", "avg10"):
        assert diff[c] == pytest.approx(pp[c] - lm[c], abs=1e-3) == pytest.approx(2.5, abs=1e-3)
    assert kd.iloc[4]["gqa"] == pytest.approx(pp["gqa"] - kd.iloc[0]["gqa"], abs=1e-3)
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| LLaVA-KD | Qwen1.5-0.5B | ours [paper] |" in md and "| Δ protocol |" in md


def test_cells_not_above_chance_are_marked(golden_study, tmp_path):
    render_table1(golden_study, tmp_path / "out", formats=("csv",))
    df = pd.read_csv(tmp_path / "out" / "table1.csv", keep_default_na=False)
    chance = df[df.source == "chance"].iloc[0]
    assert float(chance["gqa"]) == CHANCE["gqa"] and float(chance["avg10"]) == pytest.approx(sum(CHANCE.values()) / 10)
    for _, line in df[df.source == "ours"].iterrows():
        marked = set(filter(None, line["not_above_chance"].split(";")))
        for c in (*COLS, "avg7", "avg10"):
            if line[c] == "":
                continue
            if int(line["seeds"]) > 1:  # the t-interval over seeds
                low = float(line[c]) - float(line[f"{c}_ci95"])
            else:  # one seed: the interval over its documents (an average's from the replicates)
                low = float(line[c]) - (1.9 if c.startswith("avg") else DOC_HALF)
            expected = low <= float(chance[c]) + 1e-9  # the csv rounds to 4 places
            assert (c in marked) == expected, (line["method"], c)
    teacher = df[(df.source == "ours") & (df.method == "TinyLLaVA† (teacher)")].iloc[0]
    kd = df[(df.source == "ours") & (df.method == "LLaVA-KD")].iloc[0]
    assert "gqa" in teacher["not_above_chance"] and kd["not_above_chance"] == ""  # the fixture has both kinds
    # one seed above chance by less than its documents' interval: not shown to be above chance
    assert teacher["seeds"] == "1" and float(teacher["mmmu"]) > CHANCE["mmmu"] and "mmmu" in teacher["not_above_chance"]


def test_a_single_seed_cell_without_an_interval_over_documents_is_refused(golden_study, tmp_path):
    """A result file scored before intervals existed: the report names the cell instead of guessing."""
    from llavakd.errors import LlavaKDError

    path = next(Path(".").glob("results/golden/eval/qwen1.5-4b/*/pt--sft/gqa.json"))
    rec = json.loads(path.read_text())
    del rec["interval95"]
    path.write_text(json.dumps(rec))
    with pytest.raises(LlavaKDError, match="teacher qwen1.5-4b gqa: no 95% interval over documents"):
        render_table1(golden_study, tmp_path / "out", formats=("csv",))


def test_agreement_report_pools_seeds_and_averages_benchmarks(golden_study, tmp_path):
    from llavakd.report.render import render_agreement

    study = golden_study
    for model in study.student_models():
        seed = int(model.split("/")[1][1:])
        kd = model.endswith("dft")
        d = tmp_path / study.layout.agreement_dir(model)
        d.mkdir(parents=True)
        for j, b in enumerate(("gqa", "pope")):
            rec = {"answer_agreement": 0.5 + 0.1 * j + 0.2 * kd + 0.01 * seed, "answer_kl": 1.0 - 0.5 * kd + j,
                   "visual_kl": None if b == "pope" else 2.0 + seed}
            (d / f"{b}.json").write_text(json.dumps(rec))
    paths = render_agreement(study, tmp_path / "out")
    assert [p.name for p in paths] == ["agreement.md", "agreement.csv", "agreement.png"]
    df = pd.read_csv(tmp_path / "out" / "agreement.csv")
    assert set(df.variant) == {"baseline", "baseline_plus", "llava_kd"} and set(df.seeds) == {2}
    kd = df[(df.variant == "llava_kd") & (df.measure == "answer_agreement")].iloc[0]
    assert kd["gqa"] == pytest.approx(100 * (0.70 + 0.71) / 2) and kd["pope"] == pytest.approx(100 * (0.80 + 0.81) / 2)
    assert kd["all"] == pytest.approx((kd["gqa"] + kd["pope"]) / 2)  # per seed, then pooled: the same here
    vis = df[(df.variant == "baseline") & (df.measure == "visual_kl")].iloc[0]
    assert vis["gqa"] == pytest.approx(2.5) and pd.isna(vis["pope"]) and vis["all"] == pytest.approx(2.5)
    assert vis["gqa_ci95"] == pytest.approx(12.706 * (0.5 ** 0.5) / (2 ** 0.5), rel=1e-3)
    assert "LLaVA-KD" in (tmp_path / "out" / "agreement.md").read_text()


def test_thirdparty_rows_sit_under_our_run_of_the_same_chain_never_as_paper():
    from llavakd.report.reference import THIRDPARTY_SOURCE, thirdparty_rows
    from llavakd.report.tables import ablation_table, to_csv

    losses = thirdparty_rows("losses")
    assert [r["chain"] for r in losses] == ["dpt~res--sft", "dpt~res+vis--sft", "pt--sft--dft~res",
                                            "pt--sft--dft~res+vis"]
    row = Row(label="x", role="x", llm="qwen1.5-0.5b", cells={"avg10": Cell([50.0])})
    table = ablation_table("t", [("DFT res", "pt--sft--dft~res", row), ("other", "pt--sft--dft~vis", row)],
                           thirdparty=losses)
    labels = [(ln.method, ln.label) for ln in table.lines]
    at = labels.index(("DFT res (pt--sft--dft~res)", "ours"))
    assert labels[at + 1] == ("DFT res (pt--sft--dft~res)", THIRDPARTY_SOURCE)
    assert table.lines[at + 1].values == {"avg10": 57.2}
    assert labels[at + 2] == ("other (pt--sft--dft~vis)", "ours")  # no reference row for this chain
    assert sum(lab == THIRDPARTY_SOURCE for _, lab in labels) == 4
    assert not any(ln.source == "paper" and ln.values for ln in table.lines)
    assert "third-party" in to_csv(table) and ",paper," not in to_csv(table)


def test_a_column_beyond_the_papers_ten_is_shown_and_averaged_under_its_own_name(tmp_path):
    from llavakd.eval.registry import report_columns
    from llavakd.report.tables import ablation_table, to_csv, to_markdown

    cols = report_columns(["all", "mmstar"])
    d = tmp_path / "eval"
    d.mkdir()
    for i, c in enumerate(cols.benchmarks):
        (d / f"{c}.json").write_text(json.dumps({"headline": 40.0 + i}))
    row = collect_row({"label": "x", "role": "x", "llm": "qwen1.5-0.5b", "eval_dirs": [d]}, cols)
    assert row.cells["mmstar"].mean == 50.0
    assert row.cells["avg"].mean == pytest.approx(45.0) and row.cells["avg10"].mean == pytest.approx(44.5)
    md = to_markdown(ablation_table("t", [("x", "pt--sft", row)], columns=cols))
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert header.endswith("| MMMU | MMStar | Avg7 | Avg10 | Avg(11) |")
    head = to_csv(ablation_table("t", [("x", "pt--sft", row)], columns=cols)).splitlines()[0].split(",")
    assert head[5:19] == [*cols.benchmarks, "avg7", "avg10", "avg"] and "mmstar_ci95" in head
    plain = to_markdown(ablation_table("t", [("x", "pt--sft", collect_row(
        {"label": "x", "role": "x", "llm": "qwen1.5-0.5b", "eval_dirs": [d]}))]))
    assert next(line for line in plain.splitlines() if line.startswith("| Method")).endswith("| MMMU | Avg7 | Avg10 |")
    assert report_columns("all,ai2d", "Avg-mine").header("avg") == "Avg-mine"
    assert report_columns("all,ai2d").headline == "avg" and report_columns().headline == "avg10"
