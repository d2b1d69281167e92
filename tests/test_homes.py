"""One home per piece of knowledge, checked on the source: run-folder and report names are spelled
only in llavakd/layout.py, and only llavakd/plan.py's ``Study.load`` reads a study's raw dict.
Each check has a negative control: a snippet that breaks the rule must be caught."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import llavakd.layout as layout
from llavakd.typed import field_docs

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llavakd"
RULES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]

# file names that only layout.py may spell, and folder names it may join
FILES = (layout.RUN_CONFIG, layout.RUN_METRICS, layout.RUN_METADATA, layout.FINAL_METADATA, layout.RUN_FINAL_STAGING)
FOLDERS = (layout.RUN_FINAL, layout.RUN_CHECKPOINTS, "figures", layout.TABLE1, layout.SEEDS)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # attribute docstrings
            out.add(id(node.value))
    return out


def layout_spellings(source: str) -> list[str]:
    """String literals (docstrings aside) that spell a run file's name, or a run or report folder as
    a path part (``x / "final"``, ``f"{x}/final"``, ``"checkpoint-"`` prefixes)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
            if node.right.value in FOLDERS:
                found.append(node.right.value)
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
            continue
        text = node.value
        found += [f for f in FILES if f in text]
        found += [d for d in FOLDERS if re.search(rf"(^|/){re.escape(d)}(/|\.|$)", text) and "/" in text]
        if layout.CHECKPOINT_PREFIX in text and text != layout.CHECKPOINT_PREFIX + "*":
            found.append(layout.CHECKPOINT_PREFIX)
    return found


def test_run_and_report_names_live_in_layout_only():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "layout.py":
            continue
        hits = layout_spellings(path.read_text())
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    for path in RULES:  # Snakemake files: the literal names in any string
        text = "\n".join(line for line in path.read_text().splitlines()  # the study file and captions are not run files
                         if "caption=" not in line and "config/config.yaml" not in line)
        hits = [n for n in FILES if n in text] + re.findall(r"/(?:final|checkpoints|figures)/|/table1\.|/seeds\.", text)
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert not offenders, offenders


def test_the_layout_check_catches_a_name_spelled_elsewhere():
    for snippet in ('out = run / "final"', 'p = f"{out}/metrics.jsonl"', 'open(out + "/metadata.json")',
                    'name = f"checkpoint-{step}"', 'p = f"{reports}/figures/{name}.png"'):
        assert layout_spellings(snippet), snippet
    assert not layout_spellings('"""Writes metrics.jsonl and final/."""\nx = 1')  # prose in a docstring


# -- the study's raw dict ------------------------------------------------------------------------
def raw_study_reads(source: str) -> list[str]:
    """Reads of a study's raw dict: ``config[...]``/``config.get(...)`` and ``<x>.config[...]``/``.get``."""
    tree = ast.parse(source)
    found = []

    def is_config(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "config") or (
            isinstance(node, ast.Attribute) and node.attr == "config")

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_config(node.value):
            found.append(ast.unparse(node))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and is_config(node.func.value)):
            found.append(ast.unparse(node))
    return found


def test_only_study_load_reads_the_raw_study():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        hits = raw_study_reads(path.read_text())
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    for path in RULES:
        hits = re.findall(r"\bconfig(?:\[|\.get\()", path.read_text())
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert not offenders, offenders


def test_the_raw_study_check_catches_a_raw_read():
    for snippet in ('x = study.config["eval"]', 'x = config.get("world", {})', 'x = self.config.get("cost")'):
        assert raw_study_reads(snippet), snippet
    assert not raw_study_reads("x = study.cfg.eval.limit")


def test_every_study_field_says_what_it_is():
    import dataclasses

    from llavakd.study_reference import sections

    classes = sections()
    for cls in classes:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
    assert len(classes) > 10


def test_the_study_reference_page_is_generated_from_the_tree():
    from llavakd.study_reference import reference

    page = (ROOT / "docs" / "study.md").read_text()
    assert page == reference(), "docs/study.md is stale: python -m llavakd.study_reference > docs/study.md"
    assert "| `vision_steps` | int | `1500` |" in page  # a default, read from the tree


# -- loss terms ------------------------------------------------------------------------------------
def term_spellings(source: str) -> list[str]:
    """Places that enumerate or branch on a loss term outside the registry (llavakd/terms/): a term's
    name, weight key or parameter compared with (``t == "rel"``, ``"res" in x``), used as a subscript
    (``parts["vis"]``), a dict key, an item of a literal tuple/list/set, a keyword argument
    (``LossConfig(res=False)``; a method's parameters, ``divergence="jsd"``, are data), read as an
    attribute (``cfg.rel``, ``cfg.rel_source``), passed to a call (``getattr(cfg, "rel")``,
    ``cfg.weight("vis")``, ``x.startswith("rel")``), matched in a ``case``, or spelled as its metrics key
    (``"loss_res"``). Names as data stay allowed: a method's ``terms=[...]``
    list, plain string assignments, docstrings and comments."""
    from llavakd import terms

    names = set(terms.names())
    keys = names | {terms.weight_key(n) for n in names}
    params = {p.name for _, p in terms.params()}
    tree = ast.parse(source)
    data = set()  # the literals of terms=[...] and a table of methods by name: a method naming its terms is data
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "terms":
            data |= {id(n) for n in ast.walk(node.value)}
        if isinstance(node, ast.Dict) and node.values and all(
                isinstance(v, ast.Call) and getattr(v.func, "id", None) == "Method" for v in node.values):
            data |= {id(k) for k in node.keys if k is not None}

    logged = {f"loss_{n}" for n in names}  # a term's metrics key

    def is_name(node) -> bool:
        return (isinstance(node, ast.Constant) and (node.value in names or node.value in logged)
                and id(node) not in data)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_name(x) for x in [node.left, *node.comparators]):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Subscript) and is_name(node.slice):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Dict) and any(k is not None and is_name(k) for k in node.keys):
            found.append(ast.unparse(node)[:60])
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in node.elts):
            found.append(ast.unparse(node)[:60])
        elif isinstance(node, ast.keyword) and node.arg in keys:
            found.append(f"{node.arg}=")
        elif isinstance(node, ast.Attribute) and (node.attr in keys or node.attr in params):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and any(is_name(a) for a in node.args):  # getattr(cfg, "rel"), spec("feat")
            found.append(ast.unparse(node)[:60])
        elif isinstance(node, ast.MatchValue) and is_name(node.value):
            found.append(ast.unparse(node))
    return found


def test_no_module_outside_the_registry_names_a_loss_term():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "terms") in path.parents:
            continue
        hits = term_spellings(path.read_text())
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert not offenders, offenders


def test_the_term_check_catches_a_term_named_outside_the_registry():
    for snippet in ('if cfg.rel: x = 1', 'x = parts["vis"]', 'ok = name == "res"', 'TERMS = ("ce", "res")',
                    'c = LossConfig(res=False)', 'w = {"ce": 1.0}', 'if cfg.rel_source == "features": pass',
                    'w = cfg.rel_weight', 'x = dataclasses.replace(cfg, ce=False)', 'w = {"bild": 1, "x": f()}',
                    'on = getattr(cfg, "rel")', 'w = cfg.weight("vis")', 'ok = k.startswith("rel")',
                    'x = rec["loss_res"]', 'match t:\n    case "feat":\n        pass'):
        assert term_spellings(snippet), snippet
    for snippet in ('CONTROL = "ce"', 'm = Method(terms=["ce", "res"], divergence="jsd")', 'x = cfg.weight(name)',
                    'BUILTIN = {"bild": Method(terms=["bild"])}',
                    '"""L_rel: cfg.rel"""'):
        assert not term_spellings(snippet), snippet


# -- benchmark columns: named in the registry only ---------------------------------------------------
def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def column_spellings(source: str, task_code: bool = False) -> list[str]:
    """Column names in a module's string constants: a registry key, a header or an average's key or name
    spelled as a whole string, or an average's name (Avg10, ...) as a word inside a string that is not a
    docstring. (A benchmark's own name inside prose, "POPE's parser", names the dataset, not a column.)
    ``task_code``: a module of task-level code (the paper's variants, the stand-in tasks) may spell
    lmms-eval task names, some of which are also column keys (gqa, mme, mmstar, ...)."""
    import re

    from llavakd.eval.registry import load_averages, load_registry

    registry = load_registry()
    averages = load_averages()
    keys = {*registry, *(a.key for a in averages)}
    if task_code:
        keys -= {t for b in registry.values() for t in (*b.tasks, *b.submission)}
    keys |= {*(b.column for b in registry.values()), *(a.name for a in averages)}
    word = re.compile(r"(?<![\w-])(" + "|".join(re.escape(a.name) for a in averages) + r")(?![\w-])")
    tree = ast.parse(source)
    skip = _docstrings(tree)
    hits = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value in keys:
                hits.add(node.value)
            hits.update(word.findall(node.value))
    return sorted(hits)


# The stand-ins are "a column's stand-in in tiny mode": they name the data they imitate. Task-level code
# names lmms-eval tasks.
STANDIN_MODULES = ("tiny/standins.py", "tiny/score.py")
TASK_MODULES = ("eval/paper.py", "tiny/tasks.py")


def test_no_module_outside_the_registry_names_a_benchmark_column():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel == "eval/registry.py" or rel in STANDIN_MODULES:
            continue
        hits = column_spellings(path.read_text(), task_code=rel in TASK_MODULES)
        if hits:
            offenders[rel] = hits
    assert not offenders, offenders


def test_the_column_check_catches_a_column_named_outside_the_registry():
    for snippet in ('HEADERS = {"mmstar": "MMStar"}', 'x = row["avg10"]', 'COLUMNS = ("vqav2", "pope")',
                    'label = "Avg7"', 'if c == "mmb_cn": pass', 'x = row["mmstar"]', 'if c == "ocrbench": pass',
                    'ax.set_xlabel("Avg10 - ce")', 'head = ["Method", "MMB-CN"]', 'x = scores["gqa"]'):
        assert column_spellings(snippet), snippet
    assert column_spellings('if task == "gqa": spec = None', task_code=True) == []  # a task name in task code
    for snippet in ('x = columns.header(key)', '"""vqav2 and Avg10 in a docstring"""', 'x = "MMBench-dev"',
                    'msg = "a GQAv2 file"', 'help = "POPE from upstream\'s files"'):
        assert not column_spellings(snippet), snippet
