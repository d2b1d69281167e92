"""The evaluation protocols' names (torch-free; the planner, the layout and the CLI import them).

``lmms-eval`` scores lmms-eval's stock tasks; ``paper`` the variants that prompt and parse as
upstream's evaluation scripts did (``llavakd.eval.paper``, docs/evaluation.md).
"""

from __future__ import annotations

PROTOCOLS = ("lmms-eval", "paper")
DEFAULT_PROTOCOL = "lmms-eval"

# The scorer's revision: raised whenever a change to decoding or answer parsing moves scores. Evaluation
# and agreement jobs carry it as a Snakemake parameter, so a finished tree scores its models again
# (its training stays done), and the runner reuses no result file of an earlier revision.
#   1: until 2026-12-03, answers capped at 32 new tokens by the adapter
#   2: no cap of our own; the paper protocol decodes and parses MMMU and ScienceQA as upstream
#   3: every result file carries the headline's 95% interval over its documents (llavakd.eval.interval)
SCORING_REVISION = 3
