"""A plain (non-editable) `pip install .` works: the package finds its data through
importlib.resources, not through the repository's folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_non_editable_install_runs_from_another_folder(tmp_path):
    src = tmp_path / "src"  # a copy: pip builds in the source tree, which must stay clean
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "llavakd", src / "llavakd", ignore=shutil.ignore_patterns("__pycache__"))
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the project venv's packages (torch, transformers, ...), after the scratch venv's own; a path
    # listed in a .pth file is not itself scanned for .pth files, so the editable finder stays out
    (site / "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the wheel is built by the project venv's setuptools (no download), installed into the scratch venv
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheels"), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("llavakd-*.whl")
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([py, "-c", "import llavakd; print(llavakd.__file__)"], cwd=work, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not the repository
    cli = env / "bin" / "llavakd"
    helped = subprocess.run([cli, "--help"], cwd=work, capture_output=True, text=True)
    assert helped.returncode == 0 and "lmms-tasks" in helped.stdout, helped.stderr[-2000:]
    tasks = subprocess.run([cli, "lmms-tasks", "--out", str(work / "tasks")], cwd=work, capture_output=True, text=True)
    assert tasks.returncode == 0, tasks.stderr[-2000:]
    assert list((work / "tasks").glob("*.yaml"))
    paper = subprocess.run([py, "-c", "from llavakd.report.reference import load_paper; print(len(load_paper()))"],
                           cwd=work, capture_output=True, text=True)
    assert paper.returncode == 0 and int(paper.stdout) > 0, paper.stderr[-2000:]
