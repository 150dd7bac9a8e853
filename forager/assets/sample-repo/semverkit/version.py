"""Version objects following Semantic Versioning 2.0.0.

The :class:`Version` class models a single version number such as
``1.4.0-rc.2+build.7``.  Versions are immutable, hashable and ordered by the
precedence rules of the specification (https://semver.org/#spec-item-11):

* ``major``, ``minor`` and ``patch`` are compared numerically;
* a version without a pre-release has higher precedence than the same
  version with one (``1.0.0-rc.1 < 1.0.0``);
* pre-release identifiers are compared one by one: numeric identifiers are
  compared as integers, alphanumeric ones in ASCII order, and numeric
  identifiers always sort before alphanumeric ones;
* when every shared identifier is equal, the shorter pre-release sorts first;
* build metadata is ignored for precedence (and therefore for equality).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Tuple, Union

Identifier = Union[int, str]

__all__ = [
    "Identifier",
    "Version",
    "coerce",
    "compare",
    "compare_prerelease",
    "is_valid",
    "parse",
]

_DIGITS = frozenset("0123456789")
_IDENTIFIER_CHARS = frozenset(
    "0123456789"
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "-"
)
_LOOSE_PATTERN = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(.*)", re.ASCII)


def _cmp(left, right) -> int:
    """Return -1, 0 or 1 depending on how *left* compares to *right*."""
    if left < right:
        return -1
    if left > right:
        return 1
    return 0


def _is_numeric(text: str) -> bool:
    """Return True if *text* is a non-empty string of ASCII digits."""
    return bool(text) and all(char in _DIGITS for char in text)


def _has_leading_zero(text: str) -> bool:
    """Return True if the numeric string *text* has a superfluous leading zero."""
    return len(text) > 1 and text[0] == "0"


def _parse_number(text: str, name: str) -> int:
    """Parse one of the three numeric core fields, named *name* in errors."""
    if not text:
        raise ValueError(f"{name} version is empty")
    if not _is_numeric(text):
        raise ValueError(f"{name} version {text!r} is not a non-negative integer")
    if _has_leading_zero(text):
        raise ValueError(f"{name} version {text!r} must not have leading zeros")
    return int(text)


def _check_identifier(part: str, kind: str) -> None:
    """Validate the characters of one dot-separated identifier."""
    if not part:
        raise ValueError(f"{kind} identifiers must not be empty")
    for char in part:
        if char not in _IDENTIFIER_CHARS:
            raise ValueError(
                f"invalid character {char!r} in {kind} identifier {part!r}"
            )


def _parse_prerelease_identifier(part: str) -> Identifier:
    """Parse a pre-release identifier into an int (numeric) or a str."""
    _check_identifier(part, "pre-release")
    if not _is_numeric(part):
        return part
    if _has_leading_zero(part):
        raise ValueError(
            f"numeric pre-release identifier {part!r} must not have leading zeros"
        )
    return int(part)


def _parse_build_identifier(part: str) -> str:
    """Parse a build metadata identifier; leading zeros are allowed here."""
    _check_identifier(part, "build")
    return part


def parse_prerelease(text: str) -> Tuple[Identifier, ...]:
    """Parse a dot-separated pre-release string such as ``"rc.1"``.

    Numeric identifiers become ints, the others stay strings.  An empty
    string yields an empty tuple.
    """
    if text == "":
        return ()
    return tuple(_parse_prerelease_identifier(part) for part in text.split("."))


def parse_build(text: str) -> Tuple[str, ...]:
    """Parse a dot-separated build metadata string such as ``"exp.sha.5114f85"``."""
    if text == "":
        return ()
    return tuple(_parse_build_identifier(part) for part in text.split("."))


def _normalize_prerelease(value) -> Tuple[Identifier, ...]:
    """Turn a str or an iterable of identifiers into a validated tuple."""
    if isinstance(value, str):
        return parse_prerelease(value)
    result = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(f"pre-release identifiers must be int or str, not {item!r}")
        if isinstance(item, int):
            if item < 0:
                raise ValueError("numeric pre-release identifiers must not be negative")
            result.append(item)
        else:
            result.append(_parse_prerelease_identifier(item))
    return tuple(result)


def _normalize_build(value) -> Tuple[str, ...]:
    """Turn a str or an iterable of identifiers into a validated tuple."""
    if isinstance(value, str):
        return parse_build(value)
    return tuple(_parse_build_identifier(str(item)) for item in value)


def _format_identifiers(identifiers: Iterable[Identifier]) -> str:
    """Join identifiers with dots."""
    return ".".join(str(item) for item in identifiers)


def _compare_identifiers(left: Identifier, right: Identifier) -> int:
    """Compare two pre-release identifiers according to the specification."""
    left_numeric = isinstance(left, int)
    right_numeric = isinstance(right, int)
    if left_numeric and right_numeric:
        return _cmp(left, right)
    if left_numeric:
        return -1
    if right_numeric:
        return 1
    return _cmp(left, right)


def compare_prerelease(
    left: Tuple[Identifier, ...], right: Tuple[Identifier, ...]
) -> int:
    """Compare two pre-release tuples, returning -1, 0 or 1.

    An empty tuple means "no pre-release", which has the *highest*
    precedence.
    """
    if not left and not right:
        return 0
    if not left:
        return 1
    if not right:
        return -1
    for left_id, right_id in zip(left, right):
        result = _compare_identifiers(left_id, right_id)
        if result != 0:
            return result
    return _cmp(len(left), len(right))


@dataclass(frozen=True, eq=False)
class Version:
    """An immutable semantic version.

    ``prerelease`` and ``build`` may be given as dot-separated strings or as
    iterables of identifiers; they are stored as tuples.  Numeric
    pre-release identifiers are stored as ints.

    >>> Version(1, 2, 3, "rc.1")
    Version('1.2.3-rc.1')
    """

    major: int
    minor: int = 0
    patch: int = 0
    prerelease: Tuple[Identifier, ...] = ()
    build: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("major", "minor", "patch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        object.__setattr__(self, "prerelease", _normalize_prerelease(self.prerelease))
        object.__setattr__(self, "build", _normalize_build(self.build))

    # -- construction -----------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> "Version":
        """Parse a strict SemVer 2.0.0 string.

        Raises :class:`ValueError` with a message naming the problem if the
        text is not a valid version.  No surrounding whitespace, ``v``
        prefix or missing fields are accepted; see :func:`coerce` for a
        forgiving alternative.
        """
        if not isinstance(text, str):
            raise TypeError(f"version must be a str, not {type(text).__name__}")
        try:
            return cls._parse_strict(text)
        except ValueError as exc:
            raise ValueError(f"invalid version {text!r}: {exc}") from None

    @classmethod
    def _parse_strict(cls, text: str) -> "Version":
        if not text:
            raise ValueError("empty string")
        rest, plus, build = text.partition("+")
        if plus and not build:
            raise ValueError("build metadata is empty")
        core, dash, prerelease = rest.partition("-")
        if dash and not prerelease:
            raise ValueError("pre-release is empty")
        fields = core.split(".")
        if len(fields) != 3:
            raise ValueError(
                f"expected MAJOR.MINOR.PATCH, got {len(fields)} dot-separated field(s)"
            )
        major = _parse_number(fields[0], "major")
        minor = _parse_number(fields[1], "minor")
        patch = _parse_number(fields[2], "patch")
        return cls(major, minor, patch, parse_prerelease(prerelease), parse_build(build))

    def replace(self, **changes) -> "Version":
        """Return a copy with the given fields replaced."""
        return replace(self, **changes)

    # -- properties -------------------------------------------------------

    @property
    def release(self) -> Tuple[int, int, int]:
        """The ``(major, minor, patch)`` triple."""
        return (self.major, self.minor, self.patch)

    @property
    def is_prerelease(self) -> bool:
        """True if the version carries a pre-release tag."""
        return len(self.prerelease) > 0

    @property
    def is_stable(self) -> bool:
        """True for a public, final release: ``major >= 1`` and no pre-release."""
        return self.major >= 1 and not self.is_prerelease

    # -- comparison -------------------------------------------------------

    def compare(self, other: "Version") -> int:
        """Compare by precedence, returning -1, 0 or 1.  Build metadata is ignored."""
        result = _cmp(self.release, other.release)
        if result != 0:
            return result
        return compare_prerelease(self.prerelease, other.prerelease)

    def _precedence_key(self):
        return (self.major, self.minor, self.patch, self.prerelease)

    def __eq__(self, other):
        if not isinstance(other, Version):
            return NotImplemented
        return self.compare(other) == 0

    def __lt__(self, other):
        if not isinstance(other, Version):
            return NotImplemented
        return self.compare(other) < 0

    def __le__(self, other):
        if not isinstance(other, Version):
            return NotImplemented
        return self.compare(other) <= 0

    def __gt__(self, other):
        if not isinstance(other, Version):
            return NotImplemented
        return self.compare(other) > 0

    def __ge__(self, other):
        if not isinstance(other, Version):
            return NotImplemented
        return self.compare(other) >= 0

    def __hash__(self) -> int:
        return hash(self._precedence_key())

    # -- formatting -------------------------------------------------------

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + _format_identifiers(self.prerelease)
        if self.build:
            text += "+" + _format_identifiers(self.build)
        return text

    def __repr__(self) -> str:
        return f"Version({str(self)!r})"


def parse(text: str) -> Version:
    """Parse a strict SemVer string; shorthand for :meth:`Version.parse`."""
    return Version.parse(text)


def is_valid(text: str) -> bool:
    """Return True if *text* is a valid strict SemVer 2.0.0 string."""
    try:
        Version.parse(text)
    except (TypeError, ValueError):
        return False
    return True


def compare(left: Union[str, Version], right: Union[str, Version]) -> int:
    """Compare two versions (strings are parsed strictly), returning -1, 0 or 1."""
    return _as_version(left).compare(_as_version(right))


def _as_version(value: Union[str, Version]) -> Version:
    """Return *value* as a :class:`Version`, parsing strings strictly."""
    if isinstance(value, Version):
        return value
    return Version.parse(value)


def _strip_loose_prefix(text: str) -> str:
    """Remove a leading ``=`` and/or ``v`` (in either order) and spaces."""
    text = text.strip()
    while text and text[0] in "=vV":
        text = text[1:].lstrip()
    return text


def coerce(value: Union[str, Version]) -> Version:
    """Turn a loosely written version into a :class:`Version`.

    Surrounding whitespace and a leading ``v`` or ``=`` are ignored, missing
    minor/patch fields default to zero, and leading zeros are tolerated::

        coerce("v1.2")      -> 1.2.0
        coerce(" =1.2.3 ")  -> 1.2.3
        coerce("1")         -> 1.0.0

    A pre-release or build suffix is kept (and validated strictly) but only
    after a complete ``MAJOR.MINOR.PATCH``.  Anything else raises
    :class:`ValueError`.
    """
    if isinstance(value, Version):
        return value
    if not isinstance(value, str):
        raise TypeError(f"cannot coerce {type(value).__name__} to a version")
    text = _strip_loose_prefix(value)
    match = _LOOSE_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"cannot coerce {value!r} to a version")
    major, minor, patch, suffix = match.groups()
    if suffix and suffix[0] not in "-+":
        raise ValueError(f"cannot coerce {value!r} to a version")
    if suffix and patch is None:
        raise ValueError(
            f"cannot coerce {value!r}: a pre-release or build needs MAJOR.MINOR.PATCH"
        )
    core = f"{int(major)}.{int(minor or 0)}.{int(patch or 0)}"
    return Version.parse(core + suffix)
