"""llavakd.schedule: each job's SLURM time from its price, the cap, and the segments beyond it."""

from __future__ import annotations

import math
import re

import yaml
from conftest import REPO, dry_run

from llavakd.plan import Study, train_jobs
from llavakd.schedule import Schedule, time_request


def test_a_request_is_the_estimate_with_its_margin_and_segments_cover_what_the_cap_cannot():
    kw = dict(safety=1.5, startup=10, warning_s=600)
    assert time_request(40, cap=None, **kw).minutes == 80 and time_request(40, cap=None, **kw).segments == 1
    assert time_request(40, cap=80, **kw).segments == 1  # exactly at the cap fits: 60 min to train before the warning
    assert time_request(40, cap=79, **kw).segments == 2
    over = time_request(200, cap=120, **kw)  # 300 min of work with its margin, 100 usable a segment
    assert (over.minutes, over.segments) == (120, 3)
    assert time_request(201, cap=120, **kw).segments == 4
    assert time_request(80, cap=None, **kw).minutes > time_request(40, cap=None, **kw).minutes


def _paper():
    return Study.load(yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))


def test_a_studys_jobs_ask_for_their_priced_time_and_an_unpriced_study_for_its_configured_one():
    study = _paper()
    sched = Schedule(study)
    jobs = train_jobs(study, study.table1_models())
    req = {(llm, str(chain)): sched.train(llm, seed, str(chain)) for llm, seed, chain in jobs}
    assert req[("qwen1.5-0.5b", "pt")].minutes < req[("qwen1.5-0.5b", "dpt")].minutes  # the teacher's forward
    assert req[("qwen1.5-0.5b", "pt--sft")].minutes < req[("qwen1.5-1.8b", "pt--sft")].minutes
    cap = study.cfg.resources.max_runtime
    assert all(r.minutes <= cap for r in req.values())
    over = [k for k, r in req.items() if r.segments > 1]
    assert ("qwen1.5-4b", "pt--sft") in over and all(req[k].minutes == cap for k in over)
    assert Schedule.extra_retries(list(req.values())) == max(r.segments for r in req.values()) - 1
    tiny = Study.load(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    llm, seed, chain = train_jobs(tiny, tiny.table1_models())[0]
    assert Schedule(tiny).train(llm, seed, str(chain)).minutes == tiny.resources("train")["runtime"]


def test_the_paper_slurm_dry_run_prints_each_jobs_own_time_none_above_the_cap_and_the_segments():
    out = dry_run("--executor", "slurm", "--workflow-profile", "profiles/slurm", "reproduce_table1",
                  "--configfile", "config/paper.yaml")
    cap = _paper().cfg.resources.max_runtime
    asks = {}
    for block in out.split("rule train:")[1:]:
        block = block.split("\n\n")[0]
        wc = re.search(r"wildcards: llm=(\S+), seed=\d+, chain=(\S+)", block)
        res = re.search(r"resources: .*runtime=(\d+), slurm_extra=--signal=URG@600", block)
        assert wc and res, block
        asks[wc.groups()] = int(res.group(1))
    assert len(asks) >= 20 and len(set(asks.values())) >= 8, asks  # they differ with the price
    assert max(asks.values()) == cap and min(asks.values()) < cap / 3
    report = out.split("llavakd time requests")[1]
    assert re.search(r"train qwen1\.5-4b\s+pt--sft\s.*runs in 2 segments of 120 min \(over the cap\)", report), report
    ev = [int(m) for m in re.findall(r"rule evaluate:\n(?:.*\n)*?\s+resources: .*runtime=(\d+)", out)]
    assert ev and max(ev) <= cap and math.prod(ev) > 0


def test_a_cap_that_leaves_no_time_to_train_and_a_bad_write_rate_fail_the_plan_naming_their_keys():
    import pytest

    from llavakd.errors import ConfigError

    raw = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    raw["resources"].update({"max_runtime": 15, "checkpoint_gbps": 0})
    with pytest.raises(ConfigError) as err:
        Study.load(raw)
    text = str(err.value)
    assert "resources.max_runtime: 15 minutes leave no time to train" in text
    assert "resources.checkpoint_gbps: must be > 0" in text
