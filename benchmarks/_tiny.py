"""Shared set-up of the CPU benchmarks: a tiny world and tiny components in a temporary folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def tiny_setup(llms: list[str] | None = None) -> Path:
    """Quiet transformers, pin threads, write the tiny world and components; return the folder."""
    import torch
    from transformers.utils import logging as hf_logging

    from llavakd.tiny.components import write_tiny_components
    from llavakd.tiny.world import write_world

    hf_logging.disable_progress_bar()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tmp = Path(tempfile.mkdtemp(prefix="llavakd-bench-"))
    write_world(tmp / "world", seed=0, size="tiny")
    write_tiny_components(tmp / "comp", seed=0, llms=llms)
    return tmp
