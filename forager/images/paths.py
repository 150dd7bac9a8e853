"""The data Forager ships (the sample repository, Dockerfiles) and the recipes."""

from __future__ import annotations

from pathlib import Path

from forager.core import ForagerError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The source checkout (its `images/recipes/` holds the project recipes); absent in an installed wheel."""
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def asset(name: str) -> Path:
    """A file Forager ships as package data (`forager/assets/`: the sample repository, its bugs, Dockerfiles)."""
    path = ASSETS / name
    if not path.exists():
        raise ForagerError(f"{path} is missing: this Forager installation is incomplete; reinstall it "
                           "(`pip install --force-reinstall forager`, or `pip install -e .` in a clone)")
    return path
