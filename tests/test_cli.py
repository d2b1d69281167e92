"""The console script: --help, and clean errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

from llavakd.cli import build_parser, main


def test_help_lists_every_subcommand_with_a_line():
    text = build_parser().format_help()
    for name in ("tiny-models", "build", "convert-upstream"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(name))
        assert len(line.split(maxsplit=1)) == 2, f"{name} has no one-line explanation"


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
