"""Chance on the stand-ins: the best constant answer, scored by lmms-eval, against hand computations."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from llavakd.cli import main
from llavakd.report.collect import read_chance
from llavakd.tiny.chance import chance


@pytest.fixture(scope="module")
def world(standin_world):
    return standin_world


def _split(world, rel):
    return pd.read_parquet(world / "bench" / f"{rel}.parquet")


@pytest.mark.slow
def test_chance_is_the_best_constant_answer_by_hand(world, tmp_path):
    assert main(["chance", "--world", str(world), "--out", str(tmp_path / "chance.json")]) == 0
    got = json.loads((tmp_path / "chance.json").read_text())
    assert read_chance(tmp_path / "chance.json") == {b: r["headline"] for b, r in got.items()}
    assert got == chance(world)  # the file is what the function computes
    # POPE: F1 of always "yes" is 2p / (1 + p), p the share of "yes" questions; "no" scores 0
    f1 = []
    for split in ("adversarial", "popular", "random"):
        p = (_split(world, f"pope/{split}")["answer"] == "yes").mean()
        f1.append(100 * 2 * p / (1 + p))
    assert got["pope"]["headline"] == pytest.approx(sum(f1) / 3, abs=1e-3)
    assert got["pope"]["answers"] == {"pope_adv": "yes", "pope_pop": "yes", "pope_random": "yes"}
    # letter choices: the most frequent letter
    for bench, rel in (("mmb", "mmbench_en/dev"), ("mmb_cn", "mmbench_cn/dev")):
        counts = Counter(_split(world, rel)["answer"])
        assert got[bench]["headline"] == pytest.approx(100 * max(counts.values()) / sum(counts.values()), abs=1e-3)
    sqa = Counter("ABCDE"[a] for a in _split(world, "scienceqa/test")["answer"])
    assert got["sciqa"]["headline"] == pytest.approx(100 * max(sqa.values()) / sum(sqa.values()), abs=1e-3)
    # MME: a constant answer gets each image's two questions half right, so accuracy+ is 0
    mme = _split(world, "mme/test")
    best = max((mme["answer"] == a).groupby(mme["category"]).mean().mean() for a in ("Yes", "No"))
    assert got["mme"]["headline"] == pytest.approx(100 * best / 2, abs=1e-3)
    assert all(0 <= r["headline"] < 100 for r in got.values())
