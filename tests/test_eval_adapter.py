"""The lmms-eval model class: found through the entry point, batch-size invariant, consistent."""

from __future__ import annotations

import pytest
from lmms_eval.api.instance import Instance

from llavakd.tiny.score import load_docs, task_functions
from llavakd.tiny.world import write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("w")
    write_world(out, seed=4, size="tiny")
    return out


def _requests(world, task, n, gen_kwargs=None, kind="generate_until"):
    to_visual, to_text, _, kwargs = task_functions(task)
    docs = list(load_docs(world, task))[:n]
    split = "test"
    reqs = []
    for i, d in enumerate(docs):
        second = dict(gen_kwargs or {"max_new_tokens": 8}) if kind == "generate_until" else " yes"
        reqs.append(Instance(request_type=kind, arguments=(to_text(d, dict(kwargs)), second, to_visual, i, task, split),
                             idx=0, metadata={"task": task, "doc_id": i, "repeats": 1}))
    return reqs, {task: {split: docs}}


def _model(path, **kw):
    from lmms_eval.models import get_model

    cls = get_model("llavakd")
    return cls(pretrained=str(path), **kw)


def test_entry_point_registers_the_model():
    from lmms_eval.models import MODEL_REGISTRY_V2

    manifest = MODEL_REGISTRY_V2.get_manifest("llavakd")
    assert manifest.simple_class_path == "llavakd.eval.adapter.LlavaKD"


@pytest.mark.parametrize("task", ["mme", "mmbench_en_dev", "vqav2_val"])
def test_batch_size_does_not_change_answers(world, tiny_student, task):
    reqs, task_dict = _requests(world, task, 12)
    answers = {}
    for bs in (1, 8):
        m = _model(tiny_student, batch_size=bs)
        m.task_dict = task_dict
        answers[bs] = m.generate_until(reqs)
    assert answers[1] == answers[8]
    assert len(answers[1]) == 12 and all(isinstance(a, str) for a in answers[1])


def test_until_and_token_limit_come_from_the_task(world, tiny_student):
    m = _model(tiny_student)
    reqs, m.task_dict = _requests(world, "pope_random", 4, {"max_new_tokens": 3, "until": ["\n"]})
    base = m.generate_until(reqs)
    tok = m.processor.tokenizer
    assert all(len(tok(a, add_special_tokens=False)["input_ids"]) <= 3 for a in base)
    assert all("\n" not in a for a in base)


@pytest.mark.parametrize("gen_kwargs, limit", [({"max_new_tokens": 50}, 50), ({"max_new_tokens": 1024}, 1024),
                                               ({"until": ["\n\n"]}, 1024)])
def test_no_hidden_cap_on_new_tokens(world, tiny_student, monkeypatch, gen_kwargs, limit):
    """The task's limit reaches generate as it is (lmms-eval's model default, 1,024, when it names none)."""
    m = _model(tiny_student)
    seen = []
    real = m.model.generate
    monkeypatch.setattr(m.model, "generate", lambda **kw: seen.append(kw["max_new_tokens"]) or real(**kw))
    reqs, m.task_dict = _requests(world, "pope_random", 2, gen_kwargs)
    m.generate_until(reqs)
    assert seen and set(seen) == {limit}


def test_loglikelihood_agrees_with_greedy_decoding(world, tiny_student):
    m = _model(tiny_student)
    reqs, m.task_dict = _requests(world, "pope_random", 3)
    for req in reqs:
        context, _, to_visual, doc_id, task, split = req.args
        enc = m._encode(context, m._visuals(to_visual, doc_id, task, split))
        out = m.model.generate(**enc, max_new_tokens=3, do_sample=False, eos_token_id=m.eos_id, pad_token_id=m.eos_id)
        greedy = out[0, enc["input_ids"].shape[1]:]
        greedy = greedy[greedy != m.eos_id]
        cont = m.processor.tokenizer.decode(greedy)
        other = Instance(request_type="loglikelihood", arguments=(context, cont, to_visual, doc_id, task, split),
                         idx=0, metadata={"task": task, "doc_id": doc_id, "repeats": 1})
        (lp, is_greedy), = m.loglikelihood([other])
        assert lp < 0 and is_greedy


def test_unknown_model_args_are_refused(tiny_student):
    with pytest.raises(ValueError, match="unknown model_args"):
        _model(tiny_student, temperature=0.5)
    with pytest.raises(ValueError, match="unknown model_args"):  # no cap of our own to set either
        _model(tiny_student, max_new_tokens=8)


@pytest.mark.slow
def test_all_standins_run_through_simple_evaluate(world, tiny_student, tmp_path, monkeypatch):
    """Every stand-in through lmms-eval's own evaluator, offline (MMBench by rules only)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from llavakd.eval.tasks import HOOKS_MODULE
    from llavakd.tiny.score import score_standins
    from llavakd.tiny.tasks import write_standin_yamls

    monkeypatch.chdir(tmp_path)  # lmms-eval writes ./submissions/ when it has no output path
    names = write_standin_yamls(tmp_path / "tasks", world)
    assert len(names) == 14 and (tmp_path / "tasks" / f"{HOOKS_MODULE}.py").is_file()
    names = {t: n for t, n in names.items() if t not in ("vqav2_test", "vizwiz_vqa_test")}  # server splits: no score
    res = simple_evaluate(model="llavakd", model_args=f"pretrained={tiny_student}", tasks=list(names.values()),
                          batch_size=4, limit=8, task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    for task, name in names.items():
        metrics = {k: v for k, v in res["results"][name].items() if "stderr" not in k and k != "alias"}
        assert any(isinstance(v, (int, float)) for v in metrics.values()), (task, metrics)
    # the quick scorer and lmms-eval's evaluator agree on the same eight documents
    quick = score_standins(tiny_student, world, tasks=["pope_random", "vqav2_val"], limit=8)
    results = res["results"]
    assert results[names["pope_random"]]["pope_accuracy,none"] * 100 == pytest.approx(quick["pope_random"]["score"])
    assert results[names["vqav2_val"]]["exact_match,none"] * 100 == pytest.approx(quick["vqav2_val"]["score"], abs=0.1)
