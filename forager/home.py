"""Forager's cache directory ($FORAGER_HOME) and the host-side wheelhouse kept in it.

A bottom-floor module: the harness (coverage.py for an image without it) and the image builders
both download wheels here, so it may import only the standard library, `core` and `files`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from forager.core import ForagerError
from forager.files import content_digest


def forager_home() -> Path:
    """Cache for built artifacts ($FORAGER_HOME, default ~/.cache/forager)."""
    home = Path(os.environ.get("FORAGER_HOME") or Path.home() / ".cache" / "forager")
    home.mkdir(parents=True, exist_ok=True)
    return home


def ensure_wheelhouse(requirements: list[str], python_version: str, platform: str = "manylinux2014_x86_64") -> Path:
    """Download wheels for `requirements` for the image's Python (`pip download` on the host); cached by its inputs."""
    key = content_digest(f"{sorted(requirements)}|{python_version}|{platform}")
    target = forager_home() / "wheelhouse" / key
    if (target / "requirements.txt").exists():
        return target
    partial = target.with_name(key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
        "--platform", platform, "--dest", str(partial), *requirements,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ForagerError(f"pip download failed for {requirements}:\n{result.stderr[-3000:]}")
    (partial / "requirements.txt").write_text("\n".join(requirements) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
