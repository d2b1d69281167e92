"""Fetch the training data a manifest lists: resumable downloads, checksums, extraction, manual steps.

    llavakd prepare-data --manifest manifests/llava-1.5.yaml --root /data/llava

A manifest (``manifests/llava-1.5.yaml``) lists items; each has a ``dest`` under ``--root`` and
either a ``url`` (with ``size`` and ``sha256`` where the publisher gives them, and ``extract_to``
for an archive) or ``manual`` (the step a person must take, with the path it must produce).
Downloads go to ``<dest>.part`` and continue where they stopped (an HTTP Range request); a
finished file whose size or sha256 disagrees with the manifest is removed and named in a one-line
error. Archives are extracted once (a ``.<name>.extracted`` marker beside the destination), members
checked to stay inside it. A manual item whose path is missing is listed at the end, with its step,
and the command fails. Our own code: the hub and torchvision helpers cover hub repositories and
their own datasets, not these image collections' plain HTTP archives.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from llavakd.errors import ConfigError, LlavaKDError
from llavakd.io import atomic_write_text, sha256_of

CHUNK = 1 << 20


@dataclass(frozen=True)
class Item:
    name: str
    dest: str  # relative to the root
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    extract_to: str | None = None  # relative to the root
    manual: str | None = None  # the step a person takes (no url)
    source: str = ""  # where the facts come from


def load_manifest(path: str | Path) -> list[Item]:
    path = Path(path)
    if not path.is_file():
        raise LlavaKDError(f"data manifest {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    problems, items = [], []
    fields = set(Item.__dataclass_fields__) - {"name"}
    for name, spec in (raw.get("items") or {}).items():
        if not isinstance(spec, dict):
            problems.append(f"items.{name}: expected a mapping")
            continue
        problems += [f"items.{name}.{k}: unknown key" for k in sorted(set(spec) - fields)]
        if "dest" not in spec:
            problems.append(f"items.{name}.dest: missing")
        if bool(spec.get("url")) == bool(spec.get("manual")):
            problems.append(f"items.{name}: give either url or manual")
        if not problems:
            items.append(Item(name=name, **spec))
    if problems or not items:
        raise ConfigError(str(path), problems or ["no items"])
    return items


def download(url: str, dest: Path, size: int | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """``url`` -> ``dest``, continuing a ``.part`` left by an interrupted run; verified before it is renamed."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            if have and resp.status != 206:  # the server ignored the range: start again
                have = 0
            length = resp.headers.get("Content-Length")
            total = int(length) + have if length is not None else size
            with part.open("ab" if have else "wb") as fh, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        raise LlavaKDError(f"{dest}: download from {url} stopped ({err}); run again to continue it") from err
    got = part.stat().st_size
    if total is not None and got < total:  # the connection closed early
        raise LlavaKDError(f"{dest}: download from {url} stopped after {got} of {total} bytes; run again to continue it")
    if size is not None and got != size:
        if got > size:
            part.unlink()
        raise LlavaKDError(f"{dest}: {got} bytes downloaded, the manifest says {size}"
                           + ("; run again to continue" if got < size else "; removed"))
    if sha256 is not None and sha256_of(part) != sha256:
        part.unlink()
        raise LlavaKDError(f"{dest}: sha256 differs from the manifest's {sha256[:12]}...; the download was removed")
    part.rename(dest)
    return dest


def extract(archive: Path, into: Path) -> None:
    """Unzip once into ``into`` (a marker beside it records it); members may not leave ``into``."""
    marker = into.parent / f".{archive.name}.extracted"
    if marker.is_file():
        return
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (root / member).resolve()
            if root != target and root not in target.parents:
                raise LlavaKDError(f"{archive}: member {member!r} would be written outside {into}")
        for member in tqdm(zf.infolist(), desc=f"extracting {archive.name}", unit="file"):
            zf.extract(member, root)
    atomic_write_text(marker, f"{archive.name}\n")


def prepare(items: list[Item], root: str | Path, only: list[str] | None = None, progress: bool = True,
            fetched: list | None = None) -> list[str]:
    """Fetch and extract every url item; returns the manual steps still to take (their paths missing).
    ``fetched`` collects (name, path, size, sha256) of every downloaded file."""
    root = Path(root)
    unknown = sorted(set(only or []) - {i.name for i in items})
    if unknown:
        raise LlavaKDError(f"--only: no item(s) {unknown} in the manifest")
    todo = []
    for item in items:
        if only and item.name not in only:
            continue
        dest = root / item.dest
        if item.manual:
            if not dest.exists():
                todo.append(f"{item.name}: {dest} is missing. {item.manual}")
            continue
        print(f"{item.name}: {dest}")
        download(item.url, dest, item.size, item.sha256, progress)
        if fetched is not None:
            fetched.append((item.name, str(dest), dest.stat().st_size, sha256_of(dest)))
        if item.extract_to:
            extract(dest, root / item.extract_to)
    return todo
