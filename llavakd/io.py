"""Atomic outputs: a folder appears under its final name only once it is complete."""

from __future__ import annotations

import contextlib
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
