"""Data preparation against a local HTTP server (resume, checksums, extraction, manual steps) and
validation of a dataset record by record (a planted bad record fails, or is listed and left out)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from llavakd.data.prepare import Item, load_manifest, prepare
from llavakd.errors import ConfigError, LlavaKDError


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with HTTP Range support; ``cut`` files stop half-way the first time."""

    cut: set = set()
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).seen.append((path.name, rng))
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path.name in type(self).cut:
            type(self).cut.discard(path.name)
            self.wfile.write(body[: len(body) // 2])  # the connection drops mid-file
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    _Handler.cut, _Handler.seen = set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _blob(n=300_000, seed=1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    served, url = server
    data = _blob()
    (served / "captions.json").write_bytes(data)
    _Handler.cut = {"captions.json"}
    items = [Item("captions", "LLaVA-Pretrain/captions.json", url=f"{url}/captions.json",  # no size: as published
                  sha256=hashlib.sha256(data).hexdigest())]
    root = tmp_path / "root"
    with pytest.raises(LlavaKDError, match="stopped.*run again to continue"):
        prepare(items, root, progress=False)
    part = root / "LLaVA-Pretrain" / "captions.json.part"
    assert 0 < part.stat().st_size < len(data) and not (root / "LLaVA-Pretrain" / "captions.json").exists()
    prepare(items, root, progress=False)
    assert (root / "LLaVA-Pretrain" / "captions.json").read_bytes() == data and not part.exists()
    assert _Handler.seen[-1] == ("captions.json", f"bytes={len(data) // 2}-")  # it asked for the rest only


def test_a_checksum_mismatch_fails_naming_the_file(server, tmp_path):
    served, url = server
    (served / "mix.json").write_bytes(_blob(seed=2))
    items = [Item("mix", "LLaVA-Finetune/mix.json", url=f"{url}/mix.json", sha256="0" * 64)]
    with pytest.raises(LlavaKDError) as err:
        prepare(items, tmp_path / "root", progress=False)
    assert str(tmp_path / "root" / "LLaVA-Finetune" / "mix.json") in str(err.value) and "sha256" in str(err.value)
    assert not list((tmp_path / "root" / "LLaVA-Finetune").iterdir())  # nothing left that looks complete


def test_archives_are_extracted_into_the_layout_once(server, tmp_path):
    served, url = server
    with zipfile.ZipFile(served / "gqa.zip", "w") as zf:
        zf.writestr("images/1.jpg", b"jpeg")
    items = [Item("gqa", "downloads/gqa.zip", url=f"{url}/gqa.zip", extract_to="images/gqa")]
    root = tmp_path / "root"
    prepare(items, root, progress=False)
    assert (root / "images" / "gqa" / "images" / "1.jpg").read_bytes() == b"jpeg"
    (root / "images" / "gqa" / "images" / "1.jpg").unlink()
    prepare(items, root, progress=False)  # already downloaded and extracted: nothing is done again
    assert not (root / "images" / "gqa" / "images" / "1.jpg").exists()
    with zipfile.ZipFile(served / "evil.zip", "w") as zf:
        zf.writestr("../../outside.txt", b"x")
    with pytest.raises(LlavaKDError, match="outside"):
        prepare([Item("evil", "downloads/evil.zip", url=f"{url}/evil.zip", extract_to="images/e")], root,
                progress=False)


def test_manual_steps_are_named_and_the_manifest_is_checked(tmp_path):
    items = load_manifest(Path(__file__).resolve().parents[1] / "manifests" / "llava-1.5.yaml")
    manual = [i for i in items if i.manual]
    assert [i.name for i in manual] == ["ocr_vqa_images"]
    todo = prepare(manual, tmp_path, progress=False)
    assert len(todo) == 1 and "ocr_vqa_images" in todo[0] and "OCR-VQA" in todo[0]
    (tmp_path / "images" / "ocr_vqa" / "images").mkdir(parents=True)
    assert prepare(manual, tmp_path, progress=False) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("items:\n  a: {dest: x}\n  b: {dest: y, url: u, manual: m, colour: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_manifest(bad)
    assert len(err.value.problems) == 3


@pytest.mark.slow
def test_a_planted_bad_record_fails_validation_or_is_listed_and_left_out(tiny_student, tmp_path):
    import subprocess
    import sys

    from transformers import AutoProcessor

    from llavakd.data.dataset import LlavaDataset
    from llavakd.tiny.world import write_world

    write_world(tmp_path / "world", seed=0, size="tiny")
    records = json.loads((tmp_path / "world" / "train" / "captions.json").read_text())
    records.insert(7, {"id": "planted", "image": "train/no_such.png", "conversations": records[0]["conversations"]})
    planted = tmp_path / "captions.json"
    planted.write_text(json.dumps(records))
    cmd = [sys.executable, "-m", "llavakd.cli", "validate-data", str(planted), "--images",
           str(tmp_path / "world" / "images"), "--processor", str(tiny_student), "--template", "pretrain",
           "--out", str(tmp_path / "report" / "captions")]
    strict = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert strict.returncode == 2
    assert strict.stderr.strip().splitlines()[-1].startswith(f"llavakd validate-data: error: {planted}: 1 of")
    lenient = subprocess.run(cmd + ["--max-bad-fraction", "0.01"], capture_output=True, text=True, timeout=600)
    assert lenient.returncode == 0, lenient.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "captions.report.json").read_text())
    assert report["bad_records"] == [7] and list(report["bad"].values()) == [1]
    assert "token" in (tmp_path / "report" / "captions.report.md").read_text()
    proc = AutoProcessor.from_pretrained(tiny_student)
    ds = LlavaDataset(planted, tmp_path / "world" / "images", proc, template="pretrain",
                      drop=set(report["bad_records"]))
    assert len(ds) == len(records) - 1 and ds.dropped == 1 and all(r["id"] != "planted" for r in ds.records)
