"""One count of a training step's model FLOPs: the GPU benchmark's MFU and the planner's price use it.

    from llavakd.flops import llm_shape, vision_shape, step_flops
    f = step_flops(student=llm_shape(qwen_shape("Qwen1.5-1.8B")), teacher=llm_shape(qwen_shape("Qwen1.5-4B")),
                   seq=2048, visual_tokens=728, vision=vision_shape(SIGLIP_SO400M_384), student_trains_llm=True)
    f["total"]            # FLOPs of one sample's step; f[<part>] each part

Model FLOPs, not hardware FLOPs: recomputation under activation checkpointing, softmax,
normalisation and the optimizer are not counted. A multiply-add is 2 FLOPs; a matmul with a
weight of N parameters costs 2N per token forward, and its backward 2N for the input's gradient
plus 2N for the weight's. Per sample of ``seq`` positions holding ``images`` images:

- student LLM layers (q, k, v, o and the SwiGLU MLP: n (2h·q + 2h·kv + 3h·i) parameters, q = heads ×
  head_dim, which is h except where a family sets head_dim, as Qwen3 does): 6N per
  token when the LLM trains (SFT, DFT), 4N when it is frozen but the projector below it trains
  (PT, DPT: gradients flow through it, its weights get none);
- causal attention: QKᵀ and AV, each 2·s·s/2·q per layer forward, 2 n s² q in all; ×3 with any
  backward through it (it has no weights: both of its inputs get gradients);
- teacher LLM layers and attention: forward only (2N per token, 2 n s² q);
- LM heads (V·h): 2 V h per row the objective evaluates, ×3 for the student (its head trains in
  SFT/DFT; in PT/DPT ×2, the gradient reaching the hidden states only); ``head_rows_*`` defaults
  to every position;
- vision tower (frozen SigLIP: patches², non-causal attention): forward once per image and per
  pass (``vision_passes`` 2 when teacher and student each run theirs);
- projectors (d_v·h + h·h, two linear layers): the student's trains (6N per visual token), the
  teacher's runs forward (2N).
"""

from __future__ import annotations

from llavakd.model.shapes import LLMShape, VisionShape, as_llm_shape, vision_shape_from

llm_shape = as_llm_shape  # from an LLMShape, a transformers config or a config dict


def vision_shape(cfg) -> VisionShape:
    """From a VisionShape or a SigLIP vision config (attributes or a dict)."""
    if isinstance(cfg, VisionShape):
        return cfg
    return vision_shape_from(cfg if isinstance(cfg, dict) else cfg.to_dict())[0]


def llm_flops(shape: LLMShape, seq: int, factor: int) -> tuple[float, float]:
    """(layers, attention) FLOPs of one sequence: ``factor`` 2 forward, 4 frozen-but-backpropagated, 6
    trained. Attention has no weights: any backward through it costs twice its forward (x3 in all)."""
    layers = factor * shape.layer_params * seq
    attention = (2 if factor == 2 else 6) * shape.num_hidden_layers * seq * seq * shape.attention_width  # 2 n s² H·d
    return float(layers), float(attention)


def step_flops(*, student: LLMShape, teacher: LLMShape | None, seq: int, visual_tokens: int, images: int = 1,
               vision: VisionShape | None = None, student_trains_llm: bool = True, vision_passes: int | None = None,
               head_rows_student: int | None = None, head_rows_teacher: int | None = None,
               loss_terms: float = 0.0) -> dict[str, float]:
    """FLOPs of one sample's training step, by part, and their ``total`` (see the module docstring).
    ``loss_terms``: FLOPs per sample of the loss terms' learnable parts (llavakd.terms.extra_flops,
    each paid at the positions it runs on)."""
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
        attention = 4 * vision.num_hidden_layers * vision.patches ** 2 * vision.hidden_size
        per_image = 2 * vision.layer_params * vision.patches + attention
        out["vision"] = float(passes * images * per_image)
        d_v = vision.hidden_size
        s_h = student.hidden_size
        proj_s = d_v * s_h + s_h * s_h
        out["projectors"] = float(6 * proj_s * visual_tokens * images)
        if teacher is not None:
            t_h = teacher.hidden_size
            out["projectors"] += 2 * (d_v * t_h + t_h * t_h) * visual_tokens * images
    if loss_terms:
        out["loss_terms"] = float(loss_terms)
    out["total"] = float(sum(out.values()))
    return out
