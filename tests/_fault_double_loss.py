"""Test-only entry point: ``llavakd`` with rank 1's loss doubled, a gradient-scale bug on purpose.

The parity tests run it as their negative control: a comparison that passes with this bug in place
could not catch a sum where a mean belongs across ranks.
"""

import os
import sys

from llavakd.train import trainer

_compute_loss = trainer.KDTrainer.compute_loss


def _doubled_on_rank_1(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    out = _compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
    if int(os.environ.get("RANK", "0")) != 1:
        return out
    return (out[0] * 2, out[1]) if return_outputs else out * 2


trainer.KDTrainer.compute_loss = _doubled_on_rank_1

if __name__ == "__main__":
    from llavakd.cli import main

    sys.exit(main(sys.argv[1:]))
