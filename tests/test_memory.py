"""The per-GPU memory estimate (llavakd.memory) and the per-device batches config/paper.yaml takes from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import frozen_demo

from llavakd.memory import GIB, estimate, largest_per_device_batch
from llavakd.model.shapes import SIGLIP_SO400M_384, count_llm_params, llm_config
from llavakd.plan import Chain, Study, memory_report, train_jobs

ROOT = Path(__file__).resolve().parents[1]


def test_components_by_hand():
    llm = count_llm_params(llm_config("Qwen1.5-0.5B"))
    projector = 1152 * 1024 + 1024 + 1024 * 1024 + 1024
    trainable = llm + projector
    for zero, grads, opt, weights in ((0, 2 * trainable, 12 * trainable, 1), (1, 2 * trainable, 12 * trainable / 8, 1),
                                      (2, 2 * trainable / 8, 12 * trainable / 8, 1),
                                      (3, 2 * trainable / 8, 12 * trainable / 8, 8)):
        e = estimate("qwen1.5-0.5b", None, stage="sft", per_device_batch=1, zero_stage=zero, world=8)
        assert e["gradients"] == int(grads) and e["optimizer"] == int(opt), zero
        assert e["student_weights"] == int(2 * (SIGLIP_SO400M_384.params + projector + llm) / weights), zero
        assert "teacher_weights" not in e  # SFT has no teacher
    pt = estimate("qwen1.5-0.5b", "qwen1.5-4b", stage="pt", per_device_batch=1, zero_stage=2, world=8)
    assert pt["optimizer"] == int(12 * projector / 8) and "teacher_weights" not in pt  # PT: projector only
    # a SigLIP-so400m has about 0.4 B parameters
    assert 0.39e9 < SIGLIP_SO400M_384.params < 0.44e9


def test_more_samples_more_memory_and_fused_less_than_chunked():
    kw = dict(stage="dft", zero_stage=2, world=8)
    totals = [estimate("qwen1.5-1.8b", "qwen1.5-4b", per_device_batch=b, **kw)["total"] for b in (1, 2, 4, 8)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    fused = estimate("qwen1.5-1.8b", "qwen1.5-4b", per_device_batch=4, implementation="fused", **kw)
    chunked = estimate("qwen1.5-1.8b", "qwen1.5-4b", per_device_batch=4, implementation="chunked", **kw)
    from llavakd.memory import CUDA_CHUNK_BYTES  # both hold one chunk's temporaries besides

    # the fp32 head gradient (1.2 GiB) dominates the rest of the fused objective
    assert fused["objective"] - CUDA_CHUNK_BYTES < 0.25 * (chunked["objective"] - CUDA_CHUNK_BYTES)
    # chunked: the student's and the teacher's bf16 logits and the student's logit gradient
    assert chunked["objective"] >= 3 * 4 * 2048 * 151936 * 2


def test_largest_batch_is_the_last_that_fits():
    kw = dict(stage="dft", zero_stage=2, world=8, implementation="chunked")
    for budget in (40, 60, 80):
        b = largest_per_device_batch("qwen1.5-1.8b", "qwen1.5-4b", budget_gib=budget, **kw)
        assert b >= 1
        assert estimate("qwen1.5-1.8b", "qwen1.5-4b", per_device_batch=b, **kw)["total"] <= budget * GIB
        assert estimate("qwen1.5-1.8b", "qwen1.5-4b", per_device_batch=2 * b, **kw)["total"] > budget * GIB
    assert largest_per_device_batch("qwen1.5-1.8b", "qwen1.5-4b", budget_gib=5, **kw) == 0
    assert largest_per_device_batch("qwen1.5-0.5b", None, stage="sft", zero_stage=2, world=8, global_batch=128) == 16


def test_paper_config_takes_the_largest_batch_that_fits_every_pair():
    study = Study.load(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()), source="paper.yaml")
    world = int(study.resources("train")["gpus"])
    fitting: dict[str, list[int]] = {}
    configured: dict[str, set[int]] = {}
    for llm, seed, chain in train_jobs(study, study.table1_models()):
        stage = Chain.parse(chain).last.name
        cfg = study.stage_config(llm, seed, chain)
        zero = 2 if "zero2" in (cfg.train.deepspeed or "") else 3
        teacher = study.teacher_of(llm) if cfg.distill else None
        fitting.setdefault(stage, []).append(largest_per_device_batch(
            llm, teacher, stage=stage, zero_stage=zero, world=world, global_batch=cfg.train.global_batch,
            implementation=cfg.loss.implementation, gradient_checkpointing=1))
        configured.setdefault(stage, set()).add(cfg.train.per_device_batch)
    assert set(fitting) >= {"pt", "sft", "dpt", "dft"}
    for stage, batches in fitting.items():
        assert configured[stage] == {min(batches)}, (stage, configured[stage], batches)
    report = memory_report(study)
    for stage in fitting:
        assert f"  {stage} " in report
    assert "DOES NOT FIT" not in report


def test_auto_checkpointing_recomputes_least_of_what_fits_for_every_paper_pair():
    """config/paper.yaml says ``gradient_checkpointing: auto``: each job's config holds the planner's
    choice, which fits 80 GiB while the next choice with less recomputation does not; the dry run's
    memory report names it for every pair."""
    from llavakd.memory import CHECKPOINTING_CHOICES, checkpointing_label

    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    assert raw["train"]["common"]["train.gradient_checkpointing"] == "auto"
    study = Study.load(raw, source="paper.yaml")
    report = memory_report(study)
    chosen = set()
    for llm, seed, chain in train_jobs(study, study.table1_models()):
        cfg = study.stage_config(llm, seed, chain)
        k = cfg.train.gradient_checkpointing
        assert isinstance(k, int) and not isinstance(k, bool) and k in CHECKPOINTING_CHOICES, (llm, chain, k)
        chosen.add(k)
        stage = Chain.parse(chain).last.name
        teacher = study.teacher_of(llm) if cfg.distill else None
        kw = dict(stage=stage, per_device_batch=cfg.train.per_device_batch, zero_stage=2, world=8,
                  seq_len=cfg.data.max_length, implementation=cfg.loss.implementation)
        assert estimate(llm, teacher, gradient_checkpointing=k, **kw)["total"] <= 80 * GIB
        less = CHECKPOINTING_CHOICES[:CHECKPOINTING_CHOICES.index(k)]
        assert all(estimate(llm, teacher, gradient_checkpointing=j, **kw)["total"] > 80 * GIB for j in less)
        pair = f"{llm} <- {teacher}" if teacher else llm
        assert re.search(rf"{stage}\s+{re.escape(pair)}\s.*checkpointing {checkpointing_label(k)}:", report), pair
    assert len(chosen) >= 3  # the pairs differ: off, every k-th and all are all chosen somewhere


def test_auto_checkpointing_needs_a_known_shape():
    from llavakd.errors import ConfigError

    raw = frozen_demo()
    raw["train"]["common"]["train.gradient_checkpointing"] = "auto"
    with pytest.raises(ConfigError, match=r"job qwen1.5-4b/s0/pt: train.gradient_checkpointing: 'auto' is chosen"):
        Study.load(raw, source="config.yaml")  # the tiny world's models: the dry run fails, naming the job


def test_checkpointing_every_kth_layer_sits_between_off_and_all():
    kw = dict(stage="dft", per_device_batch=8, zero_stage=2, world=8)
    off, every2, every4, every = (estimate("qwen1.5-1.8b", "qwen1.5-4b", gradient_checkpointing=k, **kw)["activations"]
                                  for k in (0, 2, 4, 1))
    assert every < every2 < every4 < off


@pytest.mark.parametrize("name", ["qwen9-1b", "llama-7b"])
def test_unknown_llm_is_named(name):
    with pytest.raises(KeyError, match=name):
        estimate(name, None, stage="sft", per_device_batch=1, zero_stage=2, world=8)


def test_cost_estimate_reads_a_measured_mfu(tmp_path):
    from llavakd.plan import cost_report

    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    config["cost"]["mfu_file"] = str(tmp_path / "mfu.json")
    study = Study.load(config, source="paper.yaml")
    assert "MFU 35.0% (configured;" in cost_report(study, ["gqa"]) and "not found" in cost_report(study, ["gqa"])
    configured_hours = cost_report(study, ["gqa"]).splitlines()[-1]
    runs = lambda mfus: [{"per_device_batch": b, "implementation": "fused", "mfu": m} for b, m in mfus]  # noqa: E731
    (tmp_path / "mfu.json").write_text(json.dumps([
        {"student": "Qwen2-0.5B", "teacher": "Qwen2-1.5B", "runs": runs([(1, 0.05), (8, 0.2), (32, 0.9)])},
        {"student": "Qwen1.5-1.8B", "teacher": "Qwen1.5-4B",
         "runs": runs([(1, 0.1), (8, 0.4)]) + [{"per_device_batch": 16, "implementation": "fused", "oom": True},
                                                 {"per_device_batch": 8, "implementation": "chunked", "mfu": 0.01}]},
    ]))
    report = cost_report(study, ["gqa"])
    # DFT runs at per-device 16 (fused): the largest measured batch up to 16 per pair, the lowest pair
    assert "MFU 20.0% (measured in" in report and "per-device 8" in report and "Qwen2-0.5B" in report
    hours = lambda line: float(line.split()[-2])  # noqa: E731
    assert hours(report.splitlines()[-1]) == pytest.approx(hours(configured_hours) * 0.35 / 0.2, rel=1e-3)
    # benchmarks/gpu_mfu.py's report names its chosen setting: that MFU is the price's
    (tmp_path / "mfu.json").write_text(json.dumps({"student": "qwen1.5-1.8b", "teacher": "qwen1.5-4b",
                                                   "runs": runs([(16, 0.3)]), "chosen": {"mfu": 0.42}}))
    report = cost_report(study, ["gqa"])
    assert "MFU 42.0% (measured in" in report and "best setting" in report


def test_the_flop_count_against_a_hand_count_for_one_tiny_shape():
    """llavakd.flops at h=4, i=8, 2 layers, 2 heads (kv 1), V=10, s=6 with 2 visual tokens, a
    vision tower of width 3 (mlp 5, 1 layer, 4 patches), counted by hand from the module's rules."""
    from dataclasses import replace

    from llavakd.flops import LLMShape, VisionShape, step_flops

    s_shape = LLMShape("qwen2", hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=2, vocab_size=10, tie_word_embeddings=False)
    t_shape = LLMShape("qwen2", hidden_size=6, intermediate_size=12, num_hidden_layers=3, num_attention_heads=2,
                       num_key_value_heads=2, head_dim=3, vocab_size=10, tie_word_embeddings=False)
    v = VisionShape(hidden_size=3, intermediate_size=5, num_hidden_layers=1, num_attention_heads=1, image_size=2,
                    patch_size=1)
    # student: kv = 1 x 2 = 2; layer = 2*16 + 2*4*2 + 3*4*8 = 144; 2 layers = 288 params
    # teacher: kv = 2 x 3 = 6; layer = 2*36 + 2*6*6 + 3*6*12 = 360; 3 layers = 1080 params
    hand = {
        "student_layers": 6 * 288 * 6,
        "student_attention": 6 * 2 * 6 * 6 * 4,
        "student_head": 6 * 40 * 5,                       # 5 rows evaluated
        "teacher_layers": 2 * 1080 * 6,
        "teacher_attention": 2 * 3 * 6 * 6 * 6,
        "teacher_head": 2 * 60 * 3,                       # 3 rows
        # vision: layer params 4*9 + 2*3*5 = 66; per image 2*66*4 + 4*1*16*3; two passes
        "vision": 2 * (2 * 66 * 4 + 4 * 16 * 3),
        # projectors: student 3*4 + 16 = 28 (trained, 6x), teacher 3*6 + 36 = 54 (2x), 2 visual tokens
        "projectors": 6 * 28 * 2 + 2 * 54 * 2,
    }
    got = step_flops(student=s_shape, teacher=t_shape, seq=6, visual_tokens=2, vision=v,
                     head_rows_student=5, head_rows_teacher=3)
    assert {k: got[k] for k in hand} == {k: float(x) for k, x in hand.items()}
    assert got["total"] == sum(hand.values())
    frozen = step_flops(student=s_shape, teacher=None, seq=6, visual_tokens=2, vision=v, student_trains_llm=False)
    assert frozen["student_layers"] == 4 * 288 * 6 and frozen["student_attention"] == 6 * 2 * 36 * 4
    assert frozen["vision"] == 2 * 66 * 4 + 4 * 16 * 3  # one pass without a teacher
    # A Qwen3-style explicit head_dim of 4 (queries 2 x 4 = 8 wide, twice the hidden size): q and o are
    # 4 x 8, k and v 4 x 4; layer = 2*32 + 2*16 + 3*4*8 = 192; attention 2 n s^2 (H d) forward.
    wide = step_flops(student=replace(s_shape, model_type="qwen3", head_dim=4), teacher=None, seq=6, visual_tokens=2)
    assert wide["student_layers"] == 6 * 2 * 192 * 6 and wide["student_attention"] == 6 * 2 * 36 * 8


def test_liger_is_refused_at_plan_time_without_gpus():
    from llavakd.errors import ConfigError

    raw = frozen_demo()
    raw["train"]["common"]["train.liger_kernels"] = True
    with pytest.raises(ConfigError,
                       match=r"job qwen1.5-4b/s0/pt: train.liger_kernels needs a GPU .*resources.train.gpus is 0"):
        Study.load(raw, source="config.yaml")
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["train"]["common"]["train.liger_kernels"] = True  # eight GPUs a job: planned
    study = Study.load(raw, source="paper.yaml")
    llm, seed, chain = next(iter(train_jobs(study, study.table1_models())))
    assert study.stage_config(llm, seed, chain).train.liger_kernels is True
