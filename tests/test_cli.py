"""The console script: --help, and clean errors with a non-zero exit."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from llavakd.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """{name: its parser}, as the top-level parser holds them."""
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subcommands())


def test_help_lists_every_subcommand_with_a_line():
    text = build_parser().format_help()
    assert len(SUBCOMMANDS) >= 15, SUBCOMMANDS
    for name in SUBCOMMANDS:
        lines = text.splitlines()
        at = next((i for i, ln in enumerate(lines) if ln.split()[:1] == [name]), None)
        assert at is not None, f"{name} is not listed in llavakd --help"
        said = lines[at].split(maxsplit=1)[1:] or lines[at + 1].split()  # a long name: the text on the next line
        assert said, f"{name} has no one-line explanation"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_explains_itself_with_help(name, capsys):
    """``llavakd <name> --help`` exits 0 with its usage, and every option it takes says what it is."""
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: llavakd {name}"), out[:200]
    parser = _subcommands()[name]
    silent = [a.option_strings or [a.dest] for a in parser._actions if a.dest != "help" and not a.help]
    assert not silent, f"llavakd {name}: no help text for {silent}"
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in out, f"llavakd {name} --help does not show {flag}"


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "llavakd.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "convert-upstream" in out.stdout


def test_missing_path_is_a_clean_error(tmp_path, capsys):
    rc = main(["build", "--vision", str(tmp_path / "nope"), "--llm", str(tmp_path / "nope2"),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "vision tower" in err and str(tmp_path / "nope") in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_build_via_cli_then_refuses_overwrite(tiny_components, tmp_path, capsys):
    args = ["build", "--vision", str(tiny_components / "vision" / "siglip"),
            "--llm", str(tiny_components / "llm" / "qwen2.5-0.5b"), "--strategy", "full",
            "--out", str(tmp_path / "m")]
    assert main(args) == 0
    assert (tmp_path / "m" / "COMPLETE").exists()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_readmes_help_block_is_what_the_cli_prints():
    """README shows `llavakd --help`'s subcommand lines; each must be a line the parser prints (the
    stage list in `train`'s line comes from llavakd.stages, so a new stage shows up in both)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("$ llavakd --help\n", 1)[1].split("```", 1)[0]
    printed = {" ".join(ln.split()) for ln in build_parser().format_help().splitlines()}
    shown = [" ".join(ln.split()) for ln in block.splitlines() if ln.strip()]
    assert shown and all(ln in printed for ln in shown), [ln for ln in shown if ln not in printed]
    from llavakd.stages import NAMES

    assert re.search(rf"train one stage \({', '.join(NAMES)}\)", " ".join(shown))


def test_a_bug_keeps_its_traceback_while_a_user_error_is_one_line(monkeypatch, capsys):
    import pytest

    import llavakd.cli as cli
    from llavakd.errors import LlavaKDError

    def user_error(args):
        raise LlavaKDError("data.json: missing")

    def bug(args):
        return {}["no such key"]

    monkeypatch.setattr(cli, "cmd_synth_world", user_error)
    assert main(["synth-world", "--out", "x"]) == 2
    assert capsys.readouterr().err.strip() == "llavakd synth-world: error: data.json: missing"
    monkeypatch.setattr(cli, "cmd_synth_world", bug)
    with pytest.raises(KeyError):  # not swallowed into one line: Python prints the traceback
        main(["synth-world", "--out", "x"])
