"""Shapes from the components' own configs (llavakd.model.shapes): the planner, the memory estimate and the
cost read a tower's visual-token count and the LLMs' sizes from their config.json, and fall back to the
paper's documented shapes, saying so, only where nothing can be read locally."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from llavakd.errors import ConfigError
from llavakd.memory import estimate
from llavakd.model.shapes import PAPER_IMAGE_TOKENS, SIGLIP_SO400M_384, resolve_llm, resolve_vision
from llavakd.plan import Study, memory_report, pricer

ROOT = Path(__file__).resolve().parents[1]
SMALL_TOWER = {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 4}
SMALL_LLM = {"model_type": "qwen2", "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 500, "tie_word_embeddings": True}


def _folder(root: Path, name: str, config: dict) -> str:
    (root / name).mkdir(parents=True)
    (root / name / "config.json").write_text(json.dumps(config))
    return str(root / name)


def _study(tmp_path, **edit) -> Study:
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["vision"] = _folder(tmp_path, "tower", SMALL_TOWER)
    for llm in list(raw["llms"]):
        size = {"qwen1.5-4b": 4, "qwen2.5-3b": 3}.get(llm, 1)
        raw["llms"][llm] = _folder(tmp_path, llm, {**SMALL_LLM, "hidden_size": 96 * size})
    for key, value in edit.items():
        raw[key] = value(copy.deepcopy(raw[key])) if callable(value) else value
    return Study.load(raw, source="test")


def test_a_32px_tower_gives_its_own_token_count_everywhere(tmp_path):
    study = _study(tmp_path)
    assert study.image_tokens() == (32 // 4) ** 2 - 1 == 63  # 8x8 patches, the first dropped
    args = study.build_args("qwen1.5-0.5b", 0)
    assert args[args.index("--image-tokens") + 1] == "63"
    assert study.llm_shape("qwen1.5-0.5b").hidden_size == 96 and study.llm_shape("qwen1.5-4b").hidden_size == 384
    paper = Study.load(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()), source="paper")
    small = estimate(study.llm_shape("qwen1.5-0.5b"), None, stage="sft", per_device_batch=1, zero_stage=0, world=1,
                     vision=study.vision_shape()[0])
    big = estimate("qwen1.5-0.5b", None, stage="sft", per_device_batch=1, zero_stage=0, world=1)
    assert small["vision_forward"] == 64 * 128 * 2 * 4  # 64 patches, the tower's MLP width
    assert small["student_weights"] < big["student_weights"] / 1000
    job_hours = pricer(study)[0]
    assert job_hours("qwen1.5-0.5b", "dpt--sft--dft") < pricer(paper)[0]("qwen1.5-0.5b", "dpt--sft--dft") / 1000
    report = memory_report(study)
    assert f"vision tower: {tmp_path / 'tower' / 'config.json'}, 63 visual tokens per image" in report


def test_a_hub_id_reads_the_local_cache_else_falls_back_to_the_paper_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    shape, source = resolve_vision("google/siglip-so400m-patch14-384")
    assert shape == SIGLIP_SO400M_384 and source.startswith("documented shape of google/siglip-so400m-patch14-384")
    snap = tmp_path / "hub" / "models--org--tower" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "siglip", "vision_config": SMALL_TOWER}))
    (tmp_path / "hub" / "models--org--tower" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tower" / "refs" / "main").write_text("abc")
    shape, source = resolve_vision("org/tower")
    assert shape.image_size == 32 and "local Hugging Face cache" in source
    llm, source = resolve_llm("qwen1.5-0.5b", "Qwen/Qwen1.5-0.5B")
    assert llm.hidden_size == 1024 and source.startswith("documented shape of Qwen1.5-0.5B")
    paper = Study.load(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()), source="paper")
    assert paper.image_tokens() == PAPER_IMAGE_TOKENS  # the paper's dry run needs no network


def test_a_teacher_checkpoint_with_another_token_count_is_refused_at_plan_time(tmp_path):
    teacher = _folder(tmp_path, "teacher-ckpt", {"model_type": "llava", "vision_config": {**SMALL_TOWER,
                      "image_size": 64}, "text_config": SMALL_LLM, "vision_feature_select_strategy": "default"})

    def with_teacher(fams):
        fams["qwen1.5"]["teacher_checkpoint"] = teacher
        return fams

    with pytest.raises(ConfigError) as e:
        _study(tmp_path, families=with_teacher)
    assert "families.qwen1.5.teacher_checkpoint:" in str(e.value) and "gives 255 visual tokens" in str(e.value)
    assert "students' tower 63" in str(e.value)
    same = _folder(tmp_path, "teacher-same", {"model_type": "llava", "vision_config": SMALL_TOWER,
                                              "text_config": SMALL_LLM})
    (tmp_path / "again").mkdir()

    def with_same(fams):
        fams["qwen1.5"]["teacher_checkpoint"] = same
        return fams

    assert _study(tmp_path / "again", families=with_same).image_tokens() == 63


@pytest.mark.slow
def test_a_real_mode_study_with_a_32px_tower_plans_and_trains_dpt_sft_dft(tiny_components, tmp_path):
    """The tiny world's components as a user's "real" local models: a 32 px / patch-8 SigLIP (4x4 patches,
    15 visual tokens with the first dropped), LLaVA-format data, a given teacher checkpoint; the whole
    DPT -> SFT -> DFT chain of one student plans and trains through Snakemake on the CPU."""
    import os
    import subprocess
    import sys

    from llavakd.model.build import build_llava, save_llava
    from llavakd.tiny.world import write_world

    write_world(tmp_path / "world", seed=3, size="tiny")
    c = tiny_components
    teacher, proc, prov = build_llava(c / "vision" / "siglip", c / "llm" / "qwen1.5-4b", strategy="default")
    save_llava(teacher, proc, tmp_path / "teacher", prov)
    config = {
        "run": "real32", "mode": "real", "seeds": [0], "vision": str(c / "vision" / "siglip"),
        "llms": {n: str(c / "llm" / n) for n in ("qwen1.5-4b", "qwen1.5-0.5b")},
        "data": {"captions": str(tmp_path / "world/train/captions.json"),
                 "instruct": str(tmp_path / "world/train/instruct.json"), "images": str(tmp_path / "world/images")},
        "families": {"qwen1.5": {"teacher": "qwen1.5-4b", "teacher_checkpoint": str(tmp_path / "teacher"),
                                 "students": ["qwen1.5-0.5b"]}},
        "variants": {"baseline": "pt--sft", "llava_kd": "dpt--sft--dft"},
        "train": {"common": {"train.precision": "fp32", "train.global_batch": 4, "train.per_device_batch": 4,
                             "train.max_steps": 2, "train.save_steps": 100, "train.gradient_checkpointing": False,
                             "data.max_length": 256}},
        "eval": {"benchmarks": "all", "limit": 2, "batch_size": 4, "dtype": "float32"},
        "resources": {"default": {"gpus": 0, "threads": 1, "mem_mb": 4000, "runtime": 60}},
    }
    (tmp_path / "real32.yaml").write_text(yaml.safe_dump(config))
    final = "results/real32/runs/qwen1.5-0.5b/s0/dpt--sft--dft/final/COMPLETE"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", "--configfile", str(tmp_path / "real32.yaml"), "--", final]
    env = dict(os.environ, OMP_NUM_THREADS="1", LLAVAKD_PY=sys.executable)
    plan = subprocess.run(cmd[:-2] + ["-n"] + cmd[-2:], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "--image-tokens 15" in plan.stdout + plan.stderr
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for chain in ("dpt", "dpt--sft", "dpt--sft--dft"):
        model = tmp_path / f"results/real32/runs/qwen1.5-0.5b/s0/{chain}/final"
        assert (model / "COMPLETE").is_file(), chain
        assert json.loads((model / "config.json").read_text())["image_seq_length"] == 15


def test_a_naflex_siglip2_tower_fails_the_dry_run_in_one_line(tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["vision"] = _folder(tmp_path, "naflex", {"model_type": "siglip2", "vision_config": {
        "model_type": "siglip2_vision_model", "hidden_size": 64, "num_patches": 256}})
    with pytest.raises(ConfigError) as e:
        Study.load(raw, source="test")
    lines = [p for p in e.value.problems if "NaFlex" in p]
    assert len(lines) == 1 and lines[0].startswith("vision: ") and "pixel_attention_mask and spatial_shapes" in lines[0]


def test_a_fixed_resolution_siglip2_config_fills_what_it_leaves_out_and_says_so(tmp_path):
    """SigLIP2's fixed-resolution checkpoints ship as model_type 'siglip'; a small config without
    num_attention_heads and intermediate_size takes transformers' defaults, named in the source."""
    tower = _folder(tmp_path, "siglip2", {"model_type": "siglip", "vision_config": {
        "hidden_size": 64, "num_hidden_layers": 2, "image_size": 32, "patch_size": 4}})
    shape, source = resolve_vision(tower)
    assert (shape.num_attention_heads, shape.intermediate_size, shape.patches) == (12, 3072, 64)
    assert "SigLIP defaults for what it leaves out: intermediate_size=3072, num_attention_heads=12" in source
    documented, source = resolve_vision("google/siglip2-so400m-patch16-384")
    assert documented.tokens("full") == 576 and source.startswith("documented shape of google/siglip2")


def test_the_studys_feature_select_strategy_sets_the_token_count_and_the_build(tmp_path):
    study = _study(tmp_path, vision_strategy="full")
    assert study.image_tokens() == 64  # 8x8 patches, all kept
    args = study.build_args("qwen1.5-0.5b", 0)
    assert args[args.index("--strategy") + 1] == "full" and args[args.index("--image-tokens") + 1] == "64"
    assert "--strategy" not in _study(tmp_path / "unset").build_args("qwen1.5-0.5b", 0)  # unset: as before


def _tokenizer_folder(root: Path, name: str, vocab: dict) -> str:
    folder = Path(_folder(root, name, {**SMALL_LLM, "vocab_size": len(vocab)}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": [
        {"id": len(vocab), "content": "<|endoftext|>"}]}))
    return str(folder)


def test_teacher_and_student_vocabularies_are_compared_by_the_dry_run(tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["vision"] = _folder(tmp_path, "tower", SMALL_TOWER)
    raw["families"] = {"qwen1.5": {"teacher": "qwen1.5-4b", "students": ["qwen1.5-0.5b"]}}
    raw["ablations"], raw["methods"] = {}, {"students": ["qwen1.5-0.5b"], "compare": ["ce"]}
    raw["llms"] = {"qwen1.5-4b": _tokenizer_folder(tmp_path, "t", {"a": 0, "b": 1, "c": 2}),
                   "qwen1.5-0.5b": _tokenizer_folder(tmp_path, "s", {"a": 0, "c": 1, "b": 2})}
    with pytest.raises(ConfigError) as e:
        Study.load(raw, source="test")
    [line] = [p for p in e.value.problems if "vocabularies" in p]
    assert line.startswith("families.qwen1.5: teacher qwen1.5-4b and student qwen1.5-0.5b have different vocabularies")
    assert f"{tmp_path / 't' / 'tokenizer.json'}, 4 tokens" in line and f"{tmp_path / 's' / 'tokenizer.json'}" in line
    raw["llms"]["qwen1.5-0.5b"] = _tokenizer_folder(tmp_path, "same", {"a": 0, "b": 1, "c": 2})
    assert Study.load(raw, source="test").students() == ["qwen1.5-0.5b"]  # the same tokenizer plans
    built = Path(_tokenizer_folder(tmp_path, "built-teacher", {"a": 0, "b": 1, "c": 2}))  # a LLaVA: + <image>
    data = json.loads((built / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 4, "content": "<image>"})
    (built / "tokenizer.json").write_text(json.dumps(data))
    raw["families"]["qwen1.5"]["teacher_checkpoint"] = str(built)
    assert Study.load(raw, source="test").students() == ["qwen1.5-0.5b"]  # the build's <image> is not a mismatch


def test_the_qwen3_study_plans_offline_and_prices_qwen3s_real_shapes():
    from llavakd.model.shapes import DOCUMENTED

    study = Study.load(yaml.safe_load((ROOT / "config" / "qwen3.yaml").read_text()), source="qwen3.yaml")
    assert study.llm_shape("qwen3-0.6b") == DOCUMENTED["Qwen3-0.6B"] and study.image_tokens() == 728
    report = memory_report(study)
    assert "qwen3-0.6b: documented shape of Qwen3-0.6B" in report and "16 x 128 query heads" in report
    assert "vision tower: documented shape of google/siglip2-so400m-patch14-384" in report
    assert study.build_args("qwen3-0.6b", 1234)[-4:-2] == ["--template", "qwen3"]


def test_the_qwen3_study_adds_four_columns_and_tiny_mode_refuses_a_column_without_a_stand_in():
    import sys

    study = Study.load(yaml.safe_load((ROOT / "config" / "qwen3.yaml").read_text()), source="qwen3.yaml")
    cols = study.columns()
    assert cols.benchmarks[-4:] == ("mmstar", "ai2d", "ocrbench", "realworldqa") and cols.header("avg") == "Avg(14)"
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import MICRO

    from llavakd.tiny.family import LLM_NAMES

    raw = copy.deepcopy(MICRO)
    raw["eval"]["benchmarks"] = "pope,ocrbench"
    with pytest.raises(ConfigError) as e:
        Study.load(raw, source="micro.yaml", tiny_llms=LLM_NAMES)
    assert e.value.problems == [
        "eval.benchmarks: ocrbench (OCRBench) has no tiny stand-in (the tiny world has no OCRBench question types (its "
        "aggregation adds them up by type)); tiny mode scores the columns that have one: vqav2, gqa, vizwiz, sciqa, "
        "textvqa, mme, mmb, mmb_cn, pope, mmmu"]


def test_a_key_an_llm_config_leaves_out_takes_its_familys_default_and_the_source_says_so(tmp_path):
    from llavakd.model.shapes import llm_shape_from

    small = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}
    shape, notes = llm_shape_from(small)
    assert (shape.head_dim, shape.vocab_size, shape.tie_word_embeddings) == (128, 151936, False)
    assert notes == ["vocab_size=151936", "head_dim=128", "tie_word_embeddings=False", "attention_bias=False"]
    llm, source = resolve_llm("mine", _folder(tmp_path, "q3", small))
    assert llm == shape and "transformers' qwen3 defaults for what it leaves out: vocab_size=151936, head_dim=128" in source
    llama, notes = llm_shape_from({**small, "model_type": "llama", "head_dim": None})
    assert llama.head_dim == 16 and llama.vocab_size == 32000 and "vocab_size=32000" in notes


def test_liger_kernels_on_a_family_liger_does_not_cover_fail_the_dry_run(monkeypatch):
    from dataclasses import replace

    from llavakd.model.shapes import FAMILIES

    raw = yaml.safe_load((ROOT / "config" / "qwen3.yaml").read_text())
    raw["train"]["common"]["train.liger_kernels"] = True
    Study.load(copy.deepcopy(raw), source="qwen3.yaml")  # qwen3 is covered
    monkeypatch.setitem(FAMILIES, "qwen3", replace(FAMILIES["qwen3"], liger=None))
    with pytest.raises(ConfigError, match=r"job qwen3-0\.6b/s1234/dpt: train\.liger_kernels: liger-kernel has no kernels "
                                          r"for qwen3-\w+'s family \(qwen3\)"):
        Study.load(raw, source="qwen3.yaml")


def test_snakemake_plans_and_prices_the_qwen3_study_offline():
    from conftest import dry_run

    out = dry_run("reproduce_table1", "benchmark_methods", "--configfile", "config/qwen3.yaml")
    assert "llavakd cost estimate (run qwen3)" in out and "all targets" in out
    assert "qwen3-0.6b: documented shape of Qwen3-0.6B" in out and "qwen3, 0.60B parameters, 16 x 128 query heads" in out
    assert "(14 benchmarks" in out or "14 benchmarks" in out


def test_real_mode_output_vocabularies_and_template_tokens_are_checked_by_the_dry_run(tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["vision"] = _folder(tmp_path, "tower", SMALL_TOWER)
    raw["families"] = {"qwen1.5": {"teacher": "qwen1.5-4b", "students": ["qwen1.5-0.5b"]}}
    raw["ablations"], raw["methods"] = {}, {"students": ["qwen1.5-0.5b"], "compare": ["ce"]}
    vocab = {"a": 0, "b": 1, "c": 2}
    raw["llms"] = {"qwen1.5-4b": _tokenizer_folder(tmp_path, "t", vocab),
                   "qwen1.5-0.5b": _tokenizer_folder(tmp_path, "s", vocab)}
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    (tmp_path / "s" / "config.json").write_text(json.dumps({**config, "vocab_size": 64}))  # a padded head
    with pytest.raises(ConfigError) as e:
        Study.load(copy.deepcopy(raw), source="test")
    assert [p for p in e.value.problems if "output logits" in p] == [
        f"families.qwen1.5: teacher qwen1.5-4b has 3 output logits ({tmp_path / 't' / 'config.json'}) and student "
        f"qwen1.5-0.5b 64 ({tmp_path / 's' / 'config.json'}); the distillation losses need the same"]
    (tmp_path / "s" / "config.json").write_text(json.dumps(config))
    raw["families"]["qwen1.5"]["template"] = "llama3"
    with pytest.raises(ConfigError) as e:
        Study.load(raw, source="test")
    assert e.value.problems == [f"families.qwen1.5.template: 'llama3' writes '<|eot_id|>', and the tokenizer of "
                                f"qwen1.5-4b: {tmp_path / 't' / 'tokenizer.json'}, 4 tokens has no such token"]
