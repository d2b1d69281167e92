"""llavakd.attempts: when an unattended retry is refused (two failures the same way, no progress, one
session), and when it is not; then the rule at work in the trainer."""

from __future__ import annotations

import json

import pytest

from llavakd.attempts import KILLED, Attempts, GaveUp, finished_files
from llavakd.preempt import StoppedForResume


def _fail(att: Attempts, progress, error="ValueError: bad record 3"):
    with pytest.raises(ValueError), att.attempt(lambda: progress):
        raise ValueError(error.split(": ", 1)[1])


@pytest.fixture
def att(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVAKD_SESSION", "s1")
    return Attempts(tmp_path / "attempts.jsonl", job="training job runs/x", log="/logs/x.log")


def test_two_failures_the_same_way_without_progress_refuse_the_third(att):
    _fail(att, "checkpoint-4")
    _fail(att, "checkpoint-4")
    with pytest.raises(GaveUp) as err:
        att.begin("checkpoint-4")
    line = str(err.value)
    assert line.startswith("training job runs/x: failed twice the same way without progress (ValueError: bad record 3)")
    assert "/logs/x.log" in line and "\n" not in line
    begun = [json.loads(x) for x in att.path.read_text().splitlines() if '"begin"' in x]
    assert len(begun) == 2  # the refused attempt is not recorded as begun


@pytest.mark.parametrize("between", ["progress", "other_error", "stopped", "finished", "other_session"])
def test_a_retry_is_allowed_after_progress_a_different_error_a_stop_or_a_new_session(att, monkeypatch, between):
    _fail(att, "checkpoint-4")
    if between == "progress":
        _fail(att, "checkpoint-4")
        att.begin("checkpoint-6")  # the second attempt wrote checkpoint-6 before it failed
        return
    if between == "other_error":
        _fail(att, "checkpoint-4", "ValueError: bad record 7")
    elif between == "stopped":
        with pytest.raises(StoppedForResume), att.attempt(lambda: "checkpoint-4"):
            raise StoppedForResume("stopped on SIGURG")
    elif between == "finished":
        with att.attempt(lambda: "checkpoint-4"):
            pass
    else:
        monkeypatch.setenv("LLAVAKD_SESSION", "s0")
        _fail(Attempts(att.path, job=att.job), "checkpoint-4")
    att.begin("checkpoint-4")


def test_outside_a_session_nothing_is_recorded_and_every_attempt_is_allowed(att, monkeypatch):
    monkeypatch.delenv("LLAVAKD_SESSION")
    plain = Attempts(att.path, job=att.job)
    for _ in range(3):
        _fail(plain, None)
    plain.begin(None)
    assert not att.path.exists()  # a user's own `llavakd eval` folder gets no history file


def test_two_attempts_killed_without_progress_are_the_same_way(att):
    att.begin(None)  # killed: no end record
    att.path.write_text(att.path.read_text() + '{"event": "end", "outcome": "fa')  # a line cut short by the kill
    att.begin(None)
    with pytest.raises(GaveUp, match=KILLED):
        att.begin(None)


def test_an_evaluations_progress_is_its_finished_benchmarks(tmp_path):
    assert finished_files(tmp_path / "none") == []
    for name in ("pope.json", "mme.json", "attempts.jsonl", "COMPLETE"):
        (tmp_path / name).write_text("{}")
    assert finished_files(tmp_path) == ["mme.json", "pope.json"]
