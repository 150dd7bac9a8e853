"""Compute the next version number.

All functions accept either a :class:`~semverkit.version.Version` or a
strict version string and return a new :class:`Version`.  Build metadata is
always dropped: it describes one particular build, not the next release.

The rules for pre-releases follow the usual convention (as used by npm):
bumping a field of a pre-release that is already "on its way" to that
field's release simply finalizes it, e.g. ``bump_major("2.0.0-rc.1")`` is
``2.0.0`` rather than ``3.0.0``.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple, Union

from .version import Identifier, Version

__all__ = [
    "BUMP_KINDS",
    "CHANGE_KINDS",
    "DEFAULT_LABEL",
    "bump",
    "bump_major",
    "bump_minor",
    "bump_patch",
    "bump_premajor",
    "bump_preminor",
    "bump_prepatch",
    "bump_prerelease",
    "finalize",
    "next_version",
]

VersionLike = Union[str, Version]

#: Label used by :func:`bump_prerelease` when a release gets its first tag.
DEFAULT_LABEL = "rc"

#: Kinds understood by :func:`bump`.
BUMP_KINDS = (
    "major",
    "minor",
    "patch",
    "premajor",
    "preminor",
    "prepatch",
    "prerelease",
    "release",
)

#: Change kinds understood by :func:`next_version`, least significant first.
CHANGE_KINDS = ("fix", "feature", "breaking")


def _as_version(value: VersionLike) -> Version:
    if isinstance(value, Version):
        return value
    return Version.parse(value)


def _check_label(label: str) -> None:
    """Validate a pre-release label such as ``"rc"`` or ``"beta"``."""
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, not {type(label).__name__}")
    # Round-trip through Version to reuse the identifier validation.
    Version(0, 0, 0, (label,))
    if label.isdigit():
        raise ValueError(f"label {label!r} must not be purely numeric")


def finalize(version: VersionLike) -> Version:
    """Drop the pre-release and build metadata: ``1.2.3-rc.1`` -> ``1.2.3``."""
    current = _as_version(version)
    return Version(current.major, current.minor, current.patch)


def bump_major(version: VersionLike) -> Version:
    """Increment the major version and reset minor and patch to zero.

    A pre-release of an ``X.0.0`` version is finalized instead:
    ``2.0.0-rc.1`` -> ``2.0.0``.
    """
    current = _as_version(version)
    if current.is_prerelease and current.minor == 0 and current.patch == 0:
        return finalize(current)
    return Version(current.major + 1, 0, 0)


def bump_minor(version: VersionLike) -> Version:
    """Increment the minor version and reset patch to zero.

    A pre-release of an ``X.Y.0`` version is finalized instead:
    ``1.3.0-beta`` -> ``1.3.0``.
    """
    current = _as_version(version)
    if current.is_prerelease and current.patch == 0:
        return finalize(current)
    return Version(current.major, current.minor + 1, 0)


def bump_patch(version: VersionLike) -> Version:
    """Increment the patch version; a pre-release is finalized instead."""
    current = _as_version(version)
    if current.is_prerelease:
        return finalize(current)
    return Version(current.major, current.minor, current.patch + 1)


def _last_numeric_index(identifiers: Tuple[Identifier, ...]) -> Optional[int]:
    """Index of the right-most numeric identifier, or None if there is none."""
    for index in reversed(range(len(identifiers))):
        if isinstance(identifiers[index], int):
            return index
    return None


def _increment_prerelease(identifiers: Tuple[Identifier, ...]) -> Tuple[Identifier, ...]:
    """Increment the last numeric identifier, or append ``0`` if there is none."""
    index = _last_numeric_index(identifiers)
    if index is None:
        return identifiers + (0,)
    bumped = identifiers[index] + 1
    return identifiers[:index] + (bumped,) + identifiers[index + 1 :]


def bump_prerelease(version: VersionLike, label: Optional[str] = None) -> Version:
    """Move to the next pre-release.

    * On a release, the patch is incremented and a new tag is started:
      ``1.2.3`` -> ``1.2.4-rc.0`` (``label`` defaults to :data:`DEFAULT_LABEL`).
    * On a pre-release with the same label (or no label given), the last
      numeric identifier is incremented: ``1.2.4-rc.0`` -> ``1.2.4-rc.1``;
      ``1.2.4-beta`` -> ``1.2.4-beta.0``.
    * On a pre-release with a different label, the tag is restarted:
      ``1.2.4-alpha.3`` with ``label="beta"`` -> ``1.2.4-beta.0``.  A
      :class:`ValueError` is raised if this would not increase the version
      (``1.2.4-rc.0`` with ``label="alpha"``).
    """
    current = _as_version(version)
    if label is not None:
        _check_label(label)
    if not current.is_prerelease:
        tag = (label if label is not None else DEFAULT_LABEL, 0)
        return Version(current.major, current.minor, current.patch + 1, tag)
    if label is None or current.prerelease[0] == label:
        identifiers = _increment_prerelease(current.prerelease)
        return Version(current.major, current.minor, current.patch, identifiers)
    candidate = Version(current.major, current.minor, current.patch, (label, 0))
    if candidate <= current:
        raise ValueError(
            f"switching {current} to label {label!r} would not increase the version"
        )
    return candidate


def _start_prerelease(version: Version, label: Optional[str]) -> Version:
    """Attach ``LABEL.0`` to a release version."""
    if label is not None:
        _check_label(label)
    tag = (label if label is not None else DEFAULT_LABEL, 0)
    return Version(version.major, version.minor, version.patch, tag)


def bump_premajor(version: VersionLike, label: Optional[str] = None) -> Version:
    """Next major version as a first pre-release: ``1.2.3`` -> ``2.0.0-rc.0``."""
    current = _as_version(version)
    return _start_prerelease(Version(current.major + 1, 0, 0), label)


def bump_preminor(version: VersionLike, label: Optional[str] = None) -> Version:
    """Next minor version as a first pre-release: ``1.2.3`` -> ``1.3.0-rc.0``."""
    current = _as_version(version)
    return _start_prerelease(Version(current.major, current.minor + 1, 0), label)


def bump_prepatch(version: VersionLike, label: Optional[str] = None) -> Version:
    """Next patch version as a first pre-release: ``1.2.3`` -> ``1.2.4-rc.0``."""
    current = _as_version(version)
    return _start_prerelease(
        Version(current.major, current.minor, current.patch + 1), label
    )


def bump(version: VersionLike, kind: str, label: Optional[str] = None) -> Version:
    """Bump *version* by *kind*, one of :data:`BUMP_KINDS`.

    ``label`` is only meaningful for the ``pre*`` kinds.  ``"release"`` is
    an alias for :func:`finalize`.
    """
    if kind == "major":
        return bump_major(version)
    if kind == "minor":
        return bump_minor(version)
    if kind == "patch":
        return bump_patch(version)
    if kind == "premajor":
        return bump_premajor(version, label)
    if kind == "preminor":
        return bump_preminor(version, label)
    if kind == "prepatch":
        return bump_prepatch(version, label)
    if kind == "prerelease":
        return bump_prerelease(version, label)
    if kind == "release":
        return finalize(version)
    raise ValueError(f"unknown bump kind {kind!r}; expected one of {', '.join(BUMP_KINDS)}")


def _most_significant_change(changes: Iterable[str]) -> str:
    """Return the most significant entry of *changes* (see :data:`CHANGE_KINDS`)."""
    best = -1
    for change in changes:
        if change not in CHANGE_KINDS:
            raise ValueError(
                f"unknown change kind {change!r}; expected one of {', '.join(CHANGE_KINDS)}"
            )
        best = max(best, CHANGE_KINDS.index(change))
    if best < 0:
        raise ValueError("at least one change is required")
    return CHANGE_KINDS[best]


def next_version(version: VersionLike, changes: Union[str, Iterable[str]]) -> Version:
    """Return the release that should follow *version* given its *changes*.

    *changes* is a change kind or an iterable of them: ``"breaking"``,
    ``"feature"`` or ``"fix"``; the most significant one wins.  During
    initial development (major version zero) everything shifts down one
    place: breaking changes bump the minor version, features and fixes
    bump the patch version.
    """
    if isinstance(changes, str):
        changes = [changes]
    change = _most_significant_change(changes)
    current = _as_version(version)
    if current.major == 0:
        if change == "breaking":
            return bump_minor(current)
        return bump_patch(current)
    if change == "breaking":
        return bump_major(current)
    if change == "feature":
        return bump_minor(current)
    return bump_patch(current)
