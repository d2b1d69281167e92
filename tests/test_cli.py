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
