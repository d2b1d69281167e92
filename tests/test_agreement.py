"""Teacher agreement: answer agreement, answer KL and visual KL against hand computations."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch

from llavakd.eval.agreement import kl_rows, measure_doc
from llavakd.model.build import build_llava, load_processor, save_llava
from llavakd.model.chat import END_TOKEN, render_prompt


@pytest.fixture(scope="module")
def world(standin_world):
    return standin_world


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llavakd.cli", "agreement", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_kl_rows_is_the_textbook_kl():
    t, s = torch.randn(5, 11), torch.randn(5, 11)
    p, q = t.double().softmax(-1), s.double().softmax(-1)
    assert torch.allclose(kl_rows(t, s), (p * (p / q).log()).sum(-1), atol=1e-12)
    assert torch.allclose(kl_rows(t, t), torch.zeros(5, dtype=torch.float64), atol=1e-12)


@pytest.mark.slow
def test_identical_models_agree_fully_with_zero_kl(world, tiny_student, tmp_path):
    out = tmp_path / "agree"
    r = _cli("--student", tiny_student, "--teacher", tiny_student, "--world", world, "--benchmarks", "gqa,pope,mmb",
             "--limit", "4", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["COMPLETE", "gqa.json", "mmb.json", "pope.json"]
    for name in ("gqa", "pope", "mmb"):
        rec = json.loads((out / f"{name}.json").read_text())
        assert rec["answer_agreement"] == 1.0 and rec["answer_kl"] == pytest.approx(0, abs=1e-9)
        assert rec["visual_kl"] == pytest.approx(0, abs=1e-9)
        assert rec["docs"] == 4 * len(rec["tasks"])


@pytest.mark.slow
def test_a_known_logit_shift_gives_the_analytic_kl(world, tiny_student):
    """Teacher = student + delta on one token's logit everywhere: KL(T||S) = p_T(k) delta - log(1 + p_S(k)(e^delta - 1))."""
    import pandas as pd
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    student = LlavaForConditionalGeneration.from_pretrained(tiny_student).eval()
    processor = load_processor(tiny_student)
    teacher, k, delta = copy.deepcopy(student), 7, 0.75  # token 7 never wins: the greedy answers stay the same

    def shift(module, args, output):
        output.logits[..., k] += delta
        return output

    teacher.register_forward_hook(shift)
    doc = pd.read_parquet(world / "bench" / "gqa" / "testdev.parquet").iloc[0]
    image = Image.open(__import__("io").BytesIO(doc["image"]["bytes"])).convert("RGB")
    prompt = doc["question"] + "\nAnswer the question using a single word or phrase."
    got = measure_doc(teacher, student, processor, prompt, [image], 8, [])

    enc = processor(text=render_prompt(prompt), images=[image], return_tensors="pt")
    eos = processor.tokenizer.convert_tokens_to_ids(END_TOKEN)
    with torch.no_grad():
        ans = student.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=eos)
        ans = ans[0, enc["input_ids"].shape[1]:]
        ends = (ans == eos).nonzero()
        ans = ans[: int(ends[0]) + 1] if len(ends) else ans
        ids = torch.cat([enc["input_ids"][0], ans])
        logits = student(input_ids=ids[None], pixel_values=enc["pixel_values"]).logits[0].double()
    assert int(logits.argmax(-1).eq(k).sum()) == 0  # the shift never changes a greedy choice

    def analytic(rows):
        ps = rows.softmax(-1)[:, k]
        z = 1 + ps * (math.exp(delta) - 1)
        pt = ps * math.exp(delta) / z
        return float((pt * delta - z.log()).mean())

    n = enc["input_ids"].shape[1]
    assert got.agree
    assert got.answer_kl == pytest.approx(analytic(logits[n - 1:n - 1 + len(ans)]), rel=1e-6, abs=1e-12)
    visual = ids == student.config.image_token_id
    assert got.visual_kl == pytest.approx(analytic(logits[visual]), rel=1e-6, abs=1e-12)
    assert got.answer_kl > 0 and got.visual_kl > 0


@pytest.mark.slow
def test_mismatched_pairs_exit_2_naming_both_and_write_nothing(world, tiny_student, tiny_components, tmp_path):
    other = tmp_path / "other_strategy"  # 15 visual tokens (first patch dropped) against the student's 16
    model, proc, prov = build_llava(tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen1.5-4b",
                                    strategy="default")
    save_llava(model, proc, other, prov)
    r = _cli("--student", tiny_student, "--teacher", other, "--world", world, "--benchmarks", "gqa", "--out",
             tmp_path / "a", cwd=tmp_path)
    assert r.returncode == 2 and "15 visual tokens" in r.stderr and "16" in r.stderr and str(other) in r.stderr
    assert not (tmp_path / "a").exists()
    vocab = tmp_path / "other_vocab"  # one token more in the tokenizer
    model, proc, prov = build_llava(tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen1.5-4b",
                                    strategy="full")
    proc.tokenizer.add_tokens(["<extra_token>"])
    save_llava(model, proc, vocab, prov)
    r = _cli("--student", tiny_student, "--teacher", vocab, "--world", world, "--benchmarks", "gqa", "--out",
             tmp_path / "b", cwd=tmp_path)
    assert r.returncode == 2 and "different vocabularies" in r.stderr and str(vocab) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
