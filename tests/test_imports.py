"""The package's import graph: no cycles anywhere in llavakd/, and the tiny world imported only by the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llavakd"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (function-level imports included: a lazy import
    is still a dependency, and a cycle through one is what hid the writers from grep)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    prefix = root.name
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t == prefix or t.startswith(prefix + "."):
                    while t not in modules and "." in t:
                        t = t.rpartition(".")[0]
                    if t in modules and t != name:
                        graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_sees_a_lazy_cycle(tmp_path):
    """Negative control: a cycle closed by a function-level import, as data/synth <-> data/standins was."""
    pkg = tmp_path / "llavakd"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "synth.py").write_text("def f():\n    from llavakd.data import standins\n")
    (pkg / "data" / "standins.py").write_text("from llavakd.data.synth import f\n")
    (pkg / "io.py").write_text("from . import data\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and set(cycle) == {"llavakd.data.synth", "llavakd.data.standins"}


def test_the_tiny_world_is_imported_only_by_the_cli():
    graph = import_graph(PACKAGE)
    users = sorted(m for m, deps in graph.items()
                   if not m.startswith("llavakd.tiny") and any(d.startswith("llavakd.tiny") for d in deps))
    assert users == ["llavakd.cli"]
