"""semverkit: a small, dependency-free Semantic Versioning 2.0.0 toolkit.

>>> from semverkit import Version, Range, bump_minor
>>> v = Version.parse("1.4.2-rc.1")
>>> v < Version.parse("1.4.2")
True
>>> str(bump_minor("1.4.2"))
'1.5.0'
>>> "1.5.0" in Range.parse("^1.4")
True
"""

__version__ = "1.0.0"

from .bump import (
    BUMP_KINDS,
    CHANGE_KINDS,
    DEFAULT_LABEL,
    bump,
    bump_major,
    bump_minor,
    bump_patch,
    bump_premajor,
    bump_preminor,
    bump_prepatch,
    bump_prerelease,
    finalize,
    next_version,
)
from .collection import (
    VersionSet,
    filter_satisfying,
    latest_per_major,
    max_satisfying,
    min_satisfying,
    sort_versions,
)
from .ranges import Comparator, Range, satisfies
from .version import Version, coerce, compare, compare_prerelease, is_valid, parse

__all__ = [
    "BUMP_KINDS",
    "CHANGE_KINDS",
    "Comparator",
    "DEFAULT_LABEL",
    "Range",
    "Version",
    "VersionSet",
    "__version__",
    "bump",
    "bump_major",
    "bump_minor",
    "bump_patch",
    "bump_premajor",
    "bump_preminor",
    "bump_prepatch",
    "bump_prerelease",
    "coerce",
    "compare",
    "compare_prerelease",
    "filter_satisfying",
    "finalize",
    "is_valid",
    "latest_per_major",
    "max_satisfying",
    "min_satisfying",
    "next_version",
    "parse",
    "satisfies",
    "sort_versions",
]
