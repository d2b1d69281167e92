"""llavakd.launch: concurrent local GPU jobs get distinct devices; schedulers' choices are kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from llavakd.launch import acquire

PRINT = [sys.executable, "-c", "import os, time; time.sleep(1.5); print(os.environ.get('CUDA_VISIBLE_DEVICES'))"]


def _launch(n, lock_dir, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    env.update(LLAVAKD_GPU_COUNT="3", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "llavakd.launch", "--gpus", str(n), "--lock-dir", str(lock_dir),
                             "--", *PRINT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_distinct_devices(tmp_path):
    procs = [_launch(1, tmp_path), _launch(2, tmp_path)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    devices = [d for o in outs for d in o.split(",")]
    assert sorted(devices) == ["0", "1", "2"], outs


def test_a_job_waits_until_devices_are_free(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVAKD_GPU_COUNT", "3")
    ids, held = acquire(3, tmp_path, poll_s=0.1)
    assert ids == [0, 1, 2]
    with pytest.raises(TimeoutError):
        acquire(1, tmp_path, poll_s=0.1, timeout_s=0.3)
    for fh in held:
        fh.close()
    assert acquire(1, tmp_path, poll_s=0.1, timeout_s=1)[0] == [0]


def test_too_many_gpus_and_scheduler_choice(tmp_path):
    p = _launch(4, tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "4 GPU(s) requested but this machine has 3" in err
    t0 = time.time()
    p = _launch(2, tmp_path, {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "5,6"})
    assert p.communicate(timeout=60)[0].strip() == "5,6" and time.time() - t0 < 30
