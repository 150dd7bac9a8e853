"""Which Python a project's image gets: the newest base Python the project accepts and says it supports.

`requires-python` (pyproject, setup.cfg `python_requires`, a literal in setup.py, an sdist's PKG-INFO)
decides which bases can serve; the trove classifiers (`Programming Language :: Python :: 3.12`) are a
hint among those: the newest base whose minor version the project lists, else the one just above the
newest it lists (a project listing up to 3.8 gets 3.9, not 3.13), else the newest. No base fits: None,
and the build stops at detect naming the Pythons on offer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class PythonChoice:
    """The chosen interpreter version (`3.13.5`), or None with `why` saying what was asked and what is on offer."""

    version: str | None
    why: str


def classifier_pythons(classifiers: list[str]) -> list[str]:
    """`3.12` for each `Programming Language :: Python :: 3.12` classifier."""
    found = (re.fullmatch(r"Programming Language :: Python :: (\d+\.\d+)", c.strip()) for c in classifiers)
    return sorted({m[1] for m in found if m}, key=_key)


def choose_python(requires: str | None, classifiers: list[str], available: list[str],
                  forced: str | None = None) -> PythonChoice:
    """Pick from `available` (exact versions, `3.11.2`) for a project with `requires` and `classifiers`."""
    offer = ", ".join(_minor(v) for v in sorted(available, key=_key))
    if forced:
        exact = [v for v in available if v == forced or _minor(v) == _minor(forced)]
        if not exact:
            return PythonChoice(None, f"Python {forced} was asked for, but the bases have {offer}")
        return PythonChoice(exact[0], f"Python {exact[0]} as asked (requires-python: {requires or 'none'})")
    spec = _specifier(requires)
    if spec is None and requires:
        note = f"requires-python {requires!r} is not a valid specifier: ignored; "
        spec = SpecifierSet()
    else:
        note = ""
        spec = spec or SpecifierSet()
    fits = sorted((v for v in available if spec.contains(Version(v), prereleases=True)), key=_key)
    if not fits:
        return PythonChoice(None, f"the project requires Python {requires}, but the bases have {offer}")
    listed = classifier_pythons(classifiers)
    hinted = [v for v in fits if _minor(v) in listed]
    above = [v for v in fits if listed and _key(_minor(v)) > _key(listed[-1])]
    chosen, how = (hinted[-1], "the newest the classifiers list") if hinted else \
        (above[0], f"the nearest above the classifiers' {listed[-1]}") if above else (fits[-1], "the newest")
    return PythonChoice(chosen, f"{note}Python {chosen}: {how} of those requires-python {requires or '(none)'} "
                                f"allows ({', '.join(_minor(v) for v in fits)})")


def _specifier(text: str | None) -> SpecifierSet | None:
    if not text:
        return None
    try:
        return SpecifierSet(text.replace(" ", ""))
    except InvalidSpecifier:
        return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _key(version: str) -> tuple[int, ...]:
    try:
        return Version(version).release
    except InvalidVersion:
        return (0,)
