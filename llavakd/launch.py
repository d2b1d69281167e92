"""Run a command on N GPUs of this machine that no other llavakd job holds (Snakemake's local GPU jobs).

    python -m llavakd.launch --gpus 2 -- torchrun --standalone --nproc_per_node 2 -m llavakd.cli train ...
    python -m llavakd.launch --gpus 0 -- python -m llavakd.cli eval ...      # CPU job: runs as is

Snakemake's ``--resources gpu=K`` caps how many GPUs local jobs use at once but does not say which;
this wrapper picks them: it takes an exclusive lock per device (``fcntl`` on
``<lock dir>/gpu<i>.lock``), waits while fewer than N are free, sets ``CUDA_VISIBLE_DEVICES`` and
runs the command, releasing the locks when it exits (also when it is killed). Under a scheduler that
already chose the devices (``SLURM_JOB_ID`` with ``CUDA_VISIBLE_DEVICES`` set) it changes nothing.
The device count is ``LLAVAKD_GPU_COUNT`` if set, else what ``nvidia-smi -L`` lists.

The command runs under ``llavakd.preempt.supervise``: a scheduler's stop signal reaches every
process below it (torchrun's ranks included), and a trainer that stopped at a checkpoint to be
resumed exits with ``llavakd.preempt.RESUME_EXIT`` whatever torchrun reports.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from llavakd.preempt import supervise


def device_count() -> int:
    if "LLAVAKD_GPU_COUNT" in os.environ:
        return int(os.environ["LLAVAKD_GPU_COUNT"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def acquire(n: int, lock_dir: Path, poll_s: float = 2.0, timeout_s: float | None = None) -> tuple[list[int], list]:
    """Lock n free devices; returns (ids, open lock files). Raises if the machine has fewer than n."""
    total = device_count()
    if n > total:
        raise SystemExit(f"llavakd.launch: {n} GPU(s) requested but this machine has {total}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    while True:
        held, ids = [], []
        for i in range(total):
            fh = open(lock_dir / f"gpu{i}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            held.append(fh)
            ids.append(i)
            if len(ids) == n:
                return ids, held
        for fh in held:  # not enough: give back what we took and wait
            fh.close()
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no {n} free GPU(s) within {timeout_s} s")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--lock-dir", type=Path, default=Path(".snakemake/llavakd-gpu-locks"))
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command given")
    env = dict(os.environ)
    held = []
    if args.gpus > 0 and not (env.get("SLURM_JOB_ID") and env.get("CUDA_VISIBLE_DEVICES")):
        ids, held = acquire(args.gpus, args.lock_dir)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
        print(f"llavakd.launch: CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}", file=sys.stderr, flush=True)
    try:
        return supervise(cmd, env, torchrun="torch.distributed.run" in cmd)
    finally:
        for fh in held:
            fh.close()


if __name__ == "__main__":
    sys.exit(main())
