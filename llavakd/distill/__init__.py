"""Distillation losses: CE + MDist (L_res, L_vis) + RDist (L_rel), chunked by default."""

from llavakd.distill.divergences import NAMES as DIVERGENCES
from llavakd.distill.divergences import Divergence
from llavakd.distill.objective import DistillShapeError, LossConfig, LossOutput, distill_loss

__all__ = ["DIVERGENCES", "Divergence", "DistillShapeError", "LossConfig", "LossOutput", "distill_loss"]
