"""A host-side wheelhouse: `pip download` on the host, `pip install --no-index` in the image."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from forager.core import ForagerError
from forager.images.paths import forager_home


def ensure_wheelhouse(requirements: list[str], python_version: str, platform: str = "manylinux2014_x86_64") -> Path:
    """Download wheels for `requirements` for the image's Python; cached by its inputs."""
    key = hashlib.sha256(f"{sorted(requirements)}|{python_version}|{platform}".encode()).hexdigest()[:12]
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
