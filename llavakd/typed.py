"""Dataclass trees from nested dicts (YAML), with every problem listed at once (torch-free).

    problems: list[str] = []
    cfg = build(StudyConfig, raw, "", problems)   # unknown keys, wrong types, missing required keys

One reader for both configuration trees of the project: a training job's ``StageConfig``
(``llavakd.config``) and a study's ``StudyConfig`` (``llavakd.study``). It understands the field
types those trees use: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
``list[X]``, ``dict[str, X]``, nested dataclasses, ``Any``, and a union of a string and a list of
strings. A field without a default is required. A dataclass may add what a type cannot say
(ranges, cross-field rules) in a ``problems(self, path) -> list[str]`` method, called on every node
once it is built. A mistyped value is reported and the field keeps its default, so one pass
reports everything. (jsonschema would validate the dicts, but the planner then read them untyped;
pydantic is not a dependency and would be one more config language for a dozen dataclasses.)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

_BAD = object()  # a mistyped value: reported, then the field keeps its default so validation goes on
_NONE = type(None)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _fmt(value) -> str:
    return repr(value)


def coerce(value, tp, path: str, problems: list[str]):
    """``value`` as type ``tp``, or ``_BAD`` after adding a line naming ``path`` to ``problems``."""
    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if _NONE in args:
                return None
            problems.append(f"{path}: required, got null")
            return _BAD
        rest = [a for a in args if a is not _NONE]
        if len(rest) == 1:
            return coerce(value, rest[0], path, problems)
        for a in rest:  # str | list[str]: the first that takes the value without a problem
            trial: list[str] = []
            out = coerce(value, a, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: expected {' or '.join(_name(a) for a in rest)}, got {_fmt(value)}")
        return _BAD
    if value is None:
        problems.append(f"{path}: expected {_name(tp)}, got null")
        return _BAD
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[0]):
            return value
        problems.append(f"{path}: must be one of {', '.join(map(str, allowed))}, got {_fmt(value)}")
        return _BAD
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_fmt(value)}")
            return _BAD
        out = [coerce(v, item, f"{path}.{i}", problems) for i, v in enumerate(value)]
        return [v for v in out if v is not _BAD]  # the bad items are reported; checks go on with the rest
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_fmt(value)}")
            return _BAD
        out = {str(k): coerce(v, item, f"{path}.{k}", problems) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _BAD}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, f"{path}.", problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path}: expected true/false, got {_fmt(value)}")
        return _BAD
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{path}: expected an integer, got {_fmt(value)}")
        return _BAD
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{path}: expected a number, got {_fmt(value)}")
        return _BAD
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{path}: expected a string, got {_fmt(value)}")
        return _BAD
    return value


def _name(tp) -> str:
    if typing.get_origin(tp) is list:
        return "a list"
    if typing.get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def build(cls, raw, prefix: str, problems: list[str]):
    """An instance of the dataclass ``cls`` from ``raw`` (a mapping); problems are appended, each
    line starting with the key's dotted path (``prefix`` ends with a dot, or is empty)."""
    where = prefix[:-1] if prefix else "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        raw = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields:
            close = [f for f in fields if f.startswith(str(key)[:3])]
            problems.append(f"{path}: unknown key" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            continue
        value = coerce(value, hints[key], path, problems)
        if value is not _BAD:
            kwargs[key] = value
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            if name not in raw:
                problems.append(f"{prefix}{name}: required")
            kwargs[name] = _placeholder(hints[name])
    node = cls(**kwargs)
    check = getattr(node, "problems", None)
    if callable(check):
        problems += check(prefix)
    return node


def _placeholder(tp):
    """A stand-in value for a required field that is missing or mistyped (reported already)."""
    if _is_union(tp):
        return None
    origin = typing.get_origin(tp)
    if origin is list:
        return []
    if origin is dict:
        return {}
    if origin is Literal:
        return typing.get_args(tp)[0]
    if dataclasses.is_dataclass(tp):
        return build(tp, {}, "", [])
    return {bool: False, int: 0, float: 0.0, str: ""}.get(tp)


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (torchtitan's style), by reading its
    source; a dataclass built from a registry (``make_dataclass``) carries them in ``__field_docs__``."""
    if "__field_docs__" in vars(cls):
        return dict(cls.__field_docs__)
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            out[node.target.id] = inspect.cleandoc(after.value.value)
    return out
