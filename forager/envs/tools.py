"""The agent's tools, and `parse_action`: the model's text to exactly one tool call (see `actions.py`).

Every argument comes from the model, so every failure a model can cause (a directory where a file
belongs, /dev/zero, a FIFO, a 300 MB file, a read-only file, a NUL byte in a path, a timeout of
1e30 s) is an ActionError whose message is the observation; the episode goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forager.core import ToolCall
from forager.envs.actions import (
    TAG_FORMAT_HELP,
    ActionError,
    create_body,
    depth_ok,
    insert_body,
    str_replace_body,
    surrogate_error,
    view_body,
)
from forager.envs.actions import parse_action as _parse_action
from forager.runtime.base import ShellRuntime, bash_quote
from forager.runtime.fileio import FileHead, read_head, write_text

MAX_LINE = 10**9
"""Line numbers beyond this are refused by validation (and never formatted: `str()` of a
5000-digit int raises)."""

MAX_FILE_BYTES = 4 << 20
"""The most `view` reads of a file, and the largest file the edit tools change (bash does the rest)."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


LineNumber = Annotated[int, Field(ge=-MAX_LINE, le=MAX_LINE)]


class BashArgs(_Args):
    command: str = Field(description="The bash command to run in the persistent shell.")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds before the command is killed (at most the environment's limit).")


class ViewArgs(_Args):
    path: str = Field(description="File or directory, absolute or relative to the repository root.")
    view_range: list[LineNumber] | None = Field(
        default=None, min_length=2, max_length=2, description="[first, last] line to show; last -1 means the end."
    )


class CreateArgs(_Args):
    path: str
    file_text: str = Field(description="The whole content of the new file.")


class StrReplaceArgs(_Args):
    path: str
    old_str: str = Field(description="Exact text to replace; it must occur exactly once in the file.")
    new_str: str = ""


class InsertArgs(_Args):
    path: str
    insert_line: int = Field(ge=0, le=MAX_LINE, description="Insert after this line (0: at the top).")
    new_str: str


class SubmitArgs(_Args):
    pass


@dataclass
class ToolResult:
    output: str
    submitted: bool = False
    exit_code: int | None = None
    command_s: float = 0.0
    """Seconds the command itself ran (bash only), as the runtime measured it."""


@dataclass
class Tool:
    name: str
    description: str
    args: type[_Args]
    run: Callable[[ShellRuntime, Any], ToolResult]
    from_tag_body: Callable[[str], dict[str, Any]]

    def openai_schema(self) -> dict[str, Any]:
        """The function definition for OpenAI-style tool calling."""
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": schema}}


# -- text ----------------------------------------------------------------------------------------

def split_lines(text: str, keepends: bool = False) -> list[str]:
    """Lines split at "\\n" only, as sed, grep -n and wc -l count them (str.splitlines also splits
    at form feeds and U+2028, which would shift every line number after one)."""
    lines = text.split("\n")
    last = lines.pop()
    if keepends:
        lines = [line + "\n" for line in lines]
    return lines + [last] if last else lines


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines, first))


def cap_text(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters (head and tail kept), saying how much was left out."""
    if len(text) <= limit:
        return text
    note = f"\n[... {{}} characters omitted ({len(text):,} in all) ...]\n"
    keep = max(0, limit - len(note) - 16)
    head, tail = text[: keep // 2], text[len(text) - (keep - keep // 2) :]
    return head + note.format(f"{len(text) - len(head) - len(tail):,}") + tail


def _fit(lines: list[str], first: int, budget: int) -> tuple[str, int]:
    """Numbered lines from `first` that fit in `budget` characters: (text, how many lines it shows)."""
    shown, used = [], 0
    for n, line in enumerate(lines, first):
        entry = f"{n:6}\t{line}"
        if used + len(entry) + 1 > budget:
            if not shown:  # one line longer than the whole budget: show its head
                shown.append(entry[: max(0, budget - 80)] + f" [... line {n} goes on for {len(line):,} characters]")
            break
        shown.append(entry)
        used += len(entry) + 1
    return "\n".join(shown), len(shown)


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


# -- files ---------------------------------------------------------------------------------------

def _read_error(path: str, err: OSError) -> ActionError:
    if isinstance(err, IsADirectoryError):
        return ActionError(f"{path} is a directory; this tool needs a file (use `view` to list a directory)")
    if isinstance(err, FileNotFoundError):
        return ActionError(f"{path} does not exist (or cannot be read); `view` the directory to see what is there")
    # A device, FIFO or socket; no permission; a timeout.
    return ActionError(f"cannot read {err}; the file tools read regular files only (use bash for anything else)")


def _read(runtime: ShellRuntime, path: str) -> FileHead:
    try:
        return read_head(runtime, path, MAX_FILE_BYTES)
    except OSError as err:
        raise _read_error(path, err) from err


def _text_for_edit(runtime: ShellRuntime, path: str) -> str:
    """The whole file as text, or an ActionError when editing it here would lose bytes."""
    head = _read(runtime, path)
    if head.truncated:
        raise ActionError(f"{path} is {_size(head.size)}; the edit tools change files up to {_size(MAX_FILE_BYTES)} "
                          "(edit this one with bash: sed, python)")
    if b"\0" in head.data:
        raise ActionError(f"{path} is a binary file (it has NUL bytes); edit it with bash, not the text tools")
    try:
        return head.data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ActionError(f"{path} is not UTF-8 text (byte {err.start} is not); editing it here would corrupt it, "
                          "so edit it with bash (sed, python)") from err


def _write(runtime: ShellRuntime, path: str, text: str) -> bool:
    try:
        return write_text(runtime, path, text)
    except IsADirectoryError as err:
        raise ActionError(f"{path} is a directory; give the path of a file") from err
    except OSError as err:  # read-only file or file system, a parent that is a file, a device or FIFO
        raise ActionError(f"cannot write {err}") from err


# -- tool implementations ------------------------------------------------------------------------

def run_bash(runtime: ShellRuntime, args: BashArgs) -> ToolResult:
    timeout, capped = args.timeout, None
    if timeout is not None and timeout > runtime.command_timeout:
        # A model's `timeout` must not outlive the episode's budget (nor overflow the clock at 1e30).
        timeout = runtime.command_timeout
        capped = f"[timeout {args.timeout:g}s is over this environment's limit; it ran with {timeout:g}s]"
    obs = runtime.run(args.command, timeout)
    parts = [obs.output.rstrip("\n")] if obs.output else []
    if obs.exit_code not in (0, None) and not obs.timed_out:
        parts.append(f"[exit code: {obs.exit_code}]")
    parts += [f"[{note}]" for note in obs.notes]
    parts += [capped] if capped else []
    return ToolResult("\n".join(parts) or "[no output]", exit_code=obs.exit_code, command_s=obs.duration_s)


def _listing(runtime: ShellRuntime, path: str) -> ToolResult:
    # In a subshell: the agent's shell keeps its working directory.
    listing = runtime.run(f"( cd {bash_quote(path)} && find . -maxdepth 2 -not -path '*/.*' | sort )", 30)
    if listing.exit_code != 0:
        raise ActionError(f"cannot list {path}: {listing.output.strip()[-300:] or 'failed'}")
    return ToolResult(f"Files and directories up to 2 levels deep in {path}:\n{listing.output.rstrip()}")


def _view_range(view_range: list[int], n_lines: int, path: str) -> tuple[int, int]:
    first, last = view_range
    last = n_lines if last == -1 else last
    if first < 1:
        raise ActionError(f"view_range {view_range}: lines are numbered from 1")
    if last < first:
        raise ActionError(f"view_range {view_range} is inverted: the last line comes before the first "
                          "(give [FIRST, LAST] with LAST >= FIRST, or LAST = -1 for the end of the file)")
    if first > max(n_lines, 1) or last > n_lines:
        raise ActionError(f"view_range {view_range} is outside {path}, which has {n_lines} lines")
    return first, last


def run_view(runtime: ShellRuntime, args: ViewArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    try:
        head = read_head(runtime, path, MAX_FILE_BYTES)
    except IsADirectoryError:
        return _listing(runtime, path)
    except OSError as err:
        raise _read_error(path, err) from err
    if b"\0" in head.data:
        raise ActionError(f"{path} is a binary file ({_size(head.size)}, with NUL bytes); inspect it with bash (xxd, od)")
    lines = split_lines(head.data.decode("utf-8", errors="replace"))
    if head.truncated and lines:
        lines.pop()  # cut mid-line by the read bound
    first, last = 1, len(lines)
    if args.view_range:
        if head.truncated and max(args.view_range) > len(lines):
            raise ActionError(f"{path} is {_size(head.size)}; view reads its first {_size(MAX_FILE_BYTES)} "
                              f"({len(lines)} lines); see later lines with bash: sed -n 'FIRST,LASTp' {path}")
        first, last = _view_range(args.view_range, len(lines), path)
    budget = max(1000, runtime.max_output_bytes)
    text, shown = _fit(lines[first - 1 : last], first, budget)
    if not text:
        return ToolResult(f"[{path} is empty]")
    notes = []
    if first + shown - 1 < last:
        notes.append(f"[showing lines {first}-{first + shown - 1} of {last}: output is capped at {budget:,} characters; "
                     f"view more with view_range, e.g. [{first + shown}, {min(last, first + 2 * shown)}]]")
    if head.truncated and last == len(lines):
        notes.append(f"[{path} is {_size(head.size)}; view read its first {_size(MAX_FILE_BYTES)} only: "
                     f"see the rest with bash (sed -n 'FIRST,LASTp')]")
    return ToolResult("\n".join([text, *notes]))


def run_create(runtime: ShellRuntime, args: CreateArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    text = args.file_text if not args.file_text or args.file_text.endswith("\n") else args.file_text + "\n"
    existed = _write(runtime, path, text)
    return ToolResult(f"{'Overwrote' if existed else 'Created'} {path} ({len(split_lines(text))} lines)")


def _snippet(text: str, start_line: int, n_lines: int, context: int = 4) -> str:
    lines = split_lines(text)
    first = max(1, start_line - context)
    last = min(len(lines), start_line + n_lines - 1 + context)
    return _numbered(lines[first - 1 : last], first)


def run_str_replace(runtime: ShellRuntime, args: StrReplaceArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    text = _text_for_edit(runtime, path)
    if not args.old_str:
        raise ActionError("old_str is empty; give the exact text to replace (use `insert` to add new lines)")
    count = text.count(args.old_str)
    if count == 0:
        raise ActionError(
            f"No replacement made: old_str does not occur in {path}. It must match the file exactly, "
            "whitespace and indentation included; `view` the file to copy the text."
        )
    if count > 1:
        starts = [m.start() for m, _ in zip(re.finditer(re.escape(args.old_str), text), range(20))]
        lines = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts) + (", ..." if count > 20 else "")
        raise ActionError(
            f"No replacement made: old_str occurs {count} times in {path} (at lines {lines}). "
            "Include more surrounding lines so that it occurs exactly once."
        )
    at = text.index(args.old_str)
    new_text = text[:at] + args.new_str + text[at + len(args.old_str) :]
    _write(runtime, path, new_text)
    start_line = text.count("\n", 0, at) + 1
    shown = _snippet(new_text, start_line, args.new_str.count("\n") + 1)
    return ToolResult(f"Edited {path}. The changed region now reads:\n{shown}")


def run_insert(runtime: ShellRuntime, args: InsertArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    text = _text_for_edit(runtime, path)
    lines = split_lines(text, keepends=True)
    if args.insert_line > len(lines):
        raise ActionError(f"insert_line {args.insert_line} is past the end of {path}, which has {len(lines)} lines")
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new = args.new_str if args.new_str.endswith("\n") else args.new_str + "\n"
    new_text = "".join(lines[: args.insert_line]) + new + "".join(lines[args.insert_line :])
    _write(runtime, path, new_text)
    shown = _snippet(new_text, args.insert_line + 1, new.count("\n"))
    return ToolResult(f"Inserted {new.count(chr(10))} line(s) after line {args.insert_line} of {path}:\n{shown}")


def run_submit(runtime: ShellRuntime, args: SubmitArgs) -> ToolResult:
    return ToolResult("Submitted. Your changes will now be graded.", submitted=True)


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in [
        Tool("bash", "Run a command in a persistent bash shell at the repository root.", BashArgs, run_bash,
             lambda body: {"command": body}),
        Tool("view", "Show a file with line numbers (optionally a line range), or list a directory two levels deep.",
             ViewArgs, run_view, view_body),
        Tool("create", "Create (or overwrite) a file with the given text.", CreateArgs, run_create, create_body),
        Tool("str_replace", "Replace text that occurs exactly once in a file.", StrReplaceArgs, run_str_replace,
             str_replace_body),
        Tool("insert", "Insert text after a given line of a file.", InsertArgs, run_insert, insert_body),
        Tool("submit", "Finish: your changes are graded by the repository's tests.", SubmitArgs, run_submit,
             lambda body: {}),
    ]
}


def parse_action(text: str) -> ToolCall:
    """Exactly one tool call from the model's text, or an ActionError that says what to send instead."""
    return _parse_action(text, {name: tool.from_tag_body for name, tool in TOOLS.items()})


# -- validation ----------------------------------------------------------------------------------

_NUL_HINTS = {
    "path": "no file name can hold one",
    "command": "bash cannot take one in a command; write it as printf '\\0'",
}


def _check_text(name: str, value: str) -> None:
    """Refuse what the shell would silently change: a NUL byte (dropped) or a lone surrogate (not UTF-8)."""
    if (nul := value.find("\0")) >= 0:
        hint = _NUL_HINTS.get(name, "the text tools write text files; write binary data with bash")
        raise ActionError(f"{name} has a NUL byte (\\0) at character {nul}: {hint}")
    if (err := surrogate_error(name, value)) is not None:
        raise err


def _validation_problems(err: ValidationError) -> str:
    errors = err.errors()
    problems = [f"{'.'.join(str(part)[:40] for part in e['loc']) or 'arguments'}: {e['msg']}" for e in errors[:5]]
    return "; ".join(problems) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")


def execute(runtime: ShellRuntime, call: ToolCall, tools: dict[str, Tool] = TOOLS) -> ToolResult:
    """Validate the call's arguments and run the tool; an invalid call raises ActionError."""
    tool = tools.get(call.name)
    if tool is None:
        raise ActionError(f"unknown tool {call.name[:60]!r}; the tools are: {', '.join(tools)}")
    if not depth_ok(call.arguments):
        raise ActionError("the tool call's arguments are nested too deeply; they are a flat object")
    try:
        args = tool.args.model_validate(call.arguments)
    except ValidationError as err:
        fields = ", ".join(tool.args.model_fields)
        raise ActionError(
            f"invalid arguments for {call.name} ({_validation_problems(err)}). It takes: {fields or 'no arguments'}"
        ) from err
    for name in type(args).model_fields:
        if isinstance(value := getattr(args, name), str):
            _check_text(name, value)
    return tool.run(runtime, args)


__all__ = [
    "TAG_FORMAT_HELP",
    "TOOLS",
    "ActionError",
    "Tool",
    "ToolCall",
    "ToolResult",
    "cap_text",
    "execute",
    "parse_action",
    "split_lines",
]
