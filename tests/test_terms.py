"""Every registered loss term, generically: the chunked and fused paths equal its float64 naive oracle
(values, counts and gradients: the student's logits or hidden states, its head, the projected
features and the term's learnable parts), alone and with weights; the registry's own rules.

Nothing here names a term: a term added to llavakd.terms is picked up by every test of this file.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llavakd import terms
from llavakd.config import LossConfig, to_dict
from llavakd.distill import DistillShapeError, distill_loss, fused_distill_loss
from llavakd.distill.parts import build_parts
from llavakd.terms.base import Dims, Param, TermSpec, register

D_S, D_T = 6, 9
H_S, H_T = 2, 4


def make(seed=0, B=3, L=14, V=41):
    """Two image samples at different offsets and a text-only one padded at its end."""
    g = torch.Generator().manual_seed(seed)
    x = {"h_s": torch.randn(B, L, D_S, generator=g, dtype=torch.float64) * 1.5,
         "w_s": torch.randn(V, D_S, generator=g, dtype=torch.float64),
         "h_t": torch.randn(B, L, D_T, generator=g, dtype=torch.float64) * 1.5,
         "w_t": torch.randn(V, D_T, generator=g, dtype=torch.float64),
         "f_s": torch.randn(B, L, D_S, generator=g, dtype=torch.float64),
         "f_t": torch.randn(B, L, D_T, generator=g, dtype=torch.float64),
         "q_s": torch.randn(B, H_S, L, 4, generator=g, dtype=torch.float64),  # one layer's queries and keys
         "k_s": torch.randn(B, H_S, L, 4, generator=g, dtype=torch.float64),
         "q_t": torch.randn(B, H_T, L, 4, generator=g, dtype=torch.float64),
         "k_t": torch.randn(B, H_T, L, 4, generator=g, dtype=torch.float64)}
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[:, :6] = -100
    labels[2, -3:] = -100
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[0, 0:4] = True
    vm[1, 2:5] = True
    am = torch.ones(B, L, dtype=torch.long)
    am[2, -3:] = 0
    return x, labels, vm, am


def run(path: str, cfg, seed=0):
    """(output, gradients by input name) of one path; the parts are rebuilt from the same seed each time."""
    x, labels, vm, am = make(seed)
    x = {k: v.clone().requires_grad_(k in ("h_s", "w_s", "f_s", "q_s", "k_s")) for k, v in x.items()}
    parts = build_parts(cfg, Dims(D_S, D_T, H_S, H_T), seed=3)
    parts = parts.double() if parts is not None else None
    extra = {"student_features": x["f_s"], "teacher_features": x["f_t"], "attention_mask": am, "parts": parts,
             "student_attention": (x["q_s"], x["k_s"]), "teacher_attention": (x["q_t"], x["k_t"])}
    if path == "fused":
        out = fused_distill_loss(x["h_s"], x["w_s"], x["h_t"], x["w_t"], labels, vm,
                                 dataclasses.replace(cfg, chunk_rows=5, chunk_vocab=7), **extra)
    else:
        impl = {"chunked": dict(implementation="chunked", chunk_rows=5, chunk_vocab=7), "naive": {"implementation": "naive"}}
        out = distill_loss(x["h_s"] @ x["w_s"].T, x["h_t"] @ x["w_t"].T, labels, vm, dataclasses.replace(cfg, **impl[path]),
                           student_hidden=x["h_s"], teacher_hidden=x["h_t"], **extra)
    out.total.backward()
    grads = {k: v.grad for k, v in x.items() if v.grad is not None}
    if parts is not None:
        grads.update({f"part:{n}": p.grad for n, p in parts.named_parameters()})
    return out, grads


def assert_same(got, ref, what):
    (out_g, grads_g), (out_r, grads_r) = got, ref
    assert out_g.total.item() == pytest.approx(out_r.total.item(), rel=1e-9, abs=1e-10), what
    assert out_g.parts == pytest.approx(out_r.parts, rel=1e-9, abs=1e-10), what
    assert out_g.counts == out_r.counts, what
    for k in grads_g.keys() | grads_r.keys():  # an input one path leaves untouched: a zero gradient
        g, r = grads_g.get(k), grads_r.get(k)
        g, r = (torch.zeros_like(r) if g is None else g), (torch.zeros_like(g) if r is None else r)
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9, msg=f"{what}: gradient of {k}")


@pytest.mark.parametrize("name", terms.names())
@pytest.mark.parametrize("path", ["chunked", "fused"])
def test_every_term_alone_equals_its_float64_oracle(name, path):
    cfg = LossConfig().only([name])
    ref = run("naive", cfg, seed=len(name))
    assert ref[0].parts[name] > 0 and ref[0].counts[name] > 0
    assert any(g.abs().sum() > 0 for g in ref[1].values())  # the term moves something
    if terms.spec(name).has_parts(cfg):  # and its learnable parts get a gradient
        assert any(k.startswith("part:") and g.abs().sum() > 0 for k, g in ref[1].items())
    assert_same(run(path, cfg, seed=len(name)), ref, f"{name} ({path})")


@pytest.mark.parametrize("path", ["chunked", "fused"])
def test_every_term_together_with_weights_equals_the_oracle(path):
    names = terms.names()
    weights = {terms.weight_key(n): 0.3 + 0.4 * i for i, n in enumerate(names)}
    cfg = dataclasses.replace(LossConfig().only(names), **weights)
    ref = run("naive", cfg)
    assert set(ref[0].parts) == set(names)
    assert ref[0].total.item() == pytest.approx(sum(cfg.weight(n) * ref[0].parts[n] for n in names), rel=1e-12)
    assert_same(run(path, cfg), ref, path)


def test_the_oracle_comparison_sees_a_wrong_gradient(monkeypatch):
    """Negative control: a term whose gradient is scaled in the chunked path only is caught."""
    from llavakd.distill import objective

    cfg = LossConfig().only(terms.names())
    ref = run("naive", cfg)
    original = objective.LogitSource.set_rows_grad
    monkeypatch.setattr(objective.LogitSource, "set_rows_grad", lambda self, idx, g: original(self, idx, 1.01 * g))
    with pytest.raises(AssertionError):
        assert_same(run("chunked", cfg), ref, "scaled")


def test_a_term_with_learnable_parts_refuses_to_run_without_them():
    with_parts = [n for n in terms.names() if terms.spec(n).has_parts(LossConfig())]
    assert with_parts
    x, labels, vm, am = make()
    cfg = LossConfig().only(with_parts[:1])
    with pytest.raises(DistillShapeError, match="learnable parts"):
        distill_loss(x["h_s"] @ x["w_s"].T, x["h_t"] @ x["w_t"].T, labels, vm, cfg, student_hidden=x["h_s"],
                     teacher_hidden=x["h_t"], attention_mask=am)


def test_the_planning_count_of_each_terms_parts_is_what_it_builds():
    dims = Dims(D_S, D_T, H_S, H_T)
    for name in terms.names():
        cfg = LossConfig().only([name])
        parts = build_parts(cfg, dims)
        built = sum(p.numel() for p in parts.parameters()) if parts is not None else 0
        assert terms.part_params(cfg, dims) == built, name


def test_parts_come_from_their_own_stream_and_leave_the_global_one_alone():
    cfg = LossConfig().only([n for n in terms.names() if terms.spec(n).has_parts(LossConfig())])
    torch.manual_seed(5)
    a = build_parts(cfg, Dims(D_S, D_T, 2, 4), seed=1)
    after = torch.rand(1)
    torch.manual_seed(5)
    b = build_parts(cfg, Dims(D_S, D_T, 2, 4), seed=1)
    assert torch.rand(1) == after  # building parts drew nothing from the global stream
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_parts(cfg, Dims(D_S, D_T, 2, 4), seed=2)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


# -- the registry ----------------------------------------------------------------------------------
def test_a_new_term_is_off_by_default_and_invisible_in_old_job_configs():
    """The paper's terms are on by default and every term registered since is off, its keys left out
    of a job's config file at their defaults (a finished job's config stays byte-identical)."""
    cfg = LossConfig()
    written = to_dict(cfg)
    for name, spec in terms.REGISTRY.items():
        assert getattr(cfg, name) == spec.default_on
        if spec.added:
            assert not spec.default_on and name not in written and terms.weight_key(name) not in written
            assert not [p.name for p in spec.params if p.name in written]
    assert set(terms.default_terms()) <= set(cfg.enabled())


def test_the_registry_refuses_a_second_term_of_one_name_or_a_taken_key():
    spec = terms.spec(terms.names()[-1])
    with pytest.raises(ValueError, match="registered twice"):
        register(spec)
    taken = terms.params()[0][1].name
    clash = TermSpec(name="zz_new", title="z", summary="z", teacher=True, reads="z", count="responses",
                     naive=lambda x, c: None, params=(Param(taken, float, 1.0, "z"),))
    with pytest.raises(ValueError, match=taken):
        register(clash)
    assert "zz_new" not in terms.REGISTRY


def test_a_terms_parameters_are_checked_when_the_config_is_read():
    from llavakd.config import stage_config_from_dict
    from llavakd.errors import ConfigError

    literal = [(s, p) for s, p in terms.params() if p.added and p.type is not float]
    assert literal
    spec, param = literal[0]
    raw = {"stage": "dft", "model": "m", "teacher": "t", "output_dir": "o", "data": {"json": "j", "images": "i"},
           "loss": {spec.name: True, param.name: "not-a-choice"}}
    with pytest.raises(ConfigError, match=f"loss.{param.name}"):
        stage_config_from_dict(raw, "job.yaml")


# -- docs/methods.md --------------------------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_the_terms_table_in_the_docs_is_generated_from_the_registry():
    from llavakd.terms.reference import block

    assert block() in (ROOT / "docs" / "methods.md").read_text(), \
        "docs/methods.md is stale: python -m llavakd.terms.reference docs/methods.md"


def _worked_example() -> str:
    text = (ROOT / "docs" / "methods.md").read_text()
    start = text.index("```python\n# llavakd/terms/cos.py")
    return text[start + len("```python\n"):text.index("```", start + 10)]


@pytest.mark.slow
def test_the_docs_worked_example_term_passes_the_generic_tests_unedited(tmp_path):
    """The cosine term of docs/methods.md ("Adding a term"), registered as its one line would, runs
    through this file's generic tests (oracle, weights, parts) with nothing edited; the negative
    control registers it with a naive form that differs and must fail them."""
    import subprocess
    import sys

    (tmp_path / "cos_term.py").write_text(_worked_example())
    broken = _worked_example().replace("naive=naive,", "naive=lambda x, c: tuple(v * 1.01 if i == 0 else v "
                                                       "for i, v in enumerate(naive(x, c))),")
    assert broken != _worked_example()
    (tmp_path / "cos_broken.py").write_text(broken)
    results = {}
    for module in ("cos_term", "cos_broken"):
        code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import llavakd.terms as T, {module}; "
                f"T.register({module}.SPEC); import pytest; "
                f"sys.exit(pytest.main(['-v', '-p', 'no:cacheprovider', {__file__!r}, '-k', 'cos or together']))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        results[module] = proc
    good, bad = results["cos_term"], results["cos_broken"]
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-2000:]
    assert "alone_equals_its_float64_oracle[chunked-cos] PASSED" in good.stdout, good.stdout[-3000:]
    assert "alone_equals_its_float64_oracle[fused-cos] PASSED" in good.stdout
    assert bad.returncode != 0 and "failed" in bad.stdout, bad.stdout[-3000:]
