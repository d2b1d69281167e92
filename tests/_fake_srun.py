"""Test double for ``srun`` inside a SLURM job, as the jobstep plugin calls it: ``srun -n1 --cpu-bind=q
--cpus-per-task=N --nodes=1 <command>``. It runs the step (the command after srun's options) in a
session of its own, as slurmstepd holds a step's processes in one container, and writes the step's
pid to ``$FAKE_SRUN_DIR/step.pid``. When the step's task exits, it kills whatever is left of the step,
as slurmstepd does, and appends the task's exit status (128 + N when signal N killed it) to
``$FAKE_SRUN_DIR/codes``.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
out = Path(os.environ["FAKE_SRUN_DIR"])
step = subprocess.Popen(args, start_new_session=True)
(out / "step.pid").write_text(str(step.pid))
code = step.wait()
code = 128 - code if code < 0 else code
try:
    os.killpg(step.pid, signal.SIGKILL)
except ProcessLookupError:
    pass
with (out / "codes").open("a") as fh:
    fh.write(f"{code}\n")
sys.exit(code)
