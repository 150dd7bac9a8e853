"""Where Forager keeps what it builds, and where the source checkout keeps recipes and examples."""

from __future__ import annotations

import os
from pathlib import Path

from forager.core import ForagerError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def forager_home() -> Path:
    """Cache for built artifacts ($FORAGER_HOME, default ~/.cache/forager)."""
    home = Path(os.environ.get("FORAGER_HOME") or Path.home() / ".cache" / "forager")
    home.mkdir(parents=True, exist_ok=True)
    return home


def project_file(relative: str) -> Path:
    """A file of the source checkout (Dockerfiles, the sample repository), or a clear error."""
    path = PROJECT_ROOT / relative
    if not path.exists():
        raise ForagerError(
            f"{relative} is missing: it ships with Forager's source checkout; install Forager from a clone "
            "(`pip install -e .`) to build images and use the sample repository"
        )
    return path
