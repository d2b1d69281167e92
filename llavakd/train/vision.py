"""One vision pass for teacher and student when they share their frozen vision tower.

LLaVA-KD's teacher and student both encode every image with the same frozen SigLIP (about 0.67
TFLOP an image a tower at 384 px). When the two towers hold the same weights (a digest of the
teacher's tower and of the student's, cast to the teacher's dtype, compared once at setup) and the
student's tower is frozen, the tower runs once per micro-batch: the student's forward computes it,
the teacher's forward gets the same output (each model still selects its own feature layer and
applies its own projector). A tower with other weights, a trained student tower, or ZeRO-3 (whose
partitioned teacher gathers its own parameters in its forward) keeps two passes, and the run says
which it does (``vision_pass`` in metadata.json).

transformers has no switch for this: Llava's ``get_image_features`` calls ``self.vision_tower``
itself, so the towers' ``forward`` is wrapped (an instance attribute; the modules stay as they are,
so hooks, DDP and DeepSpeed see plain modules).
"""

from __future__ import annotations

import hashlib

import torch


def vision_tower(model):
    """The vision tower of a LLaVA (plain, DDP- or DeepSpeed-wrapped)."""
    inner = getattr(model, "module", model)
    return getattr(getattr(inner, "model", inner), "vision_tower", None)


def tower_digest(tower, dtype: torch.dtype) -> str:
    """sha256 over the tower's parameter and buffer names, shapes and values cast to ``dtype``."""
    h = hashlib.sha256()
    for name, t in list(tower.named_parameters()) + list(tower.named_buffers()):
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        x = t.detach().to(dtype).cpu().contiguous()
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


class SharedVisionPass:
    """Installs the shared pass on two towers (``install``) and serves the second forward of the
    same pixels from the first one's output. ``decision``: "shared" or "separate: <why>"."""

    def __init__(self):
        self.decision = "separate: not set up"
        self.passes = 0  # tower forwards actually run (tests count them)
        self.served = 0  # forwards served from the other model's pass
        self._cache = None

    def install(self, student, teacher, *, zero3: bool = False) -> str:
        s, t = vision_tower(student), vision_tower(teacher) if teacher is not None else None
        self.decision = self._decide(s, t, zero3)
        if self.decision == "shared":
            for tower in (s, t):
                tower.forward = self._wrap(tower.forward)
        return self.decision

    @staticmethod
    def _decide(s, t, zero3: bool) -> str:
        if t is None or s is None:
            return "separate: no teacher" if t is None else "separate: the student has no vision tower"
        if zero3:
            return "separate: ZeRO-3 partitions the teacher, which gathers its tower in its own forward"
        if any(p.requires_grad for p in s.parameters()):
            return "separate: the student's vision tower is trained"
        dtype = next(t.parameters()).dtype
        if tower_digest(s, dtype) != tower_digest(t, dtype):
            return "separate: the teacher's and the student's vision towers differ"
        return "shared"

    def begin(self) -> None:
        """Forget any output kept from an earlier micro-batch (the trainer calls it first in each)."""
        self._cache = None

    def _wrap(self, forward):
        def shared_forward(pixel_values, *args, **kwargs):
            # The very tensor (held, so its memory cannot be reused), unchanged, with the same arguments:
            # the teacher's forward gets the same batch dict as the student's.
            key = (pixel_values._version, repr(sorted(kwargs.items())), len(args))
            cached, self._cache = self._cache, None
            if cached is not None and cached[0] is pixel_values and cached[1] == key:
                self.served += 1  # served once: the pair's second forward
                return _copy(cached[2])
            out = forward(pixel_values, *args, **kwargs)
            self.passes += 1
            self._cache = (pixel_values, key, out)
            return _copy(out)

        return shared_forward


def _copy(out):
    """A shallow copy of a model output: Llava sets ``pooler_output`` on the one it gets."""
    return type(out)(**out) if hasattr(out, "keys") else out
