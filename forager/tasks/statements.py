"""Problem statements for mutate-fix tasks: what the agent is told about a planted bug.

The default writes a bug report from the failing tests and their errors, never describing the
change; a `ProblemStatement` of your own (an LLM writing an issue, say) gets the same context.
Tracebacks print source lines, and the mutated lines are the answer: `redact` takes them out of
any error text before it reaches a statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from forager.tasks.mutate import Mutation

# `  File "/repo/pkg/mod.py", line 12, in f` (Python, doctests included) and `pkg/mod.py:12: in f` (pytest).
_PY_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')
_PYTEST_FRAME = re.compile(r"^(?P<path>\S+\.py):(?P<line>\d+): ")
_MARKERS = re.compile(r"^(?:[>E]\s|\d{3,}\s)?\s*")  # pytest's `>`/`E ` markers, a doctest's line numbers
_CARETS = re.compile(r"^\s*[\^~]+\s*$")  # the markers Python 3.11+ prints under a code line
_SECTION = re.compile(r"^_{3,} (?P<title>.+?) _{3,}$|^={3,}.*={3,}$")
_INTERNAL = re.compile(r"/(site|dist)-packages/|/lib/python\d[\d.]*/|^<frozen ")  # pytest's frames, the stdlib's
COLLECTION_ERROR_CHARS = 2000


@dataclass
class MutationContext:
    """What a problem-statement writer may use: what the user sees, and (for an LLM) the bug itself."""

    repo: str
    """The project's name as its users know it (its distribution or repository name)."""
    failing: list[str]
    messages: dict[str, str]
    """Error text per failing test, already redacted (`redact`)."""
    mutation: Mutation
    path: str


ProblemStatement = Callable[[MutationContext], str]


def default_problem_statement(ctx: MutationContext) -> str:
    """A bug report built from the failing tests and their errors; it never describes the change."""
    shown = ctx.failing[:10]
    lines = [f"{len(ctx.failing)} test{'s' if len(ctx.failing) != 1 else ''} of {ctx.repo} started failing:", ""]
    lines += [f"- `{t}`" for t in shown]
    if len(ctx.failing) > len(shown):
        lines.append(f"- ... and {len(ctx.failing) - len(shown)} more")
    first = next((t for t in ctx.failing if ctx.messages.get(t)), None)
    if first:
        excerpt = redact(error_excerpt(ctx.messages[first]), ctx.mutation, ctx.path)
        lines += ["", f"Running `{first}` fails with:", "", "```", excerpt, "```"]
    lines += ["", "These tests passed before. Find the bug in the library code and fix it; do not change the tests."]
    return "\n".join(lines) + "\n"


def error_excerpt(report: str, max_lines: int = 12) -> str:
    """What went wrong and where, not the code around it: the `E` lines of a pytest failure and its
    location, or of a plain Python traceback the first frame of the project's own (the test), the
    last two (where it failed) and the error."""
    lines = report.splitlines()
    errors = [line for line in lines if line.startswith("E ")]
    if errors:
        where = [line for line in lines if re.match(r"^\S+\.py:\d+: \w+", line)]
        return "\n".join(dict.fromkeys(errors[:max_lines] + where[-1:])).strip()
    frames = [i for i, line in enumerate(lines) if _PY_FRAME.match(line)]
    if not frames:
        return "\n".join(dict.fromkeys(lines[:1] + lines[-max_lines:])).strip() or "(no error text)"
    own = [i for i in frames if not _INTERNAL.search(_PY_FRAME.match(lines[i])["path"])]
    shown = list(dict.fromkeys(own[:1] + own[-2:]))
    picked = ["Traceback (most recent call last):"] if shown else []
    for n, i in enumerate(shown):
        if n and frames.index(i) != frames.index(shown[n - 1]) + 1:
            picked.append("  ...")
        picked += lines[i:_frame_end(lines, i)]
    if shown and shown[-1] != frames[-1]:
        picked.append("  ...")
    return "\n".join(picked + lines[_frame_end(lines, frames[-1]):][:max_lines]).strip()


def _frame_end(lines: list[str], frame: int) -> int:
    """The line after a traceback frame: its code line and the markers under it belong to it."""
    end = frame + 1
    while end < len(lines) and lines[end].startswith("    ") and not _PY_FRAME.match(lines[end]):
        end += 1
    return end


def redact(text: str, mutation: Mutation, path: str) -> str:
    """`text` without the lines that print the mutated source: a traceback's code line after a frame
    in the mutated lines of `path`, and any line that shows one of them (pytest's `>` lines, doctests)."""
    mutated = mutation.mutated_lines
    shown = {line.strip() for line in mutated.values() if len(line.strip()) >= 4}
    kept: list[str] = []
    hide_next = dropped = False
    for line in text.splitlines():
        code = _MARKERS.sub("", line, count=1).strip()
        if (hide_next and line[:1].isspace() and code) or (code and code in shown) or \
                (dropped and _CARETS.match(line)) or any(len(s) >= 12 and s in line for s in shown):
            hide_next, dropped = False, True
            continue
        frame = _PY_FRAME.match(line) or _PYTEST_FRAME.match(line)
        hide_next = bool(frame) and _same_file(frame["path"], path) and int(frame["line"]) in mutated
        dropped = False
        kept.append(line)
    return "\n".join(kept)


def _same_file(shown: str, path: str) -> bool:
    return shown == path or shown.endswith("/" + path)


def collection_errors(log: str) -> dict[str, str]:
    """What pytest printed for each file it could not collect (`ERROR collecting tests/test_x.py`),
    by file; a conftest that does not load counts for every file ("" key)."""
    errors: dict[str, str] = {}
    current: str | None = None
    body: list[str] = []
    for line in [*log.splitlines(), "=== end ==="]:
        section = _SECTION.match(line)
        if section is None:
            if current is not None:
                body.append(line)
            continue
        if current is not None and body:
            errors.setdefault(current, _clip("\n".join(body).strip()))
        title = section["title"] or ""
        current = title[len("ERROR collecting "):].strip() if title.startswith("ERROR collecting ") else None
        body = []
    for line in log.splitlines():  # `ImportError while loading conftest '/repo/tests/conftest.py'.` has no section
        if line.startswith("ImportError while loading conftest"):
            start = log.index(line)
            errors.setdefault("", _clip(log[start:start + COLLECTION_ERROR_CHARS * 2].strip()))
            break
    return errors


def _clip(text: str, limit: int = COLLECTION_ERROR_CHARS) -> str:
    """The error's last `limit` characters (its end says what went wrong), cut at a line."""
    if len(text) <= limit:
        return text
    return "...\n" + text[-limit:].split("\n", 1)[-1]


def collection_error_for(test: str, errors: dict[str, str]) -> str:
    """The collection error that explains `test` not running: its file's, a conftest's, or else the first
    (pytest stops the whole session when one file does not collect)."""
    return errors.get(test.split("::")[0]) or errors.get("") or next(iter(errors.values()), "")
