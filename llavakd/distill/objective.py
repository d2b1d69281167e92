"""The objective: the registered loss terms (llavakd.terms), chunked by default. The paper's four
(CE + L_res + L_vis + L_rel, docs/method.md "Losses") are on by default; the terms below are theirs,
the others (docs/methods.md, "The loss terms") run through the same engines.

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

import torch

from llavakd import terms
from llavakd.config import LossConfig
from llavakd.distill.chunking import DEFAULT_CHUNK_ELEMENTS
from llavakd.distill.common import (
    LossOutput,
    check_features,
    check_inputs,
    engine_terms,
    resolve_config,
    term_weights,
    with_autograd_terms,
)
from llavakd.distill.naive import naive_distill_loss
from llavakd.labels import IGNORE_INDEX
from llavakd.memory import CUDA_CHUNK_BYTES  # CUDA: every [chunk x V] temporary of one chunk together
from llavakd.terms.base import NaiveInputs, positions

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
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    parts=None,
    student_attention=None,
    teacher_attention=None,
    scale: dict[str, float] | None = None,
    checked: bool = False,
) -> LossOutput:
    """The objective from logits; ``implementation`` "naive" is the oracle, "chunked" and "fused"
    (whose hidden-state form is ``fused_distill_loss``) both run the chunked path here. ``scale``:
    per-term factors on the configured weights (a micro-batch's share of its step; common.term_weights).
    ``checked``: ``cfg`` was validated already (once per training job). The other keywords are what
    terms beyond logits read (llavakd.terms.base.NaiveInputs): projected visual features, last hidden
    states, the attention mask, the learnable parts by term name (llavakd.distill.parts), and one
    layer's (queries, keys) of each model (llavakd.distill.attention)."""
    cfg = resolve_config(cfg, teacher is not None, "logits", checked)
    w = term_weights(cfg, scale)
    check_inputs(student, teacher, labels, visual_mask, teacher_labels, teacher_visual_mask)
    x = NaiveInputs(labels=labels, visual_mask=visual_mask, student_features=student_features,
                    teacher_features=teacher_features, student_hidden=student_hidden, teacher_hidden=teacher_hidden,
                    attention_mask=attention_mask, parts=parts, student_attention=student_attention,
                    teacher_attention=teacher_attention)
    check_features(x, cfg)
    if cfg.implementation == "naive":
        return naive_distill_loss(student, teacher, cfg, x, scale)
    out = _chunked(student, teacher, labels, visual_mask, cfg, w, attention_mask)
    return with_autograd_terms(out, cfg, w, x)


# ----------------------------------------------------------------------------- chunked path


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows_plan(kinds, labels, visual_mask, attention_mask):
    """Dense masks over the flattened [B*L] positions, one per kind of rows the row terms read
    (llavakd.terms.base.positions), and each position's next-token target."""
    B, L = labels.shape
    target = torch.full((B, L), IGNORE_INDEX, dtype=torch.long, device=labels.device)
    target[:, :-1] = labels[:, 1:]
    masks = {k: positions(k, labels, visual_mask, attention_mask).flatten() for k in kinds}
    return masks, target.flatten()


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


def _objective(src_s, src_t, labels, visual_mask, cfg, weights, need_grad, cdt, dev, attention_mask=None):
    """Every term of the ``rows`` and ``sources`` engines and (through the sources) its gradient;
    returns (total, parts, counts). ``weights``: each term's weight in this call (common.term_weights).

    Row terms share one pass over row chunks: a chunk holds the rows any of them reads, each term's
    kernel gives per-row values and dL/ds, and kernels with equal keys (L_res and L_vis under one
    divergence) are evaluated once for all their rows."""
    V = src_s.vocab
    row_terms = engine_terms(cfg, "rows")
    specs = {n: terms.spec(n) for n in row_terms}
    rows_of = {n: specs[n].rows_for(cfg) for n in row_terms}
    kinds = list(dict.fromkeys(rows_of.values()))
    masks, target = _rows_plan(kinds, labels, visual_mask, attention_mask)
    sizes = {r: int(masks[r].sum()) for r in kinds}  # read once, before the loop
    counts = {n: sizes[rows_of[n]] for n in row_terms}
    sums = {n: torch.zeros((), dtype=torch.float64, device=dev) for n in row_terms}
    used = [n for n in row_terms if counts[n] > 0]
    kernels = {n: specs[n].row_kernel(cfg) for n in used}
    groups: dict = {}  # kernel key -> the terms it serves, in registration order
    for n in used:
        groups.setdefault(kernels[n].key, []).append(n)
    with_teacher = any(specs[n].teacher for n in used)

    active = torch.zeros(labels.numel(), dtype=torch.bool, device=labels.device)
    for n in used:
        active |= masks[rows_of[n]]
    rows = active.nonzero().flatten()
    step = rows_per_chunk(V, dev, cfg.chunk_rows)
    per_row = {n: weights[n] / max(counts[n], 1) for n in used}
    for start in range(0, rows.numel(), step):
        idx = rows[start:start + step]
        s = src_s.rows(idx, cdt)
        g = torch.zeros_like(s) if need_grad else None
        t = src_t.rows(idx, cdt) if with_teacher else None
        y = target[idx]
        chunk_masks = {r: masks[r][idx].to(cdt) for r in sizes}
        for members in groups.values():
            kernel = kernels[members[0]]
            loss_rows, dg = kernel(s, t, y, need_grad)
            coef = None
            for n in members:
                m = chunk_masks[rows_of[n]]
                sums[n] += kernel.reduce(loss_rows, m)
                c = per_row[n] * m
                coef = c if coef is None else coef + c
            if need_grad:
                g.addcmul_(dg, (coef * kernel.grad_scale)[:, None])
            del dg, loss_rows
        del t
        if need_grad:
            src_s.set_rows_grad(idx, g)

    parts = {}
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for n in cfg.enabled():
        if n in sums:
            parts[n] = sums[n] / max(counts[n], 1)
            total += weights[n] * parts[n]
        elif terms.spec(n).engine_for(cfg) == "sources":
            parts[n], counts[n] = terms.spec(n).source_term(src_s, src_t, visual_mask, cfg, weights[n], need_grad, cdt)
            total += weights[n] * parts[n]
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
                                          _compute_dtype(student), student.device, sink.get("attention_mask"))
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


def _chunked(student, teacher, labels, visual_mask, cfg, weights, attention_mask=None) -> LossOutput:
    sink: dict = {"attention_mask": attention_mask}
    total = _ChunkedObjective.apply(student, teacher, labels, visual_mask, cfg, weights, sink)
    return LossOutput(total=total, part_tensors=sink["parts"], counts=sink["counts"])
