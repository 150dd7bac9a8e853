"""Source releases come from the index's simple API, checked against its sha256, without building metadata."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from forager.images.sdist import download_sdist, sdist_link


def _sdist(name: str, version: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"[project]\nname = 'x'\n"
        info = tarfile.TarInfo(f"{name}-{version}/pyproject.toml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A PEP 503 index on a real HTTP server: zope.interface 7.2 (sdist and wheel), and a tampered 7.3."""
    files = {"zope.interface-7.2.tar.gz": _sdist("zope.interface", "7.2"),
             "zope.interface-7.3.tar.gz": _sdist("zope.interface", "7.3"),
             "zope.interface-7.2-py3-none-any.whl": b"not an sdist"}
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    sha["zope.interface-7.3.tar.gz"] = "0" * 64  # the index says one thing, the file is another
    page = "".join(f'<a href="/files/{n}#sha256={sha[n]}">{n}</a>\n' for n in files).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page if self.path == "/simple/zope-interface/" else files.get(self.path.rsplit("/", 1)[-1])
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
    yield files
    server.shutdown()


def test_the_sdist_is_found_by_its_normalized_name_and_checked(index, tmp_path):
    path = download_sdist("Zope_Interface", "7.2", tmp_path)
    assert path.name == "zope.interface-7.2.tar.gz" and path.read_bytes() == index[path.name]


def test_a_file_whose_hash_differs_from_the_index_is_refused_and_removed(index, tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        download_sdist("zope.interface", "7.3", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_version_without_an_sdist_says_so(index):
    import os

    with pytest.raises(LookupError, match="no source release of zope.interface 9.9"):
        sdist_link("zope.interface", "9.9", os.environ["PIP_INDEX_URL"])
