"""The stage table and the chain grammar: one parser, one formatter, the wildcard regex made from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llavakd.stages import CHAIN_REGEX, DEFAULT_TERMS, STAGES, TERMS, Chain, ChainError, Step, with_terms

REPO = Path(__file__).resolve().parents[1]
GOOD = ["pt--sft", "dpt--sft--dft", "dpt~res+vis--sft--dft~rel", "pt--sft--dft", "dpt", "pt", "dpt~vis--sft"]
BAD = ["sft--dft", "pt--sft--dpt", "dpt~xyz--sft", "dpt~--sft", "sft~res", "pt~res", "xyz", "pt---sft", "dpt~res+"]


@pytest.mark.parametrize("text", GOOD)
def test_good_chains_parse_format_and_match_the_wildcard(text):
    chain = Chain.parse(text)
    assert Chain.parse(str(chain)) == chain
    assert re.fullmatch(CHAIN_REGEX, str(chain))
    assert [str(p) for p in chain.prefixes()][-1] == str(chain)


@pytest.mark.parametrize("text", BAD)
def test_bad_chains_are_refused(text):
    with pytest.raises(ChainError):
        Chain.parse(text)


def test_the_wildcard_refuses_what_no_stage_means():
    # the rules' regex comes from the grammar: unknown terms and stages do not match (the old one took ~xyz)
    for text in ("dpt~xyz--sft", "dpt~--sft", "qpt--sft", "dpt~res+--sft"):
        assert not re.fullmatch(CHAIN_REGEX, text), text


def test_formatting_is_canonical():
    assert str(Step.parse("dft~rel+res")) == "dft~res+rel"  # terms in TERMS order
    assert str(Step.parse("dft~res+vis+rel")) == "dft"  # the paper's terms: the bare name
    extra = [t for t in TERMS if t not in DEFAULT_TERMS]  # terms added since: named, never implied
    assert extra and str(Step.parse("dft~" + "+".join([*DEFAULT_TERMS, *extra]))) != "dft"
    assert str(with_terms("dpt", ["vis"])) == "dpt~vis" and str(with_terms("sft", None)) == "sft"
    chain = Chain.parse("dpt~res--sft--dft")
    assert str(chain.parent()) == "dpt~res--sft" and chain.last.name == "dft" and chain.last.terms == DEFAULT_TERMS
    assert Chain.parse("pt").parent() is None


def test_stage_table_facts():
    assert {n for n, s in STAGES.items() if s.distill} == {"dpt", "dft"}
    assert STAGES["dpt"].dataset == "captions" and STAGES["dft"].dataset == "instruct"
    assert STAGES["pt"].trainable == ("projector",) and STAGES["sft"].trainable == ("projector", "llm")
    assert (STAGES["dpt"].global_batch, STAGES["dpt"].lr, STAGES["dft"].global_batch, STAGES["dft"].lr) == (
        256, 1e-3, 128, 2e-5)


def test_no_chain_is_split_outside_the_stages_module():
    pattern = re.compile(r"""split\(\s*["'](--|~)["']""")
    offenders = [f"{p.relative_to(REPO)}:{i}" for root in ("llavakd", "workflow") for p in (REPO / root).rglob("*")
                 if p.suffix in (".py", ".smk") and p.name != "stages.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert "chain=CHAIN_REGEX" in (REPO / "workflow" / "rules" / "common.smk").read_text()
