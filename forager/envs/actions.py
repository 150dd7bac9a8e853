"""Parsing a model's text into exactly one tool call, in time linear in the text, never raising but ActionError.

Two formats are understood:
- CWM tags: `<tool: NAME>` BODY `</tool>`; the body is the bash command, or `path` on the first
  line followed by the tool's text (see TAG_FORMAT_HELP), or a JSON object of arguments.
- OpenAI-style JSON: `{"name": ..., "arguments": {...}}` (arguments may be a JSON string), the
  `{"type": "function", "function": {...}}` and `{"tool_calls": [...]}` wrappers, and
  `<tool_call>{...}</tool_call>` as Hermes/Qwen templates print it.

The text is the model's, so it may be anything: a megabyte of unclosed tags, JSON nested a
hundred thousand deep, numbers with thousands of digits. Every such case is an ActionError whose
message tells the model what to send instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from forager.core import ToolCall
from forager.envs.prompts import DEFAULT_PROMPTS

TAG_FORMAT_HELP = DEFAULT_PROMPTS["tag_format_help"]
"""The tag format, said again in the observation of a malformed action (text in prompts.yaml)."""

MAX_ARGUMENT_DEPTH = 32
"""Tool arguments are flat; deeper JSON is refused before it reaches code that recurses over it."""

MAX_JSON_STARTS = 16
"""Places in free text where a JSON tool call is looked for: each try may scan to the end of the
text, so a bound keeps a megabyte of `{"` linear (a model's reply has its call among the first few)."""

JSON_SCAN_SLACK = 1 << 16
"""Besides MAX_JSON_STARTS, the failed tries together may scan the text once plus this much: a
megabyte of `[{"a": [[1],[1],...` unclosed would otherwise be decoded 16 times over."""

MAX_LINE_NUMBER_DIGITS = 12

TagBody = Callable[[str], dict[str, Any]]


class ActionError(Exception):
    """The action could not be carried out; the message is the observation the agent gets."""


class _TooDeep(ActionError):
    """JSON nested past Python's recursion limit: JSON all the same, so no other reading applies."""


# -- the tag format ------------------------------------------------------------------------------

_OPEN_TAG = re.compile(r"<tool:\s*([\w.-]+)\s*>")
_CLOSE_TAG = "</tool>"


def _tag_calls(text: str) -> list[tuple[str, str]]:
    """(name, body) of each `<tool: NAME>...</tool>`, as a non-greedy regex would find them.

    A hand-written scan, not `re.findall(r"<tool:...>(.*?)</tool>")`: that regex retries from every
    unclosed tag to the end of the text, quadratic in a reply of repeated unclosed tags.
    """
    calls: list[tuple[str, str]] = []
    pos = 0
    while (match := _OPEN_TAG.search(text, pos)) is not None:
        end = text.find(_CLOSE_TAG, match.end())
        if end < 0:
            break  # no later tag can close either
        calls.append((match[1], text[match.end() : end]))
        pos = end + len(_CLOSE_TAG)
    return calls


def _hermes_bodies(text: str) -> list[str]:
    """The stripped bodies of `<tool_call>...</tool_call>` blocks (scanned linearly, as above)."""
    bodies: list[str] = []
    pos = 0
    while (start := text.find("<tool_call>", pos)) >= 0:
        end = text.find("</tool_call>", start)
        if end < 0:
            break
        bodies.append(text[start + len("<tool_call>") : end].strip())
        pos = end + len("</tool_call>")
    return bodies


def path_and_rest(body: str) -> tuple[str, str]:
    path, _, rest = body.partition("\n")
    if not path.strip():
        raise ActionError("the first line of the tool body must be the file path")
    return path.strip(), rest


def line_number(text: str, what: str) -> int:
    """An ASCII decimal line number (`²` is a digit to str.isdigit but not to int)."""
    text = text.strip()
    if not re.fullmatch(r"-?[0-9]+", text):
        raise ActionError(f"{what} must be a whole number written with the digits 0-9, got {text[:40]!r}")
    if len(text.lstrip("-")) > MAX_LINE_NUMBER_DIGITS:
        raise ActionError(f"{what} {text[:20]}... is too large for a line number")
    return int(text)


def view_body(body: str) -> dict[str, Any]:
    path, rest = path_and_rest(body)
    numbers = re.findall(r"-?[0-9]+", rest)  # `3 9`, `3, 9` and `[3, 9]` alike; ASCII digits only
    if rest.strip() and len(numbers) != 2:
        raise ActionError("view takes a path, then optionally `FIRST LAST` line numbers on the next line")
    if not numbers:
        return {"path": path}
    return {"path": path, "view_range": [line_number(n, "a view_range line") for n in numbers]}


_SEARCH = "<<<<<<< SEARCH\n"
_DIVIDER = "======="
_REPLACE = ">>>>>>> REPLACE"


def str_replace_body(body: str) -> dict[str, Any]:
    """path, then one SEARCH/REPLACE block (found with str.find: a DOTALL regex backtracks badly)."""
    path, rest = path_and_rest(body)
    usage = "str_replace takes a path, then exactly one block:\n<<<<<<< SEARCH\nold lines\n=======\nnew lines\n>>>>>>> REPLACE"
    start = rest.find(_SEARCH)
    if start < 0 or rest.find(_SEARCH, start + 1) >= 0:
        raise ActionError(usage)
    old_start = start + len(_SEARCH)
    divider = rest.find(_DIVIDER + "\n", old_start)
    new_start = divider + len(_DIVIDER) + 1
    end = rest.find(_REPLACE, new_start) if divider >= 0 else -1
    if divider < 0 or end < 0:
        raise ActionError(usage)
    old = rest[old_start:divider].removesuffix("\n")
    new = rest[new_start:end].removesuffix("\n")
    return {"path": path, "old_str": old, "new_str": new}


def insert_body(body: str) -> dict[str, Any]:
    path, rest = path_and_rest(body)
    line, _, text = rest.partition("\n")
    if not re.fullmatch(r"\s*[0-9]+\s*", line):
        raise ActionError("insert takes a path, then the line number to insert after, then the new text")
    return {"path": path, "insert_line": line_number(line, "insert's line number"), "new_str": text}


def create_body(body: str) -> dict[str, Any]:
    path, rest = path_and_rest(body)
    return {"path": path, "file_text": rest}


def _strip_body(body: str) -> str:
    body = body.removeprefix("\n")
    return body.removesuffix("\n")


# -- JSON ----------------------------------------------------------------------------------------

def loads(text: str) -> Any:
    """json.loads, every failure an ActionError (too deep, a 5000-digit number, bad syntax)."""
    try:
        return json.loads(text)
    except RecursionError as err:
        raise _TooDeep("the JSON is nested too deeply; tool arguments are a flat object") from err
    except ValueError as err:  # JSONDecodeError, and int() refusing a number of thousands of digits
        raise ActionError(f"not valid JSON: {str(err)[:200]}") from err


def depth_ok(value: Any, limit: int = MAX_ARGUMENT_DEPTH) -> bool:
    """Whether `value` nests no deeper than `limit` (iterative: the point is to avoid recursing)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


SURROGATE = re.compile("[\ud800-\udfff]")


def surrogate_error(where: str, text: str) -> ActionError | None:
    """The error for a lone UTF-16 surrogate in `text` (JSON's `\\ud800` decodes to one), if there is one.

    It is no Unicode text: the shell cannot take it, nor a JSON file (the trajectory) hold it.
    """
    if (match := SURROGATE.search(text)) is None:
        return None
    return ActionError(f"{where} has a lone UTF-16 surrogate (U+{ord(match[0]):04X}) at character {match.start()}, "
                       "which is not valid Unicode text; write the character itself")


def _strings(value: Any) -> list[str]:
    """Every string in `value` (keys too), iteratively; `value` nests no deeper than MAX_ARGUMENT_DEPTH."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def tool_call(name: Any, arguments: Any) -> ToolCall:
    if not isinstance(name, str):
        raise ActionError('the tool name must be a string: {"name": "bash", "arguments": {"command": "ls"}}')
    if not isinstance(arguments, dict):
        raise ActionError("the tool call's arguments must be a JSON object")
    if not depth_ok(arguments):
        raise _TooDeep("the tool call's arguments are nested too deeply; they are a flat object")
    for text in [name, *_strings(arguments)]:
        if (err := surrogate_error("the tool call", text)) is not None:
            raise err
    return ToolCall(name=name, arguments=arguments)


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
            arguments = loads(arguments) if arguments.strip() else {}
        except ActionError as err:
            raise ActionError(f"the tool call's arguments are not valid JSON: {err}") from err
    return tool_call(obj["name"], arguments)


def _looks_like_call(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(item, dict) for item in value)
    return isinstance(value, dict) and bool({"name", "function", "tool_calls"} & value.keys())


# A JSON call starts `{"` or `[{`; a bare `{` or `[` in prose (`f(x)[0]`, `{x}`) is no candidate.
_JSON_START = re.compile(r'\{(?=\s*")|\[(?=\s*\{)')


def _first_json_call(text: str) -> Any | None:
    """The first JSON value in free text that looks like a tool call, trying a bounded number of starts."""
    decoder = json.JSONDecoder()
    pos = tries = 0
    budget = len(text) + JSON_SCAN_SLACK  # characters the failed tries may scan, all together
    problem: ActionError | None = None  # a call-shaped JSON that failed for its size, not its syntax
    while tries < MAX_JSON_STARTS and budget > 0 and (match := _JSON_START.search(text, pos)) is not None:
        tries += 1
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError as err:
            budget -= err.pos - match.start()  # how far this try got before it failed
            pos = match.start() + 1
            continue
        except RecursionError:
            problem = problem or _TooDeep("the JSON is nested too deeply; a tool call is a flat object")
            pos = match.start() + 1
            continue
        except ValueError as err:  # int() refusing a number of thousands of digits
            problem = problem or ActionError(f"not valid JSON: {str(err)[:200]}")
            pos = match.start() + 1
            continue
        if _looks_like_call(value):
            return value
        pos = end  # a value that is no call: its insides are not either
    if problem is not None:
        raise problem
    return None


# -- one tool call from the text -----------------------------------------------------------------

def parse_action(text: str, tag_bodies: Mapping[str, TagBody]) -> ToolCall:
    """Exactly one tool call from the model's text, or an ActionError that says what to send instead.

    `tag_bodies`: per tool name, how its tag body becomes arguments (the names are the tools).
    """
    if not isinstance(text, str):
        raise ActionError(f"the action must be text (got {type(text).__name__})")
    tags = _tag_calls(text)
    if len(tags) > 1:
        raise ActionError(f"found {len(tags)} tool calls; make exactly one tool call per turn\n\n{TAG_FORMAT_HELP}")
    if tags:
        name, body = tags[0]
        from_body = tag_bodies.get(name)
        if from_body is None:
            raise ActionError(f"unknown tool {name[:60]!r}; the tools are: {', '.join(tag_bodies)}")
        body = _strip_body(body)
        if body.lstrip().startswith("{") and name != "bash":
            try:
                return tool_call(name, loads(body))
            except _TooDeep:
                raise
            except ActionError:
                pass  # not JSON after all: read it as the tag format
        return tool_call(name, from_body(body))
    hermes = _hermes_bodies(text)
    if len(hermes) > 1:
        raise ActionError(f"found {len(hermes)} tool calls; make exactly one tool call per turn")
    if hermes:
        try:
            candidate = loads(hermes[0])
        except ActionError as err:
            raise ActionError(f"the <tool_call> block is not a JSON tool call: {err}") from err
    else:
        candidate = _first_json_call(text)
    if _looks_like_call(candidate):
        return _json_tool_call(candidate)
    if "<tool" in text:
        raise ActionError(f"a tool call was started but not closed with </tool>\n\n{TAG_FORMAT_HELP}")
    raise ActionError(f"no tool call found in your reply.\n\n{TAG_FORMAT_HELP}")
