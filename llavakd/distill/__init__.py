"""Distillation losses: CE + MDist (L_res, L_vis) + RDist (L_rel), chunked by default."""

from llavakd.config import DIVERGENCES, LossConfig
from llavakd.distill.common import DistillShapeError, LossOutput
from llavakd.distill.divergences import Divergence
from llavakd.distill.fused import fused_distill_loss
from llavakd.distill.objective import distill_loss

__all__ = ["DIVERGENCES", "Divergence", "DistillShapeError", "LossConfig", "LossOutput", "distill_loss",
           "fused_distill_loss"]
