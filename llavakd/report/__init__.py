"""Reports: Table 1 and the ablation tables beside the paper's numbers, and the figures.

Everything is rendered from result files (``<benchmark>.json`` from ``llavakd eval``, the runs'
``metrics.jsonl``) and the paper's CSVs under ``llavakd/report/paper/``; no number is typed into code.
"""
