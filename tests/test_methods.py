"""Distillation methods on one footing (llavakd.methods): recipes, the planner's jobs, one trainer step each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_pair, fabricate_method_job, frozen_demo

from llavakd.config import LossConfig, load_stage_config, to_dict
from llavakd.errors import ConfigError
from llavakd.methods import BUILTIN, loss_overrides
from llavakd.plan import Study

ROOT = Path(__file__).resolve().parents[1]
HALF_REL = {"terms": ["ce", "res", "vis", "rel"], "rel_weight": 0.5, "follows": "a YAML-only method"}


def _study(**methods):
    raw = frozen_demo()
    raw["methods"] = {"compare": list(BUILTIN) + ["half_rel"], "students": ["qwen1.5-0.5b"],
                      "define": {"half_rel": dict(HALF_REL)}, **methods}
    return Study.load(raw, source="config.yaml"), raw


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# the loss each built-in method's job must train with (docs/methods.md)
INTENDED = {
    "ce": dict(ce=True, res=False, vis=False, rel=False),
    "kd": dict(ce=True, res=True, vis=False, rel=False, divergence="forward_kl"),
    "reverse_kl": dict(ce=True, res=True, vis=False, rel=False, divergence="reverse_kl"),
    "skew_kl": dict(ce=True, res=True, vis=False, rel=False, divergence="skew_kl", skew_alpha=0.1),
    "jsd": dict(ce=False, res=True, vis=False, rel=False, divergence="jsd", jsd_beta=0.5, on_policy=0.0),
    "gkd": dict(ce=False, res=True, vis=False, rel=False, divergence="jsd", jsd_beta=0.5, on_policy=0.5,
                sample_temperature=1.0),
    "llavadi": dict(ce=True, res=True, vis=False, rel=False, feat=True, divergence="forward_kl",
                    feat_positions="responses", feat_weight=1.0),
    "align_kd": dict(ce=True, res=False, vis=False, rel=False, soft=True, attn=True, vtok=True, soft_positions="all",
                     attn_layer=0, attn_heads="mix", attn_distance="mse", vtok_top_k=16),
    "bild": dict(ce=False, res=False, vis=False, rel=False, soft=True, bild=True, soft_positions="prompt",
                 soft_divergence="forward_kl", bild_top_k=8, bild_temperature=3.0, bild_directions="both"),
    "llava_kd_dft": dict(ce=True, res=True, vis=True, rel=True, divergence="forward_kl", rel_weight=1.0),
    "half_rel": dict(ce=True, res=True, vis=True, rel=True, rel_weight=0.5),
}


def test_every_method_job_resolves_to_its_intended_loss():
    study, _ = _study()
    assert set(study.compared_methods()) == set(INTENDED) and study.compared_methods()[0] == "ce"
    for name, want in INTENDED.items():
        loss = study.stage_config("qwen1.5-0.5b", 0, study.method_chain(name)).loss
        got = {k: getattr(loss, k) for k in want}
        assert got == want, name
        assert loss.ce_weight == loss.res_weight == loss.vis_weight == 1.0 and loss.temperature == 1.0


def test_one_footing_the_jobs_differ_only_in_their_loss():
    """Every method's job starts from the seed's one pt--sft model and differs from ce's only in
    loss.* (and the stage, teacher and output folder that make ce the step-matched control)."""
    study, _ = _study()
    chains = {m: study.method_chain(m) for m in study.compared_methods()}
    assert str(chains["ce"]) == "pt--sft--cft" and str(chains["llava_kd_dft"]) == "pt--sft--dft"
    assert str(chains["kd"]) == "pt--sft--dft@kd"  # the grammar's method mark
    for seed in study.seeds:
        ref = _flat(to_dict(study.stage_config("qwen1.5-0.5b", seed, chains["ce"])))
        for name, chain in chains.items():
            job = _flat(to_dict(study.stage_config("qwen1.5-0.5b", seed, chain)))
            assert job["model"] == ref["model"] == study.layout.final_dir("qwen1.5-0.5b", seed, "pt--sft")
            differ = {k for k in set(job) | set(ref) if job.get(k) != ref.get(k)}
            assert all(k.startswith("loss.") for k in differ - {"stage", "teacher", "output_dir"}), (name, differ)
            if name != "ce":
                assert job["stage"] == "dft" and job["teacher"] and job["train.max_steps"] == ref["train.max_steps"]


def test_a_yaml_method_plans_and_typos_name_the_method_and_key():
    study, raw = _study()
    assert "qwen1.5-0.5b/s0/pt--sft--dft@half_rel" in study.method_models()["half_rel"]
    bad = json.loads(json.dumps(raw))
    bad["methods"]["define"]["half_rel"]["rel_wieght"] = 0.5
    with pytest.raises(ConfigError, match=r"methods.define.half_rel.rel_wieght: unknown key \(did you mean rel_weight"):
        Study.load(bad, source="config.yaml")
    bad = json.loads(json.dumps(raw))
    bad["methods"]["define"]["half_rel"]["divergence"] = "kl"
    with pytest.raises(ConfigError, match=r"methods.define.half_rel.divergence: must be one of"):
        Study.load(bad, source="config.yaml")
    bad = json.loads(json.dumps(raw))
    bad["methods"]["compare"].append("kdd")
    with pytest.raises(ConfigError, match=r"methods.compare: unknown method 'kdd'"):
        Study.load(bad, source="config.yaml")
    bad = json.loads(json.dumps(raw))
    bad["variants"]["llava_kd"] = "dpt--sft--dft@nope"
    with pytest.raises(ConfigError, match=r"variants.llava_kd: unknown method 'nope'"):
        Study.load(bad, source="config.yaml")


# -- one trainer step per method ------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tiny_components, tmp_path_factory):
    def confident(teacher):
        with torch.no_grad():
            teacher.lm_head.weight.mul_(25.0)

    return build_pair(tiny_components, tmp_path_factory.mktemp("methods"), "qwen1.5-0.5b", "qwen1.5-1.8b",
                      world_seed=5, teacher_hook=confident)


def _one_step(pair, out, method, monkeypatch):
    """One float64 DFT step (or CFT for ce) with the method's loss; returns (logged record, the batch, loss)."""
    from llavakd.methods import Method
    from llavakd.train.run import run_stage
    from llavakd.train.trainer import KDTrainer

    m = BUILTIN.get(method) or Method(**{k: v for k, v in HALF_REL.items()})
    stage = "cft" if m.is_control else "dft"
    args = [f"model={pair / 'student'}", f"output_dir={out}", f"data.json={pair / 'world' / 'train' / 'instruct.json'}",
            f"data.images={pair / 'world' / 'images'}", "train.precision=fp64", "train.global_batch=4",
            "train.per_device_batch=4", "train.max_steps=1", "train.logging_steps=1", "train.lr=1e-3"]
    args += [f"{k}={json.dumps(v)}" for k, v in loss_overrides(m).items()]
    if stage == "dft":
        args.append(f"teacher={pair / 'teacher'}")
    cfg = load_stage_config(None, args, stage=stage)
    seen = []
    real = KDTrainer.compute_loss

    def recording(self, model, inputs, *a, **kw):
        seen.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in inputs.items()})
        return real(self, model, inputs, *a, **kw)

    monkeypatch.setattr(KDTrainer, "compute_loss", recording)
    run_stage(cfg)
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][0]
    return rec, seen[0], cfg.loss


STEP_METHODS = ["ce", "kd", "reverse_kl", "skew_kl", "jsd", "llavadi", "align_kd", "bild", "llava_kd_dft", "half_rel"]


@pytest.fixture(scope="module")
def one_step(pair, tmp_path_factory):
    """{method: (logged record, the batch the trainer read, its loss config)}: one step of every method,
    run once for the module (the oracle test reads one method, the data-order test all of them)."""
    out = tmp_path_factory.mktemp("one_step")
    steps = {}
    for method in STEP_METHODS:
        with pytest.MonkeyPatch.context() as mp:
            steps[method] = _one_step(pair, out / method, method, mp)
    return steps


def _first_ids(batch) -> list:
    return list(batch["sample_ids"]) if "sample_ids" in batch else batch["input_ids"][:, :8].tolist()


@pytest.mark.parametrize("method", STEP_METHODS)
def test_one_trainer_step_of_each_method_equals_the_float64_oracle(pair, one_step, method):
    """The logged parts of the step equal the naive float64 objective with the method's loss on the
    batch the trainer read (the initial student and the teacher, float64; the learnable parts as the
    job initialised them, from the job's seed)."""
    from transformers import LlavaForConditionalGeneration

    from llavakd.config import TrainConfig
    from llavakd.distill import distill_loss
    from llavakd.distill.attention import AttentionTaps, decoder_layers
    from llavakd.distill.parts import build_parts, dims_of
    from llavakd.train.trainer import LLMTaps

    rec, batch, loss = one_step[method]
    student = LlavaForConditionalGeneration.from_pretrained(pair / "student", dtype=torch.float64).eval()
    teacher = LlavaForConditionalGeneration.from_pretrained(pair / "teacher", dtype=torch.float64).eval()
    taps = {"s": LLMTaps(student), "t": LLMTaps(teacher)}
    layer = loss.attn_layer
    attn = {"s": AttentionTaps(decoder_layers(student)[layer].self_attn),
            "t": AttentionTaps(decoder_layers(teacher)[layer].self_attn)}
    fwd = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if batch.get(k) is not None}
    with torch.no_grad():
        s, t = student(**fwd).logits, teacher(**fwd).logits
        (h_s, f_s), (h_t, f_t) = taps["s"].take(), taps["t"].take()
        qk_s, qk_t = attn["s"].take(), attn["t"].take()
        oracle_cfg = LossConfig(**{**loss.__dict__, "implementation": "naive"})
        if not oracle_cfg.needs_teacher:
            t = None
        parts = build_parts(oracle_cfg, dims_of(student, teacher), seed=TrainConfig().seed)
        ref = distill_loss(s, t, batch["labels"], batch["visual_mask"], oracle_cfg, student_hidden=h_s,
                           teacher_hidden=h_t, student_features=f_s, teacher_features=f_t,
                           attention_mask=batch["attention_mask"], parts=parts.double() if parts else None,
                           student_attention=qk_s, teacher_attention=qk_t)
    for k, v in ref.parts.items():
        assert rec[f"loss_{k}"] == pytest.approx(v, rel=1e-9), k
    assert {k[5:] for k in rec if k.startswith("loss_")} == set(ref.parts)


@pytest.fixture(scope="module")
def family_students(tiny_components, tmp_path_factory):
    """Tiny LLaVAs of the Qwen3 (head_dim wider than hidden / heads, q/k norms) and Llama families."""
    from llavakd.model.build import build_llava, save_llava

    out = {}
    for llm, chat in (("qwen3-0.6b", "qwen3"), ("llama-3.2-1b", "llama3")):
        m, p, prov = build_llava(tiny_components / "vision" / "siglip", tiny_components / "llm" / llm,
                                 strategy="full", chat=chat)
        out[llm] = save_llava(m, p, tmp_path_factory.mktemp(llm) / "model", prov)
    return out


@pytest.mark.parametrize("layer", [0, -1])
@pytest.mark.parametrize("family", ["qwen2", "qwen3-0.6b", "llama-3.2-1b"])
def test_one_layers_attention_rows_equal_eager_attentions_maps(pair, family_students, family, layer):
    """The attention terms' probabilities (queries and keys recomputed from the hooked layer's inputs,
    llavakd.distill.attention) equal what eager attention returns with output_attentions, for the
    rows asked, in every family (Qwen3's q/k norms and wide heads included); the negative control
    shifts the rotary embedding by one position and differs."""
    from transformers import LlavaForConditionalGeneration

    from llavakd.distill.attention import AttentionTaps, decoder_layers, probabilities

    folder = pair / "student" if family == "qwen2" else family_students[family]
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float64,
                                                          attn_implementation="eager").eval()
    assert model.config.text_config.model_type == family.split("-")[0]
    tap = AttentionTaps(decoder_layers(model)[layer].self_attn)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[layer]
        q, k = tap.take()
        rows = torch.tensor([0, 4, 8])
        for b in range(2):
            got = probabilities(q[b], k[b], rows, mask[b].bool())
            want = eager[b][:, rows]
            valid = mask[b].bool()
            # eager takes its softmax in float32 even for float64 models: agreement to float32's precision
            torch.testing.assert_close(got[:, :, valid], want[:, :, valid], rtol=1e-6, atol=1e-7)
        shifted = probabilities(q[0], torch.roll(k[0], 1, dims=1), rows, mask[0].bool())
        assert not torch.allclose(shifted, eager[0][:, rows], atol=1e-6)


def test_every_method_reads_the_same_first_batch(one_step):
    """One data order for every method: the batch each method's first step read, compared in one test."""
    ids = {method: _first_ids(batch) for method, (_, batch, _) in one_step.items()}
    assert len(ids) == len(STEP_METHODS) and all(ids.values())
    assert all(v == ids["ce"] for v in ids.values()), ids


def test_the_methods_table_pairs_by_seed_and_adjusts_by_holm(tmp_path, monkeypatch):
    """Fabricated results for ce, kd, jsd and reverse_kl over 5 seeds (kd above ce, reverse_kl below,
    jsd neither): the table's paired differences, Holm levels, p-values and verdicts equal scipy's
    paired t-tests computed here; the cost columns are ratios to ce; every format and the figure
    are written."""
    import csv

    from scipy.stats import ttest_rel

    from llavakd.layout import parse_model
    from llavakd.report.averages import COLUMNS
    from llavakd.report.render import render_methods

    monkeypatch.chdir(tmp_path)
    raw = frozen_demo()
    raw["seeds"] = [0, 1, 2, 3, 4]
    raw["methods"] = {"compare": ["kd", "jsd", "reverse_kl"], "students": ["qwen1.5-0.5b"]}
    study = Study.load(raw, source="config.yaml")
    shift = {"ce": [0, 0, 0, 0, 0], "kd": [3.0, 2.5, 3.5, 2.0, 3.1], "jsd": [1.0, -2.0, 0.5, 2.0, -1.0],
             "reverse_kl": [-2.0, -2.6, -1.9, -2.4, -2.2]}
    base = [40.0, 44.0, 38.0, 42.0, 41.0]
    chance = {c: 10.0 for c in COLUMNS}
    Path(study.layout.chance_file()).parent.mkdir(parents=True, exist_ok=True)
    Path(study.layout.chance_file()).write_text(
        json.dumps({c: {"headline": v, "answers": ["x"]} for c, v in chance.items()}))
    for name, models in study.method_models().items():
        for m in models:
            seed = parse_model(m).seed
            cost = {"ce": 1.0, "kd": 1.5, "jsd": 2.0, "reverse_kl": 1.5}[name]
            fabricate_method_job(study, m, {c: base[seed] + shift[name][seed] + i for i, c in enumerate(COLUMNS)}, cost)
    paths = render_methods(study, tmp_path / "reports")
    assert {p.suffix for p in paths} == {".md", ".csv", ".tex", ".html", ".png"}
    rows = list(csv.DictReader((tmp_path / "reports" / "methods.csv").open()))
    got = {r["method"]: r for r in rows if r["column"] == "avg10"}
    ps = {m: ttest_rel([b + s for b, s in zip(base, shift[m])], base).pvalue for m in ("kd", "jsd", "reverse_kl")}
    order = sorted(ps, key=ps.get)
    for i, m in enumerate(order):
        assert float(got[m]["diff_vs_ce"]) == pytest.approx(sum(shift[m]) / 5, abs=1e-4)
        assert float(got[m]["p_value"]) == pytest.approx(ps[m], rel=1e-3)
        assert float(got[m]["holm_level"]) == pytest.approx(0.05 / (3 - i), rel=1e-3)
    assert [got[m]["beats_ce"] for m in ("kd", "jsd", "reverse_kl")] == ["True", "False", "False"]
    assert [got[m]["below_ce"] for m in ("kd", "jsd", "reverse_kl")] == ["False", "False", "True"]
    md = (tmp_path / "reports" / "methods.md").read_text()
    assert "Beat ce on Avg10: kd. Below ce: reverse_kl. Not shown to differ from ce: jsd." in md
    rkl_line = next(x for x in md.splitlines() if x.startswith("| reverse_kl "))
    assert "| -2.2 ± " in rkl_line and " ✗ |" in rkl_line  # below ce, marked
    kd_line = next(x for x in md.splitlines() if x.startswith("| kd "))
    assert "| 1.50 | 1.50 |" in kd_line  # seconds per step and peak memory relative to ce
    assert md.index("| kd ") < md.index("| jsd ")  # sorted by the paired difference


# -- the field's methods in a study -----------------------------------------------------------------
@pytest.mark.slow
def test_comparing_the_new_methods_leaves_a_finished_tree_finished(micro_tree, tmp_path):
    """Adding llavadi, align_kd and bild to a finished study's methods plans nothing new for its Table 1
    (their runs and scores: tests/test_families.py, on the Qwen3-shaped student)."""
    import copy
    import subprocess

    import yaml
    from conftest import MICRO, copy_micro_tree, micro_cmd, micro_env

    root = copy_micro_tree(micro_tree, tmp_path / "tree")
    cfg = copy.deepcopy(MICRO)
    cfg["methods"] = {"compare": ["llavadi", "align_kd", "bild"], "students": ["qwen1.5-0.5b"]}
    path = root / "methods.yaml"
    path.write_text(yaml.safe_dump(cfg))
    dry = subprocess.run(micro_cmd(root, path, "reproduce_table1", "-n"), cwd=root, env=micro_env(),
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]
    plan = subprocess.run(micro_cmd(root, path, "benchmark_methods", "-n"), cwd=root, env=micro_env(),
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0 and "qwen1.5-0.5b/s0/pt--sft--dft@align_kd" in plan.stdout, plan.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("parts_lr", [None, 0.0])
def test_learnable_parts_train_at_the_students_rate_unless_parts_lr_sets_another(pair, tmp_path, parts_lr):
    """LLaVADI's projector moves with the student's learning rate by default; ``loss.parts_lr: 0``
    keeps it at its initial weights (its own optimizer groups) while the student still trains."""
    from safetensors.torch import load_file

    from llavakd.config import TrainConfig
    from llavakd.distill.parts import build_parts
    from llavakd.layout import LOSS_PARTS
    from llavakd.train.run import run_stage
    from llavakd.train.trainer import complete_checkpoints

    args = [f"model={pair / 'student'}", f"teacher={pair / 'teacher'}", f"output_dir={tmp_path / 'run'}",
            f"data.json={pair / 'world' / 'train' / 'instruct.json'}", f"data.images={pair / 'world' / 'images'}",
            "train.precision=fp32", "train.global_batch=4", "train.per_device_batch=4", "train.max_steps=2",
            "train.save_steps=2", "train.lr=1e-3", "train.warmup_ratio=0", "loss.vis=false", "loss.rel=false",
            "loss.feat=true"] + ([f"loss.parts_lr={parts_lr}"] if parts_lr is not None else [])
    cfg = load_stage_config(None, args, stage="dft")
    run_stage(cfg)
    saved = load_file(complete_checkpoints(tmp_path / "run" / "checkpoints")[-1] / LOSS_PARTS)
    from transformers import LlavaForConditionalGeneration

    from llavakd.distill.parts import dims_of

    student = LlavaForConditionalGeneration.from_pretrained(pair / "student")
    teacher = LlavaForConditionalGeneration.from_pretrained(pair / "teacher")
    init = build_parts(cfg.loss, dims_of(student, teacher), seed=TrainConfig().seed).state_dict()
    moved = max((saved[k] - init[k]).abs().max().item() for k in init)
    trained = LlavaForConditionalGeneration.from_pretrained(tmp_path / "run" / "final")
    student_moved = (trained.lm_head.weight - student.lm_head.weight).abs().max().item()
    assert student_moved > 1e-4
    assert (moved == 0.0) if parts_lr == 0.0 else (moved > 1e-4), moved
