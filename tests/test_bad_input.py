"""Every bad input to the model builder gives a clear error naming the culprit."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from llavakd.errors import LlavaKDError
from llavakd.model.build import build_llava, check_same_vocab


def _copy_llm(tiny_components, tmp_path, name="qwen2.5-0.5b"):
    dst = tmp_path / name
    shutil.copytree(tiny_components / "llm" / name, dst)
    return dst


def test_file_instead_of_folder(tiny_components, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_text("x")
    with pytest.raises(LlavaKDError, match=r"LLM: .*weights.bin is a file"):
        build_llava(tiny_components / "vision" / "siglip", f)


def test_folder_without_config(tiny_components, tmp_path):
    with pytest.raises(LlavaKDError, match="vision tower: .* has no config.json"):
        build_llava(tmp_path, tiny_components / "llm" / "qwen2.5-0.5b")


def test_relative_missing_path_is_not_sent_to_the_hub(tiny_components):
    with pytest.raises(LlavaKDError, match=r"LLM: \./nowhere/llm does not exist"):
        build_llava(tiny_components / "vision" / "siglip", "./nowhere/llm")


def test_vision_tower_that_is_not_siglip(tiny_components):
    with pytest.raises(LlavaKDError, match=r"vision tower .*qwen2.*model_type 'qwen2' is not a SigLIP tower"):
        build_llava(tiny_components / "llm" / "qwen2.5-0.5b", tiny_components / "llm" / "qwen2.5-0.5b")


def test_llm_without_the_template_end_token(tiny_components, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    llm = _copy_llm(tiny_components, tmp_path)
    for f in llm.glob("tokenizer*"):
        f.unlink()
    (llm / "chat_template.jinja").unlink(missing_ok=True)
    tk = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hello": 2}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>").save_pretrained(llm)
    with pytest.raises(LlavaKDError, match=r"tokenizer of .*qwen2.5-0.5b: has no '<\|endoftext\|>', the end-of-turn token "
                                           r"of the 'phi' chat template"):
        build_llava(tiny_components / "vision" / "siglip", llm, strategy="full")


def test_teacher_student_with_different_vocabularies(tiny_components, tmp_path):
    from transformers import AutoTokenizer

    student = _copy_llm(tiny_components, tmp_path)
    tok = AutoTokenizer.from_pretrained(student)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(student)
    with pytest.raises(LlavaKDError, match=r"different vocabularies.*only in student: \['zebra'\]"):
        check_same_vocab(tiny_components / "llm" / "qwen2.5-3b", student)


def test_teacher_student_with_different_logit_sizes(tiny_components, tmp_path):
    student = _copy_llm(tiny_components, tmp_path)
    cfg = json.loads((student / "config.json").read_text())
    cfg["vocab_size"] += 64
    (student / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlavaKDError, match="output logits"):
        check_same_vocab(tiny_components / "llm" / "qwen2.5-3b", student)


def test_local_paths_never_reach_the_network(tiny_components, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model, _, _ = build_llava(tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-0.5b",
                              strategy="full")
    assert model.config.image_seq_length == 16


def test_code_in_a_checkpoint_folder_is_never_executed(tiny_components, tmp_path):
    llm = _copy_llm(tiny_components, tmp_path)
    marker = tmp_path / "EXECUTED"
    (llm / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\n"
        "from transformers import Qwen2ForCausalLM as Evil\n"
    )
    cfg = json.loads((llm / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil", "AutoConfig": "modeling_evil.Evil"}
    (llm / "config.json").write_text(json.dumps(cfg))
    try:
        build_llava(tiny_components / "vision" / "siglip", llm, strategy="full")
    except Exception:
        pass  # refusing is fine too; running the code is not
    assert not marker.exists()


def test_unknown_dtype(tiny_components):
    with pytest.raises(LlavaKDError, match="dtype must be one of"):
        build_llava(tiny_components / "vision" / "siglip", tiny_components / "llm" / "qwen2.5-0.5b",
                    dtype="float8")
