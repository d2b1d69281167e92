"""One count of a training step's model FLOPs: the GPU benchmark's MFU and the planner's price use it.

    from llavakd.flops import llm_shape, vision_shape, step_flops
    f = step_flops(student=llm_shape(qwen_shape("Qwen1.5-1.8B")), teacher=llm_shape(qwen_shape("Qwen1.5-4B")),
                   seq=2048, visual_tokens=728, vision=vision_shape(SIGLIP_SO400M_384), student_trains_llm=True)
    f["total"]            # FLOPs of one sample's step; f[<part>] each part

Model FLOPs, not hardware FLOPs: recomputation under activation checkpointing, softmax,
normalisation and the optimizer are not counted. A multiply-add is 2 FLOPs; a matmul with a
weight of N parameters costs 2N per token forward, and its backward 2N for the input's gradient
plus 2N for the weight's. Per sample of ``seq`` positions holding ``images`` images:

- student LLM layers (q, k, v, o and the SwiGLU MLP: n (2h² + 2h·kv + 3h·i) parameters): 6N per
  token when the LLM trains (SFT, DFT), 4N when it is frozen but the projector below it trains
  (PT, DPT: gradients flow through it, its weights get none);
- causal attention: QKᵀ and AV, each 2·s·s/2·h per layer forward, 2 n s² h in all; ×3 with any
  backward through it (it has no weights: both of its inputs get gradients);
- teacher LLM layers and attention: forward only (2N per token, 2 n s² h);
- LM heads (V·h): 2 V h per row the objective evaluates, ×3 for the student (its head trains in
  SFT/DFT; in PT/DPT ×2, the gradient reaching the hidden states only); ``head_rows_*`` defaults
  to every position;
- vision tower (frozen SigLIP: patches², non-causal attention): forward once per image and per
  pass (``vision_passes`` 2 when teacher and student each run theirs);
- projectors (d_v·h + h·h, two linear layers): the student's trains (6N per visual token), the
  teacher's runs forward (2N).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LLMShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def layer_params(self) -> int:
        """Matmul parameters of all decoder layers (no embeddings, norms or biases)."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        return self.layers * (2 * h * h + 2 * h * kv + 3 * h * self.intermediate)

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden


@dataclass(frozen=True)
class VisionShape:
    hidden: int
    intermediate: int
    layers: int
    patches: int  # positions the tower runs on, per image

    @property
    def layer_params(self) -> int:
        return self.layers * (4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate)


def llm_shape(cfg) -> LLMShape:
    """From any object with a Qwen2-style config's attributes (a transformers config or ``qwen_shape``)."""
    return LLMShape(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                    cfg.num_key_value_heads, cfg.vocab_size)


def vision_shape(cfg) -> VisionShape:
    """From a SigLIP vision config (attributes or a dict)."""
    get = cfg.get if isinstance(cfg, dict) else (lambda k: getattr(cfg, k))
    return VisionShape(get("hidden_size"), get("intermediate_size"), get("num_hidden_layers"),
                       (get("image_size") // get("patch_size")) ** 2)


def llm_flops(shape: LLMShape, seq: int, factor: int) -> tuple[float, float]:
    """(layers, attention) FLOPs of one sequence: ``factor`` 2 forward, 4 frozen-but-backpropagated, 6
    trained. Attention has no weights: any backward through it costs twice its forward (x3 in all)."""
    layers = factor * shape.layer_params * seq
    attention = (2 if factor == 2 else 6) * shape.layers * seq * seq * shape.hidden  # forward: 2 n s² h
    return float(layers), float(attention)


def step_flops(*, student: LLMShape, teacher: LLMShape | None, seq: int, visual_tokens: int, images: int = 1,
               vision: VisionShape | None = None, student_trains_llm: bool = True, vision_passes: int | None = None,
               head_rows_student: int | None = None, head_rows_teacher: int | None = None,
               loss_terms: float = 0.0) -> dict[str, float]:
    """FLOPs of one sample's training step, by part, and their ``total`` (see the module docstring).
    ``loss_terms``: FLOPs per position of the loss terms' learnable parts (llavakd.terms.extra_flops),
    counted at every position."""
    out: dict[str, float] = {}
    factor = 6 if student_trains_llm else 4
    out["student_layers"], out["student_attention"] = llm_flops(student, seq, factor)
    rows_s = seq if head_rows_student is None else head_rows_student
    out["student_head"] = float((6 if student_trains_llm else 4) * student.head_params * rows_s)
    if teacher is not None:
        out["teacher_layers"], out["teacher_attention"] = llm_flops(teacher, seq, 2)
        rows_t = seq if head_rows_teacher is None else head_rows_teacher
        out["teacher_head"] = float(2 * teacher.head_params * rows_t)
    if vision is not None and images:
        passes = vision_passes if vision_passes is not None else (2 if teacher is not None else 1)
        per_image = 2 * vision.layer_params * vision.patches + 4 * vision.layers * vision.patches ** 2 * vision.hidden
        out["vision"] = float(passes * images * per_image)
        d_v = vision.hidden
        proj_s = d_v * student.hidden + student.hidden * student.hidden
        out["projectors"] = float(6 * proj_s * visual_tokens * images)
        if teacher is not None:
            out["projectors"] += 2 * (d_v * teacher.hidden + teacher.hidden * teacher.hidden) * visual_tokens * images
    if loss_terms:
        out["loss_terms"] = float(loss_terms * seq)
    out["total"] = float(sum(out.values()))
    return out
