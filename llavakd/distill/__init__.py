"""The objective: the registered loss terms (llavakd.terms; the paper's CE, L_res, L_vis, L_rel), chunked by default."""

from llavakd.config import LossConfig
from llavakd.distill.common import DistillShapeError, LossOutput
from llavakd.distill.divergences import Divergence
from llavakd.distill.fused import fused_distill_loss
from llavakd.distill.objective import distill_loss
from llavakd.terms.base import DIVERGENCES

__all__ = ["DIVERGENCES", "Divergence", "DistillShapeError", "LossConfig", "LossOutput", "distill_loss",
           "fused_distill_loss"]
