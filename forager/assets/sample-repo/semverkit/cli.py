"""Command-line interface: ``python -m semverkit COMMAND ...``.

Commands::

    compare A B              print -1, 0 or 1
    bump KIND VERSION        print the bumped version (KIND: major, minor, ...)
    satisfies VERSION RANGE  exit 0 if VERSION satisfies RANGE, 1 otherwise
    sort VERSION...          print the versions in ascending order
    max RANGE VERSION...     print the highest version in RANGE (exit 1 if none)
    min RANGE VERSION...     print the lowest version in RANGE (exit 1 if none)
    valid VERSION...         exit 0 if every VERSION is a strict SemVer string

Invalid input is reported on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, Optional, Sequence

from . import __version__
from .bump import BUMP_KINDS, bump
from .collection import max_satisfying, min_satisfying, sort_versions
from .ranges import Range
from .version import Version, compare, is_valid

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FALSE = 1
EXIT_ERROR = 2


def _add_prerelease_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--include-prerelease",
        action="store_true",
        help="let pre-release versions match ranges without a pre-release bound",
    )


def build_parser() -> argparse.ArgumentParser:
    """Create the argument parser for the ``semverkit`` command."""
    parser = argparse.ArgumentParser(
        prog="semverkit", description="Semantic Versioning 2.0.0 toolkit."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    compare_parser = commands.add_parser("compare", help="compare two versions")
    compare_parser.add_argument("left", metavar="A")
    compare_parser.add_argument("right", metavar="B")

    bump_parser = commands.add_parser("bump", help="print the next version")
    bump_parser.add_argument("kind", choices=BUMP_KINDS)
    bump_parser.add_argument("version")
    bump_parser.add_argument("--label", default=None, help="pre-release label, e.g. beta")

    satisfies_parser = commands.add_parser("satisfies", help="test a version against a range")
    satisfies_parser.add_argument("version")
    satisfies_parser.add_argument("range")
    _add_prerelease_flag(satisfies_parser)

    sort_parser = commands.add_parser("sort", help="sort versions by precedence")
    sort_parser.add_argument("versions", nargs="+", metavar="VERSION")
    sort_parser.add_argument("-r", "--reverse", action="store_true", help="highest first")

    for name, help_text in (("max", "highest version in a range"), ("min", "lowest version in a range")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("range")
        sub.add_argument("versions", nargs="+", metavar="VERSION")
        _add_prerelease_flag(sub)

    valid_parser = commands.add_parser("valid", help="check that versions are strict SemVer")
    valid_parser.add_argument("versions", nargs="+", metavar="VERSION")
    return parser


def _cmd_compare(args: argparse.Namespace) -> int:
    print(compare(args.left, args.right))
    return EXIT_OK


def _cmd_bump(args: argparse.Namespace) -> int:
    print(bump(args.version, args.kind, args.label))
    return EXIT_OK


def _cmd_satisfies(args: argparse.Namespace) -> int:
    parsed = Range.parse(args.range, args.include_prerelease)
    if parsed.contains(Version.parse(args.version)):
        return EXIT_OK
    return EXIT_FALSE


def _cmd_sort(args: argparse.Namespace) -> int:
    for version in sort_versions(args.versions, reverse=args.reverse):
        print(version)
    return EXIT_OK


def _print_optional(version: Optional[Version]) -> int:
    if version is None:
        return EXIT_FALSE
    print(version)
    return EXIT_OK


def _cmd_max(args: argparse.Namespace) -> int:
    return _print_optional(
        max_satisfying(args.versions, args.range, args.include_prerelease)
    )


def _cmd_min(args: argparse.Namespace) -> int:
    return _print_optional(
        min_satisfying(args.versions, args.range, args.include_prerelease)
    )


def _cmd_valid(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for text in args.versions:
        if not is_valid(text):
            print(f"invalid: {text}", file=sys.stderr)
            status = EXIT_FALSE
    return status


_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "compare": _cmd_compare,
    "bump": _cmd_bump,
    "satisfies": _cmd_satisfies,
    "sort": _cmd_sort,
    "max": _cmd_max,
    "min": _cmd_min,
    "valid": _cmd_valid,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ValueError as exc:
        print(f"semverkit: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
