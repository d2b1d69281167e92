"""Atomic outputs: a file or a folder appears under its final name only once it is complete.

    with atomic_dir("results/x/final") as tmp: ...     # folder: written in a sibling, marked, renamed
    with atomic_file("reports/demo/a.png") as tmp: ... # file: written to a sibling, renamed over the target
    atomic_write_text("reports/demo/table1.md", text)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from llavakd.errors import LlavaKDError

COMPLETE_MARKER = "COMPLETE"
ATTEMPTS = "attempts.jsonl"  # a job folder's attempt history (llavakd.attempts): appended to after its marker


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
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Mark a fully written folder complete and move it to ``final`` in one rename (an older
    ``final`` is moved aside first and removed after)."""
    tmp, final = Path(tmp), Path(final)
    write_marker(tmp)
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    return final


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


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_marker(folder: str | Path) -> None:
    """Write ``folder``'s completion marker, last: the size and sha256 of every file in it (JSON), but
    for the job's attempt history (llavakd.attempts), which the attempt's end still appends to."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_of(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (COMPLETE_MARKER, ATTEMPTS)}
    atomic_write_text(folder / COMPLETE_MARKER, json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def marker_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not intact (no marker; a file missing, resized or changed since its marker
    was written), or None. A marker written before checksums existed only proves completion."""
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return "no completion marker"
    try:
        files = json.loads(marker.read_text()).get("files", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None if marker.read_text(errors="replace").strip() == "ok" else "unreadable completion marker"
    for rel, want in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != want["size"]:
            return f"{rel} has {path.stat().st_size} bytes, its marker says {want['size']}"
        if sha256_of(path) != want["sha256"]:
            return f"{rel} does not match its sha256 in the completion marker"
    return None
