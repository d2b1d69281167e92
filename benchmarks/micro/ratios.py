"""The last saved micro-benchmark run over the one before it, per benchmark (median time ratio).

    .venv/bin/python -m benchmarks.micro.ratios [benchmarks/measured/micro]     # make bench prints it

A ratio above 1 is a slowdown. Prints JSON; exits 0 with a note when fewer than two runs are saved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    store = Path((argv or sys.argv[1:] or ["benchmarks/measured/micro"])[0])
    runs = sorted(store.glob("*/*.json"), key=lambda p: p.name)
    if len(runs) < 2:
        print(json.dumps({"note": f"fewer than two saved runs under {store}; nothing to compare"}))
        return 0
    before, now = (json.loads(p.read_text()) for p in runs[-2:])
    med = {run: {b["name"]: b["stats"]["median"] for b in data["benchmarks"]} for run, data in (("b", before), ("n", now))}
    ratios = {name: round(med["n"][name] / med["b"][name], 3) for name in med["n"] if name in med["b"]}
    print(json.dumps({"now": runs[-1].name, "before": runs[-2].name, "median_now_over_before": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
