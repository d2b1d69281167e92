"""Training stages: config validation, freeze plan, exact resume, NaN guards, loss decrease."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import build_pair, metrics_by_step

from llavakd.config import load_stage_config
from llavakd.errors import ConfigError, LlavaKDError
from llavakd.io import COMPLETE_MARKER
from llavakd.train.run import apply_freeze_plan, batch_decomposition, run_stage
from llavakd.train.trainer import NonFiniteError, complete_checkpoints


def _confident(teacher):
    """Random but confident: peaked logits give the KD terms a signal to transfer."""
    with torch.no_grad():
        teacher.lm_head.weight.mul_(25.0)


@pytest.fixture(scope="module")
def setup(tiny_components, tmp_path_factory):
    return build_pair(tiny_components, tmp_path_factory.mktemp("train"), "qwen1.5-0.5b", "qwen1.5-1.8b",
                      world_seed=5, teacher_hook=_confident)


def _cfg(setup, stage, out, *extra):
    chat = stage in ("sft", "dft")
    args = [
        f"model={setup / 'student'}", f"output_dir={out}",
        f"data.json={setup / 'world' / 'train' / ('instruct.json' if chat else 'captions.json')}",
        f"data.images={setup / 'world' / 'images'}", "train.precision=fp32", "train.global_batch=4",
        "train.per_device_batch=2", "train.max_steps=6", "train.save_steps=3", "train.lr=1e-3",
        *extra,
    ]
    if stage in ("dpt", "dft"):
        args.append(f"teacher={setup / 'teacher'}")
    return load_stage_config(None, args, stage=stage)


def _weights(final):
    from safetensors.torch import load_file

    return load_file(str(final / "model.safetensors"))


def test_config_lists_every_problem_at_once(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stage: dft\nmodel: m\noutput_dir: o\ndata: {json: d.json, images: i, colour: 3}\n"
                   "train: {lr: fast, warmup_ratio: 2}\nloss: {divergence: kl2}\nlearning_rate: 1\n")
    with pytest.raises(ConfigError) as err:
        load_stage_config(cfg)
    text = str(err.value)
    for needle in ("data.colour: unknown key", "train.lr: expected a number", "learning_rate: unknown key",
                   "teacher: required", "train.warmup_ratio", "divergence"):
        assert needle in text, needle
    assert len(err.value.problems) >= 6


def test_overrides_are_typed_and_stage_defaults_fill_in(setup, tmp_path):
    cfg = load_stage_config(None, [f"model={setup / 'student'}", f"output_dir={tmp_path}", "data.json=x",
                                   "data.images=y", "loss.rel=false", "train.lr=3e-4"], stage="sft")
    assert cfg.train.lr == 3e-4 and cfg.train.global_batch == 128 and cfg.train.precision == "bf16"
    assert (cfg.loss.res, cfg.loss.vis, cfg.loss.rel) == (False, False, False)  # sft is CE only
    dpt = load_stage_config(None, ["model=m", "output_dir=o", "data.json=x", "data.images=y", "teacher=t"],
                            stage="dpt")
    assert dpt.train.global_batch == 256 and dpt.train.lr == 1e-3 and dpt.loss.rel


def test_stage_flag_must_agree_with_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stage: sft\nmodel: m\noutput_dir: o\ndata: {json: a, images: b}\n")
    with pytest.raises(ConfigError, match="disagrees"):
        load_stage_config(cfg, stage="dft")


def test_batch_decomposition_keeps_the_global_batch():
    assert batch_decomposition(128, 1, 8) == 16
    assert batch_decomposition(128, 4, 2) == 16
    with pytest.raises(LlavaKDError, match="not divisible"):
        batch_decomposition(128, 3, 2)


@pytest.mark.parametrize("stage,llm_trains", [("pt", False), ("dpt", False), ("sft", True), ("dft", True)])
def test_freeze_plan(setup, stage, llm_trains):
    from transformers import LlavaForConditionalGeneration

    from llavakd.stages import STAGES

    m = LlavaForConditionalGeneration.from_pretrained(setup / "student")
    apply_freeze_plan(m, STAGES[stage].trainable)
    assert not any(p.requires_grad for p in m.model.vision_tower.parameters())
    assert all(p.requires_grad for p in m.model.multi_modal_projector.parameters())
    assert all(p.requires_grad == llm_trains for p in m.model.language_model.parameters())


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(setup, tmp_path):
    full = run_stage(_cfg(setup, "dft", tmp_path / "full"))
    part = _cfg(setup, "dft", tmp_path / "part", "train.stop_after_steps=3")
    assert run_stage(part) == tmp_path / "part"
    assert not (tmp_path / "part" / "final").exists()
    assert [p.name for p in complete_checkpoints(tmp_path / "part" / "checkpoints")] == ["checkpoint-3"]
    # a checkpoint that was being written when the job died: newer, but without its marker
    fake = tmp_path / "part" / "checkpoints" / "checkpoint-5"
    shutil.copytree(tmp_path / "part" / "checkpoints" / "checkpoint-3", fake)
    (fake / COMPLETE_MARKER).unlink()
    (fake / "optimizer.pt").write_bytes(b"truncated")
    with pytest.raises(LlavaKDError, match="--resume"):
        run_stage(_cfg(setup, "dft", tmp_path / "part"))
    with pytest.raises(LlavaKDError, match=r"config changed since its checkpoints.*train\.lr: 0\.001 -> 0\.0005"):
        run_stage(_cfg(setup, "dft", tmp_path / "part", "train.lr=5e-4"), resume=True)
    resumed = run_stage(_cfg(setup, "dft", tmp_path / "part"), resume=True)
    a, b = metrics_by_step(tmp_path / "full"), metrics_by_step(tmp_path / "part")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        for key in ("loss", "loss_ce", "loss_res", "loss_vis", "loss_rel"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (step, key)
    wa, wb = _weights(full), _weights(resumed)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "part" / "metadata.json").read_text())
    assert meta["resumed_from"].endswith("checkpoint-3")
    # the student's tied head (qwen1.5-0.5b ties) is one tensor in the checkpoint, after resume and in the export
    from transformers import LlavaForConditionalGeneration

    from llavakd.model.build import check_tied

    for folder in (tmp_path / "part" / "checkpoints" / "checkpoint-3", resumed, full):
        model = LlavaForConditionalGeneration.from_pretrained(folder)
        assert model.config.tie_word_embeddings
        check_tied(model, str(folder))
        # from_pretrained ties again whatever the file holds: the file itself must hold one head
        assert saved_head_is_the_embeddings(folder), folder
    from safetensors.torch import load_file, save_file

    untied = dict(load_file(str(full / "model.safetensors")))
    emb = next(k for k in untied if k.endswith("embed_tokens.weight"))
    untied["lm_head.weight"] = untied[emb] + 1.0  # the negative control: a second, different head
    (tmp_path / "untied").mkdir()
    save_file(untied, str(tmp_path / "untied" / "model.safetensors"))
    assert not saved_head_is_the_embeddings(tmp_path / "untied")


def saved_head_is_the_embeddings(folder) -> bool:
    """A saved model's file holds no LM head of its own, or one equal to its input embeddings."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    emb = next(k for k in weights if k.endswith("embed_tokens.weight"))
    return "lm_head.weight" not in weights or torch.equal(weights["lm_head.weight"], weights[emb])


def test_finished_run_is_never_overwritten(setup, tmp_path):
    run_stage(_cfg(setup, "pt", tmp_path / "r", "train.max_steps=2"))
    marker = tmp_path / "r" / "final" / COMPLETE_MARKER
    before = marker.stat().st_mtime_ns
    with pytest.raises(LlavaKDError, match="finished run"):
        run_stage(_cfg(setup, "pt", tmp_path / "r", "train.max_steps=2"), resume=True)
    assert marker.stat().st_mtime_ns == before
    run_stage(_cfg(setup, "pt", tmp_path / "r", "train.max_steps=2"), overwrite=True)
    meta = json.loads((tmp_path / "r" / "metadata.json").read_text())
    assert meta["template"] == "pretrain" and meta["grad_accumulation"] == 2 and meta["steps"] == 2
    assert meta["dataset"]["records"] > 0 and meta["tokens_per_s"] > 0


def test_non_finite_loss_stops_before_the_step(setup, tmp_path):
    from transformers import LlavaForConditionalGeneration

    bad = tmp_path / "nan_teacher"
    t = LlavaForConditionalGeneration.from_pretrained(setup / "teacher")
    with torch.no_grad():
        t.lm_head.weight.fill_(float("nan"))
    t.save_pretrained(bad)
    shutil.copy(setup / "teacher" / "tokenizer.json", bad)
    shutil.copy(setup / "teacher" / "tokenizer_config.json", bad)
    cfg = _cfg(setup, "dft", tmp_path / "run")
    cfg.teacher = str(bad)
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite loss in res, vis, rel"):
        run_stage(cfg)
    assert not (tmp_path / "run" / "final").exists()
    assert complete_checkpoints(tmp_path / "run" / "checkpoints") == []


def test_non_finite_gradient_guard_names_the_parameter():
    from transformers import TrainerControl, TrainerState

    from llavakd.train.trainer import NonFiniteGradGuard

    lin = torch.nn.Linear(2, 2)
    lin.weight.grad = torch.tensor([[1.0, float("inf")], [0.0, 0.0]])
    state = TrainerState()
    state.global_step = 41
    with pytest.raises(NonFiniteError, match=r"step 42: non-finite gradient in weight"):
        NonFiniteGradGuard(lin).on_pre_optimizer_step(None, state, TrainerControl())
    lin.weight.grad = torch.zeros(2, 2)
    NonFiniteGradGuard(lin).on_pre_optimizer_step(None, state, TrainerControl())


def _first_last(m, keys, n=3):
    steps = sorted(m)
    first = {k: sum(m[s][k] for s in steps[:n]) / n for k in keys}
    last = {k: sum(m[s][k] for s in steps[-n:]) / n for k in keys}
    return first, last


@pytest.mark.slow
@pytest.mark.parametrize("term", ["res", "vis"])
def test_each_distillation_term_decreases_when_trained(setup, tmp_path, term):
    # one term at a time: with a random teacher the terms start near their floor together, and
    # CE pulls the student away from it; alone, each term must fall under its own gradient.
    # (L_rel of two random models starts at its floor: their visual-position logits share one
    # dominant direction, so both Gram matrices are nearly rank one; see the next test.)
    off = [f"loss.{t}=false" for t in ("ce", "res", "vis", "rel") if t != term]
    run_stage(_cfg(setup, "dft", tmp_path / "d", "train.max_steps=16", "train.global_batch=8",
                   "train.per_device_batch=8", "train.save_steps=100", "train.lr=2e-3", *off))
    m = metrics_by_step(tmp_path / "d")
    key = f"loss_{term}"
    first, last = _first_last(m, (key,))
    assert first[key] > 0.01, "the fixture must leave the term room to fall"
    assert last[key] < 0.8 * first[key], (first[key], last[key])
    assert set(m[1]) >= {key, "learning_rate", "grad_norm"}


def test_rdist_alone_is_minimised_by_an_optimizer():
    """Adam on L_rel alone, over free student logits, drives it down from a real gap."""
    from llavakd.distill import LossConfig, distill_loss

    g = torch.Generator().manual_seed(0)
    B, L, V = 2, 12, 50
    teacher = torch.randn(B, L, V, generator=g) * 3
    student = torch.nn.Parameter(torch.randn(B, L, V, generator=g))
    labels = torch.full((B, L), -100)
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[:, 2:10] = True
    cfg = LossConfig(ce=False, res=False, vis=False)
    opt = torch.optim.Adam([student], lr=0.05)
    values = []
    for _ in range(60):
        out = distill_loss(student, teacher, labels, vm, cfg)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        values.append(out.parts["rel"])
    assert values[0] > 0.05 and values[-1] < 0.2 * values[0]


@pytest.mark.slow
def test_sft_cross_entropy_decreases(setup, tmp_path):
    run_stage(_cfg(setup, "sft", tmp_path / "s", "train.max_steps=24", "train.global_batch=8",
                   "train.per_device_batch=8", "train.save_steps=100", "train.lr=2e-3"))
    m = metrics_by_step(tmp_path / "s")
    first, last = _first_last(m, ("loss_ce",))
    assert last["loss_ce"] < 0.8 * first["loss_ce"]
    assert set(m[1]) >= {"loss", "loss_ce", "learning_rate", "grad_norm", "tokens_per_s"}
    assert "loss_res" not in m[1]


@pytest.mark.parametrize("stage", ["pt", "sft", "dpt", "dft"])
def test_shipped_stage_configs_validate(stage):
    from pathlib import Path

    cfg = load_stage_config(Path(__file__).resolve().parents[1] / "config" / "stages" / f"tiny_{stage}.yaml",
                            stage=stage)
    assert cfg.stage == stage and cfg.train.precision == "fp32"
    assert cfg.distill == (stage in ("dpt", "dft")) and (cfg.teacher is not None) == cfg.distill


@pytest.mark.parametrize("source", ["logits", "features"])
def test_fused_and_chunked_objectives_train_alike(setup, tmp_path, source):
    """The trainer's fused objective (hidden states + heads, no full logits) and the chunked one
    (full logits) give the same DFT steps: every loss part of each step to 1e-5 in float32."""
    runs = {}
    for impl in ("fused", "chunked"):
        out = tmp_path / impl
        run_stage(_cfg(setup, "dft", out, f"loss.implementation={impl}", f"loss.rel_source={source}",
                       "train.max_steps=3", "train.logging_steps=1", "train.warmup_ratio=0"))
        runs[impl] = metrics_by_step(out)
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["loss_implementation_used"] == impl
    assert sorted(runs["fused"]) == sorted(runs["chunked"]) == [1, 2, 3]
    for step, rec in runs["chunked"].items():
        for key in ("loss", "loss_ce", "loss_res", "loss_vis", "loss_rel"):
            assert runs["fused"][step][key] == pytest.approx(rec[key], rel=1e-5, abs=1e-7), (step, key)
        assert runs["fused"][step]["grad_norm"] == pytest.approx(rec["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("stage", ["sft", "dft"])
def test_a_step_does_not_depend_on_how_its_batch_is_split(setup, tmp_path, stage):
    """Per-device 4 x accumulation 1 and per-device 1 x accumulation 4 at global batch 4 (float64):
    the same losses and grad norm at every step and the same final weights, to 1e-6. Every term is
    a mean over the step's positions, whatever the micro-batches (L_rel per sample: the batch
    cosine cannot be split)."""
    runs = {}
    for per_device in (4, 1):
        out = tmp_path / f"per-device-{per_device}"
        run_stage(_cfg(setup, stage, out, "train.precision=fp64", "train.global_batch=4",
                       f"train.per_device_batch={per_device}", "train.max_steps=3", "train.logging_steps=1",
                       "train.warmup_ratio=0", "loss.rel_reduction=per_sample"))
        meta = json.loads((out / "metadata.json").read_text())
        assert (meta["per_device_batch"], meta["grad_accumulation"]) == (per_device, 4 // per_device)
        runs[per_device] = (metrics_by_step(out), _weights(out / "final"))
    (whole, w_whole), (split, w_split) = runs[4], runs[1]
    assert sorted(whole) == sorted(split) == [1, 2, 3]
    keys = ["loss", "loss_ce", "grad_norm"] + (["loss_res", "loss_vis", "loss_rel"] if stage == "dft" else [])
    for step in whole:
        for key in keys:
            assert split[step][key] == pytest.approx(whole[step][key], rel=1e-6, abs=1e-9), (step, key)
    for name, value in w_whole.items():
        torch.testing.assert_close(w_split[name], value, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("implementation", ["fused", "chunked"])
def test_training_forwards_build_no_kv_cache(setup, tmp_path, monkeypatch, implementation):
    """Student and teacher forwards of a DFT step return no past_key_values (the cache a training
    step never reads, which the memory estimate does not count); the LLMs' taps see every forward."""
    from llavakd.train import trainer as tr

    seen = []
    original = tr.LLMTaps._outputs

    def spy(self, module, args, output):
        seen.append(getattr(output, "past_key_values", None))
        return original(self, module, args, output)

    monkeypatch.setattr(tr.LLMTaps, "_outputs", spy)
    run_stage(_cfg(setup, "dft", tmp_path / "run", "train.max_steps=1", f"loss.implementation={implementation}"))
    assert len(seen) >= 2 and all(cache is None for cache in seen), seen


@pytest.mark.parametrize("setting, expected", [(False, []), (True, [0, 1]), (2, [0])])
def test_checkpointing_recomputes_the_chosen_layers_and_changes_no_gradient(setup, setting, expected):
    """train.gradient_checkpointing off / all / every k-th: the chosen decoder layers run their
    forward again in the backward pass (counted inside the layer), the others once; the gradients
    equal those without checkpointing (float64)."""
    from transformers import LlavaForConditionalGeneration

    from llavakd.train.run import apply_checkpointing

    def grads_and_calls(k):
        torch.manual_seed(0)
        m = LlavaForConditionalGeneration.from_pretrained(setup / "student", dtype=torch.float64)
        m.train()
        layers = m.model.language_model.layers
        chosen = apply_checkpointing(m, k)
        calls = [0] * len(layers)
        for i, layer in enumerate(layers):  # the MLP's forward itself (recomputation runs no module hooks)
            def counted(*a, _f=layer.mlp.forward, _i=i, **kw):
                calls[_i] += 1
                return _f(*a, **kw)
            layer.mlp.forward = counted
        ids = torch.randint(0, 50, (2, 9))
        m(input_ids=ids, use_cache=False).logits.square().mean().backward()
        return chosen, calls, [p.grad.clone() for p in m.parameters() if p.grad is not None]

    n = len(LlavaForConditionalGeneration.from_pretrained(setup / "student").model.language_model.layers)
    assert n == 2  # the tiny student; ``expected`` is written for it
    chosen, calls, grads = grads_and_calls(setting)
    assert chosen == expected
    assert calls == [2 if i in expected else 1 for i in range(n)]
    _, base_calls, base = grads_and_calls(False)
    assert base_calls == [1] * n
    for a, b in zip(grads, base):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_one_vision_pass_equals_two(setup, tmp_path):
    """float64, a DFT run of 3 steps: with the towers' pass shared (the default; metadata says
    "shared") the per-step losses, their parts and the final weights equal those of two passes."""
    from safetensors.torch import load_file

    runs = {}
    for share in (True, False):
        out = tmp_path / f"share-{share}"
        run_stage(_cfg(setup, "dft", out, "train.precision=fp64", "train.max_steps=3", "train.logging_steps=1",
                       f"train.share_vision_tower={str(share).lower()}"))
        runs[share] = out
    meta = {s: json.loads((runs[s] / "metadata.json").read_text()) for s in runs}
    assert meta[True]["vision_pass"] == "shared"
    assert meta[False]["vision_pass"] == "separate: train.share_vision_tower is off"
    a, b = _metrics(runs[True]), _metrics(runs[False])
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for k in ("loss", "loss_ce", "loss_res", "loss_vis", "loss_rel", "grad_norm"):
            assert x[k] == pytest.approx(y[k], rel=1e-10, abs=1e-12), k
    wa, wb = (load_file(str(runs[s] / "final" / "model.safetensors")) for s in (True, False))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-10, atol=1e-12)


def test_the_shared_pass_runs_the_tower_once_and_a_changed_tower_is_caught(setup):
    from transformers import LlavaForConditionalGeneration

    from llavakd.train.vision import SharedVisionPass, tower_digest, vision_tower

    student = LlavaForConditionalGeneration.from_pretrained(setup / "student", dtype=torch.float64)
    teacher = LlavaForConditionalGeneration.from_pretrained(setup / "teacher", dtype=torch.float64)
    student.requires_grad_(False)
    assert tower_digest(vision_tower(student), torch.float64) == tower_digest(vision_tower(teacher), torch.float64)
    shared = SharedVisionPass()
    assert shared.install(student, teacher) == "shared"
    size = student.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, dtype=torch.float64)
    f_s = student.model.get_image_features(pixel_values=pixels, vision_feature_layer=-1,
                                           vision_feature_select_strategy="full")
    f_t = teacher.model.get_image_features(pixel_values=pixels, vision_feature_layer=-1,
                                           vision_feature_select_strategy="full")
    assert (shared.passes, shared.served) == (1, 1)  # the teacher's forward was served
    torch.testing.assert_close(f_t.last_hidden_state, f_s.last_hidden_state)
    shared.begin()
    teacher.model.get_image_features(pixel_values=pixels.clone(), vision_feature_layer=-1,
                                     vision_feature_select_strategy="full")
    assert shared.passes == 2  # other pixels: its own pass
    # a tower whose weights differ in one element is caught by the digest
    changed = LlavaForConditionalGeneration.from_pretrained(setup / "teacher", dtype=torch.float64)
    with torch.no_grad():
        next(vision_tower(changed).parameters()).view(-1)[0] += 1e-3
    assert SharedVisionPass().install(student, changed) == "separate: the teacher's and the student's vision towers differ"
    student.model.vision_tower.requires_grad_(True)
    assert SharedVisionPass().install(student, teacher) == "separate: the student's vision tower is trained"


def test_kernel_switches_on_the_cpu(setup, tmp_path):
    """liger is refused on the CPU before anything loads; attn_implementation reaches both models;
    compile wraps every decoder layer of the student."""
    from llavakd.train.run import setup_models

    with pytest.raises(LlavaKDError, match="train.liger_kernels needs a GPU"):
        setup_models(_cfg(setup, "dft", tmp_path / "r", "train.liger_kernels=true"))
    model, _, teacher, _ = setup_models(_cfg(setup, "dft", tmp_path / "r", "train.attn_implementation=eager",
                                             "train.compile=true"))
    assert model.config._attn_implementation == teacher.config._attn_implementation == "eager"
    assert model.model.language_model.config._attn_implementation == "eager"
    assert all(layer._compiled_call_impl is not None for layer in model.model.language_model.layers)
    model, _, teacher, _ = setup_models(_cfg(setup, "dft", tmp_path / "r"))
    assert model.config._attn_implementation == "sdpa"
    assert all(layer._compiled_call_impl is None for layer in model.model.language_model.layers)


def test_training_goes_on_while_a_checkpoint_is_marked(setup, tmp_path, monkeypatch):
    """The marker (sha256 of every file) is written in the background: with a slow writer, the step
    after checkpoint-3 starts before checkpoint-3 is complete; the run still ends with every kept
    checkpoint marked and intact, and older ones pruned only after the newer one's marker."""
    import threading

    from transformers import TrainerCallback

    import llavakd.train.trainer as trainer_mod
    from llavakd.io import marker_problem

    real = trainer_mod.write_marker
    release = threading.Event()

    waits = []  # False: a marker waited out the 30 s timeout instead of being released by the next step

    def slow_marker(folder):
        waits.append(release.wait(timeout=30))
        real(folder)

    monkeypatch.setattr(trainer_mod, "write_marker", slow_marker)
    seen = {}

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 3:  # the step after checkpoint-3 was saved
                seen["marked_when_step_4_began"] = (tmp_path / "r" / "checkpoints" / "checkpoint-3" /
                                                    COMPLETE_MARKER).exists()
                release.set()

    import llavakd.train.run as run_mod

    real_setup = run_mod.setup_trainer

    def setup_with_probe(*a, **kw):
        t = real_setup(*a, **kw)
        t.add_callback(Probe())
        return t

    monkeypatch.setattr(run_mod, "setup_trainer", setup_with_probe)
    run_stage(_cfg(setup, "pt", tmp_path / "r", "train.max_steps=9", "train.save_steps=3", "train.keep_checkpoints=2"))
    assert waits and all(waits), waits  # nothing waited for the 30 s timeout (a test of order, not of speed)
    assert seen == {"marked_when_step_4_began": False}
    kept = complete_checkpoints(tmp_path / "r" / "checkpoints")
    assert [p.name for p in kept] == ["checkpoint-6", "checkpoint-9"]
    assert all(marker_problem(p) is None for p in kept)


@pytest.mark.parametrize("with_ce", [False, True])
def test_on_policy_loss_is_the_divergence_on_the_students_own_samples(setup, tmp_path, monkeypatch, with_ce):
    """GKD with lambda 1 (every micro-batch on-policy), float64, one step of two micro-batches: the
    student's samples are plain draws from its softmax (a naive sampler without the KV cache, on the
    same stream, draws the same tokens), and the logged L_res equals a hand computation of the
    generalized JSD(0.5) on the sampled tokens, averaged over the step's sampled tokens. With CE
    kept, the logged CE is the dataset answers' cross-entropy over the step's dataset answers."""
    from transformers import LlavaForConditionalGeneration

    import llavakd.train.onpolicy as onpolicy
    from llavakd.labels import IGNORE_INDEX

    seen = []
    real = onpolicy.rewrite

    def recording(batch, model, **kw):
        new, samples = real(batch, model, **kw)
        seen.append(({k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}, new, samples))
        return new, samples

    monkeypatch.setattr(onpolicy, "rewrite", recording)
    out = tmp_path / "gkd"
    run_stage(_cfg(setup, "dft", out, "train.precision=fp64", "train.max_steps=1", "train.logging_steps=1",
                   "loss.on_policy=1.0", f"loss.ce={str(with_ce).lower()}", "loss.vis=false", "loss.rel=false",
                   "loss.divergence=jsd", "loss.max_new_tokens=6"))
    assert len(seen) == 2 and all(any(s) for _, _, s in seen)
    student = LlavaForConditionalGeneration.from_pretrained(setup / "student", dtype=torch.float64).eval()
    teacher = LlavaForConditionalGeneration.from_pretrained(setup / "teacher", dtype=torch.float64).eval()

    # the draws: the same stream, a naive sampler (the whole sequence again for every token)
    g = torch.Generator().manual_seed(1234 * 1009)
    for old, new, samples in seen:
        assert float(torch.rand(1, generator=g)) < 1.0
        pix_i = 0
        for b in range(old["input_ids"].shape[0]):
            n = int(old["attention_mask"][b].sum())
            start, _ = onpolicy.last_answer(old["labels"][b, :n])
            ids = old["input_ids"][b, :start][None]
            has_image = bool((old["visual_mask"][b]).any())
            pix = old["pixel_values"][pix_i:pix_i + 1] if has_image else None
            pix_i += has_image
            drawn = []
            with torch.no_grad():
                for _ in range(6):
                    logits = student(input_ids=ids, pixel_values=pix).logits[0, -1].float()
                    tok = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
                    drawn.append(tok)
                    ids = torch.cat([ids, torch.tensor([[tok]])], 1)
                    if tok == setup_end_id(setup):
                        break
            assert drawn == samples[b]
            assert new["input_ids"][b, start:start + len(drawn)].tolist() == drawn
            assert (new["labels"][b, :start] == IGNORE_INDEX).all()

    # the loss: JSD(0.5) at every sampled token (position t-1 predicts token t), float64, by hand
    total, count = 0.0, 0
    with torch.no_grad():
        for _, new, _ in seen:
            fwd = {k: new[k] for k in ("input_ids", "attention_mask", "pixel_values") if new.get(k) is not None}
            ls = torch.log_softmax(student(**fwd).logits, -1)
            lt = torch.log_softmax(teacher(**fwd).logits, -1)
            rows = new["labels"][:, 1:] != IGNORE_INDEX
            ps, pt = ls[:, :-1][rows].exp(), lt[:, :-1][rows].exp()
            m = 0.5 * ps + 0.5 * pt
            jsd = 0.5 * (pt * (pt.log() - m.log())).sum(-1) + 0.5 * (ps * (ps.log() - m.log())).sum(-1)
            total += float(jsd.sum())
            count += int(rows.sum())
    logged = _metrics(out)[0]
    assert logged["loss_res"] == pytest.approx(total / count, rel=1e-9)
    if not with_ce:
        assert "loss_ce" not in logged
        return
    ce_sum, ce_n = 0.0, 0
    with torch.no_grad():
        for old, new, _ in seen:
            assert torch.equal(new["ce_batch"]["input_ids"], old["input_ids"])  # the dataset's answers go along
            fwd = {k: old[k] for k in ("input_ids", "attention_mask", "pixel_values") if old.get(k) is not None}
            logp = torch.log_softmax(student(**fwd).logits[:, :-1], -1)
            y = old["labels"][:, 1:]
            rows = y != IGNORE_INDEX
            ce_sum += float(-logp[rows].gather(1, y[rows][:, None]).sum())
            ce_n += int(rows.sum())
    assert logged["loss_ce"] == pytest.approx(ce_sum / ce_n, rel=1e-9)


def setup_end_id(setup) -> int:
    from transformers import AutoTokenizer

    from llavakd.model.chat import END_TOKEN

    return AutoTokenizer.from_pretrained(setup / "student").convert_tokens_to_ids(END_TOKEN)


def test_a_job_failing_twice_the_same_way_without_a_checkpoint_is_not_tried_a_third_time(setup, tmp_path,
                                                                                         monkeypatch):
    """In one workflow session (LLAVAKD_SESSION), a training job whose data file is broken fails the same way
    twice before its first checkpoint; the third attempt stops at once, in one line naming the job."""
    from llavakd.attempts import GaveUp

    monkeypatch.setenv("LLAVAKD_SESSION", "one-snakemake-run")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "r0", "image": "x.png"')  # cut short
    cfg = _cfg(setup, "sft", tmp_path / "r", f"data.json={bad}")
    errors = []
    for _ in range(2):
        with pytest.raises(LlavaKDError) as err:
            run_stage(cfg, resume=True)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and not isinstance(err.value, GaveUp)
    with pytest.raises(GaveUp, match=r"training job .*/r: failed twice the same way without progress \(") as err:
        run_stage(cfg, resume=True)
    assert errors[0].splitlines()[0][:60] in str(err.value)
    monkeypatch.setenv("LLAVAKD_SESSION", "the-next-snakemake-run")  # running Snakemake again tries again
    with pytest.raises(LlavaKDError) as err:
        run_stage(cfg, resume=True)
    assert not isinstance(err.value, GaveUp)
