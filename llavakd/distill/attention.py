"""One decoder layer's attention probabilities, for the selected query rows only.

The models run with sdpa (or flash attention) everywhere, which returns no probabilities; an
attention term needs them at one layer and for a few query rows. ``AttentionTaps`` hooks that
layer's attention module and keeps its inputs (the normalised hidden states and the rotary
embeddings); ``queries_keys`` recomputes the layer's queries and keys from them with the module's
own projections (and, for Qwen3, its q/k norms) and rotary embedding, so the student's keep their
gradient; ``probabilities`` takes the softmax of the scaled scores of the chosen rows over all
keys under the causal and padding masks. Nothing [length x length] is formed for the whole model.
(Eager attention with ``output_attentions`` would give every layer's full maps; a test checks that
these rows equal eager's.)
"""

from __future__ import annotations

import importlib

import torch


def decoder_layers(model):
    """The decoder layers of a LLaVA's LLM (a wrapped one included)."""
    inner = getattr(getattr(model, "module", model), "model", model)
    llm = getattr(inner, "language_model", inner)
    return llm.layers


class AttentionTaps:
    """The inputs of one attention module in the latest forward (a forward pre-hook)."""

    def __init__(self, attention_module):
        self.module = attention_module
        self.hidden = self.rope = None
        attention_module.register_forward_pre_hook(self._inputs, with_kwargs=True)

    def _inputs(self, module, args, kwargs):
        self.hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.rope = kwargs.get("position_embeddings")

    def take(self):
        """(queries, keys) of the latest forward, [B, heads, L, head_dim] each, the queries scaled
        by 1/sqrt(head_dim); forgets the inputs."""
        hidden, rope, self.hidden, self.rope = self.hidden, self.rope, None, None
        if hidden is None:
            return None
        return queries_keys(self.module, hidden, rope)


def queries_keys(module, hidden, rope):
    """The layer's rotary-embedded queries (scaled) and keys (repeated to every query head)."""
    B, L, _ = hidden.shape
    hd = module.head_dim
    q = module.q_proj(hidden).view(B, L, -1, hd)
    k = module.k_proj(hidden).view(B, L, -1, hd)
    if hasattr(module, "q_norm"):  # Qwen3: RMS norms on the heads before the rotary embedding
        q, k = module.q_norm(q), module.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    apply = importlib.import_module(type(module).__module__).apply_rotary_pos_emb
    q, k = apply(q, k, *rope)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
    return q * module.scaling, k


def probabilities(q, k, rows, attended):
    """Attention probabilities of the query positions ``rows`` of one sample over all its keys:
    q, k [heads, L, head_dim]; ``rows`` [n] positions; ``attended`` [L] bool. Returns [heads, n, L]
    in at least float32 (keys after the query or padding get 0)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = q[:, rows].to(acc) @ k.to(acc).transpose(-1, -2)
    keys = torch.arange(k.shape[1], device=k.device)
    allowed = (keys[None, :] <= rows[:, None]) & attended[None, :].bool()
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
