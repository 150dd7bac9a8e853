"""Adversarial actions for `SWEEnv.step`: hypothesis strategies over every tool and both call formats.

`SWEEnv.step` must never raise for anything a model can write, and every observation must fit the
observation space. The strategies aim at what broke it once: directories, devices, FIFOs, sockets,
huge files, symlinks, read-only files, non-UTF-8 and NUL bytes, lone surrogates, deep nesting,
huge numbers, inverted ranges, unclosed tags, megabyte actions. `FIXTURES` puts those files in the
repository (under `fuzz/`) first. Used by tests/test_fuzz.py and bench/fuzz.py; needs `hypothesis`
(the `dev` extra), imported inside the functions that use it.

The local runtime runs commands as you: the bash commands here are a fixed harmless list (random
text only ever reaches `echo`), and absolute paths are devices, /proc or, in Docker only, root-owned
system files the agent's user cannot write.
"""

from __future__ import annotations

import json
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forager.core import ToolCall

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

FIXTURES = r"""
mkdir -p fuzz/dir/sub fuzz/rodir && cd fuzz && rm -f fifo sock &&
mkfifo fifo && truncate -s 300M huge.bin &&
yes 'a line of text in a big file' | head -c 6000000 > big.txt &&
head -c 2000000 /dev/zero | tr '\0' x > longline.txt &&
printf 'caf\xe9\n' > latin1.txt && printf 'a\0b\n' > nul.bin && : > empty.txt &&
printf 'x = 1\ny = 2\nx = 1\n\fz = 3\n' > small.py &&
printf 'read only\n' > readonly.txt && chmod 444 readonly.txt && chmod 555 rodir &&
ln -sfn /dev/zero zero-link && ln -sfn dir dir-link && ln -sfn missing dangling &&
ln -sfn small.py file-link && ln -sfn fifo fifo-link &&
{ python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('sock')" 2>/dev/null || true; }
"""
"""Run at the repository root (after every reset): the files the paths below aim at."""

PATHS = [
    # text files
    "README.md", "semverkit/version.py", "fuzz/small.py", "fuzz/empty.txt", "fuzz/file-link", "fuzz/readonly.txt",
    # what the text tools must refuse or bound
    "fuzz/big.txt", "fuzz/longline.txt", "fuzz/huge.bin", "fuzz/latin1.txt", "fuzz/nul.bin",
    "/dev/zero", "/dev/urandom", "/dev/null", "fuzz/zero-link", "fuzz/fifo", "fuzz/fifo-link", "fuzz/sock",
    "/proc/version", "fuzz/rodir/new.txt",
    # directories, missing files, a parent that is a file
    ".", "", "fuzz", "fuzz/dir", "fuzz/dir-link", "fuzz/dir/", "/", "/dev", "fuzz/missing.py", "fuzz/dangling",
    "fuzz/small.py/child", "fuzz/new/deep/file.txt",
    # strange names
    "fuzz/a\0b", "\0", "fuzz/\ud800x", "fuzz/" + "x" * 5000, "fuzz/new\nline", " ", "fuzz/sp ace", "fuzz/ünï.txt",
    "fuzz/$(echo hi)", "fuzz/`id`", "-rf", "fuzz/'q\"", "~/x", "../outside.txt",
]
DOCKER_PATHS = ["/etc/passwd", "/etc/hostname", "/root/x", "/usr/bin/env", "/proc/1/environ"]
"""Root-owned in the sample image, where the agent is not root (locally it is: not there)."""

SPECIAL_CHARS = ["\0", "\ud800", "\udfff", "\U0001f600", "\u2028", "\x0c", "\r\n", "²", "\xff", "\x1b[31m", "\t"]
COMMANDS = [
    "true", "pwd", "ls fuzz", "echo hi", "exit 3", "false", "cat fuzz/small.py", "head -c 100000 /dev/urandom",
    "yes | head -c 300000", "printf 'a\\0b'", "sleep 0.3", "cd fuzz && pwd", "cd -", "echo $((1/0))", "(",
    "cat fuzz/missing", "wc -c fuzz/big.txt", "for i in 1 2 3; do echo $i; done", "echo é > /dev/null",
]
TOOL_NAMES = ["bash", "view", "create", "str_replace", "insert"] * 32 + ["submit"]
"""Drawn from uniformly: `submit` ends the episode, and each reset costs more than 100 steps."""


def action_strategy(docker: bool = False) -> SearchStrategy[Any]:
    """One action: the model's text (mostly), or a ToolCall or dict as code may pass."""
    from hypothesis import strategies as st

    paths = st.one_of(
        st.sampled_from(PATHS + (DOCKER_PATHS if docker else [])),
        st.text(max_size=30).filter(lambda t: ".." not in t).map(lambda t: "fuzz/r/" + t),
    )
    texts = st.one_of(
        st.text(max_size=60),
        st.builds(lambda a, b, c: a + b + c, st.text(max_size=20), st.sampled_from(SPECIAL_CHARS), st.text(max_size=5)),
        st.builds(lambda unit, n: unit * n, st.sampled_from(["x", "line\n", "é", "\n", "{\"", "</tool>"]),
                  st.integers(1000, 100_000)),
        st.sampled_from(["x = 1", "y = 2\n", "read only", "a line of text", "", "x = 1\ny = 2"]),
    )
    numbers = st.one_of(
        st.integers(-3, 40), st.sampled_from([-1, 0, 10**6, 10**12, 2**63, -(10**30), 10**30]),
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["3", "²", "x", "__BIGINT__", "1e3"]),
    )
    timeouts = st.one_of(st.none(), st.sampled_from([0, -1, 1e-300, 0.05, 1, 1e30, float("inf"), float("nan"), "5",
                                                      "__BIGINT__", True]))
    not_text = st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.integers(), max_size=3),
                         st.sampled_from(["__DEEP__", "__BIGINT__"]))  # placeholders: see _render
    junk = st.one_of(not_text, st.text(max_size=10))

    args = _arguments(paths, texts, numbers, timeouts, not_text, junk)
    own_arguments = st.sampled_from(TOOL_NAMES).flatmap(lambda name: st.tuples(st.just(name), args[name]))
    calls = _mix(
        (3, own_arguments),
        # Any arguments, but never for bash: junk text there would run as a command.
        (1, st.tuples(st.sampled_from(["view", "create", "str_replace", "insert", "rm", "bāsh", "", "view\0"]),
                      st.dictionaries(st.sampled_from(["path", "command", "x", "file_text"]), junk, max_size=3))),
    )
    tags = st.builds(_tag, st.sampled_from(TOOL_NAMES), paths, texts, texts,
                           st.sampled_from(["3 9", "1 0", "-5 2", "² 3", "1 " + "9" * 5000, "1", "x y", "[2, -1]"]),
                           st.sampled_from(["3", "0", "²", "-1", "9" * 40, "x"]), st.integers(0, 3))
    return _mix(  # about half the actions are valid calls, to reach the tools and the runtime
        (4, st.builds(_render, calls, st.integers(0, 7))),
        (4, tags),
        (1, st.builds(_adversarial, st.integers(0, 11), st.integers(1, 1 << 20))),
        (1, st.text(max_size=200)),
        (1, calls.map(lambda call: ToolCall(name=call[0], arguments=_python_value(call[1])))),
        (1, st.one_of(calls.map(lambda call: {"name": call[0], "arguments": _python_value(call[1])}),
                      st.dictionaries(st.text(max_size=5), junk, max_size=3))),
    )


def _arguments(paths: SearchStrategy[str], texts: SearchStrategy[str], numbers: SearchStrategy[Any],
               timeouts: SearchStrategy[Any], not_text: SearchStrategy[Any], junk: SearchStrategy[Any],
               ) -> dict[str, SearchStrategy[dict[str, Any]]]:
    """Per tool, its arguments: mostly the right types, sometimes junk, never random bash."""
    from hypothesis import strategies as st

    def maybe(right: SearchStrategy[Any]) -> SearchStrategy[Any]:
        return _mix((7, right), (1, junk))  # mostly the right type

    # Edits that can succeed: text files, and text that occurs once in them (until an edit changes it).
    edited = _mix((1, st.sampled_from(["fuzz/small.py", "fuzz/file-link", "fuzz/readonly.txt", "README.md"])),
                  (1, paths))
    in_files = st.sampled_from(["y = 2", "z = 3", "read only", "x = 1\ny = 2", "# semverkit"])
    commands = st.one_of(st.sampled_from(COMMANDS), st.builds(lambda t: "echo " + shlex.quote(t), texts))
    return {
        "bash": st.fixed_dictionaries({"command": _mix((7, commands), (1, not_text))},
                                      optional={"timeout": timeouts}),
        "view": st.fixed_dictionaries({"path": maybe(paths)}, optional={
            "view_range": st.one_of(st.lists(numbers, min_size=0, max_size=3), junk)}),
        "create": st.fixed_dictionaries({"path": maybe(paths), "file_text": maybe(texts)}),
        "str_replace": st.fixed_dictionaries({"path": maybe(edited), "old_str": maybe(_mix((1, in_files), (1, texts)))},
                                             optional={"new_str": maybe(texts)}),
        "insert": st.fixed_dictionaries({"path": maybe(edited), "new_str": maybe(texts),
                                         "insert_line": _mix((3, st.integers(0, 5)), (1, numbers))}),
        "submit": st.fixed_dictionaries({}, optional={"unexpected": junk}),
    }


def _mix(*weighted: tuple[int, SearchStrategy[Any]]) -> SearchStrategy[Any]:
    """One of the strategies, by weight (`st.one_of` draws its branches alike, and a repeated one once)."""
    from hypothesis import strategies as st

    choices = [i for i, (weight, _) in enumerate(weighted) for _ in range(weight)]
    return st.sampled_from(choices).flatmap(lambda i: weighted[i][1])


def _tag(tool: str, path: str, text: str, other: str, numbers: str, line: str, shape: int) -> str:
    """A call of `tool` in the tag format, well formed or broken in one of a few ways (`shape`)."""
    return f"<tool: {tool}>\n{_tag_body(tool, path, text, other, numbers, line, shape)}\n</tool>"


def _tag_body(tool: str, path: str, text: str, other: str, numbers: str, line: str, shape: int) -> str:
    if tool == "bash":  # random text only as echo's quoted argument: the local runtime is not isolated
        return "echo " + shlex.quote(text)
    if tool == "view":
        return path + ("\n" + numbers if shape else "")
    if tool == "create":
        return f"{path}\n{text}"
    if tool == "insert":
        return f"{path}\n{line}\n{text}"
    if tool == "str_replace":
        block = f"<<<<<<< SEARCH\n{text}\n=======\n{other}\n>>>>>>> REPLACE"
        return path + "\n" + [block, block + "\n" + block, block.replace(">>>>>>> REPLACE", ""), text][shape]
    return ["", "{}", '{"x": 1}', "junk"][shape]


_DEEP = "[" * 50_000 + "]" * 50_000
_BIGINT = "9" * 5000


def _render(call: tuple[str, dict[str, Any]], shape: int) -> str:
    """A call in one of the JSON shapes models write (or the tag format with a JSON body)."""
    name, arguments = call
    if name == "bash" and shape == 5:
        shape = 0  # the tag format takes a bash body as the command itself, JSON or not: never run that
    body = json.dumps(arguments)  # ensure_ascii: a lone surrogate becomes \ud800, which json.loads restores
    rendered = [
        lambda: json.dumps({"name": name, "arguments": arguments}),
        lambda: json.dumps({"name": name, "arguments": body}),
        lambda: json.dumps({"type": "function", "function": {"name": name, "arguments": body}}),
        lambda: "Sure.\n```json\n" + json.dumps({"tool_calls": [{"function": {"name": name, "arguments": arguments}}]}),
        lambda: f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>",
        lambda: f"<tool: {name}>{body}</tool>",
        lambda: f"I think {{x}} then [1] and {json.dumps({'name': name, 'parameters': arguments})} done",
        lambda: json.dumps([{"name": name, "arguments": arguments}] * 2),
    ][shape]()
    return rendered.replace('"__DEEP__"', _DEEP).replace('"__BIGINT__"', _BIGINT)


def _python_value(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as code would pass them: the placeholders become deep lists and huge ints."""
    deep: list[Any] = []
    for _ in range(40):
        deep = [deep]
    values = {"__DEEP__": deep, "__BIGINT__": 10**5000}
    return {k: values.get(v, v) if isinstance(v, str) else v for k, v in arguments.items()}


def _adversarial(kind: int, size: int) -> str:
    """Texts that once made parsing quadratic or recursive, or that are just very long."""
    units = ["<tool: bash>x", "<tool_call>{", '{"', "[{", '{"a": ', "<tool:" + " " * 64, "<<<<<<< SEARCH\n"]
    if kind < len(units):
        return (units[kind] * (size // len(units[kind]) + 1))[:size]
    n = min(size, 200_000)
    return [
        '{"name": "bash", "arguments": ' + "[" * n + "]" * n + "}",
        "<tool: view>" + '{"a":' * n + "1" + "}" * n + "</tool>",
        "<tool: bash>\nls\n</tool>\n<tool: bash>\npwd\n</tool>",
        "x" * size,
        "<tool: view>\nREADME.md\n1 0\n</tool>",
    ][kind - len(units)]


@dataclass
class FuzzStats:
    actions: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    slowest: list[tuple[float, str]] = field(default_factory=list)
    """The five slowest steps and their actions."""
    resets: int = 0
    exceptions: list[str] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)
    env_errors: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    """Per tool (or `unparsed`), how many steps ran it (`ok`) or refused it (`error`): the coverage."""

    @property
    def actions_per_s(self) -> float:
        return self.actions / self.seconds if self.seconds else 0.0


def prepare(env: Any) -> None:
    """Reset `env` (a stub grader: fuzzing steps, not grading) and create the fixtures."""
    from forager.rewards import RewardResult

    env.unwrapped.grade = lambda: RewardResult(0.0, resolved=False, resolution="NO", error="fuzz: not graded")
    env.reset()
    env.unwrapped.runtime.run_checked(FIXTURES)


def step_all(env: Any, actions: list[Any], stats: FuzzStats) -> None:
    """Step every action, recording what raised, what did not fit the space, and what blamed the env."""
    for action in actions:
        started = time.monotonic()
        try:
            obs, _, terminated, truncated, info = env.step(action)
        except Exception as err:  # noqa: BLE001 - the finding itself
            stats.exceptions.append(f"{type(err).__name__}: {str(err)[:300]} <- {_short(action)}")
            prepare(env)
            stats.resets += 1
            continue
        finally:
            took = time.monotonic() - started
            stats.actions += 1
            stats.seconds += took
            if took > stats.slowest_s or len(stats.slowest) < 5:
                stats.slowest = sorted([*stats.slowest, (took, _short(action))], reverse=True)[:5]
            stats.slowest_s = max(stats.slowest_s, took)
        if not env.observation_space.contains(obs) or not _encodable(obs):
            stats.oversized.append(f"{len(obs):,} characters <- {_short(action)}")
        stats.outcomes[f"{info.get('tool', 'unparsed')}:{'error' if 'action_error' in info else 'ok'}"] += 1
        if info.get("env_error"):
            stats.env_errors.append(f"{info['env_error'][:300]} <- {_short(action)}")
        if terminated or truncated:
            prepare(env)
            stats.resets += 1


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _short(action: Any) -> str:
    try:
        return ascii(action)[:200]
    except ValueError:  # an int of 5000 digits has no str()
        return f"<{type(action).__name__} that cannot be printed>"
