"""The cluster environment installs exactly the pins the package declares."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_pins_equal_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    declared = {d.split("#")[0].strip() for d in declared}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) == declared


def test_torch_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert any(d.startswith("filelock<4") for d in deps)


def _tracked_text_files():
    import subprocess

    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in out.splitlines():
        path = ROOT / rel
        if path.suffix in (".py", ".smk", ".yaml", ".yml", ".sh", ".md", ".rst", ".toml") or path.name in (
                "Snakefile", "Makefile"):
            if not rel.startswith("benchmarks/measured/") and path.is_file():
                yield rel, path.read_text(encoding="utf-8")


def test_nothing_cites_a_file_outside_the_repository():
    # the method's facts live in docs/method.md; SPEC.md and shared/ are not part of a clone
    import re

    outside = re.compile(r"SPEC\.md|SPEC section|\.\./shared/|shared/(?:research|paper|hooks|SPEC|ARCHITECTURE|seed-README)")
    bad = [rel for rel, text in _tracked_text_files() if rel != "tests/test_packaging.py" and outside.search(text)]
    assert bad == []
    assert (ROOT / "docs" / "method.md").is_file()


def test_readme_is_a_short_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 16_000
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    for link in __import__("re").findall(r"\]\(((?:docs)/[^)#]+)\)", text):
        assert (ROOT / link).exists(), link
