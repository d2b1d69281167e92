"""SLURM time requests from the price: each training and evaluation job asks for its own time.

A job's work is its price (llavakd.plan.pricer: model FLOPs at the configured or measured MFU)
spread over its GPUs, plus the time to write its checkpoints (weights and AdamW state at
``resources.checkpoint_gbps``). It asks for ``runtime_safety`` times that work plus
``startup_minutes`` plus ``stop_warning`` (after the warning the trainer only finishes a step and
saves). The request is capped by ``resources.max_runtime``, the partition's limit. A
job whose request would pass the cap runs in segments: each asks for the cap, gets SLURM's warning
``stop_warning`` seconds before it, stops at a checkpoint (llavakd.preempt) and is run again by
the workflow's retries until done. The number of segments is the work over what one segment has
left after start-up and the warning. A study without a ``cost`` section (tiny mode) asks for its
configured ``resources.<rule>.runtime``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llavakd.layout import parse_model
from llavakd.stages import STAGES, as_chain


@dataclass(frozen=True)
class TimeRequest:
    """One job's SLURM time: ``minutes`` for each of its ``segments`` attempts."""

    minutes: int
    segments: int = 1
    estimate: float | None = None
    """Minutes the job is estimated to need in one attempt (work and start-up, no safety factor)."""

    def describe(self) -> str:
        est = f"estimated {_hours(self.estimate)}, " if self.estimate is not None else ""
        if self.segments == 1:
            return f"{est}asks for {self.minutes} min"
        return f"{est}runs in {self.segments} segments of {self.minutes} min (over the cap)"


def _hours(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"


def time_request(work_minutes: float, *, cap: int | None, safety: float, startup: float,
                 warning_s: float) -> TimeRequest:
    """The request for a job of ``work_minutes`` (compute and checkpoints, one GPU set) under a cap: the
    work with its margin, the start-up, and the warning's seconds, which the trainer does not train in."""
    whole = max(1, math.ceil(work_minutes * safety + startup + warning_s / 60))
    estimate = work_minutes + startup
    if cap is None or whole <= cap:
        return TimeRequest(whole, 1, estimate)
    usable = cap - startup - warning_s / 60  # validated positive (llavakd.study.ResourcesSection)
    return TimeRequest(cap, max(2, math.ceil(work_minutes * safety / usable)), estimate)


class Schedule:
    """The time requests of a study's jobs (``train(llm, seed, chain)``, ``evaluate(model)``,
    ``agreement(model)``), each computed once."""

    def __init__(self, study):
        self.study = study
        self.limits = study.cfg.resources
        self.priced = study.cfg.cost is not None
        if self.priced:
            from llavakd.plan import pricer

            self.job_hours, self.eval_hours, self.agreement_hours, *_ = pricer(study)
        self._asked: dict[tuple, TimeRequest] = {}

    def _once(self, key: tuple, make) -> TimeRequest:
        if key not in self._asked:
            self._asked[key] = make()
        return self._asked[key]

    def _request(self, work_minutes: float) -> TimeRequest:
        r = self.limits
        return time_request(work_minutes, cap=r.max_runtime, safety=r.runtime_safety, startup=r.startup_minutes,
                            warning_s=r.stop_warning)

    def _configured(self, rule: str) -> TimeRequest:
        return TimeRequest(int(self.study.resources(rule)["runtime"]))

    def checkpoint_minutes(self, llm: str, seed: int, chain) -> float:
        """Writing the job's checkpoints: fp32 weights of the student and, when its LLM trains, AdamW's
        two fp32 moments, every ``save_steps`` of the stage's optimizer steps."""
        from llavakd.plan import llm_params, stage_records

        chain = as_chain(chain)
        st = chain.last
        cfg = self.study.stage_config(llm, seed, chain)
        steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(
            stage_records(self.study, st.name) * cfg.train.epochs / cfg.train.global_batch)
        n = llm_params(self.study, llm)
        size = 4 * n + (8 * n if "llm" in STAGES[st.name].trainable else 0)
        return steps // max(1, cfg.train.save_steps) * size / (self.limits.checkpoint_gbps * 1e9) / 60

    def train(self, llm: str, seed: int, chain: str) -> TimeRequest:
        if not self.priced:
            return self._configured("train")
        return self._once(("train", llm, seed, chain), lambda: self._request(
            self.job_hours(llm, as_chain(chain)) / self.study.train_world() * 60
            + self.checkpoint_minutes(llm, seed, chain)))

    def _eval_gpus(self) -> int:
        return max(1, int(self.study.resources("eval")["gpus"]))

    def evaluate(self, model: str) -> TimeRequest:
        if not self.priced or parse_model(model).kind != "run":
            return self._configured("eval")
        return self._once(("evaluate", model), lambda: self._request(self.eval_hours(model) / self._eval_gpus() * 60))

    def agreement(self, model: str) -> TimeRequest:
        if not self.priced:
            return self._configured("eval")
        return self._once(("agreement", model),
                          lambda: self._request(self.agreement_hours(model) / self._eval_gpus() * 60))

    @staticmethod
    def extra_retries(requests: list[TimeRequest]) -> int:
        """Retries a rule needs beyond the profile's: the segments past the first of its longest job."""
        return max((r.segments for r in requests), default=1) - 1

    def report(self, train_jobs, models: list[str], agreeing: list[str]) -> str:
        """What the dry run prints: each training job's request, the evaluations' range, the cap."""
        r = self.limits
        cap = f"cap resources.max_runtime {r.max_runtime} min" if r.max_runtime else "no cap (resources.max_runtime unset)"
        lines = [f"llavakd time requests (SLURM runtime; llavakd/schedule.py): {r.runtime_safety:g} x the estimate "
                 f"+ {r.startup_minutes:g} min start-up + the warning's {r.stop_warning} s before the limit, {cap}"]
        seen: dict = {}
        for llm, seed, chain in train_jobs:
            req = self.train(llm, seed, str(chain))
            seen.setdefault((str(chain), llm, req), []).append(seed)
        for (chain, llm, req), seeds in seen.items():
            lines.append(f"  train {llm:14s} {chain:20s} seeds {','.join(map(str, seeds)):10s} {req.describe()}")
        for kind, fn, names in (("evaluate", self.evaluate, models), ("agreement", self.agreement, agreeing)):
            reqs = [fn(m) for m in dict.fromkeys(names)]
            if reqs:
                lo, hi = min(x.minutes for x in reqs), max(x.minutes for x in reqs)
                segs = max(x.segments for x in reqs)
                lines.append(f"  {kind:9s} {len(reqs):3d} jobs ask for {lo}-{hi} min" +
                             (f"; the longest runs in {segs} segments" if segs > 1 else ""))
        return "\n".join(lines)
