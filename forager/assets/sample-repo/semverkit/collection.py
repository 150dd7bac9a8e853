"""Helpers for working with many versions at once.

Functions accept any iterable of :class:`~semverkit.version.Version`
objects or strict version strings, and ranges either as strings or as
:class:`~semverkit.ranges.Range` objects.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Union

from .ranges import Range
from .version import Version

__all__ = [
    "VersionSet",
    "filter_satisfying",
    "latest_per_major",
    "max_satisfying",
    "min_satisfying",
    "sort_versions",
]

VersionLike = Union[str, Version]
RangeLike = Union[str, Range]


def _as_version(value: VersionLike) -> Version:
    if isinstance(value, Version):
        return value
    return Version.parse(value)


def _as_versions(values: Iterable[VersionLike]) -> List[Version]:
    return [_as_version(value) for value in values]


def _as_range(value: RangeLike, include_prerelease: bool) -> Range:
    """Parse *value* if needed, honouring *include_prerelease*."""
    if isinstance(value, Range):
        if include_prerelease and not value.include_prerelease:
            return Range(value.sets, include_prerelease=True)
        return value
    return Range.parse(value, include_prerelease)


def sort_versions(versions: Iterable[VersionLike], reverse: bool = False) -> List[Version]:
    """Return the versions sorted by precedence (lowest first).

    The sort is stable, so versions that differ only in build metadata keep
    their input order.
    """
    return sorted(_as_versions(versions), reverse=reverse)


def filter_satisfying(
    versions: Iterable[VersionLike],
    range_: RangeLike,
    include_prerelease: bool = False,
) -> List[Version]:
    """Return the versions that satisfy *range_*, in their input order."""
    parsed = _as_range(range_, include_prerelease)
    return [version for version in _as_versions(versions) if parsed.contains(version)]


def max_satisfying(
    versions: Iterable[VersionLike],
    range_: RangeLike,
    include_prerelease: bool = False,
) -> Optional[Version]:
    """Return the highest version satisfying *range_*, or None if there is none."""
    best: Optional[Version] = None
    for version in filter_satisfying(versions, range_, include_prerelease):
        if best is None or version > best:
            best = version
    return best


def min_satisfying(
    versions: Iterable[VersionLike],
    range_: RangeLike,
    include_prerelease: bool = False,
) -> Optional[Version]:
    """Return the lowest version satisfying *range_*, or None if there is none."""
    best: Optional[Version] = None
    for version in filter_satisfying(versions, range_, include_prerelease):
        if best is None or version < best:
            best = version
    return best


def latest_per_major(
    versions: Iterable[VersionLike], include_prerelease: bool = False
) -> Dict[int, Version]:
    """Map each major version to its highest version.

    Pre-releases are skipped unless *include_prerelease* is True.  The
    result is ordered by major version.
    """
    latest: Dict[int, Version] = {}
    for version in _as_versions(versions):
        if version.is_prerelease and not include_prerelease:
            continue
        current = latest.get(version.major)
        if current is None or version > current:
            latest[version.major] = version
    return {major: latest[major] for major in sorted(latest)}


class VersionSet:
    """A sorted set of versions.

    Membership follows version equality, so versions that differ only in
    build metadata count as the same element (the first one added is kept).

    >>> releases = VersionSet(["1.0.0", "1.2.0", "2.0.0-rc.1"])
    >>> str(releases.latest())
    '1.2.0'
    """

    def __init__(self, versions: Iterable[VersionLike] = ()) -> None:
        self._items: Dict[Version, Version] = {}
        self.update(versions)

    def add(self, version: VersionLike) -> bool:
        """Add *version*; return True if it was not already present."""
        parsed = _as_version(version)
        if parsed in self._items:
            return False
        self._items[parsed] = parsed
        return True

    def update(self, versions: Iterable[VersionLike]) -> int:
        """Add several versions; return how many were new."""
        added = 0
        for version in versions:
            if self.add(version):
                added += 1
        return added

    def discard(self, version: VersionLike) -> bool:
        """Remove *version* if present; return True if it was removed."""
        parsed = _as_version(version)
        return self._items.pop(parsed, None) is not None

    def __contains__(self, version: object) -> bool:
        if isinstance(version, str):
            try:
                version = Version.parse(version)
            except ValueError:
                return False
        return isinstance(version, Version) and version in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Version]:
        return iter(sorted(self._items.values()))

    def __repr__(self) -> str:
        return f"VersionSet({[str(version) for version in self]!r})"

    def latest(self, include_prerelease: bool = False) -> Optional[Version]:
        """The highest version (skipping pre-releases by default), or None."""
        candidates = self._candidates(include_prerelease)
        return candidates[-1] if candidates else None

    def oldest(self, include_prerelease: bool = False) -> Optional[Version]:
        """The lowest version (skipping pre-releases by default), or None."""
        candidates = self._candidates(include_prerelease)
        return candidates[0] if candidates else None

    def _candidates(self, include_prerelease: bool) -> List[Version]:
        return [
            version
            for version in self
            if include_prerelease or not version.is_prerelease
        ]

    def satisfying(self, range_: RangeLike, include_prerelease: bool = False) -> "VersionSet":
        """A new set with only the versions that satisfy *range_*."""
        return VersionSet(filter_satisfying(self, range_, include_prerelease))
