"""fused_distill_loss (hidden states + heads) against the naive float64 oracle on the logits it implies."""

from __future__ import annotations

import pytest
import torch

from llavakd.distill import DIVERGENCES, DistillShapeError, LossConfig, distill_loss, fused_distill_loss


def make(B=3, L=14, V=41, d_s=6, d_t=9, seed=0, dtype=torch.float64):
    """Two image samples at different offsets and a text-only one; the heads are the only full-vocab tensors."""
    g = torch.Generator().manual_seed(seed)
    h_s = torch.randn(B, L, d_s, generator=g, dtype=dtype) * 1.5
    w_s = torch.randn(V, d_s, generator=g, dtype=dtype)
    h_t = torch.randn(B, L, d_t, generator=g, dtype=dtype) * 1.5
    w_t = torch.randn(V, d_t, generator=g, dtype=dtype)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[:, :6] = -100
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[0, 0:4] = True
    vm[1, 2:5] = True
    return h_s, w_s, h_t, w_t, labels, vm


def run(fused: bool, cfg, inputs):
    h_s, w_s, h_t, w_t, labels, vm = (x.clone() for x in inputs)
    h_s.requires_grad_(True)
    w_s.requires_grad_(True)
    if fused:
        out = fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm, cfg)
    else:
        out = distill_loss(h_s @ w_s.T, h_t @ w_t.T, labels, vm, LossConfig(**{**cfg.__dict__, "implementation": "naive"}))
    out.total.backward()
    return out, h_s.grad, w_s.grad


CASES = [(name, T, red) for name in DIVERGENCES for T in (1.0, 2.0) for red in ("batch", "per_sample")]


@pytest.mark.parametrize("name,T,reduction", CASES)
def test_fused_equals_the_naive_oracle_in_float64(name, T, reduction):
    cfg = LossConfig(divergence=name, temperature=T, rel_reduction=reduction, chunk_rows=5, chunk_vocab=7)
    inputs = make(seed=hash((name, T, reduction)) % 1000)
    ref, ref_h, ref_w = run(False, cfg, inputs)
    got, got_h, got_w = run(True, cfg, inputs)
    assert got.total.item() == pytest.approx(ref.total.item(), abs=1e-10, rel=1e-10)
    for key, value in ref.parts.items():
        assert got.parts[key] == pytest.approx(value, abs=1e-10, rel=1e-10), key
    assert got.counts == ref.counts and got.parts["rel"] > 0
    torch.testing.assert_close(got_h, ref_h, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_w, ref_w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gram", ["identity", "chunks"])
@pytest.mark.parametrize("source", ["logits", "features"])
@pytest.mark.parametrize("normalise", ["none", "l2"])
@pytest.mark.parametrize("reduction", ["batch", "per_sample"])
def test_rdist_variants_equal_the_naive_oracle_in_float64(gram, source, normalise, reduction):
    """L_rel through the Gram identity or vocabulary chunks, from logits or features, raw or
    normalised: value and gradients (hidden states, head, features) to 1e-10 / 1e-9."""
    inputs = make(seed=11)
    g = torch.Generator().manual_seed(2)
    f_s = torch.randn(3, 14, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    f_t = torch.randn(3, 14, 8, generator=g, dtype=torch.float64)
    cfg = LossConfig(rel_gram=gram, rel_source=source, rel_normalise=normalise, rel_reduction=reduction,
                     chunk_rows=5, chunk_vocab=7)
    got = {}
    for fused in (False, True):
        h_s, w_s, h_t, w_t, labels, vm = (x.clone() for x in inputs)
        h_s.requires_grad_(True)
        w_s.requires_grad_(True)
        fx = f_s.detach().clone().requires_grad_(True)
        if fused:
            out = fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm, cfg, student_features=fx, teacher_features=f_t)
        else:
            naive = LossConfig(**{**cfg.__dict__, "implementation": "naive"})
            out = distill_loss(h_s @ w_s.T, h_t @ w_t.T, labels, vm, naive, student_features=fx, teacher_features=f_t)
        out.total.backward()
        got[fused] = (out, h_s.grad, w_s.grad, fx.grad)
    (ref, rh, rw, rf), (out, oh, ow, of) = got[False], got[True]
    assert out.total.item() == pytest.approx(ref.total.item(), abs=1e-10, rel=1e-10)
    for key, value in ref.parts.items():
        assert out.parts[key] == pytest.approx(value, abs=1e-10, rel=1e-10), key
    torch.testing.assert_close(oh, rh, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ow, rw, rtol=1e-9, atol=1e-9)
    if source == "features":
        torch.testing.assert_close(of, rf, rtol=1e-9, atol=1e-9)


def test_a_frozen_heads_gram_is_kept_until_the_head_changes():
    from llavakd.distill.objective import head_gram

    w = torch.randn(50, 4, dtype=torch.float64)
    first = head_gram(w, torch.float64)
    assert head_gram(w, torch.float64) is first  # the teacher's: once per run
    torch.testing.assert_close(first, w.T @ w)
    w.mul_(2.0)  # changed in place: recomputed
    torch.testing.assert_close(head_gram(w, torch.float64), 4 * first)
    trained = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    assert head_gram(trained, torch.float64) is not head_gram(trained, torch.float64)  # the student's: every step


def test_fused_equals_the_chunked_path_in_float32_with_default_chunks():
    inputs = make(V=300, dtype=torch.float32, seed=5)
    ref, ref_h, ref_w = run(False, LossConfig(), tuple(x.double() if x.is_floating_point() else x for x in inputs))
    got, got_h, got_w = run(True, LossConfig(), inputs)
    assert got.total.item() == pytest.approx(ref.total.item(), rel=1e-5)
    torch.testing.assert_close(got_h.double(), ref_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_w.double(), ref_w, rtol=1e-4, atol=1e-5)


def test_a_frozen_head_gets_no_gradient_and_ce_alone_needs_no_teacher():
    h_s, w_s, _, _, labels, vm = make()
    h_s.requires_grad_(True)
    out = fused_distill_loss(h_s, w_s, None, None, labels, vm, LossConfig(res=False, vis=False, rel=False))
    out.total.backward()
    ref = torch.nn.functional.cross_entropy((h_s @ w_s.T)[:, :-1].reshape(-1, w_s.shape[0]), labels[:, 1:].reshape(-1),
                                            ignore_index=-100)
    assert out.total.item() == pytest.approx(ref.item(), abs=1e-12) and w_s.grad is None and h_s.grad is not None


def test_mismatched_shapes_name_both():
    h_s, w_s, h_t, w_t, labels, vm = make()
    with pytest.raises(DistillShapeError, match=r"\(41, 9\).*\(3, 14, 6\).*\(40, 6\)"):
        fused_distill_loss(h_s, w_s[:40], h_t, w_t, labels, vm)
    with pytest.raises(DistillShapeError, match=r"student hidden states \(3, 14, 6\) and head \(41, 5\)"):
        fused_distill_loss(h_s, w_s[:, :5], h_t, w_t, labels, vm)
    with pytest.raises(DistillShapeError, match="no teacher"):
        fused_distill_loss(h_s, w_s, None, None, labels, vm)


def test_gradients_scale_with_the_upstream_gradient():
    inputs = make(seed=3)
    _, h1, w1 = run(True, LossConfig(), inputs)
    h_s, w_s, h_t, w_t, labels, vm = (x.clone() for x in inputs)
    h_s.requires_grad_(True)
    w_s.requires_grad_(True)
    (2.5 * fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm).total).backward()
    torch.testing.assert_close(h_s.grad, 2.5 * h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w_s.grad, 2.5 * w1, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("implementation", ["fused", "chunked", "naive"])
def test_a_share_scales_the_configured_weights_without_rewriting_them(implementation):
    """The trainer passes a micro-batch's share of its step as ``scale``: the loss and gradients are
    those of weights x share (float64), and the configured weights stay as they were."""
    inputs = make(seed=7)
    cfg = LossConfig(ce_weight=1.0, res_weight=0.5, vis_weight=2.0, rel_weight=0.25, implementation=implementation,
                     chunk_rows=5)
    scale = {"ce": 0.3, "res": 0.3, "vis": 1.7, "rel": 0.6}
    scaled = LossConfig(**{**cfg.__dict__, **{f"{k}_weight": getattr(cfg, f"{k}_weight") * v for k, v in scale.items()}})

    def go(c, s):
        h_s, w_s, h_t, w_t, labels, vm = (x.clone() for x in inputs)
        h_s.requires_grad_(True)
        w_s.requires_grad_(True)
        if implementation == "fused":
            out = fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm, c, scale=s)
        else:
            out = distill_loss(h_s @ w_s.T, h_t @ w_t.T, labels, vm, c, scale=s)
        out.total.backward()
        return out.total.item(), h_s.grad

    want, want_h = go(scaled, None)
    got, got_h = go(cfg, scale)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(got_h, want_h, rtol=1e-10, atol=1e-12)
    assert (cfg.ce_weight, cfg.res_weight, cfg.vis_weight, cfg.rel_weight) == (1.0, 0.5, 2.0, 0.25)
    assert go(cfg, None)[0] != pytest.approx(got)  # the share matters (negative control)


@pytest.mark.parametrize("name", ["forward_kl", "jsd"])
def test_loss_and_gradients_do_not_depend_on_the_rows_per_chunk(name):
    """float64: one row per chunk, a few, and every row in one chunk (the CUDA default's regime) give
    the same loss, parts and gradients to 1e-10; a wrong accumulation across chunks (the first
    chunk's head gradient dropped, say) fails here."""
    inputs = make(seed=11)
    ref = None
    for rows in (1, 7, 10_000):
        cfg = LossConfig(divergence=name, chunk_rows=rows)
        out, gh, gw = run(True, cfg, inputs)
        got = (out.total.detach(), torch.tensor(list(out.parts.values())), gh, gw)
        if ref is None:
            ref = got
            continue
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_rows_per_chunk_follow_the_device():
    from llavakd.distill.objective import BLOCK_TEMPORARIES, CUDA_CHUNK_BYTES, rows_per_chunk

    V = 151_936
    assert rows_per_chunk(V, torch.device("cpu")) == 55  # ~32 MB of fp32 per temporary (CPU-tuned)
    cuda = rows_per_chunk(V, torch.device("cuda"))
    assert 1000 <= cuda <= 5000  # a few thousand rows, within the budget
    assert cuda * V * 4 * BLOCK_TEMPORARIES <= CUDA_CHUNK_BYTES
    assert rows_per_chunk(V, torch.device("cuda"), configured=64) == 64


def test_a_trained_heads_gram_is_computed_once_per_optimizer_step(monkeypatch):
    """The trainer passes its step: the micro-batches of one step share the student's W^T W; a new
    step, or an in-place change, computes it again; without a step every call does."""
    import llavakd.distill.objective as objective

    calls = []
    real_zeros = torch.zeros

    def counting_zeros(*shape, **kw):
        if len(shape) == 2 and shape == (6, 6):
            calls.append(1)
        return real_zeros(*shape, **kw)

    inputs = make(seed=3)
    w = inputs[1].clone().requires_grad_(True)
    monkeypatch.setattr(objective.torch, "zeros", counting_zeros)
    grams = [objective.head_gram(w, torch.float64, step=5) for _ in range(3)]
    assert len(calls) == 1 and all(g is grams[0] for g in grams)
    objective.head_gram(w, torch.float64, step=6)
    assert len(calls) == 2
    with torch.no_grad():
        w.mul_(2.0)
    torch.testing.assert_close(objective.head_gram(w, torch.float64, step=6), 4 * grams[0])
    assert len(calls) == 3
    objective.head_gram(w, torch.float64)
    objective.head_gram(w, torch.float64)
    assert len(calls) == 5
    # and through the objective: four micro-batches of one step, one W^T W for the student
    calls.clear()
    h_s, w_s, h_t, w_t, labels, vm = inputs
    w_t = w_t.clone()
    objective.head_gram(w_t, torch.float64)  # the teacher's, once per run
    calls.clear()
    w_s = w_s.clone().requires_grad_(True)
    for _ in range(4):
        fused_distill_loss(h_s, w_s, h_t, w_t, labels, vm, LossConfig(), step=9).total.backward()
    assert len(calls) == 1
