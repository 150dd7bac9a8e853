"""The agent's parsed diff, screened and applied file by file in the grading runtime.

The grader never hands the agent's text to `git apply` or `patch(1)`: it reads the start tree's
bytes of each file the diff names (from the index of a fresh container, where nothing of the agent
has run), applies the parsed hunks on the host (`harness.diffparse.apply_hunks`), and writes the
resulting files back. What is written is exactly what was parsed and screened.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

from forager.harness.diffparse import FileDiff, PatchApplyError, apply_hunks, unquote_c
from forager.harness.protected import is_protected, refusal, shadowed_module
from forager.runtime.base import ShellRuntime, bash_quote

REGULAR_MODES = ("100644", "100755")
_WRITE_BATCH = 1 << 20
"""Bytes of shell script per round trip when writing files (base64 inside)."""


@dataclass
class Screened:
    kept: list[FileDiff] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Path -> why it was left out."""

    def refuse(self, f: FileDiff, reason: str) -> None:
        for path in sorted(f.paths):
            self.refused.setdefault(path, reason)


def screen_files(files: Iterable[FileDiff], protected: Iterable[str], hidden: set[str]) -> Screened:
    """Keep the files the agent may change; a file with any refused path (old or new) goes whole."""
    patterns, out = tuple(protected), Screened()
    for f in files:
        reason = file_refusal(f, patterns, hidden)
        if reason:
            out.refuse(f, reason)
        else:
            out.kept.append(f)
    return out


def file_refusal(f: FileDiff, patterns: tuple[str, ...], hidden: set[str]) -> str | None:
    """Why `f` may not be applied, from the diff alone (the start tree adds more: `apply_files`)."""
    for path in sorted(f.paths):
        reason = refusal(path)
        if reason:
            return reason
        if path in hidden:
            return "a file of the hidden tests"
        if is_protected(path, patterns):
            return "a protected test path"
    if f.binary:
        return "a binary patch (only text changes are graded)"
    for mode in (f.old_mode, f.new_mode):
        if mode == "120000":
            return "a symbolic link (links can point at tests or outside the repository)"
        if mode == "160000":
            return "a submodule (gitlink)"
        if mode is not None and mode not in REGULAR_MODES:
            return f"an unsupported file mode {mode}"
    return None


def apply_files(runtime: ShellRuntime, files: list[FileDiff]) -> tuple[dict[str, str], list[FileDiff], str | None]:
    """Apply `files` to the runtime's start tree: (paths refused on the tree, files applied, error)."""
    if not files:
        return {}, [], None
    index = start_index(runtime)
    blobs = read_blobs(runtime, [f.old_path for f in files if f.old_path])
    targets = [f.new_path for f in files if f.new_path]
    exists, under_link = probe(runtime, targets)
    present = {m for m in map(shadowed_module, index) if m}
    screened = Screened()
    writes: list[tuple[str, bytes, str]] = []
    deletes: list[str] = []
    applied: list[FileDiff] = []
    for f in files:
        if f.old_path is not None:
            mode = index.get(f.old_path)
            if mode is None:
                return screened.refused, [], f"{f.old_path}: not in the start tree"
            if mode not in REGULAR_MODES:
                screened.refuse(f, "a symbolic link or submodule in the start tree")
                continue
        if f.new_path is not None and f.kind != "modify":
            if f.new_path in index or exists[f.new_path]:
                return screened.refused, [], f"{f.new_path}: already exists"
            module = shadowed_module(f.new_path)
            if module and module not in present:
                screened.refuse(f, f"a new top-level module `{module}` shadows the standard library or a test tool")
                continue
        if f.new_path is not None and under_link[f.new_path]:
            screened.refuse(f, "under a symbolic link of the start tree")
            continue
        try:
            new = apply_hunks_checked(f, blobs.get(f.old_path or "", b""))
        except PatchApplyError as err:
            return screened.refused, [], f"{f.new_path or f.old_path}: {err}"
        applied.append(f)
        if f.new_path is None:
            deletes.append(f.old_path or "")
            continue
        writes.append((f.new_path, new, f.new_mode or index.get(f.old_path or "", "100644")))
        if f.kind == "rename":
            deletes.append(f.old_path or "")
    error = write_files(runtime, writes, deletes)
    return screened.refused, applied, error


def apply_hunks_checked(f: FileDiff, old: bytes) -> bytes:
    new = apply_hunks(old, f.hunks)
    if f.kind == "delete" and new:
        raise PatchApplyError("the deleted file keeps content the diff does not remove")
    return new


def start_index(runtime: ShellRuntime) -> dict[str, str]:
    """Path -> mode of every file in the start tree's index."""
    out = runtime.run_checked("git -c core.quotepath=false -c core.fsmonitor=false ls-files -s", 300)
    index = {}
    for line in out.split("\n"):
        meta, sep, path = line.partition("\t")
        if sep:
            index[unquote_c(path)[0] if path.startswith('"') else path] = meta.split(" ", 1)[0]
    return index


def read_blobs(runtime: ShellRuntime, paths: list[str]) -> dict[str, bytes]:
    """The start tree's bytes of `paths` (from the index: exact, whatever the working tree holds)."""
    if not paths:
        return {}
    names = " ".join(bash_quote(f":0:{p}") for p in paths)
    out = runtime.run_checked(f"printf '%s\\n' {names} | git cat-file --batch | base64 -w0", 300)
    data, blobs, pos = base64.b64decode(out.strip()), {}, 0
    for path in paths:
        end = data.index(b"\n", pos)
        header = data[pos:end].split(b" ")
        if len(header) != 3 or header[1] != b"blob":
            raise PatchApplyError(f"{path}: not a file of the start tree")
        size = int(header[2])
        blobs[path] = data[end + 1: end + 1 + size]
        pos = end + 1 + size + 1
    return blobs


def probe(runtime: ShellRuntime, paths: list[str]) -> tuple[dict[str, bool], dict[str, bool]]:
    """For each path: whether something is there already, and whether a directory above it is a link."""
    checks = []
    for path in paths:
        q = bash_quote(path)
        checks.append(f"{{ [ -e {q} ] || [ -L {q} ]; }} && echo 1 || echo 0")
        parents = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
        links = " || ".join(f"[ -L {bash_quote(p)} ]" for p in parents) or "false"
        checks.append(f"{{ {links}; }} && echo 1 || echo 0")
    answers = runtime.run_checked("; ".join(checks), 120).split() if checks else []
    if len(answers) != 2 * len(paths):
        raise PatchApplyError("could not inspect the start tree")
    return ({p: answers[2 * n] == "1" for n, p in enumerate(paths)},
            {p: answers[2 * n + 1] == "1" for n, p in enumerate(paths)})


def write_files(runtime: ShellRuntime, writes: list[tuple[str, bytes, str]], deletes: list[str]) -> str | None:
    """Delete, then write each file (never through a link: the old entry goes first); an error or None."""
    commands = [f"rm -f -- {bash_quote(p)}" for p in deletes]
    scratch = bash_quote(runtime.scratch_path("write.b64"))
    for path, data, mode in writes:
        q, encoded = bash_quote(path), base64.b64encode(data).decode()
        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        chunks = [encoded[i:i + _WRITE_BATCH] for i in range(0, len(encoded), _WRITE_BATCH)] or [""]
        commands.append(f"rm -f -- {q} && mkdir -p -- {bash_quote(parent)} && : > {scratch}")
        commands += [f"printf '%s' '{chunk}' >> {scratch}" for chunk in chunks]
        commands.append(f"base64 -d {scratch} > {q} && chmod {'755' if mode == '100755' else '644'} -- {q}")
    batch: list[str] = []
    for command in [*commands, None]:
        if command is not None and sum(map(len, batch)) + len(command) < _WRITE_BATCH * 2:
            batch.append(command)
            continue
        if batch:
            try:
                runtime.run_checked(" && ".join(batch), 300)
            except RuntimeError as err:
                return f"could not write the patched files: {str(err)[-300:]}"
        batch = [command] if command is not None else []
    return None
