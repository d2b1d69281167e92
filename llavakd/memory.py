"""GPU memory of one training job, per device: a planning estimate, printed by the dry run.

    from llavakd.memory import estimate, largest_per_device_batch
    estimate("qwen1.5-1.8b", "qwen1.5-4b", stage="dft", per_device_batch=4, zero_stage=2, world=8)

What it counts (bytes per device, bf16 training; llavakd/model/shapes.py gives the shapes):
- weights: the student (SigLIP + projector + LLM) and, for a distillation stage, the teacher, 2 B a
  parameter; ZeRO-3 shards both over the ranks (the teacher becomes a sharded inference engine);
- gradients, 2 B a trainable parameter, sharded from ZeRO-2 on;
- optimizer state, 12 B a trainable parameter (fp32 master weights, Adam's m and v), sharded
  from ZeRO-1 on;
- activations of the student LLM: a checkpointed layer keeps its input (tokens x d x 2 B), the
  others their working set, plus one layer's working set while a layer is recomputed
  (``gradient_checkpointing``: 0 off, 1 every layer, k every k-th layer). A layer's working set
  is taken as tokens x (12 d + 8 i) bytes (attention with a fused kernel, no tokens^2 term; the
  SwiGLU MLP's three i-wide tensors and its product);
- the teacher's forward (no graph): one layer's working set and its last hidden state;
- the objective: ``fused`` holds the fp32 head gradient (V x d x 4 B), fp32 hidden-state
  gradients and one chunk's temporaries (``CUDA_CHUNK_BYTES``, the budget the objective sizes
  its chunks from on CUDA); ``chunked`` holds the student's and the
  teacher's [tokens x V] bf16 logits and the student's logit gradient (llavakd/distill);
- the vision tower's forward (frozen, no graph) and a fixed reserve for the CUDA context and
  allocator fragmentation (3 GiB + 10%).

It is an estimate to pick a batch size, not a measurement: benchmarks/gpu_mfu.py measures
peak memory on a GPU, and docs/training.md says how far the two were apart where measured.
"""

from __future__ import annotations

from llavakd.model.shapes import SIGLIP_SO400M_384, VisionShape, as_llm_shape, documented_shape
from llavakd.stages import STAGES

GIB = 2**30
# The objective's chunk budget on CUDA: every [chunk x V] temporary of one chunk together. It lives
# here, where planning (torch-free) counts it; llavakd.distill.objective sizes its chunks from it.
CUDA_CHUNK_BYTES = 8 * GIB
CHECKPOINTING_CHOICES = (0, 4, 3, 2, 1)  # least recomputation first: off, every 4th, 3rd, 2nd layer, all
RESERVE_BYTES = 3 * GIB
RESERVE_FRACTION = 0.10


def _llm(name):
    """An LLM's shape: given (llavakd.model.shapes.resolve_llm, or any config), or documented by name."""
    return documented_shape(name) if isinstance(name, str) else as_llm_shape(name)


def _layer_bytes(tokens: int, cfg) -> int:
    """A decoder layer's saved activations: 12 h per token where the queries are h wide (q, k, v and o
    at the hidden size); a family with a wider head_dim (Qwen3) keeps its wider q and attention output."""
    return tokens * (8 * cfg.hidden_size + 4 * cfg.attention_width + 8 * cfg.intermediate_size)


def estimate(student, teacher, *, stage: str, per_device_batch: int, zero_stage: int,
             world: int, seq_len: int = 2048, gradient_checkpointing: bool | int = True,
             implementation: str = "fused", vision: VisionShape | None = None, loss_parts: int = 0) -> dict:
    """Bytes per device of one training job, by component, and their ``total`` (see the module
    docstring). ``student``/``teacher``: a shape (llavakd.model.shapes.resolve_llm) or a documented
    name; ``teacher`` is ignored for a stage without distillation. ``vision``: the tower's shape
    (resolve_vision; the paper's when not given). ``gradient_checkpointing``: false/0 off, true/1
    every layer, k every k-th layer (``checkpointed_layers``). ``loss_parts``: parameters of the
    objective's learnable parts (llavakd.terms.part_params), trained like the student's own."""
    spec = STAGES[stage]
    s_cfg = _llm(student)
    d, V = s_cfg.hidden_size, s_cfg.vocab_size
    v_shape = vision or SIGLIP_SO400M_384
    vision = v_shape.params
    projector = v_shape.hidden_size * d + d + d * d + d  # mlp2x_gelu
    llm = s_cfg.params
    trainable = projector + (llm if "llm" in spec.trainable else 0) + loss_parts
    shard3 = world if zero_stage >= 3 else 1
    tokens = per_device_batch * seq_len
    parts = {
        "student_weights": 2 * (vision + projector + llm + loss_parts) / shard3,
        "gradients": 2 * trainable / (world if zero_stage >= 2 else 1),
        "optimizer": 12 * trainable / (world if zero_stage >= 1 else 1),
    }
    n = s_cfg.num_hidden_layers
    ckpt = len(checkpointed_layers(n, gradient_checkpointing))
    parts["activations"] = ckpt * tokens * d * 2 + (n - ckpt) * _layer_bytes(tokens, s_cfg) \
        + (_layer_bytes(tokens, s_cfg) if ckpt else 0)
    parts["vision_forward"] = per_device_batch * v_shape.patches * v_shape.intermediate_size * 2 * 4
    t_cfg = _llm(teacher) if (teacher and spec.distill) else None
    if t_cfg is not None:
        t_proj = v_shape.hidden_size * t_cfg.hidden_size + t_cfg.hidden_size * (t_cfg.hidden_size + 2)
        parts["teacher_weights"] = 2 * (vision + t_proj + t_cfg.params) / shard3
        parts["teacher_forward"] = _layer_bytes(tokens, t_cfg) + tokens * t_cfg.hidden_size * 2
    if implementation == "fused":
        head_grad = V * d * 4 if "llm" in spec.trainable else 0
        parts["objective"] = head_grad + tokens * d * 4 * 2 + CUDA_CHUNK_BYTES
    else:
        logits = tokens * V * 2
        parts["objective"] = logits * (3 if t_cfg is not None else 2) + CUDA_CHUNK_BYTES
    subtotal = sum(parts.values())
    parts["reserve"] = RESERVE_BYTES + RESERVE_FRACTION * subtotal
    parts["total"] = sum(parts.values())
    return {k: int(v) for k, v in parts.items()}


def checkpointed_layers(num_layers: int, setting: bool | int) -> list[int]:
    """The decoder layers recomputed in the backward pass: none (false/0), all (true/1), or every
    k-th (layers 0, k, 2k, ...); the one reading of ``train.gradient_checkpointing`` (the trainer
    applies it, the estimate counts it)."""
    k = int(setting)  # False -> 0, True -> 1
    return list(range(0, num_layers, k)) if k >= 1 else []


def checkpointing_label(setting: bool | int) -> str:
    """``off``, ``all layers`` or ``every k-th layer``."""
    k = int(setting)
    if k <= 1:
        return "all layers" if k == 1 else "off"
    return f"every {k}{ {2: 'nd', 3: 'rd'}.get(k, 'th')} layer"


def least_recomputation(student: str, teacher: str | None, *, per_device_batch: int, budget_gib: float = 80.0,
                        **kw) -> tuple[int, dict]:
    """The checkpointing that recomputes least and still fits ``budget_gib`` at this batch (0 off,
    k every k-th layer, 1 all; 1 when nothing fits), and its estimate."""
    est = {}
    for k in CHECKPOINTING_CHOICES:
        est = estimate(student, teacher, per_device_batch=per_device_batch, gradient_checkpointing=k, **kw)
        if est["total"] <= budget_gib * GIB:
            return k, est
    return 1, est


def largest_per_device_batch(student: str, teacher: str | None, *, stage: str, zero_stage: int, world: int,
                             budget_gib: float = 80.0, global_batch: int | None = None, **kw) -> int:
    """The largest per-device batch (a power of two dividing the global batch over ``world``, when
    given) whose estimate fits ``budget_gib``; 0 when not even one sample fits."""
    best, b = 0, 1
    limit = (global_batch // world) if global_batch else 1024
    while b <= limit:
        if (global_batch is None or global_batch % (b * world) == 0) and \
                estimate(student, teacher, stage=stage, per_device_batch=b, zero_stage=zero_stage, world=world,
                         **kw)["total"] <= budget_gib * GIB:
            best = b
        b *= 2
    return best
