"""LLM families beyond Qwen2 (llavakd.model.shapes.FAMILIES): liger-kernel dispatch by model_type,
tied heads through build, training, checkpoint, resume and export."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from llavakd.errors import LlavaKDError
from llavakd.model.build import check_tied, llava_config
from llavakd.model.shapes import FAMILIES, LLMShape, VisionShape, llm_config, siglip_config

TINY_VISION = VisionShape(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=16, patch_size=8)


def _tiny_llava(model_type: str, tied: bool = True):
    from transformers import LlavaForConditionalGeneration

    shape = LLMShape(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16 if model_type == "qwen3" else 8, vocab_size=64,
                     tie_word_embeddings=tied)
    text = llm_config(shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = llava_config(siglip_config(TINY_VISION), text, 63, "full", -1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    if tied:
        model.tie_weights()
    return model


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_liger_kernels_dispatch_on_the_llms_family(model_type, monkeypatch):
    from llavakd.train.run import apply_liger

    calls = []
    fake = types.ModuleType("liger_kernel.transformers")
    for facts in FAMILIES.values():
        setattr(fake, facts.liger, lambda _n=facts.liger, **kw: calls.append((_n, kw)))
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    model = _tiny_llava(model_type)
    apply_liger(model)
    assert [name for name, _ in calls] == [f"apply_liger_kernel_to_{model_type}"]
    kw = calls[0][1]
    assert kw["cross_entropy"] is False and kw["fused_linear_cross_entropy"] is False  # the logits stay ours
    assert kw["model"] is model.model.language_model


def test_a_family_liger_does_not_cover_is_refused(monkeypatch):
    from dataclasses import replace

    from llavakd.train.run import apply_liger

    monkeypatch.setitem(FAMILIES, "llama", replace(FAMILIES["llama"], liger=None))
    with pytest.raises(LlavaKDError, match="liger-kernel has no kernels for 'llama'"):
        apply_liger(_tiny_llava("llama"))


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_tied_head_survives_save_and_plain_transformers_load(model_type, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model = _tiny_llava(model_type)
    check_tied(model, "built")
    model.save_pretrained(tmp_path)
    back = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    check_tied(back, "exported")
    assert back.lm_head.weight.data_ptr() == back.model.language_model.embed_tokens.weight.data_ptr()


def test_an_untied_copy_of_a_tied_head_is_refused():
    """The negative control of the tie check: a head cloned off its embeddings."""
    model = _tiny_llava("qwen3")
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with pytest.raises(LlavaKDError, match="ties the LM head to the input embeddings, but they are two tensors"):
        check_tied(model, "broken")
    check_tied(_tiny_llava("qwen3", tied=False), "untied by config")  # an untied config is left alone


FAMILY_STUDY = {  # a Qwen3-shaped and a Llama-shaped tiny pair, with their own templates
    "qwen3": {"teacher": "qwen3-1.7b", "students": ["qwen3-0.6b"], "template": "qwen3"},
    "llama3": {"teacher": "llama-3.2-3b", "students": ["llama-3.2-1b"], "template": "llama3"},
}


@pytest.mark.slow
def test_qwen3_and_llama_pairs_train_dpt_sft_dft_through_snakemake_and_load_in_transformers(micro_tree, tmp_path):
    """Each family's student goes DPT -> SFT -> DFT through Snakemake from the micro tree's world and
    components (its teacher a given checkpoint, so no teacher training is spent here); the exported
    students load and generate in plain transformers with the template they trained in, heads tied.
    The methods benchmark plans with both and runs LLaVADI, Align-KD and BiLD on the Qwen3 student
    (its q/k norms under the attention term), scored on stand-ins in Qwen3's template."""
    import copy
    import json
    import subprocess

    import numpy as np
    import yaml
    from conftest import MICRO, copy_micro_tree, micro_cmd, micro_env
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llavakd.model.build import build_llava, save_llava
    from llavakd.model.chat import TEMPLATES, template_of

    root = copy_micro_tree(micro_tree, tmp_path / "tree", parts=("results/micro/world", "results/micro/components"))
    components = root / "results/micro/components"
    cfg = copy.deepcopy(MICRO)
    cfg["families"] = copy.deepcopy(FAMILY_STUDY)
    cfg["ablations"] = {}
    for fam in cfg["families"].values():
        m, p, prov = build_llava(components / "vision/siglip", components / "llm" / fam["teacher"], strategy="full",
                                 chat=fam["template"])
        fam["teacher_checkpoint"] = str(save_llava(m, p, tmp_path / fam["teacher"], prov))
    cfg["methods"] = {"compare": ["llavadi", "align_kd", "bild"], "students": ["qwen3-0.6b", "llama-3.2-1b"]}
    path = root / "families.yaml"
    path.write_text(yaml.safe_dump(cfg))
    finals = [f"results/micro/runs/{s}/s0/dpt--sft--dft/final/COMPLETE" for s in ("qwen3-0.6b", "llama-3.2-1b")]
    plan = subprocess.run(micro_cmd(root, path, "benchmark_methods", *finals, "-n"), cwd=root, env=micro_env(),
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "--template qwen3" in plan.stdout and "--template llama3" in plan.stdout
    assert "qwen3-0.6b/s0/pt--sft--dft@align_kd" in plan.stdout
    assert "llama-3.2-1b/s0/pt--sft--dft@bild" in plan.stdout
    cfg["methods"]["students"] = ["qwen3-0.6b"]  # run on one student
    path.write_text(yaml.safe_dump(cfg))
    run = subprocess.run(micro_cmd(root, path, *finals, "benchmark_methods"), cwd=root, env=micro_env(),
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    runs = root / "results" / "micro" / "runs" / "qwen3-0.6b" / "s0"
    for method, keys in {"llavadi": ("loss_feat",), "bild": ("loss_bild", "loss_soft"),
                         "align_kd": ("loss_attn", "loss_vtok", "loss_soft")}.items():
        metrics = [json.loads(x) for x in (runs / f"pt--sft--dft@{method}" / "metrics.jsonl").read_text().splitlines()
                   if '"loss"' in x]
        assert metrics and all(k in metrics[-1] for k in keys), method
    table = (root / "reports" / "micro" / "methods.md").read_text()
    for method in ("ce", "llavadi", "align_kd", "bild"):
        assert any(line.startswith(f"| {method} | ") for line in table.splitlines()), (method, table[:2000])
    image = Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8))
    for student, chat in (("qwen3-0.6b", "qwen3"), ("llama-3.2-1b", "llama3")):
        for chain in ("dpt", "dpt--sft", "dpt--sft--dft"):
            assert (root / f"results/micro/runs/{student}/s0/{chain}/final/COMPLETE").is_file(), (student, chain)
        final = root / f"results/micro/runs/{student}/s0/dpt--sft--dft/final"
        model = LlavaForConditionalGeneration.from_pretrained(final).eval()
        processor = AutoProcessor.from_pretrained(final)
        assert model.config.text_config.model_type == student.split("-")[0]
        assert template_of(processor) is TEMPLATES[chat]
        check_tied(model, str(final))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color ?"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert text == TEMPLATES[chat].prompt("what color ?")
        enc = processor(text=text, images=image, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > enc["input_ids"].shape[1]
        assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids(TEMPLATES[chat].end)


def test_a_tiny_vocabulary_mismatch_and_a_template_its_tokenizer_cannot_write_fail_the_dry_run():
    import copy

    from conftest import MICRO

    from llavakd.errors import ConfigError
    from llavakd.plan import Study
    from llavakd.tiny.tokenizer import catalogue

    cfg = copy.deepcopy(MICRO)
    cfg["families"] = {"mixed": {"teacher": "llama-3.2-3b", "students": ["qwen3-0.6b"], "template": "llama3"}}
    cfg["ablations"] = {}
    with pytest.raises(ConfigError) as e:
        Study.load(cfg, source="micro.yaml", tiny_llms=catalogue())
    assert e.value.problems == [
        "families.mixed: teacher llama-3.2-3b and student qwen3-0.6b have different vocabularies (llama-3.2-3b: the "
        "tiny 'llama3' tokenizer, 670 tokens (its template: 'llama3'); qwen3-0.6b: the tiny 'qwen3' tokenizer, 670 "
        "tokens (its template: 'qwen3')); the KL is taken index by index, so they must share one tokenizer "
        "(cross-tokenizer distillation is not supported)",
        "families.mixed.template: 'llama3' writes '<|eot_id|>', and the tokenizer of qwen3-0.6b: the tiny 'qwen3' "
        "tokenizer, 670 tokens (its template: 'qwen3') has no such token"]
    cfg["families"] = copy.deepcopy(FAMILY_STUDY)
    assert Study.load(cfg, source="micro.yaml", tiny_llms=catalogue()).students() == ["qwen3-0.6b", "llama-3.2-1b"]
