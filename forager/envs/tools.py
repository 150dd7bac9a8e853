"""The agent's tools and the parsers that turn a model's text into exactly one tool call.

Two formats are understood:
- CWM tags: `<tool: NAME>` BODY `</tool>`; the body is the bash command, or `path` on the first
  line followed by the tool's text (see TAG_FORMAT_HELP), or a JSON object of arguments.
- OpenAI-style JSON: `{"name": ..., "arguments": {...}}` (arguments may be a JSON string), the
  `{"type": "function", "function": {...}}` and `{"tool_calls": [...]}` wrappers, and
  `<tool_call>{...}</tool_call>` as Hermes/Qwen templates print it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forager.core import ToolCall
from forager.envs.prompts import DEFAULT_PROMPTS
from forager.runtime.base import ShellRuntime, bash_quote


class ActionError(Exception):
    """The action could not be carried out; the message is the observation the agent gets."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BashArgs(_Args):
    command: str = Field(description="The bash command to run in the persistent shell.")
    timeout: float | None = Field(default=None, gt=0, description="Seconds before the command is killed.")


class ViewArgs(_Args):
    path: str = Field(description="File or directory, absolute or relative to the repository root.")
    view_range: list[int] | None = Field(
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
    insert_line: int = Field(ge=0, description="Insert after this line (0: at the top).")
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


# -- tool implementations ------------------------------------------------------------------------

def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines, first))


def _read_text(runtime: ShellRuntime, path: str) -> str:
    try:
        return runtime.read_file(path)
    except IsADirectoryError as err:
        raise ActionError(f"{path} is a directory; this tool needs a file (use `view` to list a directory)") from err
    except FileNotFoundError as err:
        raise ActionError(f"{path} does not exist (or cannot be read); `view` the directory to see what is there") from err


def run_bash(runtime: ShellRuntime, args: BashArgs) -> ToolResult:
    obs = runtime.run(args.command, args.timeout)
    parts = [obs.output.rstrip("\n")] if obs.output else []
    if obs.exit_code not in (0, None) and not obs.timed_out:
        parts.append(f"[exit code: {obs.exit_code}]")
    parts += [f"[{note}]" for note in obs.notes]
    return ToolResult("\n".join(parts) or "[no output]", exit_code=obs.exit_code, command_s=obs.duration_s)


def run_view(runtime: ShellRuntime, args: ViewArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    listing = runtime.run(
        f"[ -d {bash_quote(path)} ] && cd {bash_quote(path)} && find . -maxdepth 2 -not -path '*/.*' | sort", 30)
    if listing.exit_code == 0:
        return ToolResult(f"Files and directories up to 2 levels deep in {path}:\n{listing.output.rstrip()}")
    lines = _read_text(runtime, path).splitlines()
    first, last = 1, len(lines)
    if args.view_range:
        first, last = args.view_range
        last = len(lines) if last == -1 else last
        if not 1 <= first <= max(last, 1) or last > len(lines):
            raise ActionError(f"view_range {args.view_range} is outside {path}, which has {len(lines)} lines")
    return ToolResult(_numbered(lines[first - 1 : last], first) or f"[{path} is empty]")


def run_create(runtime: ShellRuntime, args: CreateArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    exists = runtime.run(f"[ -e {bash_quote(path)} ]", 30).exit_code == 0
    text = args.file_text if not args.file_text or args.file_text.endswith("\n") else args.file_text + "\n"
    runtime.write_file(path, text)
    return ToolResult(f"{'Overwrote' if exists else 'Created'} {path} ({len(text.splitlines())} lines)")


def _snippet(text: str, start_line: int, n_lines: int, context: int = 4) -> str:
    lines = text.splitlines()
    first = max(1, start_line - context)
    last = min(len(lines), start_line + n_lines - 1 + context)
    return _numbered(lines[first - 1 : last], first)


def run_str_replace(runtime: ShellRuntime, args: StrReplaceArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    text = _read_text(runtime, path)
    if not args.old_str:
        raise ActionError("old_str is empty; give the exact text to replace (use `insert` to add new lines)")
    count = text.count(args.old_str)
    if count == 0:
        raise ActionError(
            f"No replacement made: old_str does not occur in {path}. It must match the file exactly, "
            "whitespace and indentation included; `view` the file to copy the text."
        )
    if count > 1:
        starts = [m.start() for m in re.finditer(re.escape(args.old_str), text)]
        lines = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts)
        raise ActionError(
            f"No replacement made: old_str occurs {count} times in {path} (at lines {lines}). "
            "Include more surrounding lines so that it occurs exactly once."
        )
    at = text.index(args.old_str)
    new_text = text[:at] + args.new_str + text[at + len(args.old_str) :]
    runtime.write_file(path, new_text)
    start_line = text.count("\n", 0, at) + 1
    shown = _snippet(new_text, start_line, args.new_str.count("\n") + 1)
    return ToolResult(f"Edited {path}. The changed region now reads:\n{shown}")


def run_insert(runtime: ShellRuntime, args: InsertArgs) -> ToolResult:
    path = runtime.abspath(args.path)
    text = _read_text(runtime, path)
    lines = text.splitlines(keepends=True)
    if args.insert_line > len(lines):
        raise ActionError(f"insert_line {args.insert_line} is past the end of {path}, which has {len(lines)} lines")
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new = args.new_str if args.new_str.endswith("\n") else args.new_str + "\n"
    new_text = "".join(lines[: args.insert_line]) + new + "".join(lines[args.insert_line :])
    runtime.write_file(path, new_text)
    shown = _snippet(new_text, args.insert_line + 1, new.count("\n"))
    return ToolResult(f"Inserted {new.count(chr(10))} line(s) after line {args.insert_line} of {path}:\n{shown}")


def run_submit(runtime: ShellRuntime, args: SubmitArgs) -> ToolResult:
    return ToolResult("Submitted. Your changes will now be graded.", submitted=True)


# -- the tag format ------------------------------------------------------------------------------

def _path_and_rest(body: str) -> tuple[str, str]:
    path, _, rest = body.partition("\n")
    if not path.strip():
        raise ActionError("the first line of the tool body must be the file path")
    return path.strip(), rest


def _view_body(body: str) -> dict[str, Any]:
    path, rest = _path_and_rest(body)
    numbers = re.findall(r"-?\d+", rest)
    if rest.strip() and len(numbers) != 2:
        raise ActionError("view takes a path, then optionally `FIRST LAST` line numbers on the next line")
    return {"path": path, **({"view_range": [int(n) for n in numbers]} if numbers else {})}


_SEARCH_REPLACE = re.compile(r"<<<<<<< SEARCH\n(.*?)\n?=======\n(.*?)\n?>>>>>>> REPLACE", re.DOTALL)


def _str_replace_body(body: str) -> dict[str, Any]:
    path, rest = _path_and_rest(body)
    blocks = _SEARCH_REPLACE.findall(rest)
    if len(blocks) != 1:
        raise ActionError(
            "str_replace takes a path, then exactly one block:\n<<<<<<< SEARCH\nold lines\n=======\nnew lines\n>>>>>>> REPLACE"
        )
    old, new = blocks[0]
    return {"path": path, "old_str": old, "new_str": new}


def _insert_body(body: str) -> dict[str, Any]:
    path, rest = _path_and_rest(body)
    line, _, text = rest.partition("\n")
    if not line.strip().isdigit():
        raise ActionError("insert takes a path, then the line number to insert after, then the new text")
    return {"path": path, "insert_line": int(line), "new_str": text}


def _create_body(body: str) -> dict[str, Any]:
    path, rest = _path_and_rest(body)
    return {"path": path, "file_text": rest}


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in [
        Tool("bash", "Run a command in a persistent bash shell at the repository root.", BashArgs, run_bash,
             lambda body: {"command": body}),
        Tool("view", "Show a file with line numbers (optionally a line range), or list a directory two levels deep.",
             ViewArgs, run_view, _view_body),
        Tool("create", "Create (or overwrite) a file with the given text.", CreateArgs, run_create, _create_body),
        Tool("str_replace", "Replace text that occurs exactly once in a file.", StrReplaceArgs, run_str_replace,
             _str_replace_body),
        Tool("insert", "Insert text after a given line of a file.", InsertArgs, run_insert, _insert_body),
        Tool("submit", "Finish: your changes are graded by the repository's tests.", SubmitArgs, run_submit,
             lambda body: {}),
    ]
}

TAG_FORMAT_HELP = DEFAULT_PROMPTS["tag_format_help"]
"""The tag format, said again in the observation of a malformed action (text in prompts.yaml)."""

_TAG = re.compile(r"<tool:\s*([\w.-]+)\s*>(.*?)</tool>", re.DOTALL)
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _strip_body(body: str) -> str:
    body = body[1:] if body.startswith("\n") else body
    return body[:-1] if body.endswith("\n") else body


def _json_tool_call(obj: Any) -> ToolCall:
    if isinstance(obj, dict) and "tool_calls" in obj:
        obj = obj["tool_calls"]
    if isinstance(obj, list):
        if len(obj) != 1:
            raise ActionError(f"got {len(obj)} tool calls; make exactly one tool call per turn")
        obj = obj[0]
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ActionError('a JSON tool call needs a "name" and "arguments": {"name": "bash", "arguments": {"command": "ls"}}')
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise ActionError(f"the tool call's arguments are not valid JSON: {err}") from err
    if not isinstance(arguments, dict):
        raise ActionError("the tool call's arguments must be a JSON object")
    return ToolCall(name=obj["name"], arguments=arguments)


def _first_json_object(text: str) -> Any | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except json.JSONDecodeError:
            continue
    return None


def parse_action(text: str) -> ToolCall:
    """Exactly one tool call from the model's text, or an ActionError that says what to send instead."""
    tags = _TAG.findall(text)
    if len(tags) > 1:
        raise ActionError(f"found {len(tags)} tool calls; make exactly one tool call per turn\n\n{TAG_FORMAT_HELP}")
    if tags:
        name, body = tags[0]
        tool = TOOLS.get(name)
        if tool is None:
            raise ActionError(f"unknown tool {name!r}; the tools are: {', '.join(TOOLS)}")
        body = _strip_body(body)
        if body.lstrip().startswith("{") and name != "bash":
            try:
                return ToolCall(name=name, arguments=json.loads(body))
            except json.JSONDecodeError:
                pass
        return ToolCall(name=name, arguments=tool.from_tag_body(body))
    hermes = _HERMES.findall(text)
    if len(hermes) > 1:
        raise ActionError(f"found {len(hermes)} tool calls; make exactly one tool call per turn")
    candidate = json.loads(hermes[0]) if hermes and _is_json(hermes[0]) else _first_json_object(text)
    is_call_list = isinstance(candidate, list) and candidate and all(isinstance(c, dict) for c in candidate)
    if is_call_list or (isinstance(candidate, dict) and {"name", "function", "tool_calls"} & candidate.keys()):
        return _json_tool_call(candidate)
    if "<tool" in text:
        raise ActionError(f"a tool call was started but not closed with </tool>\n\n{TAG_FORMAT_HELP}")
    raise ActionError(f"no tool call found in your reply.\n\n{TAG_FORMAT_HELP}")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def execute(runtime: ShellRuntime, call: ToolCall, tools: dict[str, Tool] = TOOLS) -> ToolResult:
    """Validate the call's arguments and run the tool; an invalid call raises ActionError."""
    tool = tools.get(call.name)
    if tool is None:
        raise ActionError(f"unknown tool {call.name!r}; the tools are: {', '.join(tools)}")
    try:
        args = tool.args.model_validate(call.arguments)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in err.errors())
        fields = ", ".join(tool.args.model_fields)
        raise ActionError(f"invalid arguments for {call.name} ({problems}). It takes: {fields or 'no arguments'}") from err
    return tool.run(runtime, args)
