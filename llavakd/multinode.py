"""One training job on several nodes: one torchrun agent per node, meeting at a c10d rendezvous.

    srun --nodes 2 --ntasks-per-node 1 python -m llavakd.multinode --nodes 2 --gpus-per-node 8 \\
        -- --config results/paper/configs/qwen1.5-0.5b/s1234/dpt--sft--dft.yaml --resume

The workflow's training rule runs this when ``resources.train.nodes`` > 1 (inside the SLURM job that
the executor plugin submits with ``--nodes N --ntasks N``). On each node it starts
``torch.distributed.run --nnodes N --nproc_per_node G`` with a c10d rendezvous on the job's first
node (``scontrol show hostnames $SLURM_JOB_NODELIST``) and the SLURM job id as rendezvous id, then
``llavakd train`` with the given arguments. The world size is N x G; the global batch stays the
config's, and gradient accumulation is derived from the world size. ``--rdzv-endpoint`` and
``--rdzv-id`` replace the SLURM lookups (a local test runs two agents on one machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from llavakd.preempt import supervise

RDZV_PORT = 29500


def torchrun_command(python: str, nodes: int, gpus_per_node: int, endpoint: str, run_id: str) -> list[str]:
    """The agent each node runs: torchrun over its GPUs, joining the job's rendezvous."""
    return [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node", str(gpus_per_node),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", run_id, "-m", "llavakd.cli", "train"]


def first_node() -> str:
    """The first host of this SLURM job's allocation."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise SystemExit("llavakd.multinode: no SLURM_JOB_NODELIST; give --rdzv-endpoint outside SLURM")
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, required=True, help="nodes of the job (one agent each)")
    p.add_argument("--gpus-per-node", type=int, required=True, help="processes (GPUs) per node")
    p.add_argument("--rdzv-endpoint", help=f"host:port of the rendezvous (default: the first node, port {RDZV_PORT})")
    p.add_argument("--rdzv-id", help="rendezvous id (default: $SLURM_JOB_ID)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of llavakd train")
    args = p.parse_args(argv)
    rest = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.nodes < 1 or args.gpus_per_node < 1:
        p.error("--nodes and --gpus-per-node must be at least 1")
    endpoint = args.rdzv_endpoint or f"{first_node()}:{RDZV_PORT}"
    run_id = args.rdzv_id or os.environ.get("SLURM_JOB_ID") or p.error("--rdzv-id or $SLURM_JOB_ID needed")
    cmd = torchrun_command(sys.executable, args.nodes, args.gpus_per_node, endpoint, run_id) + rest
    return supervise(cmd, torchrun=True)  # stop signals reach the ranks; a stop to be resumed exits RESUME_EXIT


if __name__ == "__main__":
    sys.exit(main())
