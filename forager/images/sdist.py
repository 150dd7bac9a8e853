"""Download a project's source release (sdist) from the package index, without building anything.

`pip download --no-binary` prepares the sdist's metadata on this machine, which installs its build
backend for *this* Python: a backend that needs a newer Python than the host's (platformdirs' and
filelock's hatch plug-ins need 3.12) makes a plain download fail. The index's simple API (PEP 503,
what every mirror serves) lists the files with their hashes: the sdist is fetched and checked
against its sha256, and pip is only the fallback.
"""

from __future__ import annotations

import hashlib
import html.parser
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from forager.images.spec import normalize_name

DEFAULT_INDEX = "https://pypi.org/simple"
_SDIST = re.compile(r"\.(tar\.gz|tgz|tar\.bz2|tar\.xz|zip)$")


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append(href)


def index_url() -> str:
    """The index pip uses here: $PIP_INDEX_URL, else pip's configuration, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                capture_output=True, text=True, check=False).stdout.strip()
    return (configured or DEFAULT_INDEX).rstrip("/")


def sdist_link(name: str, version: str, index: str, timeout: float = 60) -> tuple[str, str | None]:
    """(URL, sha256 or None) of the sdist of `name==version` listed by the index's simple page."""
    page = f"{index}/{normalize_name(name)}/"
    with urllib.request.urlopen(page, timeout=timeout) as response:  # noqa: S310 (an index URL)
        parser = _Links()
        parser.feed(response.read().decode("utf-8", errors="replace"))
    project = "[-_.]+".join(map(re.escape, normalize_name(name).split("-")))  # zope.interface, zope_interface
    stem = re.compile(rf"^{project}-{re.escape(version)}$", re.I)
    for href in parser.links:
        url, _, fragment = urllib.parse.urljoin(page, href).partition("#")
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        if _SDIST.search(filename) and stem.match(_SDIST.sub("", filename)):
            sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            return url, sha
    raise LookupError(f"{page} lists no source release of {name} {version}")


def download_sdist(name: str, version: str, dest: Path, timeout: float = 300) -> Path:
    """The sdist of `name==version` in `dest`, its sha256 checked when the index gives one."""
    url, sha = sdist_link(name, version, index_url())
    target = dest / urllib.parse.unquote(url.rsplit("/", 1)[-1])
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:  # noqa: S310
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if sha and digest.hexdigest() != sha:
        target.unlink()
        raise ValueError(f"{url}: sha256 {digest.hexdigest()} is not the index's {sha}")
    return target
