"""Atomic outputs: a file or a folder appears under its final name only once it is complete.

    with atomic_dir("results/x/final") as tmp: ...     # folder: written in a sibling, marked, renamed
    with atomic_file("reports/demo/a.png") as tmp: ... # file: written to a sibling, renamed over the target
    atomic_write_text("reports/demo/table1.md", text)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from llavakd.errors import LlavaKDError

COMPLETE_MARKER = "COMPLETE"


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, overwrite: bool = False):
    """Yield a temporary sibling folder; on success rename it to ``final`` and mark it complete.

    On any exception the temporary folder is removed and ``final`` is left untouched. An existing
    ``final`` is refused unless ``overwrite`` is set.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise LlavaKDError(f"{final} already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | Path):
    """Yield a temporary sibling path (same suffix, so writers that infer a format from it work);
    on success it replaces ``final`` in one rename, on failure it is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(final: str | Path, text: str) -> Path:
    with atomic_file(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)
