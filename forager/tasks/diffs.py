"""Unified diffs as text: reversing one the way `git diff -R` would have written it."""

from __future__ import annotations

import re

from forager.core import ForagerError


class DiffError(ForagerError, ValueError):
    """A diff cannot be handled as text (a binary patch, a copy); the message says what to do instead."""


def reverse_diff(diff: str) -> str:
    """Reverse a unified (git) diff textually, as `git diff -R` would have written it.

    Swaps file headers, hunk ranges and +/- lines (removals first, each `\\ No newline at end of file`
    kept after its line), new/deleted file modes, old/new modes, index ids and renames. Copies and
    binary patches cannot be reversed without the files and raise DiffError.
    """
    lines = diff.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            end = i + 1
            while end < len(lines) and lines[end].startswith(_EXTENDED_HEADERS):
                end += 1
            out += _reverse_git_header(lines[i:end])
            i = end
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            out += ["--- " + lines[i + 1][4:], "+++ " + line[4:]]
            i += 2
        elif hunk := _HUNK_HEADER.match(line):
            old, new, context = hunk.groups()
            end = _hunk_end(lines, i + 1, _range_len(old), _range_len(new))
            out += [f"@@ -{new} +{old} @@{context}", *_reverse_hunk_body(lines[i + 1 : end])]
            i = end
        elif line.startswith("GIT binary patch"):
            raise DiffError("cannot reverse a binary patch textually: produce the reverse with `git diff -R`")
        else:
            out.append(line)
            i += 1
    return "\n".join(out)

_HUNK_HEADER = re.compile(r"@@ -(\d+(?:,\d+)?) \+(\d+(?:,\d+)?) @@(.*)", re.S)

_EXTENDED_HEADERS = (
    "old mode ", "new mode ", "deleted file mode ", "new file mode ", "similarity index ",
    "dissimilarity index ", "rename from ", "rename to ", "copy from ", "copy to ", "index ",
)

def _range_len(hunk_range: str) -> int:
    return int(hunk_range.split(",")[1]) if "," in hunk_range else 1

def _hunk_end(lines: list[str], i: int, old: int, new: int) -> int:
    """The index after a hunk's body, counted from its header's line counts."""
    while i < len(lines) and (old > 0 or new > 0):
        first = lines[i][:1]
        if first in (" ", ""):  # some tools strip the space of an empty context line
            old, new = old - 1, new - 1
        elif first == "-":
            old -= 1
        elif first == "+":
            new -= 1
        elif first != "\\":
            break  # malformed: let `git apply` report it
        i += 1
    if i < len(lines) and lines[i].startswith("\\"):
        i += 1  # `\ No newline at end of file` after the hunk's last line
    return i

def _reverse_hunk_body(body: list[str]) -> list[str]:
    """Swap +/- and put each run's removals first; a `\\` line stays after the line it qualifies."""
    groups: list[list[str]] = []
    for line in body:
        if line.startswith("\\") and groups:
            groups[-1].append(line)
        else:
            groups.append([line])
    out: list[str] = []
    removed: list[list[str]] = []
    added: list[list[str]] = []
    for group in groups:
        sign = group[0][:1]
        if sign == "+":
            removed.append(["-" + group[0][1:], *group[1:]])
        elif sign == "-":
            added.append(["+" + group[0][1:], *group[1:]])
        else:
            out += [line for g in (*removed, *added, group) for line in g]
            removed, added = [], []
    out += [line for g in (*removed, *added) for line in g]
    return out

def _reverse_git_header(block: list[str]) -> list[str]:
    head, *extended = block
    values = {}
    for line in extended:
        for key in ("old mode ", "new mode ", "rename from ", "rename to "):
            if line.startswith(key):
                values[key] = line[len(key) :]
    swapped = {
        "old mode ": "new mode ", "new mode ": "old mode ", "rename from ": "rename to ", "rename to ": "rename from ",
    }
    out = [_swap_git_names(head, values.get("rename from "), values.get("rename to "))]
    for line in extended:
        if line.startswith(("copy from ", "copy to ")):
            raise DiffError("cannot reverse a copy textually: produce the reverse with `git diff -R`")
        key = next((k for k in swapped if line.startswith(k)), None)
        if key is not None:
            out.append(key + values[swapped[key]])
        elif line.startswith("new file mode "):
            out.append("deleted file mode " + line.removeprefix("new file mode "))
        elif line.startswith("deleted file mode "):
            out.append("new file mode " + line.removeprefix("deleted file mode "))
        elif index := re.fullmatch(r"index (\w+)\.\.(\w+)(.*)", line, flags=re.S):
            out.append(f"index {index[2]}..{index[1]}{index[3]}")
        else:
            out.append(line)
    return out

def _swap_git_names(head: str, old: str | None, new: str | None) -> str:
    """`diff --git a/x b/y` as `diff --git b/y a/x`, finding where the names split even when they hold spaces."""
    rest = head.removeprefix("diff --git ")
    for k, char in enumerate(rest):
        if char != " ":
            continue
        left, right = rest[:k], rest[k + 1 :]
        if old is None or new is None:
            split_here = left[2:] == right[2:]  # one file: the names differ only in their a/ b/ prefixes
        else:
            split_here = left.strip('"').endswith(old.strip('"')) and right.strip('"').endswith(new.strip('"'))
        if split_here:
            return f"diff --git {right} {left}"
    return head
