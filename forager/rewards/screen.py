"""A static screen of the agent's diff for code that reaches into the test run, and the added lines.

The code under test runs in pytest's process, so code the agent adds to the repository can reach
the test machinery: patch pytest's reports, walk frames up to the runner, swap test functions'
code, exit early, trace or walk the heap. The guard in the container catches much of it at run
time; this screen refuses the patch before anything runs, and says why. It reads only the lines the
agent ADDED to files that are not tests (tests are the task's, and the agent's changes to them never
reach the grader). A repository whose own code imports pytest (a pytest plugin) may do so in a fix
too: `allow_test_framework_imports` lifts that one rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from forager.core import Task
from forager.harness import is_protected
from forager.harness.diffparse import parse_diff
from forager.runtime.base import ShellRuntime, bash_quote

FRAMEWORK_IMPORTS = "imports the test framework"
"""The rule a repository that legitimately imports pytest is exempt from."""

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (FRAMEWORK_IMPORTS, re.compile(r"^\s*(from|import)\s+(_?pytest|pluggy|_pytest)\b|"
                                   r"__import__\(\s*['\"](_?pytest|pluggy)|import_module\(\s*['\"](_?pytest|pluggy)")),
    ("walks stack frames", re.compile(r"\b_getframe\b|\bcurrentframe\b|\bf_back\b|\btb_frame\b|\bgi_frame\b|"
                                      r"\bf_globals\b|\bf_locals\b|\b_current_frames\b|\binspect\.stack\b|"
                                      r"\bgetouterframes\b|\bwalk_stack\b")),
    ("replaces function code", re.compile(r"\.__code__\s*=[^=]|__code__\.replace|\bCodeType\(|setattr\([^)]*__code__")),
    # sys.exit is a CLI's ordinary way out; at import time the guard sees the tests never run.
    ("exits the interpreter early", re.compile(r"(?<![A-Za-z0-9])os\.(_exit|abort|kill)\b")),
    ("registers exit or signal hooks", re.compile(r"\batexit\b|(?<![A-Za-z0-9])signal\.signal\b|\bfaulthandler\b")),
    ("traces or profiles the interpreter", re.compile(r"\bsettrace\b|\bsetprofile\b|\baddaudithook\b")),
    ("walks the heap", re.compile(r"(?<![A-Za-z0-9])gc\.get_(objects|referrers|referents)\b|\bcell_contents\b|\b__closure__\b")),
    ("patches builtins or the import system", re.compile(
        r"(?<![A-Za-z0-9])builtins\.\w+\s*=[^=]|__builtins__|\bmeta_path\b|\bpath_hooks\b|(?<![A-Za-z0-9])sys\.modules\s*\[[^\]]*\]\s*=[^=]")),
    ("replaces what the test run's reporting uses", re.compile(
        r"(?<![\w.])(?!self\.)\w+\.(dumps?|JSONEncoder|c_make_encoder|encode_basestring(_ascii)?|_default_encoder|"
        r"HMAC|compare_digest|digest)\s*=[^=]|"
        r"setattr\([^)]*['\"](dumps?|JSONEncoder|c_make_encoder|_default_encoder|HMAC|compare_digest|digest)['\"]|"
        r"__(kw)?defaults__")),
    ("reaches into the test run", re.compile(
        r"\bPYTEST_|\bpytest_plugins\b|\bpluginmanager\b|\bTestCase\.run\b|\bunittest\.(case\.)?TestCase\.\w+\s*=|"
        r"\bjunit|FORAGER|/proc/|\bctypes\b|(?<![A-Za-z0-9])os\.(write|fdopen|dup2?)\(|\bSkipTest\b|\bxfail\b")),
)


def _added(diff: str) -> Iterator[tuple[str, int, str]]:
    """(path in the new tree, line number there, text) of every line `diff` adds, as the grader parsed it."""
    for file in parse_diff(diff):
        if file.new_path is None:
            continue
        for hunk in file.hunks:
            number = hunk.new_start
            for op, data in hunk.lines:
                if op == "+":
                    yield file.new_path, number, data.decode("utf-8", "replace").rstrip("\n")
                if op != "-":
                    number += 1


def added_lines(diff: str) -> dict[str, list[int]]:
    """{path: line numbers in the new file} of the lines `diff` adds."""
    added: dict[str, list[int]] = {}
    for path, number, _ in _added(diff):
        added.setdefault(path, []).append(number)
    return added


def screen_diff(diff: str, protected: Iterable[str], *, allow: Iterable[str] = ()) -> list[str]:
    """Why the diff's added non-test code reaches into the test run (empty when it does not).

    `allow` names rules that do not apply (`FRAMEWORK_IMPORTS` for a repository that imports pytest).
    """
    patterns, allowed = tuple(protected), set(allow)
    findings: list[str] = []
    for path, _, text in _added(diff):
        if not path.endswith((".py", ".pyw", ".pyi")) or is_protected(path, patterns):
            continue
        code = text.split("#", 1)[0] if "'" not in text and '"' not in text else text
        for rule, pattern in _RULES:
            if rule not in allowed and pattern.search(code):
                findings.append(f"{path}: {rule}: {text.strip()[:120]}")
                break
    return findings


def screen_agent_diff(runtime: ShellRuntime, task: Task, agent_diff: str, protected: Iterable[str]) -> list[str]:
    """The static screen's findings on the agent's diff; pytest imports are allowed in a repository
    whose own non-test code imports pytest at the base commit (a pytest plugin), or when the task's
    metadata says `allow_test_framework_imports`."""
    allow = task.metadata.get("allow_test_framework_imports")
    findings = screen_diff(agent_diff, protected, allow=[FRAMEWORK_IMPORTS] if allow else [])
    if allow is None and any(f"{FRAMEWORK_IMPORTS}:" in f for f in findings):
        grep = runtime.run(
            f"git grep -l -E '^[[:space:]]*(import|from)[[:space:]]+(_?pytest|pluggy)' "
            f"{bash_quote(task.base_commit)} -- '*.py'", 60)
        own = [p.split(":", 1)[-1] for p in grep.output.split() if ":" in p]
        if any(not is_protected(p, tuple(protected)) for p in own):
            findings = screen_diff(agent_diff, protected, allow=[FRAMEWORK_IMPORTS])
    return findings
