"""The evaluation protocols' names (torch-free; the planner, the layout and the CLI import them).

``lmms-eval`` scores lmms-eval's stock tasks; ``paper`` the variants that prompt and parse as
upstream's evaluation scripts did (``llavakd.eval.paper``, docs/evaluation.md).
"""

from __future__ import annotations

PROTOCOLS = ("lmms-eval", "paper")
DEFAULT_PROTOCOL = "lmms-eval"
