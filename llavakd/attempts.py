"""A job's attempts: how each began and ended, and when retrying stops.

Unattended retries (profiles/slurm ``retries``) resume a training job from its newest intact
checkpoint and an evaluation from its finished benchmarks. A job can also fail for a reason that a
retry does not fix: a bug, a bad file, a model too large for the GPU. ``Attempts.begin`` therefore
refuses to start when the two attempts before it, in the same workflow session, failed the same way
and made no progress: the job's progress (its newest intact checkpoint, or the benchmarks it has
finished) was the same when both began as it is now. It raises ``GaveUp``, one line that names the
job and its log. Snakemake's remaining retries of the job then end at once.

A session is one Snakemake invocation. The workflow sets ``LLAVAKD_SESSION`` in the main process
(workflow/rules/common.smk), and local jobs and SLURM jobs (``--export=ALL``) inherit it. Running
Snakemake again after fixing the cause therefore tries the job again. Outside a session (a user at
``llavakd train`` or ``llavakd eval``) nothing is recorded and every attempt is allowed.

The history is one JSON line per event in the job's folder (``layout.RUN_ATTEMPTS``). An attempt
with no ``end`` record was killed: SIGKILL, the OOM killer, a lost node.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from llavakd.errors import LlavaKDError
from llavakd.preempt import StoppedForResume

SESSION_ENV = "LLAVAKD_SESSION"
KILLED = "killed before it could record how it ended"


class GaveUp(LlavaKDError):
    """Two attempts in a row failed the same way without progress; the job is not tried again."""


def stdout_file() -> str | None:
    """The file this process's standard output goes to (a Snakemake job's log), if it is a file."""
    try:
        target = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return target if target.startswith("/") and Path(target).is_file() else None


class Attempts:
    """The history of one job (``path``: its attempts file) whose progress ``begin``/``end`` are given."""

    def __init__(self, path: str | Path, job: str, log: str | None = None):
        self.path = Path(path)
        self.job = job
        self.log = log or stdout_file()
        self.session = os.environ.get(SESSION_ENV)

    def history(self) -> list[dict]:
        """Each attempt as ``{"begin": record, "end": record or None}``, oldest first."""
        out: list[dict] = []
        if not self.path.is_file():
            return out
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if rec.get("event") == "begin":
                out.append({"begin": rec, "end": None})
            elif rec.get("event") == "end" and out and out[-1]["end"] is None:
                out[-1]["end"] = rec
        return out

    def problem(self, progress) -> str | None:
        """Why this attempt must not start (two failures the same way, no progress), or None."""
        if self.session is None:
            return None
        last = [a for a in self.history() if a["begin"].get("session") == self.session][-2:]
        if len(last) < 2:
            return None
        ways = []
        for a in last:
            end = a["end"]
            if end is not None and end.get("outcome") != "failed":
                return None
            if a["begin"].get("progress") != progress:
                return None
            ways.append(end.get("error") if end else KILLED)
        if ways[0] != ways[1]:
            return None
        where = f"; see its log {self.log}" if self.log else ""
        return (f"{self.job}: failed twice the same way without progress ({ways[1]}); not trying again{where}. "
                f"Fix the cause and run Snakemake again (a new session tries again)")

    def _append(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut = self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
        with self.path.open("a") as fh:
            fh.write(("\n" if cut else "") + json.dumps(rec) + "\n")  # past a line a kill cut short
            fh.flush()
            os.fsync(fh.fileno())

    def begin(self, progress) -> None:
        """Record this attempt's start, or raise GaveUp (llavakd.attempts says when); outside a session,
        nothing."""
        if self.session is None:
            return
        problem = self.problem(progress)
        if problem:
            raise GaveUp(problem)
        self._append({"event": "begin", "time": time.time(), "session": self.session, "progress": progress,
                      "host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID")})

    def end(self, outcome: str, progress, error: str | None = None) -> None:
        """Record how this attempt ended: ``finished``, ``stopped`` (to be resumed) or ``failed``."""
        if self.session is None:
            return
        self._append({"event": "end", "time": time.time(), "outcome": outcome, "progress": progress,
                      "error": error})

    @contextlib.contextmanager
    def attempt(self, progress: Callable[[], object]):
        """Begin (or refuse) an attempt and record how the block ends: ``finished``, ``stopped`` on
        StoppedForResume, ``failed`` with the error's first line on anything else."""
        self.begin(progress())
        try:
            yield
        except StoppedForResume:
            self.end("stopped", progress())
            raise
        except BaseException as err:
            self.end("failed", progress(), one_line(err))
            raise
        self.end("finished", progress())


def one_line(err: BaseException) -> str:
    """How an attempt failed, in one line: the exception's type and its message's first line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def finished_files(folder: str | Path) -> list[str]:
    """An evaluation's progress: the per-benchmark result files its folder holds."""
    folder = Path(folder)
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
