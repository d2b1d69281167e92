"""Task YAML files as lmms-eval reads them, written so that they work wherever they sit.

lmms-eval resolves a YAML's ``include:`` against the working directory or the including file's folder
only, so a task that includes a stock file by its absolute path works on one machine. A task built on
a stock one is therefore written flat (``flat_task``): the stock file with its own includes merged as
lmms-eval's ``load_yaml_config`` merges them (each included file first, the file's own keys over
them), and each of its ``!function utils.f`` named by absolute module
(``lmms_eval.tasks.<folder>.utils.f``), which lmms-eval imports wherever the YAML sits. Loaded by
lmms-eval, a flat file gives the same task configuration as the include it replaces.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml


def lmms_tasks_root() -> Path:
    import lmms_eval.tasks as tasks_pkg

    return Path(tasks_pkg.__file__).parent


class Function(str):
    """A ``!function`` entry of a task YAML (its dotted name), kept as such through a merge and a dump."""


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor("!function", lambda loader, node: Function(loader.construct_scalar(node)))
_Dumper.add_representer(Function, lambda dumper, f: dumper.represent_scalar("!function", str(f)))


def _absolute(value, folder: Path):
    """``!function`` names of a stock file (relative: ``utils.f``, a module beside it) made absolute."""
    if isinstance(value, Function):
        *module, fn = value.split(".")
        beside = folder / "/".join(module)
        if beside.with_suffix(".py").is_file() and lmms_tasks_root() in beside.parents:
            rel = beside.relative_to(lmms_tasks_root())
            return Function(".".join(("lmms_eval", "tasks", *rel.parts, fn)))
        return value
    if isinstance(value, dict):
        return {k: _absolute(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    return value


def flat_task(path: str | Path) -> dict:
    """A task YAML with its includes merged and its stock functions named by absolute module."""
    path = Path(path)
    raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    out: dict = {}
    includes = raw.pop("include", [])
    for inc in [includes] if isinstance(includes, str) else includes:
        out.update(flat_task(Path(inc) if Path(inc).is_absolute() else path.parent / inc))
    out.update(_absolute(raw, path.parent))
    return out


def dump_task(config: dict, head: list[str] | None = None) -> str:
    """A task YAML's text: comment lines, then the config (``!function`` entries as such)."""
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    body = re.sub(r"!function '([\w.]+)'", r"!function \1", body)  # PyYAML quotes a tagged scalar; names need not
    return "".join(f"{line}\n" for line in head or []) + body
