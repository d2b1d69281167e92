"""Differences between a study's variants, paired by seed, from the seed table a report writes.

    python scripts/paired_differences.py reports/tiny-study/seeds.csv            # Avg10
    python scripts/paired_differences.py reports/tiny-study/seeds.csv --average avg7

For every student (llm) with the three variants, prints LLaVA-KD - baseline, baseline+ - baseline
and LLaVA-KD - baseline+ as mean ± the 95% t half-interval over the seeds they share, with the
per-seed differences, as a markdown table (the numbers docs/results/tiny-study.md quotes).
"""

from __future__ import annotations

import argparse
import csv
import sys

from llavakd.report.collect import Cell
from llavakd.report.tables import ROLE_LABEL

VARIANT_OF = {label: role for role, label in ROLE_LABEL.items()}  # Method column -> variant
PAIRS = [("llava_kd", "baseline"), ("baseline_plus", "baseline"), ("llava_kd", "baseline_plus")]
LABEL = {"llava_kd": "LLaVA-KD", "baseline": "baseline", "baseline_plus": "baseline+"}


def read(path: str, average: str) -> dict[str, dict[str, dict[int, float]]]:
    """llm -> variant -> seed -> score."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            variant = VARIANT_OF.get(row["method"])
            if variant not in LABEL or row["average"].lower() != average or not row["llm"]:
                continue
            seeds = {int(k.split("_")[1]): float(v) for k, v in row.items()
                     if k.startswith("seed_") and v not in ("-", "")}
            out.setdefault(row["llm"], {})[variant] = seeds
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seeds_csv")
    p.add_argument("--average", default="avg10", choices=["avg7", "avg10"])
    args = p.parse_args(argv)
    try:
        table = read(args.seeds_csv, args.average)
    except OSError as e:
        print(f"{args.seeds_csv}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"{args.seeds_csv}: no column {e}; expected the seeds.csv a report writes", file=sys.stderr)
        return 2
    if not table:
        print(f"{args.seeds_csv}: no baseline / baseline+ / LLaVA-KD rows with per-seed scores", file=sys.stderr)
        return 2
    head = " | ".join(f"{LABEL[a]} − {LABEL[b]}" for a, b in PAIRS)
    print(f"| student | {head} |\n|---|" + "---:|" * len(PAIRS))
    for llm, variants in table.items():
        cells = []
        for a, b in PAIRS:
            if a not in variants or b not in variants:
                cells.append("-")
                continue
            seeds = sorted(set(variants[a]) & set(variants[b]))
            diffs = [variants[a][s] - variants[b][s] for s in seeds]
            cell = Cell(diffs)
            half = "-" if cell.ci95 is None else f"{cell.ci95:.1f}"
            cells.append(f"{cell.mean:+.1f} ± {half} ({', '.join(f'{d:+.1f}' for d in diffs)})")
        print(f"| {llm} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
