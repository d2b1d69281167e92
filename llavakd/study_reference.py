"""docs/study.md, the reference of every study key, written from the typed tree (llavakd.study).

    python -m llavakd.study_reference > docs/study.md      # a test keeps the page equal to this output

Each section of ``StudyConfig`` becomes a table: key, type, default and the field's docstring.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing

from llavakd.study import RULE_RESOURCES, StudyConfig
from llavakd.typed import field_docs

HEADER = """# The study config, key by key

Generated from `llavakd/study.py` by `python -m llavakd.study_reference` (a test keeps this page in
step). A study is one YAML file (`config/*.yaml`, Snakemake's `--configfile`); `Study.load` reads
it once into this typed tree and lists every unknown key, wrong type and bad value at once, so a
typo fails `snakemake -n`. Keys without a default are required. Per-stage training overrides
(`train.*`) are dotted keys of a training job's stage config (`llavakd/config.py`).
"""


def _type(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(tp) if a is not type(None)) + (
            " or null" if type(None) in typing.get_args(tp) else "")
    if origin is list:
        return f"list of {_type(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of name to {_type(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return getattr(tp, "__name__", str(tp)).replace("Any", "any")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "—" if f.default is None else f"`{f.default}`"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "—" if dataclasses.is_dataclass(value) or not value else f"`{value}`"
    return "required"


def _nested(tp) -> list:
    out, stack = [], [tp]
    while stack:
        t = stack.pop()
        if dataclasses.is_dataclass(t):
            out.append(t)
        else:
            stack += list(typing.get_args(t))
    return out


def sections() -> list[type]:
    """StudyConfig and every section class below it, in the order the page lists them."""
    seen, todo = [], [StudyConfig]
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        hints = typing.get_type_hints(cls)
        todo += [t for f in dataclasses.fields(cls) for t in _nested(hints[f.name]) if t not in seen]
    return seen


def reference() -> str:
    lines = [HEADER]
    for cls in sections():
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        lines += ["", f"## {cls.__name__}", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            lines += [" ".join(cls.__doc__.split()), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            lines.append(f"| `{f.name}` | {_type(hints[f.name])} | {_default(f)} | {' '.join(docs[f.name].split())} |")
    lines += ["", "## What each rule gets when neither its section nor `resources.default` says", "",
              "| rule | resources |", "|---|---|"]
    lines += [f"| `{rule}` | {', '.join(f'{k} {v}' for k, v in res.items()) or '—'} |"
              for rule, res in RULE_RESOURCES.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
