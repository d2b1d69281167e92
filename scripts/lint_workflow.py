"""`snakemake --lint`, less the one lint this workflow declines on purpose; exit 1 if any other remains.

    .venv/bin/python scripts/lint_workflow.py          # make lint runs it

Declined: "Specify a conda environment or container for each rule". Every rule runs the
interpreter that runs Snakemake, from the project's pinned virtual environment (`make install`,
or environment.yml plus `pip install -e .` on a cluster), so a per-rule environment would only
duplicate that pin set, and one built by `--use-conda` would lack llavakd itself.
Declined: the chance rule's `world` parameter as a function of its input. Snakemake records a
parameter derived from input differently, so finished trees would plan the rule (and every report)
again; the world folder is local to the study in any case.
"""

from __future__ import annotations

import re
import subprocess
import sys

DECLINED = ("Specify a conda environment or container for each rule.",
            "Param world is a prefix of input or output file but hardcoded.")


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    where, kept = None, []
    for line in text.splitlines():
        if line.startswith("Lints for"):
            where = line.rstrip(":")
        m = re.match(r"^    \* (.+?):?$", line)
        if m and m.group(1).rstrip(":") + ("." if not m.group(1).rstrip(":").endswith(".") else "") not in DECLINED:
            kept.append(f"{where}: {m.group(1)}")
    for item in kept:
        print(item)
    if kept or (out.returncode and "Lints for" not in text):
        print(text[-3000:] if not kept else "", file=sys.stderr)
        return 1
    print(f"snakemake --lint: nothing left beyond the declined lints ({' / '.join(DECLINED)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
