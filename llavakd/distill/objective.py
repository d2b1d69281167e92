"""LLaVA-KD's objective: CE + L_res + L_vis + L_rel (docs/method.md, "Losses"), chunked by default.

    from llavakd.distill import LossConfig, distill_loss
    out = distill_loss(student_logits, teacher_logits, labels, visual_mask, LossConfig())
    out.total.backward();  out.parts  # {"ce": ..., "res": ..., "vis": ..., "rel": ...}

Shapes: logits [B, L, V] (teacher without grad), ``labels`` [B, L] with IGNORE_INDEX (-100) for unsupervised
tokens, ``visual_mask`` [B, L] bool marking each sample's own visual-token positions (text-only
samples have none and contribute no visual term).

* CE      shifted next-token cross-entropy, mean over supervised positions.
* L_res   D(teacher || student) at every position whose *shifted* label is supervised, mean over them.
* L_vis   the same divergence at the visual positions (unshifted), mean over all visual positions.
* L_rel   1 - cos(vec(Z_t Z_t^T), vec(Z_s Z_s^T)), Z = a sample's visual-position logits [n, V].
          ``rel_reduction="batch"`` (default, upstream) concatenates every image sample's Gram
          matrix into one vector; ``"per_sample"`` averages the per-sample cosines.
          ``rel_normalise="l2"`` unit-normalises the rows of Z first (cosine self-similarity, taken
          on the Gram matrix: R_ij / (|z_i| |z_j|)); ``rel_source="features"`` takes Z from the
          projected visual features the LLM receives (``student_features``/``teacher_features``
          [B, L, d], by plain autograd: nothing vocabulary-sized).

The chunked implementation computes every loss and its gradient in one pass over row chunks
(CE/L_res/L_vis) and vocabulary chunks (the Gram matrices), so no more than one chunk of
full-vocabulary fp32 intermediates exists at a time; ``backward`` only scales the stored
gradient. ``implementation="naive"`` is the straightforward autograd version (the oracle).

Chunk sizes come from the device (``rows_per_chunk``): on the CPU ~32 MB of fp32 per
full-vocabulary temporary (55 rows at V = 151,936; tuned for this memory, benchmarks/distill_memory.py),
on CUDA a budget of ``CUDA_CHUNK_BYTES`` for all of a chunk's temporaries together (~2,300 rows
at that vocabulary), so a micro-batch of a few thousand supervised and visual positions is one to
a few chunks and the head gradient is read and written that many times, not hundreds.
``chunk_rows`` in the loss config overrides both. Inside the chunk loop nothing waits for the
device: the rows to visit and the counts are read once before it, the CE gradient is a scatter,
and the parts stay device tensors (``LossOutput.part_tensors``; ``parts`` reads them).
"""

from __future__ import annotations

import dataclasses

import torch

from llavakd.config import LossConfig
from llavakd.distill.common import (
    LossOutput,
    check_features,
    check_inputs,
    relation_value,
    res_divergence,
    resolve_config,
    term_weights,
    vis_divergence,
    with_feature_relation,
)
from llavakd.distill.naive import naive_distill_loss
from llavakd.labels import IGNORE_INDEX
from llavakd.memory import CUDA_CHUNK_BYTES  # CUDA: every [chunk x V] temporary of one chunk together

DEFAULT_CHUNK_ELEMENTS = 1 << 23  # CPU: ~32 MB of fp32 per full-vocabulary temporary
BLOCK_TEMPORARIES = 6  # [chunk x V] fp32 blocks alive at once: student, teacher, gradient, three in a divergence


def rows_per_chunk(vocab: int, device: torch.device, configured: int | None = None) -> int:
    """Rows of the [positions x vocabulary] blocks handled at once: ``configured`` when set, else
    from the device's budget (module docstring)."""
    if configured:
        return configured
    if torch.device(device).type == "cuda":
        return max(1, CUDA_CHUNK_BYTES // (vocab * 4 * BLOCK_TEMPORARIES))
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab)


def accumulate_product(acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc + a @ b with ``acc`` in float32 (or float64). Low-precision inputs on CUDA multiply in
    their own dtype with float32 accumulation inside the GEMM (``out_dtype``) and are added in one
    pass; elsewhere the inputs are cast up. ``acc`` None: the product becomes the accumulator
    (the first chunk writes instead of adding onto zeros)."""
    dtype = acc.dtype if acc is not None else (torch.float64 if a.dtype == torch.float64 else torch.float32)
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and a.dtype == b.dtype:
        try:
            prod = torch.mm(a, b, out_dtype=dtype)
        except (RuntimeError, TypeError):  # a torch without mm(out_dtype): the product in a's dtype
            prod = (a @ b).to(dtype)
        return prod if acc is None else acc.add_(prod)
    if acc is None:
        return a.to(dtype) @ b.to(dtype)
    return acc.addmm_(a.to(dtype), b.to(dtype))


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    visual_mask: torch.Tensor,
    cfg: LossConfig | None = None,
    *,
    teacher_labels: torch.Tensor | None = None,
    teacher_visual_mask: torch.Tensor | None = None,
    student_features: torch.Tensor | None = None,
    teacher_features: torch.Tensor | None = None,
    scale: dict[str, float] | None = None,
    checked: bool = False,
) -> LossOutput:
    """The objective from logits; ``implementation`` "naive" is the oracle, "chunked" and "fused"
    (whose hidden-state form is ``fused_distill_loss``) both run the chunked path here. ``scale``:
    per-term factors on the configured weights (a micro-batch's share of its step; common.term_weights).
    ``checked``: ``cfg`` was validated already (once per training job)."""
    cfg = resolve_config(cfg, teacher is not None, "logits", checked)
    w = term_weights(cfg, scale)
    check_inputs(student, teacher, labels, visual_mask, teacher_labels, teacher_visual_mask)
    check_features(student_features, teacher_features, labels, cfg)
    if cfg.implementation == "naive":
        return naive_distill_loss(student, teacher, labels, visual_mask, cfg, student_features, teacher_features,
                                  scale)
    if cfg.rel and cfg.rel_source == "features":
        out = _chunked(student, teacher, labels, visual_mask, without_rel(cfg), w)
        return with_feature_relation(out, student_features, teacher_features, visual_mask, cfg, w["rel"])
    return _chunked(student, teacher, labels, visual_mask, cfg, w)


def without_rel(cfg: LossConfig) -> LossConfig:
    """The same objective without L_rel (added from the features instead)."""
    return dataclasses.replace(cfg, rel=False)


# ----------------------------------------------------------------------------- chunked path


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows_plan(labels, visual_mask, cfg):
    """Dense per-row masks over the flattened [B*L] positions."""
    B, L = labels.shape
    res_rows = torch.zeros(B, L, dtype=torch.bool, device=labels.device)
    res_rows[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    target = torch.full((B, L), IGNORE_INDEX, dtype=torch.long, device=labels.device)
    target[:, :-1] = labels[:, 1:]
    return res_rows.flatten(), visual_mask.flatten(), target.flatten()


def _sample_visual_rows(visual_mask) -> list[torch.Tensor]:
    """Flat row indices of each image sample's visual positions (text-only samples skipped)."""
    B, L = visual_mask.shape
    out = []
    for b in range(B):
        idx = visual_mask[b].nonzero().flatten()
        if idx.numel():
            out.append(idx + b * L)
    return out


class LogitSource:
    """Logits given in full, [B*L, V]: rows and vocabulary blocks are views; gradients land in one buffer."""

    def __init__(self, logits: torch.Tensor, need_grad: bool):
        B, L, V = logits.shape
        self.vocab = V
        self.flat = logits.detach().reshape(B * L, V)
        self.grad_full = torch.zeros_like(logits, memory_format=torch.contiguous_format) if need_grad else None
        self.grad = self.grad_full.view(B * L, V) if need_grad else None

    def rows(self, idx, cdt):
        return self.flat.index_select(0, idx).to(cdt)

    def block(self, idx, c0, c1, cdt):
        return self.flat[idx, c0:c1].to(cdt)

    def set_rows_grad(self, idx, g):
        self.grad.index_copy_(0, idx, g.to(self.grad.dtype))

    def add_block_grad(self, idx, c0, c1, g):
        self.grad[idx, c0:c1] += g.to(self.grad.dtype)

    def gram(self, idx, step, cdt, method):
        return _gram_chunks(self, idx, step, cdt)

    def add_gram_grad(self, idx, sym, step, cdt, method):
        _gram_grad_chunks(self, idx, sym, step, cdt)


class LinearSource:
    """Logits as hidden states times a head, [N, d] @ [V, d]^T, recomputed chunk by chunk and never held
    whole; a gradient chunk dZ becomes dZ @ W for the hidden states and dZ^T @ H for the head."""

    def __init__(self, hidden: torch.Tensor, head: torch.Tensor, need_grad: bool, need_head_grad: bool = True,
                 step: int | None = None):
        self.vocab = head.shape[0]
        self.step = step  # the optimizer step this call belongs to (head_gram)
        # hidden states in the head's dtype (bf16 activations against fp32 master weights under
        # autocast): copying [tokens x d] is cheap, copying the [V x d] head per chunk would not be
        self.h = hidden.detach().reshape(-1, hidden.shape[-1]).to(head.dtype)
        self.w = head.detach()
        self.head = head  # the caller's tensor: a frozen head keeps its W^T W on it (head_gram)
        self._wtw = None
        acc = _compute_dtype(hidden)
        self.grad_h = torch.zeros(self.h.shape, dtype=acc, device=self.h.device) if need_grad else None
        # the head's gradient in float32 (float64 for float64 inputs): allocated by the first chunk
        # that writes it, then one accumulation per row chunk (accumulate_product)
        self.need_grad_w = need_grad and need_head_grad
        self.grad_w = None

    def rows(self, idx, cdt):
        return logits_in(self.h.index_select(0, idx), self.w, cdt)

    def block(self, idx, c0, c1, cdt):
        return logits_in(self.h.index_select(0, idx), self.w[c0:c1], cdt)

    def _backward(self, idx, w, g):
        h = self.h.index_select(0, idx)
        self.grad_h.index_add_(0, idx, (g.to(w.dtype) @ w).to(self.grad_h.dtype))
        return h

    def _head_grad(self):
        if self.grad_w is None:
            self.grad_w = torch.zeros(self.w.shape, dtype=self.grad_h.dtype, device=self.w.device)
        return self.grad_w

    def set_rows_grad(self, idx, g):
        h = self._backward(idx, self.w, g)
        if self.need_grad_w:
            lo = self.w.dtype if self.w.dtype in (torch.bfloat16, torch.float16) else self.grad_h.dtype
            self.grad_w = accumulate_product(self.grad_w, g.T.to(lo), h.to(lo))

    def add_block_grad(self, idx, c0, c1, g):
        h = self._backward(idx, self.w[c0:c1], g)
        if self.need_grad_w:
            gw = self._head_grad()
            gw[c0:c1].addmm_(g.T.to(gw.dtype), h.to(gw.dtype))

    def head_grad(self):
        """The head's gradient (zeros when no chunk touched it), or None when it is not wanted."""
        return self._head_grad() if self.need_grad_w else None

    def head_gram(self, cdt):
        if self._wtw is None:
            self._wtw = head_gram(self.head, cdt, self.step)
        return self._wtw

    # The Gram identity: Z Z^T = H (W^T W) H^T, and for dL/dZ = S Z (S symmetric, n x n):
    # dL/dH = S H (W^T W), dL/dW = W (H^T S H). Nothing is [n x V]; W^T W is d x d.
    def gram(self, idx, step, cdt, method):
        if method != "identity":
            return _gram_chunks(self, idx, step, cdt)
        h = self.h.index_select(0, idx).to(cdt)
        return (h @ self.head_gram(cdt)) @ h.T

    def add_gram_grad(self, idx, sym, step, cdt, method):
        if method != "identity":
            return _gram_grad_chunks(self, idx, sym, step, cdt)
        h = self.h.index_select(0, idx).to(cdt)
        sh = sym @ h
        self.grad_h.index_add_(0, idx, (sh @ self.head_gram(cdt)).to(self.grad_h.dtype))
        if self.need_grad_w:
            gw = self._head_grad()
            m = (h.T @ sh).to(gw.dtype)
            rows = max(1, DEFAULT_CHUNK_ELEMENTS // self.w.shape[1])
            for c in range(0, self.vocab, rows):
                gw[c:c + rows].addmm_(self.w[c:c + rows].to(gw.dtype), m)


def logits_in(h: torch.Tensor, w: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """h @ w^T in ``cdt``: low-precision inputs on CUDA multiply in their dtype with float32
    accumulation and output (no rounding of the logits to bf16); elsewhere the product is taken
    in the inputs' dtype and cast."""
    if h.is_cuda and h.dtype in (torch.bfloat16, torch.float16) and h.dtype == w.dtype and cdt == torch.float32:
        try:
            return torch.mm(h, w.T, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without mm(out_dtype)
            pass
    return (h @ w.T).to(cdt)


def head_gram(w: torch.Tensor, cdt: torch.dtype, step: int | None = None) -> torch.Tensor:
    """W^T W (d x d) accumulated over vocabulary chunks in ``cdt`` (at least float32), kept on the
    tensor until it changes in place. A frozen head's is computed once per run (the teacher's); a
    trained head's once per optimizer ``step`` (the student's: the trainer passes its step, so the
    micro-batches of one step share it; the step is part of the key because an optimizer may write
    the weights through ``.data``, which no version counter sees), or at every call without one."""
    key = (w._version, cdt, w.device, None if not w.requires_grad else step)
    cached = getattr(w, "_llavakd_head_gram", None)
    reusable = not w.requires_grad or step is not None
    if reusable and cached is not None and cached[0] == key:
        return cached[1]
    g = torch.zeros(w.shape[1], w.shape[1], dtype=cdt, device=w.device)
    rows = max(1, DEFAULT_CHUNK_ELEMENTS // w.shape[1])
    for c in range(0, w.shape[0], rows):
        block = w.detach()[c:c + rows].to(cdt)
        g.addmm_(block.T, block)
    if reusable:
        w._llavakd_head_gram = (key, g)
    return g


def _objective(src_s, src_t, labels, visual_mask, cfg, weights, need_grad, cdt, dev):
    """Every term and (through the sources) its gradient; returns (total, parts, counts).
    ``weights``: each term's weight in this call (common.term_weights)."""
    V = src_s.vocab
    res_rows, vis_rows, target = _rows_plan(labels, visual_mask, cfg)
    use_res, use_vis = cfg.res, cfg.vis and bool(vis_rows.any())
    n_ce = n_res = int(res_rows.sum())
    n_vis = int(vis_rows.sum())
    counts = {"ce": n_ce, "res": n_res, "vis": n_vis}
    sums = {k: torch.zeros((), dtype=torch.float64, device=dev) for k in ("ce", "res", "vis")}
    T = cfg.temperature
    res_div, vis_div = res_divergence(cfg), vis_divergence(cfg)
    same_div = res_div == vis_div

    active = torch.zeros_like(res_rows)
    if cfg.ce or use_res:
        active |= res_rows
    if use_vis:
        active |= vis_rows
    rows = active.nonzero().flatten()
    step = rows_per_chunk(V, dev, cfg.chunk_rows)
    w_ce = weights["ce"] / max(n_ce, 1)
    w_res = weights["res"] / max(n_res, 1)
    w_vis = weights["vis"] / max(n_vis, 1)
    for start in range(0, rows.numel(), step):
        idx = rows[start:start + step]
        s = src_s.rows(idx, cdt)
        g = torch.zeros_like(s) if need_grad else None
        m_res = res_rows[idx].to(cdt)
        m_vis = vis_rows[idx].to(cdt)
        if cfg.ce:
            y = target[idx]
            ok = y != IGNORE_INDEX
            logp = torch.log_softmax(s, -1)
            ce_rows = -logp.gather(1, y.clamp_min(0)[:, None]).squeeze(1) * ok
            sums["ce"] += ce_rows.sum().double()
            if need_grad:
                d = logp.exp_()
                d.scatter_add_(1, y.clamp_min(0)[:, None], -ok.to(cdt)[:, None])  # p - onehot(y), no host sync
                g.addcmul_(d, (w_ce * ok.to(cdt))[:, None])
            del logp
        if use_res or use_vis:
            t = src_t.rows(idx, cdt)
            st, tt = (s / T, t / T) if T != 1.0 else (s, t)
            jobs = []
            if same_div:
                coef = (w_res * m_res if use_res else 0) + (w_vis * m_vis if use_vis else 0)
                jobs.append((res_div, coef, [("res", m_res)] * use_res + [("vis", m_vis)] * use_vis))
            else:
                if use_res:
                    jobs.append((res_div, w_res * m_res, [("res", m_res)]))
                if use_vis:
                    jobs.append((vis_div, w_vis * m_vis, [("vis", m_vis)]))
            for div, coef, logs in jobs:
                loss_rows, dg = div(st, tt, need_grad)
                for key, mask in logs:
                    sums[key] += (loss_rows * mask).sum().double() * T * T
                if need_grad:
                    g.addcmul_(dg, (coef * T)[:, None])  # d/ds of T^2 * D(s/T) = T * D'(s/T)
                del dg
            del t, st, tt
        if need_grad:
            src_s.set_rows_grad(idx, g)

    parts = {}
    total = torch.zeros((), dtype=torch.float64, device=dev)
    if cfg.ce:
        parts["ce"] = sums["ce"] / max(n_ce, 1)
        total += weights["ce"] * parts["ce"]
    if cfg.res:
        parts["res"] = sums["res"] / max(n_res, 1)
        total += weights["res"] * parts["res"]
    if cfg.vis:
        parts["vis"] = sums["vis"] / max(n_vis, 1)
        total += weights["vis"] * parts["vis"]
    if cfg.rel:
        rel, n_img = _gram_cosine(src_s, src_t, visual_mask, cfg, weights["rel"], need_grad, cdt)
        parts["rel"] = rel
        counts["rel"] = n_img
        total += weights["rel"] * rel
    return total, parts, counts


class _ChunkedObjective(torch.autograd.Function):
    """The chunked objective on full logits (``implementation: chunked``); its hidden-state form,
    the fused one, is ``llavakd.distill.fused._FusedLinearObjective``."""

    @staticmethod
    def forward(ctx, student, teacher, labels, visual_mask, cfg, weights, sink):
        need_grad = student.requires_grad
        src_s = LogitSource(student, need_grad)
        src_t = LogitSource(teacher, False) if teacher is not None else None
        total, parts, counts = _objective(src_s, src_t, labels, visual_mask, cfg, weights, need_grad,
                                          _compute_dtype(student), student.device)
        sink["parts"] = {k: v.detach() for k, v in parts.items()}
        sink["counts"] = counts
        # Kept as a plain attribute, not save_for_backward: backward hands autograd the only
        # reference, so the buffer becomes student.grad without a second full-size copy.
        ctx.grad = src_s.grad_full
        return total.to(student.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError(
                "distill_loss (chunked): backward can run once per forward (its gradient buffer is "
                "handed to autograd); use implementation='naive' for retain_graph / double backward"
            )
        if grad_out.item() != 1.0:
            grad.mul_(grad_out.to(grad.dtype))
        return grad, None, None, None, None, None, None


def _gram_chunks(src, idx, step, cdt):
    """Z Z^T for Z = the source's logits at rows ``idx``, accumulated over vocabulary chunks in the
    compute dtype (at least float32)."""
    R = torch.zeros(idx.numel(), idx.numel(), dtype=cdt, device=idx.device)
    for c in range(0, src.vocab, step):
        Z = src.block(idx, c, c + step, cdt)
        R.addmm_(Z, Z.T)
    return R


def _gram_grad_chunks(src, idx, sym, step, cdt):
    """dL/dZ = sym Z, chunk by chunk of the vocabulary."""
    for c in range(0, src.vocab, step):
        src.add_block_grad(idx, c, c + step, sym @ src.block(idx, c, c + step, cdt))


def _gram_cosine(src_s, src_t, visual_mask, cfg, weight, need_grad, cdt):
    """L_rel and (through ``src_s``) its gradient; returns (value, number of image samples)."""
    samples = _sample_visual_rows(visual_mask)
    if not samples:
        return torch.zeros((), dtype=torch.float64, device=visual_mask.device), 0
    n_max = max(i.numel() for i in samples)
    step = cfg.chunk_vocab or max(1, DEFAULT_CHUNK_ELEMENTS // max(n_max, 1))
    # The Gram matrices accumulate in the compute dtype; the cosine is taken in float64 (n x n,
    # cheap): with cos close to 1, fp32 would leave 1 - cos only ~1e-7 of absolute precision.
    # Its gradient with respect to each R_s comes from autograd on those small matrices.
    Rs = [src_s.gram(idx, step, cdt, cfg.rel_gram).double().requires_grad_(need_grad) for idx in samples]
    Rt = [src_t.gram(idx, step, cdt, cfg.rel_gram).double() for idx in samples]
    with torch.enable_grad():
        value = relation_value(Rs, Rt, cfg)
        G = torch.autograd.grad(value, Rs) if need_grad else ()
    for idx, g in zip(samples, G):
        sym = ((g + g.T) * weight).to(cdt)  # dL/dZ = (G + G^T) Z
        src_s.add_gram_grad(idx, sym, step, cdt, cfg.rel_gram)
    return value.detach(), len(samples)


def _chunked(student, teacher, labels, visual_mask, cfg, weights) -> LossOutput:
    sink: dict = {}
    total = _ChunkedObjective.apply(student, teacher, labels, visual_mask, cfg, weights, sink)
    return LossOutput(total=total, part_tensors=sink["parts"], counts=sink["counts"])
