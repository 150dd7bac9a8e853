"""One strict parser of git's diff format, and an exact applier of what it parsed.

The grader reads the agent's diff with this parser only, filters the parsed files, and applies the
parsed hunks itself: no second reader (`git apply`, `patch(1)`) sees the raw text, so no header
that one reader follows and another ignores (`Index:`, quoted names, `copy to`) can route a change
past the filter. Whatever this parser cannot read exactly is an error, never a silent skip.

Read: git diffs (`diff --git`, C-quoted names, new/deleted files, mode changes, renames, copies,
`\\ No newline at end of file`) and plain unified diffs (`---`/`+++`). Binary patches are parsed
over and marked `binary`, for the caller to refuse. Lines between files that no header claims are
ignored, as `git apply` ignores a commit message; a hunk outside a file is an error.
Applied: like `git apply` without fuzz: each hunk's old lines must match exactly, at its line or
at an offset, in order; a hunk without leading (trailing) context must match at the start (end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from forager.core import ForagerError


class DiffParseError(ForagerError, ValueError):
    """The text is not a diff this parser can read exactly."""


class PatchApplyError(ForagerError, ValueError):
    """A parsed file diff does not apply to the content it was given."""


@dataclass
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: list[tuple[str, bytes]] = field(default_factory=list)
    """(' ' | '-' | '+', the line's bytes with its newline, or without one at the end of a file)."""


@dataclass
class FileDiff:
    old_path: str | None
    """None for a new file."""
    new_path: str | None
    """None for a deleted file."""
    kind: str = "modify"
    """modify, add, delete, rename or copy."""
    old_mode: str | None = None
    new_mode: str | None = None
    hunks: list[Hunk] = field(default_factory=list)
    binary: bool = False
    text: str = ""
    """This file's part of the diff, as given."""

    @property
    def paths(self) -> set[str]:
        return {p for p in (self.old_path, self.new_path) if p}


_HUNK = re.compile(r"^@@ -(\d{1,9})(?:,(\d{1,9}))? \+(\d{1,9})(?:,(\d{1,9}))? @@")
_MODE = re.compile(r"^[0-7]{6}$")
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def unquote_c(text: str) -> tuple[str, str]:
    """Git's C-quoted name at the start of `text` (which starts with `"`): (name, the rest)."""
    out, i = bytearray(), 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return out.decode("utf-8", "surrogateescape"), text[i + 1:]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = text[i + 1: i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif re.match(r"[0-3][0-7]{2}", text[i + 1: i + 4]):
            out.append(int(text[i + 1: i + 4], 8))
            i += 4
        else:
            raise DiffParseError(f"bad escape in quoted name {text[:80]!r}")
    raise DiffParseError(f"unterminated quoted name {text[:80]!r}")


def _name(text: str) -> str:
    """One whole name: C-quoted, or taken as it is."""
    if text.startswith('"'):
        name, rest = unquote_c(text)
        if rest:
            raise DiffParseError(f"text after a quoted name: {text[:80]!r}")
        return name
    return text


def _strip_prefix(raw: str) -> str | None:
    """A header name without its first component (`-p1`); None for /dev/null. An absolute name stays absolute."""
    if raw == "/dev/null":
        return None
    if raw.startswith("/"):
        return raw  # the filter refuses it; stripping would turn /etc/x into etc/x
    if "/" not in raw:
        raise DiffParseError(f"a name without a prefix directory: {raw!r}")
    return raw.split("/", 1)[1]


def _git_header_names(rest: str) -> tuple[str, str] | None:
    """The two names of `diff --git <a> <b>`, or None when unquoted names with spaces leave it ambiguous."""
    if rest.startswith('"'):
        first, tail = unquote_c(rest)
        if not tail.startswith(" "):
            raise DiffParseError(f"bad diff --git line: {rest[:80]!r}")
        return first, _name(tail[1:])
    if rest.endswith('"'):
        at = rest.find(' "')
        if at < 0:
            raise DiffParseError(f"bad diff --git line: {rest[:80]!r}")
        return rest[:at], _name(rest[at + 1:])
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[:half].partition("/")[2] == rest[half + 1:].partition("/")[2]:
        return rest[:half], rest[half + 1:]
    return None


def parse_diff(text: str) -> list[FileDiff]:
    """Every file of `text`, in order. Raises DiffParseError on anything it cannot read exactly."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text's final newline
    files: list[FileDiff] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            i = _parse_git_file(lines, i, files)
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            i = _parse_plain_file(lines, i, files)
        elif line.startswith("@@ ") or line.startswith("GIT binary patch"):
            raise DiffParseError(f"line {i + 1}: a hunk outside any file header")
        else:
            i += 1  # text between files (a commit message, `Index:`): not part of any file
    seen: set[str] = set()
    for f in files:
        for path in f.paths:
            if path in seen:
                raise DiffParseError(f"the diff touches {path!r} twice")
            seen.add(path)
    return files


_EXTENDED = ("old mode ", "new mode ", "deleted file mode ", "new file mode ", "similarity index ",
             "dissimilarity index ", "rename from ", "rename to ", "copy from ", "copy to ", "index ")


def _parse_git_file(lines: list[str], start: int, files: list[FileDiff]) -> int:
    names = _git_header_names(lines[start][len("diff --git "):])
    a, b = (_strip_prefix(names[0]), _strip_prefix(names[1])) if names else (None, None)
    f = FileDiff(old_path=a, new_path=b)
    minus = plus = None
    i = start + 1
    while i < len(lines) and lines[i].startswith(_EXTENDED):
        line = lines[i]
        key, value = _extended(line)
        if key in ("old mode", "new mode", "deleted file mode", "new file mode"):
            if not _MODE.match(value):
                raise DiffParseError(f"line {i + 1}: bad mode {value!r}")
            if key in ("old mode", "deleted file mode"):
                f.old_mode = value
            else:
                f.new_mode = value
            if key == "deleted file mode":
                f.kind = "delete"
            elif key == "new file mode":
                f.kind = "add"
        elif key in ("rename from", "copy from"):
            f.kind, f.old_path = key.split()[0], _name(value)
        elif key in ("rename to", "copy to"):
            f.kind, f.new_path = key.split()[0], _name(value)
        elif key == "index" and " " in value:
            mode = value.rsplit(" ", 1)[1]
            if not _MODE.match(mode):
                raise DiffParseError(f"line {i + 1}: bad mode in index line")
            f.old_mode = f.new_mode = mode
        i += 1
    if i < len(lines) and lines[i].startswith("--- "):
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
            raise DiffParseError(f"line {i + 1}: `---` without `+++`")
        minus, plus = _header_path(lines[i][4:]), _header_path(lines[i + 1][4:])
        i += 2
    if i < len(lines) and lines[i].startswith(("GIT binary patch", "Binary files ")):
        f.binary = True
        i += 1
        while i < len(lines) and not lines[i].startswith("diff --git "):
            i += 1
    else:
        i = _parse_hunks(lines, i, f)
    _settle_git_names(f, minus, plus, start)
    f.text = "\n".join(lines[start:i]) + "\n"
    files.append(f)
    return i


def _extended(line: str) -> tuple[str, str]:
    for prefix in _EXTENDED:
        if line.startswith(prefix):
            return prefix.strip(), line[len(prefix):]
    raise AssertionError(line)


def _header_path(value: str) -> str:
    """The name on a `---`/`+++` line, without a trailing tab and timestamp."""
    if value.startswith('"'):
        name, rest = unquote_c(value)
        if rest and not rest.startswith("\t"):
            raise DiffParseError(f"text after a quoted name: {value[:80]!r}")
        return name
    return value.split("\t", 1)[0]


def _settle_git_names(f: FileDiff, minus: str | None, plus: str | None, start: int) -> None:
    """Make the names of every header agree, or refuse the file: one name per side, whoever reads it."""
    where = f"line {start + 1}"
    if f.kind == "add":
        f.old_path = None
    if f.kind == "delete":
        f.new_path = None
    if minus is not None:
        old = _strip_prefix(minus)
        if (old is None) != (f.kind == "add") or (old is not None and f.old_path not in (None, old)):
            raise DiffParseError(f"{where}: `---` names {minus!r}, which the other headers do not")
        f.old_path = f.old_path or old
    if plus is not None:
        new = _strip_prefix(plus)
        if (new is None) != (f.kind == "delete") or (new is not None and f.new_path not in (None, new)):
            raise DiffParseError(f"{where}: `+++` names {plus!r}, which the other headers do not")
        f.new_path = f.new_path or new
    if f.kind in ("modify", "add", "delete") and f.old_path and f.new_path and f.old_path != f.new_path:
        raise DiffParseError(f"{where}: different names without a rename or copy header")
    if f.kind != "add" and not f.old_path or f.kind != "delete" and not f.new_path:
        raise DiffParseError(f"{where}: cannot tell which file this is")
    if f.kind == "add" and f.hunks and f.hunks[0].old_count:
        raise DiffParseError(f"{where}: a new file whose hunk removes lines")


def _parse_plain_file(lines: list[str], start: int, files: list[FileDiff]) -> int:
    old, new = _strip_prefix(_header_path(lines[start][4:])), _strip_prefix(_header_path(lines[start + 1][4:]))
    if old is None and new is None:
        raise DiffParseError(f"line {start + 1}: /dev/null on both sides")
    kind = "add" if old is None else "delete" if new is None else "modify"
    if kind == "modify" and old != new:
        raise DiffParseError(f"line {start + 1}: `---` and `+++` name different files ({old!r}, {new!r})")
    f = FileDiff(old_path=old, new_path=new, kind=kind)
    i = _parse_hunks(lines, start + 2, f)
    if not f.hunks:
        raise DiffParseError(f"line {start + 1}: a file header without hunks")
    f.text = "\n".join(lines[start:i]) + "\n"
    files.append(f)
    return i


def _parse_hunks(lines: list[str], i: int, f: FileDiff) -> int:
    """The hunks from line `i` on, counted by their headers; the index after the last one."""
    last_end = 0
    while i < len(lines) and lines[i].startswith("@@ "):
        m = _HUNK.match(lines[i])
        if not m:
            raise DiffParseError(f"line {i + 1}: bad hunk header {lines[i][:80]!r}")
        hunk = Hunk(int(m[1]), 1 if m[2] is None else int(m[2]), int(m[3]), 1 if m[4] is None else int(m[4]))
        if hunk.old_start < last_end:
            raise DiffParseError(f"line {i + 1}: hunks out of order or overlapping")
        last_end = hunk.old_start + hunk.old_count
        old, new = hunk.old_count, hunk.new_count
        i += 1
        while old > 0 or new > 0:
            if i >= len(lines):
                raise DiffParseError("the diff ends inside a hunk")
            line = lines[i]
            op, content = (line[:1], line[1:]) if line else (" ", "")  # an empty line: an empty context line
            if op == " ":
                old, new = old - 1, new - 1
            elif op == "-":
                old -= 1
            elif op == "+":
                new -= 1
            else:
                raise DiffParseError(f"line {i + 1}: {line[:80]!r} inside a hunk")
            if old < 0 or new < 0:
                raise DiffParseError(f"line {i + 1}: more lines than the hunk header counts")
            data = content.encode("utf-8", "surrogateescape") + b"\n"
            i += 1
            if i < len(lines) and lines[i].startswith("\\"):
                data = data[:-1]  # `\ No newline at end of file`
                i += 1
            hunk.lines.append((op, data))
        f.hunks.append(hunk)
    return i


# -- applying --------------------------------------------------------------------------------------
def split_lines(data: bytes) -> list[bytes]:
    """Lines with their `\\n` (only `\\n` ends a line, as in git; `\\r` stays content)."""
    return re.findall(rb"[^\n]*\n|[^\n]+\Z", data)


def apply_hunks(old: bytes, hunks: list[Hunk]) -> bytes:
    """`old` with `hunks` applied exactly (offsets allowed, no fuzz). Raises PatchApplyError."""
    src = split_lines(old)
    out: list[bytes] = []
    cursor = 0
    for n, hunk in enumerate(hunks, 1):
        before = [c for op, c in hunk.lines if op != "+"]
        after = [c for op, c in hunk.lines if op != "-"]
        trailing = not hunk.lines or hunk.lines[-1][0] != " "
        at = _find(src, before, cursor, hunk, match_start=hunk.old_start <= 1,
                   match_end=trailing)
        if at is None:
            raise PatchApplyError(f"hunk #{n} (@@ -{hunk.old_start},{hunk.old_count}) does not match")
        out += src[cursor:at] + after
        cursor = at + len(before)
    return b"".join(out + src[cursor:])


def _find(src: list[bytes], before: list[bytes], cursor: int, hunk: Hunk, *, match_start: bool,
          match_end: bool) -> int | None:
    expected = max(hunk.old_start - 1 if hunk.old_count else hunk.old_start, 0)
    last = len(src) - len(before)
    if match_start:
        candidates: list[int] = [0]
    elif match_end:
        candidates = [last]
    else:
        span = max(expected - cursor, last - expected, 0)
        candidates = [p for d in range(span + 1) for p in ((expected + d, expected - d) if d else (expected,))]
    for at in candidates:
        if cursor <= at <= last and src[at:at + len(before)] == before and (not match_end or at == last):
            return at
    return None


# -- writing ----------------------------------------------------------------------------------------
def quote_name(name: str) -> str:
    """A name as git writes it: C-quoted when it holds a quote, a backslash or a control character."""
    if not any(c in '"\\' or ord(c) < 32 or ord(c) == 127 for c in name):
        return name
    rev = {v: k for k, v in _ESCAPES.items()}
    out = "".join(f"\\{rev[ord(c)]}" if ord(c) in rev else f"\\{ord(c):03o}" if ord(c) < 32 or ord(c) == 127 else c
                  for c in name)
    return f'"{out}"'


def render(files: list[FileDiff]) -> str:
    """Parsed files as one canonical git diff: what downstream readers see is what was parsed."""
    out: list[str] = []
    for f in files:
        old, new = f.old_path or f.new_path or "", f.new_path or f.old_path or ""
        out.append(f"diff --git {quote_name('a/' + old)} {quote_name('b/' + new)}")
        if f.kind == "add":
            out.append(f"new file mode {f.new_mode or '100644'}")
        elif f.kind == "delete":
            out.append(f"deleted file mode {f.old_mode or '100644'}")
        elif f.old_mode and f.new_mode and f.old_mode != f.new_mode:
            out += [f"old mode {f.old_mode}", f"new mode {f.new_mode}"]
        if f.kind in ("rename", "copy"):
            out += [f"{f.kind} from {quote_name(old)}", f"{f.kind} to {quote_name(new)}"]
        if f.hunks:
            out.append("--- " + ("/dev/null" if f.old_path is None else quote_name("a/" + old)))
            out.append("+++ " + ("/dev/null" if f.new_path is None else quote_name("b/" + new)))
        for h in f.hunks:
            out.append(f"@@ -{h.old_start},{h.old_count} +{h.new_start},{h.new_count} @@")
            for op, data in h.lines:
                text = data.decode("utf-8", "surrogateescape")
                out.append(op + text.removesuffix("\n"))
                if not text.endswith("\n"):
                    out.append("\\ No newline at end of file")
    return "".join(line + "\n" for line in out)
