"""Test-only entry point: ``llavakd`` with an inf planted in one gradient of step 3 on rank 1.

The finiteness guard must stop the run at step 3 before the weights change. On the way out each
rank writes whether its weights (its own partition under ZeRO-3) still equal those after step 2,
to ``$LLAVAKD_FAULT_OUT.<rank>.json``.
"""

import json
import os
import sys

import torch
from transformers import TrainerCallback

from llavakd.train import trainer

RANK = int(os.environ.get("RANK", "0"))
PLANT_AT = 3
_compute_loss = trainer.KDTrainer.compute_loss
_init = trainer.KDTrainer.__init__
state = {"planted": False, "snapshot": None, "trainer": None}


def _weights(t):
    module = getattr(t.model_wrapped, "module", t.model_wrapped)
    return [(p.ds_tensor if hasattr(p, "ds_tensor") else p).detach().clone() for p in module.parameters()]


class Snapshot(TrainerCallback):
    def on_step_end(self, args, st, control, **kwargs):
        if st.global_step == PLANT_AT - 1:
            state["snapshot"] = _weights(state["trainer"])


def _planting(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    if RANK == 1 and self.state.global_step == PLANT_AT - 1 and not state["planted"]:
        state["planted"] = True
        module = getattr(model, "module", model)
        weight = next(p for n, p in module.named_parameters() if "multi_modal_projector" in n and p.requires_grad)
        handle = {}
        handle["h"] = weight.register_hook(lambda g: (handle["h"].remove(), g * float("inf"))[1])
    return _compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def _init_with_snapshot(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    state["trainer"] = self
    self.add_callback(Snapshot())


trainer.KDTrainer.compute_loss = _planting
trainer.KDTrainer.__init__ = _init_with_snapshot

if __name__ == "__main__":
    from llavakd.cli import main

    try:
        rc = main(sys.argv[1:])
    finally:
        t, snap = state["trainer"], state["snapshot"]
        if t is not None and snap is not None:
            now = _weights(t)
            same = len(now) == len(snap) and all(torch.equal(a, b) for a, b in zip(now, snap))
            with open(f"{os.environ['LLAVAKD_FAULT_OUT']}.{RANK}.json", "w") as fh:
                json.dump({"rank": RANK, "unchanged": same, "step": t.state.global_step}, fh)
    sys.exit(rc)
