"""The new terms against their papers' own formulas, written here independently of llavakd.terms:
BiLD as its released loss computes it, the prompt positions BiLD's trainer distils, LLaVADI's
hidden-state MSE. (tests/test_terms.py checks every term's engines against its naive form.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llavakd.config import LossConfig
from llavakd.distill import distill_loss
from llavakd.terms.base import positions


def released_bild(logits_s, logits_t, top_k=8, temperature=3.0, student_led=False):
    """BiLD's per-position loss as fpcsong/BiLD distil_losses/BILD.py computes it ([B, L, V] in, [B, L] out)."""
    if not student_led:
        sel_t, pos = torch.topk(logits_t, k=top_k, dim=-1)
        sel_s = torch.gather(logits_s, 2, pos)
    else:
        sel_s, pos = torch.topk(logits_s, k=top_k, dim=-1)
        sel_t = torch.gather(logits_t, 2, pos)
    i, j = torch.triu_indices(top_k, top_k, offset=1)
    dt, ds = (sel_t / temperature)[..., i] - (sel_t / temperature)[..., j], \
        (sel_s / temperature)[..., i] - (sel_s / temperature)[..., j]
    return F.kl_div(F.log_softmax(ds, -1), F.softmax(dt, -1), reduction="none").sum(-1)


def _batch(seed=0, B=2, L=12, V=37):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
    t = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[:, :7] = -100
    labels[1, -2:] = -100
    vm = torch.zeros(B, L, dtype=torch.bool)
    vm[:, 1:4] = True
    am = torch.ones(B, L, dtype=torch.long)
    am[1, -2:] = 0
    return s, t, labels, vm, am


@pytest.mark.parametrize("k,T,directions", [(8, 3.0, "both"), (4, 1.0, "teacher"), (5, 2.0, "student")])
def test_bild_is_the_released_loss_at_the_response_positions(k, T, directions):
    s, t, labels, vm, am = _batch()
    cfg = dataclasses.replace(LossConfig().only(["bild"]), bild_top_k=k, bild_temperature=T,
                              bild_directions=directions, implementation="chunked", chunk_rows=3)
    out = distill_loss(s, t, labels, vm, cfg, attention_mask=am)
    per = (released_bild(s, t, k, T, False) if directions != "student" else 0) + \
          (released_bild(s, t, k, T, True) if directions != "teacher" else 0)
    rows = torch.zeros_like(labels, dtype=torch.bool)
    rows[:, :-1] = labels[:, 1:] != -100  # the positions that predict an answer token
    assert out.parts["bild"] == pytest.approx(float(per[rows].mean()), rel=1e-10)
    assert out.counts["bild"] == int(rows.sum())


def test_prompt_positions_are_the_attended_text_positions_that_predict_no_answer():
    s, t, labels, vm, am = _batch()
    p = positions("prompt", labels, vm, am)
    # sample 0: 12 positions, visual 1-3, answers predicted from 6..10, the last one predicts nothing
    assert p[0].nonzero().flatten().tolist() == [0, 4, 5]
    # sample 1: the last two positions are padding, so position 9 (predicting padding) is not prompt either
    assert p[1].nonzero().flatten().tolist() == [0, 4, 5]
    cfg = dataclasses.replace(LossConfig().only(["soft"]), soft_positions="prompt", implementation="chunked")
    out = distill_loss(s, t, labels, vm, cfg, attention_mask=am)
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)
    assert out.parts["soft"] == pytest.approx(float(kl[p].mean()), rel=1e-10) and out.counts["soft"] == 6


def test_feat_is_llavadis_mse_on_the_answer_tokens():
    s, t, labels, vm, am = _batch()
    g = torch.Generator().manual_seed(1)
    h_s = torch.randn(2, 12, 5, generator=g, dtype=torch.float64)
    h_t = torch.randn(2, 12, 7, generator=g, dtype=torch.float64)
    proj = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 7)).double()
    cfg = dataclasses.replace(LossConfig().only(["feat"]), implementation="chunked")
    out = distill_loss(s, t, labels, vm, cfg, student_hidden=h_s, teacher_hidden=h_t, attention_mask=am,
                       parts={"feat": proj})
    mask = (labels != -100) & am.bool()  # LLaVADI: unshifted labels, padding removed
    with torch.no_grad():
        want = float(F.mse_loss(proj(h_s[mask]), h_t[mask]))
    assert out.parts["feat"] == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("queries,keys,heads,distance", [
    ("answers", "answers", "mean", "mse"), ("after_image", "visual", "mean", "kl"), ("answers", "visual", "mix", "mse"),
    ("answers", "answers", "mean", "kl")])
def test_attention_term_variants_equal_their_oracle_and_count_causal_pairs(queries, keys, heads, distance):
    """attn's parameters beyond Align-KD's defaults (LLaVADI's answer masks, the first upload's KL over
    head-averaged rows): the selected-rows computation equals the full-map oracle, values and
    gradients, and the count is the causal (query, key) pairs (or the queries that have a key)."""
    from llavakd.distill.parts import build_parts
    from llavakd.terms import Dims
    from llavakd.terms.attn import count

    s, t, labels, vm, am = _batch()
    g = torch.Generator().manual_seed(2)
    qk = [torch.randn(2, h, 12, 4, generator=g, dtype=torch.float64) for h in (2, 2, 3, 3)]
    cfg = dataclasses.replace(LossConfig().only(["attn"]), attn_queries=queries, attn_keys=keys, attn_heads=heads,
                              attn_distance=distance)
    parts = build_parts(cfg, Dims(5, 7, 2, 3))
    parts = parts.double() if parts is not None else None
    outs = {}
    for impl in ("naive", "chunked"):
        q_s, k_s = qk[0].clone().requires_grad_(True), qk[1].clone().requires_grad_(True)
        out = distill_loss(s, t, labels, vm, dataclasses.replace(cfg, implementation=impl), attention_mask=am,
                           student_attention=(q_s, k_s), teacher_attention=(qk[2], qk[3]), parts=parts)
        out.total.backward()
        outs[impl] = (out, q_s.grad, k_s.grad)
    (a, ga, ka), (b, gb, kb) = outs["naive"], outs["chunked"]
    assert b.parts["attn"] == pytest.approx(a.parts["attn"], rel=1e-10) and b.parts["attn"] > 0
    torch.testing.assert_close(gb, ga)
    torch.testing.assert_close(kb, ka)
    qmask = (labels != -100) & am.bool() if queries == "answers" else None
    if queries == "answers" and keys == "answers":
        per = [int(qmask[i].sum()) for i in range(2)]  # answers attend to themselves and earlier answers
        want = sum(n * (n + 1) // 2 for n in per) if distance == "mse" else sum(per)
        assert b.counts["attn"] == want == count(cfg, labels, vm, am)


def test_a_kl_between_mixed_attention_maps_is_refused_with_the_config():
    cfg = dataclasses.replace(LossConfig().only(["attn"]), attn_distance="kl", attn_heads="mix")
    assert any("attn_heads: mean" in p for p in cfg.validate())
    assert not dataclasses.replace(cfg, attn_heads="mean").validate()


def _full_attention(q, k, attended):
    """Every row's attention probabilities [heads, L, L] of one sample, written out: causal + padding."""
    L = q.shape[1]
    allowed = torch.tril(torch.ones(L, L, dtype=torch.bool)) & attended[None, :]
    return torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf")), dim=-1)


def _align_kd_inputs():
    s, t, labels, vm, am = _batch()
    g = torch.Generator().manual_seed(3)
    qk = [torch.randn(2, h, 12, 4, generator=g, dtype=torch.float64) for h in (2, 2, 3, 3)]
    f_s = torch.randn(2, 12, 5, generator=g, dtype=torch.float64)
    f_t = torch.randn(2, 12, 7, generator=g, dtype=torch.float64)
    return s, t, labels, vm, am, qk, f_s, f_t


def test_attn_is_align_kds_mse_through_the_head_mixer_from_text_to_vision():
    """Align-KD's attention term written out here: full causal maps, the teacher's 3 heads mixed into
    the student's 2 by the learnable map, MSE over the (text after the image) x (visual) entries."""
    s, t, labels, vm, am, qk, _, _ = _align_kd_inputs()
    mixer = torch.nn.Linear(3, 2).double()
    cfg = dataclasses.replace(LossConfig().only(["attn"]), implementation="chunked")
    out = distill_loss(s, t, labels, vm, cfg, attention_mask=am, student_attention=(qk[0], qk[1]),
                       teacher_attention=(qk[2], qk[3]), parts={"attn": mixer})
    total, pairs = 0.0, 0
    with torch.no_grad():
        for b in range(2):
            ps = _full_attention(qk[0][b], qk[1][b], am[b].bool())
            pt = _full_attention(qk[2][b], qk[3][b], am[b].bool())
            pt = torch.einsum("sh,hqk->sqk", mixer.weight, pt) + mixer.bias[:, None, None]
            after = (torch.arange(12) > 3) & am[b].bool()  # the image is at 1-3: text after it
            rows, keys = after.nonzero().flatten(), vm[b].nonzero().flatten()
            diff = (ps[:, rows][:, :, keys] - pt[:, rows][:, :, keys]) ** 2
            total += float(diff.mean(0).sum())
            pairs += rows.numel() * keys.numel()
    assert out.counts["attn"] == pairs
    assert out.parts["attn"] == pytest.approx(total / pairs, rel=1e-10)


def test_vtok_is_align_kds_mapped_visual_tokens_over_all_and_the_favoured():
    """Align-KD's visual-token term written out here: the teacher's tokens through the map, MSE over
    every visual token plus MSE over the k the teacher's head- and query-averaged attention favours."""
    s, t, labels, vm, am, qk, f_s, f_t = _align_kd_inputs()
    mapper = torch.nn.Linear(7, 5).double()
    cfg = dataclasses.replace(LossConfig().only(["vtok"]), vtok_top_k=2, implementation="chunked")
    out = distill_loss(s, t, labels, vm, cfg, attention_mask=am, student_features=f_s, teacher_features=f_t,
                       student_attention=(qk[0], qk[1]), teacher_attention=(qk[2], qk[3]), parts={"vtok": mapper})
    total = 0.0
    with torch.no_grad():
        for b in range(2):
            keys = vm[b].nonzero().flatten()
            pt = _full_attention(qk[2][b], qk[3][b], am[b].bool())
            after = ((torch.arange(12) > 3) & am[b].bool()).nonzero().flatten()
            top = keys[pt[:, after][:, :, keys].mean(dim=(0, 1)).topk(2).indices]
            for pos in (keys, top):
                total += float(F.mse_loss(mapper(f_t[b, pos]), f_s[b, pos]))
    assert out.counts["vtok"] == 2
    assert out.parts["vtok"] == pytest.approx(total / 2, rel=1e-10)
