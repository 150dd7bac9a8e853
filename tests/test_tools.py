"""Parsing a model's text into one tool call, and the edit tools on both runtimes."""

from __future__ import annotations

import pytest

from forager.envs.tools import ActionError, ToolCall, execute, parse_action


def test_cwm_tag_format():
    call = parse_action("Let me look.\n<tool: bash>\nls -la\n</tool>")
    assert call == ToolCall(name="bash", arguments={"command": "ls -la"})


def test_tag_format_for_edits():
    body = "<tool: str_replace>\na.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n</tool>"
    assert parse_action(body).arguments == {"path": "a.py", "old_str": "x = 1", "new_str": "x = 2"}
    assert parse_action("<tool: view>\na.py\n3 9\n</tool>").arguments == {"path": "a.py", "view_range": [3, 9]}
    assert parse_action("<tool: insert>\na.py\n4\nline\n</tool>").arguments == {"path": "a.py", "insert_line": 4, "new_str": "line"}
    assert parse_action('<tool: view>{"path": "b.py"}</tool>').arguments == {"path": "b.py"}
    assert parse_action("<tool: submit>\n</tool>").name == "submit"


@pytest.mark.parametrize("text", [
    '{"name": "bash", "arguments": {"command": "pwd"}}',
    '{"name": "bash", "arguments": "{\\"command\\": \\"pwd\\"}"}',
    '{"type": "function", "function": {"name": "bash", "arguments": "{\\"command\\": \\"pwd\\"}"}}',
    'Thinking...\n<tool_call>\n{"name": "bash", "arguments": {"command": "pwd"}}\n</tool_call>',
    '```json\n{"tool_calls": [{"function": {"name": "bash", "arguments": {"command": "pwd"}}}]}\n```',
])
def test_openai_style_json_calls(text):
    assert parse_action(text) == ToolCall(name="bash", arguments={"command": "pwd"})


@pytest.mark.parametrize("text,expected", [
    ("I will just think about it.", "no tool call found"),
    ("<tool: bash>\nls\n</tool><tool: bash>\npwd\n</tool>", "exactly one tool call"),
    ("<tool: bash>\nls", "not closed"),
    ("<tool: rm>\nx\n</tool>", "unknown tool"),
    ('{"tool_calls": [{"name": "bash"}, {"name": "view"}]}', "exactly one tool call"),
])
def test_malformed_actions_explain_the_format(text, expected):
    with pytest.raises(ActionError, match=expected):
        parse_action(text)


def test_view_file_and_directory(runtime):
    out = execute(runtime, ToolCall(name="view", arguments={"path": "hello.py", "view_range": [4, 5]})).output
    assert out == "     4\t\n     5\tdef twice(x):"
    listing = execute(runtime, ToolCall(name="view", arguments={"path": "."})).output
    assert "./hello.py" in listing and ".git" not in listing


def test_str_replace_needs_exactly_one_match(runtime):
    with pytest.raises(ActionError, match="does not occur"):
        execute(runtime, ToolCall(name="str_replace", arguments={"path": "hello.py", "old_str": "nothing", "new_str": "x"}))
    with pytest.raises(ActionError, match=r"occurs 2 times .*lines 2, 3"):
        execute(runtime, ToolCall(name="str_replace", arguments={"path": "README.md", "old_str": "foo", "new_str": "bar"}))
    assert runtime.read_file("README.md") == "# demo\nfoo\nfoo\n"  # nothing changed
    result = execute(runtime, ToolCall(name="str_replace", arguments={"path": "hello.py", "old_str": "x + x", "new_str": "2 * x"}))
    assert "6\t    return 2 * x" in result.output
    assert "return 2 * x" in runtime.read_file("hello.py")


def test_insert_create_and_bad_arguments(runtime):
    execute(runtime, ToolCall(name="insert", arguments={"path": "README.md", "insert_line": 1, "new_str": "intro"}))
    assert runtime.read_file("README.md") == "# demo\nintro\nfoo\nfoo\n"
    execute(runtime, ToolCall(name="create", arguments={"path": "new/mod.py", "file_text": "A = 1"}))
    assert runtime.read_file("new/mod.py") == "A = 1\n"
    with pytest.raises(ActionError, match="past the end"):
        execute(runtime, ToolCall(name="insert", arguments={"path": "README.md", "insert_line": 99, "new_str": "x"}))
    with pytest.raises(ActionError, match="invalid arguments for view"):
        execute(runtime, ToolCall(name="view", arguments={"file": "README.md"}))
    with pytest.raises(ActionError, match="does not exist"):
        execute(runtime, ToolCall(name="view", arguments={"path": "missing.py"}))
