"""Test-only entry point: ``llavakd`` that sends itself the scheduler's warning signal mid-step.

``LLAVAKD_FAULT_SIGNAL_AT=N`` (and ``LLAVAKD_FAULT_SIGNAL_RANK``, default 0): during optimizer step
N, in the forward of its first micro-batch, that rank sends SIGURG to its own process, once, or
twice with ``LLAVAKD_FAULT_SIGNAL_TWICE=1``. A real signal at a known point, so the tests know
which step boundary the checkpoint must fall on; only the chosen rank receives it, so the ranks
must agree on when to stop.
"""

import os
import signal
import sys

from llavakd.train import trainer

_compute_loss = trainer.KDTrainer.compute_loss
_sent = []


def _signalled(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    at = int(os.environ["LLAVAKD_FAULT_SIGNAL_AT"])
    rank = int(os.environ.get("LLAVAKD_FAULT_SIGNAL_RANK", "0"))
    if not _sent and self.state.global_step == at - 1 and int(os.environ.get("RANK", "0")) == rank:
        _sent.append(at)
        for _ in range(2 if os.environ.get("LLAVAKD_FAULT_SIGNAL_TWICE") else 1):
            os.kill(os.getpid(), signal.SIGURG)
    return _compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


trainer.KDTrainer.compute_loss = _signalled

if __name__ == "__main__":
    from llavakd.cli import main

    sys.exit(main(sys.argv[1:]))
