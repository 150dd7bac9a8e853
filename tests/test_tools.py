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


# -- what a model can get wrong must be an observation, never an exception (tests/test_fuzz.py fuzzes it) --

def _error(runtime, name, **arguments):
    with pytest.raises(ActionError) as raised:
        execute(runtime, ToolCall(name=name, arguments=arguments))
    return str(raised.value)


def test_edit_tools_refuse_directories_devices_fifos_and_unwritable_paths(runtime):
    runtime.run_checked("mkdir -p d && mkfifo d/fifo && ln -s /dev/zero d/zero")
    assert "is a directory" in _error(runtime, "create", path="d", file_text="x")
    assert "is a directory" in _error(runtime, "str_replace", path=".", old_str="a", new_str="b")
    assert "character device" in _error(runtime, "create", path="/dev/null", file_text="x")
    assert "FIFO" in _error(runtime, "create", path="d/fifo", file_text="x")  # writing would block
    assert "character device" in _error(runtime, "insert", path="d/zero", insert_line=0, new_str="x")
    assert "cannot write" in _error(runtime, "create", path="hello.py/child", file_text="x")  # a parent that is a file
    assert "cannot write /proc/version" in _error(runtime, "str_replace", path="/proc/version", old_str="Linux",
                                                  new_str="x")
    if runtime.run("id -u").output.strip() != "0":  # root writes read-only files
        runtime.run_checked("chmod 444 README.md")
        assert "Permission denied" in _error(runtime, "insert", path="README.md", insert_line=0, new_str="x")
        refused = _error(runtime, "create", path="/etc/passwd", file_text="x")
        assert "Permission denied" in refused or "Read-only file system" in refused  # DockerLimits(read_only=True)


def test_view_is_bounded_on_the_runtime_side(runtime):
    import time

    runtime.run_checked("mkfifo fifo && truncate -s 300M sparse.bin && yes 'some text' | head -c 6000000 > big.txt")
    started = time.monotonic()
    assert "character device" in _error(runtime, "view", path="/dev/zero")
    assert "character device" in _error(runtime, "view", path="/dev/urandom")
    assert "FIFO" in _error(runtime, "view", path="fifo")
    assert "binary" in _error(runtime, "view", path="sparse.bin")
    assert time.monotonic() - started < 10  # a FIFO once blocked 60 s, /dev/zero grew the host to 5 GB
    out = execute(runtime, ToolCall(name="view", arguments={"path": "big.txt"})).output
    assert len(out) <= runtime.max_output_bytes + 1000
    assert "output is capped" in out and "view read its first 4.0 MiB only" in out
    assert "5.7 MiB" in _error(runtime, "str_replace", path="big.txt", old_str="x", new_str="y")  # too large to edit
    assert "sed -n" in _error(runtime, "view", path="big.txt", view_range=[600_000, 600_010])


def test_edit_tools_refuse_files_they_would_corrupt(runtime):
    runtime.run_checked(r"printf 'caf\xe9\n' > latin1.txt && printf 'a\0b\n' > nul.bin")
    assert "not UTF-8" in _error(runtime, "str_replace", path="latin1.txt", old_str="caf", new_str="x")
    assert "binary" in _error(runtime, "insert", path="nul.bin", insert_line=0, new_str="x")
    assert runtime.run("od -c latin1.txt").output.split()[4] == "351"  # untouched


def test_view_range_and_paths_are_checked(runtime):
    assert "inverted" in _error(runtime, "view", path="hello.py", view_range=[1, 0])
    assert "numbered from 1" in _error(runtime, "view", path="hello.py", view_range=[-5, 2])
    assert "NUL byte" in _error(runtime, "view", path="hel\0lo.py")
    assert "NUL byte" in _error(runtime, "create", path="x.py", file_text="a\0b")
    assert "surrogate" in _error(runtime, "create", path="x.py", file_text="a\ud800b")
    assert "less than or equal" in _error(runtime, "insert", path="hello.py", insert_line=10**5000, new_str="x")
    runtime.run("cd /tmp")
    execute(runtime, ToolCall(name="view", arguments={"path": "."}))  # lists in a subshell
    assert runtime.run("pwd").output.strip() == "/tmp"


def test_a_model_chosen_timeout_is_capped(runtime):
    out = execute(runtime, ToolCall(name="bash", arguments={"command": "echo ok", "timeout": 1e30})).output
    assert out.startswith("ok") and f"it ran with {runtime.command_timeout:g}s" in out


@pytest.mark.parametrize("text,expected", [
    ('{"name": "bash", "arguments": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("<tool: view>" + '{"a":' * 100_000 + "1" + "}" * 100_000 + "</tool>", "nested too deeply"),
    ("<tool: insert>\nREADME.md\n²\nx\n</tool>", "line number"),
    ("<tool: view>\nREADME.md\n1 " + "9" * 5000 + "\n</tool>", "too large"),
    ('{"name": "view", "arguments": {"path": "a", "view_range": [1, ' + "9" * 5000 + "]}}", "not valid JSON"),
    ('{"name": "bash", "arguments": {"command": "echo \\ud800"}}', "surrogate"),  # no trajectory could hold it
])
def test_hostile_actions_are_action_errors(text, expected):
    with pytest.raises(ActionError, match=expected):
        parse_action(text)


@pytest.mark.parametrize("unit", ["<tool: bash>x", "<tool_call>{", '{"', "[{", '{"a": ', "<tool:" + " " * 64])
def test_parsing_is_linear(unit):
    import time

    text = unit * ((1 << 20) // len(unit))
    started = time.perf_counter()
    with pytest.raises(ActionError):
        parse_action(text)
    assert time.perf_counter() - started < 1.0  # unclosed tags once took 115 s at 384 KB
