"""What an edit does to a file, found without touching the rest of it: the window of changed lines,
and whether the edited file still parses, to another tree.

Both look only at the lines an edit touches and the innermost statement around them, so enumerating
the mutations of a module stays linear in its size (a 4,000-line module takes seconds, not minutes).
`tests/test_mutate.py` checks them against editing, diffing and parsing the whole file.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from forager.tasks.source_edit import LINE, Edit, Source, apply_edits, sub_blocks


@dataclass(frozen=True)
class Window:
    """What an edit does to whole lines: lines [head, stop) of the original (0-based) become `lines`.

    The window is canonical (the longest common head and tail of the two files are left out), so two
    edits that give the same file give the same window.
    """

    head: int
    stop: int
    lines: tuple[str, ...]

    @property
    def start_line(self) -> int:
        return self.head + 1

    @property
    def end_line(self) -> int:
        return max(self.head + 1, self.stop)


def edit_window(src: Source, edits: Iterable[Edit]) -> Window | None:
    """The changed lines of `src` once `edits` are applied, None when they change nothing.

    Works on the lines the edits touch and their neighbours only, never on the whole file, so
    enumerating a module's mutations stays linear in its size.
    """
    edits = list(edits)
    old = src.lines
    lo = src.line_index(min(edit[0] for edit in edits))
    hi = min(src.line_index(max(edit[1] for edit in edits)) + 1, len(old))
    while True:  # whole lines, ending where the mutated text ends a line too
        base = src.starts[lo]
        region = apply_edits(src.text[base:src.starts[hi]], [(a - base, b - base, text) for a, b, text in edits])
        joins = region and (not region.endswith(("\n", "\r")) or region.endswith("\r") and old[hi:hi + 1] == ["\n"])
        if hi >= len(old) or not joins:
            break
        hi += 1
    new = LINE.findall(region)
    n_old, n_new = len(old), len(old) - (hi - lo) + len(new)

    def new_line(i: int) -> str:
        return old[i] if i < lo else new[i - lo] if i < lo + len(new) else old[i - len(new) + hi - lo]

    limit = min(n_old, n_new)
    head = lo  # the lines before `lo` and after `hi` are unchanged: start comparing there
    while head < limit and old[head] == new_line(head):
        head += 1
    tail = min(n_old - hi, limit - head)
    while tail < limit - head and old[n_old - 1 - tail] == new_line(n_new - 1 - tail):
        tail += 1
    if head == limit and n_old == n_new:
        return None
    return Window(head, n_old - tail, tuple(new_line(i) for i in range(head, n_new - tail)))


def changes_tree(src: Source, window: Window) -> bool:
    """Whether the file `window` gives parses, to another tree than the original's.

    Only the innermost statement holding the changed lines is parsed again and compared (the file
    is the same around it), at its own indentation, so the cost follows the statement's size, not
    the file's. A change at module level parses the top-level statements it touches.
    """
    for stmt in _enclosing(src, window.start_line, window.end_line):
        first, last = src.line_index(src.stmt_start(stmt)) + 1, stmt.end_lineno or stmt.lineno
        if src.is_elif(stmt) or not src.owns_lines(stmt):
            continue  # an `elif` does not parse alone
        chunk = _chunk(src, window, first, last)
        code = [line for line in chunk if line.strip() and not line.lstrip().startswith("#")]
        if not code:
            continue  # the statement itself was deleted: judge it from the one around it
        indent = src.text[src.starts[first - 1]:src.stmt_start(stmt)]
        if code[0][:len(code[0]) - len(code[0].lstrip())] != indent:
            return False
        new = _parse("".join(chunk), indented=bool(indent))
        return new is not None and (len(new) != 1 or src.dump(stmt) != ast.dump(new[0]))
    touched, first, last = [], window.start_line, window.end_line
    for stmt in src.tree.body:
        stmt_first, stmt_last = src.line_index(src.stmt_start(stmt)) + 1, stmt.end_lineno or stmt.lineno
        if stmt_first <= window.end_line and stmt_last >= window.start_line:
            touched.append(stmt)
            first, last = min(first, stmt_first), max(last, stmt_last)
    new = _parse("".join(_chunk(src, window, first, last)), indented=False)
    return new is not None and (
        len(new) != len(touched) or any(src.dump(a) != ast.dump(b) for a, b in zip(touched, new)))


def _chunk(src: Source, window: Window, first: int, last: int) -> list[str]:
    """Lines [first, last] (1-based) of the original as the window changes them."""
    return [*src.lines[first - 1:window.head], *window.lines, *src.lines[window.stop:last]]


def _parse(text: str, indented: bool) -> list[ast.stmt] | None:
    """The statements of `text` (indented ones inside an `if 1:`), None when it does not parse as such."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            body = ast.parse("if 1:\n" + text if indented else text).body
    except (SyntaxError, ValueError):
        return None
    if not indented:
        return body
    return body[0].body if len(body) == 1 and isinstance(body[0], ast.If) and not body[0].orelse else None


def _enclosing(src: Source, start: int, end: int) -> list[ast.stmt]:
    """The statements whose lines hold lines [start, end], innermost first."""
    found: list[ast.stmt] = []
    block: list[ast.stmt] | None = src.tree.body
    while block:
        stmt = src.statement_at(block, start)
        if stmt is None or (stmt.end_lineno or stmt.lineno) < end:
            break
        found.append(stmt)
        block = None
        for inner in sub_blocks(stmt):
            if src.statement_at(inner, start) is not None:
                block = inner
                break
    return found[::-1]
