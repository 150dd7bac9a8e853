"""npm-style version ranges.

A range is a set of comparator sets joined by ``||``; a version satisfies
the range if it satisfies *every* comparator of *any* set.  Supported
syntax (see https://github.com/npm/node-semver#ranges):

=================  ==========================================
``>=1.2.3 <2``     primitive comparators (``<``, ``<=``, ``>``, ``>=``, ``=``)
``1.2.3 - 2.3``    hyphen ranges (inclusive)
``1.x``, ``1.2.*`` X-ranges; ``*`` and the empty string match anything
``~1.2.3``         tilde: patch-level changes (``~>`` is accepted too)
``^1.2.3``         caret: changes that do not modify the left-most non-zero field
``A || B``         union of sets
=================  ==========================================

Every shorthand is expanded into primitive comparators when the range is
parsed, and ``str(range)`` shows that expanded form, e.g.
``str(Range.parse("^1.2"))`` is ``">=1.2.0 <2.0.0-0"``.

Pre-releases are handled as npm does: a version with a pre-release tag only
satisfies a comparator set if one of the set's comparators has a
pre-release tag on the same ``major.minor.patch``.  So ``1.3.0-beta`` does
not satisfy ``^1.2.0`` but ``1.2.4-beta.2`` satisfies ``>=1.2.4-beta.1``.
Pass ``include_prerelease=True`` to drop that restriction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from .version import Identifier, Version, parse_build, parse_prerelease

__all__ = ["Comparator", "OPERATORS", "Range", "satisfies"]

#: Primitive comparison operators, longest first so prefixes match correctly.
OPERATORS = ("<=", ">=", "<", ">", "=")

_WILDCARDS = frozenset({"x", "X", "*"})
_DIGITS = frozenset("0123456789")
_FIELD_NAMES = ("major", "minor", "patch")
_HYPHEN_PATTERN = re.compile(r"(\S+)\s+-\s+(\S+)")
_OPERATOR_SPACE_PATTERN = re.compile(r"(<=|>=|<|>|=|\^|~>?)\s+")

VersionLike = Union[str, Version]


def _as_version(value: VersionLike) -> Version:
    if isinstance(value, Version):
        return value
    return Version.parse(value)


@dataclass(frozen=True)
class Comparator:
    """A single primitive comparison such as ``>=1.2.3``."""

    operator: str
    version: Version

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError(f"unknown operator {self.operator!r}")
        if not isinstance(self.version, Version):
            raise TypeError("version must be a Version")

    @classmethod
    def parse(cls, text: str) -> "Comparator":
        """Parse ``OP VERSION`` where VERSION is a complete, strict version.

        A missing operator means ``=``.
        """
        operator, rest = _split_operator(text.strip())
        return cls(operator, Version.parse(rest.strip()))

    def test(self, version: VersionLike) -> bool:
        """Return True if *version* satisfies this comparison.

        Only precedence is checked; the pre-release rule of ranges is
        applied by :class:`Range`.
        """
        result = _as_version(version).compare(self.version)
        if self.operator == "<":
            return result < 0
        if self.operator == "<=":
            return result <= 0
        if self.operator == ">":
            return result > 0
        if self.operator == ">=":
            return result >= 0
        return result == 0

    def __str__(self) -> str:
        prefix = "" if self.operator == "=" else self.operator
        return f"{prefix}{self.version}"


@dataclass(frozen=True)
class _Partial:
    """A possibly incomplete version; ``None`` fields are wildcards."""

    major: Optional[int]
    minor: Optional[int]
    patch: Optional[int]
    prerelease: Tuple[Identifier, ...] = ()

    def floor(self) -> Version:
        """The lowest version matched, with wildcards replaced by zero."""
        return Version(self.major or 0, self.minor or 0, self.patch or 0, self.prerelease)

    def next_floor(self) -> Version:
        """The first version above every version this partial matches.

        Only valid for partials with at least a major version and at least
        one wildcard field.
        """
        if self.minor is None:
            return Version(self.major + 1, 0, 0)
        return Version(self.major, self.minor + 1, 0)


# -- building blocks ------------------------------------------------------

def _at_least(version: Version) -> Comparator:
    return Comparator(">=", version)


def _below(version: Version) -> Comparator:
    """``<X.Y.Z-0``: below X.Y.Z and below every pre-release of it."""
    return Comparator("<", Version(version.major, version.minor, version.patch, (0,)))


#: A comparator that no version satisfies (``<0.0.0-0``).
_NOTHING = _below(Version(0, 0, 0))


def _split_operator(text: str) -> Tuple[str, str]:
    """Split a leading primitive operator off *text* (default ``=``)."""
    for operator in OPERATORS:
        if text.startswith(operator):
            return operator, text[len(operator):]
    return "=", text


def _parse_field(text: str, name: str) -> int:
    if not text or any(char not in _DIGITS for char in text):
        raise ValueError(f"{name} version {text!r} is not a number or wildcard")
    if len(text) > 1 and text[0] == "0":
        raise ValueError(f"{name} version {text!r} must not have leading zeros")
    return int(text)


def _parse_partial(text: str) -> _Partial:
    """Parse ``1``, ``1.2``, ``1.x.x``, ``*``, ``v1.2.3-rc.1`` and friends."""
    if text[:1] in ("v", "V"):
        text = text[1:]
    if text == "":
        raise ValueError("missing version")
    text, plus, build = text.partition("+")
    if plus and not build:
        raise ValueError("build metadata is empty")
    parse_build(build)  # validated, then ignored like npm does
    core, dash, prerelease = text.partition("-")
    fields = core.split(".")
    if len(fields) > 3:
        raise ValueError(f"too many fields in {core!r}")
    values: List[Optional[int]] = []
    for name, field in zip(_FIELD_NAMES, fields):
        if field in _WILDCARDS:
            values.append(None)
        elif values and values[-1] is None:
            raise ValueError(f"{name} version {field!r} follows a wildcard")
        else:
            values.append(_parse_field(field, name))
    while len(values) < 3:
        values.append(None)
    if dash and not prerelease:
        raise ValueError("pre-release is empty")
    if dash and values[2] is None:
        raise ValueError("a pre-release needs a complete MAJOR.MINOR.PATCH")
    return _Partial(values[0], values[1], values[2], parse_prerelease(prerelease))


# -- desugaring -------------------------------------------------------------

def _expand_xrange(partial: _Partial) -> List[Comparator]:
    """``1.2.x`` -> ``>=1.2.0 <1.3.0-0``; a complete version means equality."""
    if partial.major is None:
        return []
    if partial.patch is None:
        return [_at_least(partial.floor()), _below(partial.next_floor())]
    return [Comparator("=", partial.floor())]


def _expand_caret(partial: _Partial) -> List[Comparator]:
    """``^1.2.3`` -> ``>=1.2.3 <2.0.0-0``, ``^0.2.3`` -> ``<0.3.0-0`` etc."""
    if partial.major is None:
        return []
    lower = _at_least(partial.floor())
    if partial.major > 0 or partial.minor is None:
        upper = Version(partial.major + 1, 0, 0)
    elif partial.minor > 0 or partial.patch is None:
        upper = Version(0, partial.minor + 1, 0)
    else:
        upper = Version(0, 0, partial.patch + 1)
    return [lower, _below(upper)]


def _expand_tilde(partial: _Partial) -> List[Comparator]:
    """``~1.2.3`` -> ``>=1.2.3 <1.3.0-0``; ``~1`` -> ``>=1.0.0 <2.0.0-0``."""
    if partial.major is None:
        return []
    lower = _at_least(partial.floor())
    if partial.minor is None:
        upper = Version(partial.major + 1, 0, 0)
    else:
        upper = Version(partial.major, partial.minor + 1, 0)
    return [lower, _below(upper)]


def _expand_primitive(operator: str, partial: _Partial) -> List[Comparator]:
    """Expand ``OP PARTIAL``, e.g. ``>1.2`` -> ``>=1.3.0``."""
    if operator == "=":
        return _expand_xrange(partial)
    if partial.major is None:
        if operator in ("<", ">"):
            return [_NOTHING]
        return []
    if partial.patch is not None:
        return [Comparator(operator, partial.floor())]
    if operator == ">":
        return [_at_least(partial.next_floor())]
    if operator == ">=":
        return [_at_least(partial.floor())]
    if operator == "<":
        return [_below(partial.floor())]
    return [_below(partial.next_floor())]


def _expand_hyphen(low: _Partial, high: _Partial) -> List[Comparator]:
    """``1.2 - 2.3`` -> ``>=1.2.0 <2.4.0-0``; both ends are inclusive."""
    result = []
    if low.major is not None:
        result.append(_at_least(low.floor()))
    if high.major is None:
        return result
    if high.patch is not None:
        result.append(Comparator("<=", high.floor()))
    else:
        result.append(_below(high.next_floor()))
    return result


def _expand_token(token: str) -> List[Comparator]:
    """Expand a single whitespace-free token of a comparator set."""
    if token.startswith("^"):
        return _expand_caret(_parse_partial(token[1:]))
    if token.startswith("~"):
        rest = token[2:] if token.startswith("~>") else token[1:]
        return _expand_tilde(_parse_partial(rest))
    operator, rest = _split_operator(token)
    return _expand_primitive(operator, _parse_partial(rest))


def _parse_set(text: str) -> Tuple[Comparator, ...]:
    """Parse one ``||``-separated part into a tuple of comparators."""
    text = text.strip()
    hyphen = _HYPHEN_PATTERN.fullmatch(text)
    if hyphen is not None:
        low, high = hyphen.groups()
        return tuple(_expand_hyphen(_parse_partial(low), _parse_partial(high)))
    text = _OPERATOR_SPACE_PATTERN.sub(r"\1", text)
    comparators: List[Comparator] = []
    for token in text.split():
        comparators.extend(_expand_token(token))
    return tuple(comparators)


def _set_allows(
    comparators: Sequence[Comparator], version: Version, include_prerelease: bool
) -> bool:
    """Return True if *version* satisfies every comparator of one set."""
    for comparator in comparators:
        if not comparator.test(version):
            return False
    if not version.is_prerelease or include_prerelease:
        return True
    for comparator in comparators:
        bound = comparator.version
        if bound.is_prerelease and bound.release == version.release:
            return True
    return False


def _format_set(comparators: Sequence[Comparator]) -> str:
    if not comparators:
        return "*"
    return " ".join(str(comparator) for comparator in comparators)


class Range:
    """A parsed range: a union (``||``) of comparator sets.

    >>> r = Range.parse("^1.2 || >=3")
    >>> "1.4.0" in r, "2.0.0" in r, "3.1.0" in r
    (True, False, True)
    """

    __slots__ = ("_sets", "_include_prerelease")

    def __init__(
        self,
        sets: Sequence[Sequence[Comparator]],
        include_prerelease: bool = False,
    ) -> None:
        self._sets = tuple(tuple(comparators) for comparators in sets)
        if not self._sets:
            raise ValueError("a range needs at least one comparator set")
        self._include_prerelease = bool(include_prerelease)

    @classmethod
    def parse(cls, text: str, include_prerelease: bool = False) -> "Range":
        """Parse an npm-style range string; raises :class:`ValueError` if invalid."""
        if not isinstance(text, str):
            raise TypeError(f"range must be a str, not {type(text).__name__}")
        try:
            sets = [_parse_set(part) for part in text.split("||")]
        except ValueError as exc:
            raise ValueError(f"invalid range {text!r}: {exc}") from None
        return cls(sets, include_prerelease)

    @property
    def sets(self) -> Tuple[Tuple[Comparator, ...], ...]:
        """The comparator sets; an empty set matches every version."""
        return self._sets

    @property
    def include_prerelease(self) -> bool:
        """Whether pre-releases may match without an explicit pre-release bound."""
        return self._include_prerelease

    def contains(self, version: VersionLike) -> bool:
        """Return True if *version* (a Version or strict string) satisfies the range."""
        candidate = _as_version(version)
        for comparators in self._sets:
            if _set_allows(comparators, candidate, self._include_prerelease):
                return True
        return False

    def __contains__(self, version: VersionLike) -> bool:
        return self.contains(version)

    def __eq__(self, other):
        if not isinstance(other, Range):
            return NotImplemented
        return (self._sets, self._include_prerelease) == (
            other._sets,
            other._include_prerelease,
        )

    def __hash__(self) -> int:
        return hash((self._sets, self._include_prerelease))

    def __str__(self) -> str:
        return " || ".join(_format_set(comparators) for comparators in self._sets)

    def __repr__(self) -> str:
        return f"Range({str(self)!r})"


def satisfies(
    version: VersionLike, range_: Union[str, Range], include_prerelease: bool = False
) -> bool:
    """Return True if *version* satisfies *range_* (a string or :class:`Range`).

    When *range_* is already a :class:`Range`, its own ``include_prerelease``
    setting is used unless *include_prerelease* is True.
    """
    if isinstance(range_, Range):
        if include_prerelease and not range_.include_prerelease:
            range_ = Range(range_.sets, include_prerelease=True)
    else:
        range_ = Range.parse(range_, include_prerelease)
    return range_.contains(version)
