"""Stopping for a scheduler: which signals mean "stop soon", who passes them on, and the "resume me" exit.

A SLURM job ends at its time limit, or on pre-emption, with SIGTERM to every process of its steps
and SIGKILL once ``KillWait`` (time limit) or ``GraceTime`` (pre-emption) has passed; on a node
failure no signal comes at all. The trainer turns a signal into a checkpoint: it finishes the
optimizer step in flight, writes a complete checkpoint (marker last), and exits with
``RESUME_EXIT``, which the workflow's retries (profiles/slurm) answer by running the job again,
from that checkpoint (llavakd.train.run). A second signal changes nothing, and a SIGKILL before the
new checkpoint's marker leaves the one before it the newest intact checkpoint.

The warning signal is SIGURG, asked for by the training rule with ``--signal=URG@<seconds>``
(``resources.stop_warning``, sent to the job's steps, not to its batch shell). The SLURM
jobstep plugin runs a job as ``srun ... python -m snakemake`` (the step) -> bash -> llavakd.launch
-> the trainer, or -> torchrun's agent -> its ranks, and SLURM signals every process of the step.
SIGUSR1 would kill Snakemake's jobstep process, bash and torchrun's agent, whose default action
on it is to exit, and the step would end under the trainer while it writes its checkpoint. The
default action on SIGURG is to do nothing, so only the processes that ask for it act on it. The
trainer also stops on SIGUSR1 (for a user's own sbatch script) and on SIGTERM (pre-emption without
a warning: the time between SIGTERM and SIGKILL is the cluster's ``GraceTime``).

``supervise`` is how llavakd.launch and llavakd.multinode run their child. It passes a stop signal
on to all of the child's descendants (a warning as SIGURG): torchrun starts each rank in a session of
its own, where a cluster that signals process groups (proctrack/pgid) would not reach it. It keeps
torchrun's agent alive through SIGTERM, and it turns a child's exit into ``RESUME_EXIT`` when the
trainer left a stop note, because torchrun reports any failed rank as exit 1.

On SLURM, SIGTERM also reaches the job's bash, whose default is to die, ending the step under the
trainer: the workflow's shell prefix traps it (workflow/rules/common.smk), so bash waits for the
trainer and exits with its status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

RESUME_EXIT = 75
"""The exit status of a job that stopped at a checkpoint to be resumed (sysexits' EX_TEMPFAIL)."""

WARNING = signal.SIGURG
"""The signal the training rule asks SLURM to send ahead of the time limit, and the one ``supervise``
passes a warning on as."""

STOP_SIGNALS = (WARNING, signal.SIGUSR1, signal.SIGTERM)
"""Signals after which the trainer checkpoints at the next step boundary and exits with RESUME_EXIT."""

NOTE_ENV = "LLAVAKD_STOP_NOTE"
"""Where a supervised trainer writes its stop note (a file ``supervise`` made and reads back)."""


def slurm_signal_flag(seconds: int) -> str:
    """The sbatch flag asking for the warning signal ``seconds`` before the time limit, sent to the
    job's steps (every process ``srun`` started), not to the batch shell."""
    return f"--signal={WARNING.name.removeprefix('SIG')}@{int(seconds)}"


class StopRequest:
    """The stop signals received by this process: a handler that only records (signal-safe), for
    the trainer to act on at its next step boundary."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        """Handle the stop signals (main thread only) until the block ends, then restore the old handlers."""
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else ""


def write_note(text: str) -> None:
    """The trainer's stop note for its supervisor (a no-op outside ``supervise``); the node's first
    local rank writes it."""
    path = os.environ.get(NOTE_ENV)
    if path and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        Path(path).write_text(text)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def supervise(cmd: list[str], env: dict | None = None, torchrun: bool = False) -> int:
    """Run ``cmd``, passing stop signals on to all of its descendants; its exit status, or
    ``RESUME_EXIT`` when it failed after its trainer wrote a stop note.

    ``torchrun``: the command is torchrun's agent. It is started ignoring SIGTERM, with torchrun's own
    SIGTERM handler left out (``TORCHELASTIC_SIGNALS_TO_HANDLE``): that handler would kill the ranks 30 s
    after a pre-emption's SIGTERM, and dying of it would end the job step under them. Its ranks inherit
    the ignored SIGTERM until the trainer installs its own handler; SIGINT still ends a run."""
    fd, note = tempfile.mkstemp(prefix="llavakd-stop-")
    os.close(fd)
    env = dict(os.environ if env is None else env, **{NOTE_ENV: note})
    if torchrun:
        env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGINT,SIGHUP,SIGQUIT"
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_sigterm if torchrun else None)

    def forward(signum, frame):
        # to every descendant (torchrun's ranks sit in sessions of their own): SIGTERM as it is, a
        # warning as SIGURG, which a process that does not ask for it ignores (SIGUSR1 would end
        # torchrun's agent and bash)
        sent = signal.SIGTERM if signum == signal.SIGTERM else WARNING
        for pid in descendants(proc.pid) + [proc.pid]:
            try:
                os.kill(pid, sent)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        code = _exit_status(proc.wait())
        stopped = Path(note).read_text().strip()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        Path(note).unlink(missing_ok=True)
    if code not in (0, RESUME_EXIT) and stopped:
        print(f"llavakd: {stopped}; exiting with {RESUME_EXIT} (resume me)", file=sys.stderr, flush=True)
        return RESUME_EXIT
    return code


class StoppedForResume(Exception):
    """The trainer stopped at a checkpoint on a stop signal; the job is to be run again with --resume.
    Not an error: the CLI prints the line and exits with ``RESUME_EXIT``."""

    exit_code = RESUME_EXIT
