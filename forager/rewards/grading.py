"""Grading a patch the way SWE-bench does, in a way the agent cannot game.

1. The agent's diff loses every change to a protected path (`forager.harness.protected`): tests,
   `conftest.py`, the files the hidden `test_patch` touches, interpreter hooks (`sitecustomize.py`,
   `*.pth`), test settings (`pytest.ini`, `tox.ini`, `setup.cfg`, `pyproject.toml`) and anything
   named like pytest.
2. What is left is applied in a fresh runtime from the task image (`git apply`, then `--3way`, then
   `patch --fuzz`), then the hidden `test_patch`.
3. Only FAIL_TO_PASS and PASS_TO_PASS run, under the hardened harness (`forager.harness`): results
   come from junit XML at a secret path, and count only if pytest returned normally.
4. The statuses are graded with swebench's semantics (`swebench.harness.grading`, version 5):
   PASSED or XFAIL is a pass; a skipped FAIL_TO_PASS test fails, a skipped PASS_TO_PASS test is
   maintained; FULL when both rates are 1, PARTIAL when some FAIL_TO_PASS pass and every
   PASS_TO_PASS is maintained, NO otherwise. Resolved means FULL.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from forager.core import ForagerError, Task
from forager.harness import PASS_STATUSES, PROTECTED_PATHS, PytestCommand, PytestHarness, is_protected, split_diff
from forager.runtime.base import ShellRuntime, bash_quote

_STATUS_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|SKIPPED)\s")
_SKIP_SUMMARY_COUNT = re.compile(r"^\[\d+\]$")


@dataclass
class RewardConfig:
    resolved: float = 1.0
    unresolved: float = 0.0
    """0 by default; CWM used -1."""
    partial_credit: bool = False
    """Give the share of passing tests (scaled between `unresolved` and `resolved`) instead of all or nothing."""
    protected_paths: tuple[str, ...] = PROTECTED_PATHS


@dataclass
class RewardResult:
    reward: float
    resolved: bool
    resolution: str
    """FULL, PARTIAL or NO: swebench's ResolvedStatus (`report` in files written before the rename)."""
    tests_status: dict[str, str] = field(default_factory=dict)
    """Per test: PASSED, FAILED, ERROR, SKIPPED, XFAIL, XPASS, or MISSING when it gave no result."""
    fail_to_pass: dict[str, list[str]] = field(default_factory=lambda: {"success": [], "failure": []})
    pass_to_pass: dict[str, list[str]] = field(default_factory=lambda: {"success": [], "failure": []})
    patch_applied: bool = True
    excluded_files: list[str] = field(default_factory=list)
    """Files the agent changed that grading left out (protected paths)."""
    log: str = ""
    error: str | None = None
    hardened: bool = True
    """False when the test command is not pytest and the log was read with a log parser."""
    duration_s: float = 0.0
    tests_s: float = 0.0
    """Of `duration_s`, the seconds the test run itself took (the rest is Forager's and Docker's)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RewardResult:
        """The inverse of `to_dict`; also reads the old key `report` and a trajectory's `log_tail`."""
        data = dict(data)
        if "report" in data:
            data.setdefault("resolution", data.pop("report"))
        if "log_tail" in data:
            data.setdefault("log", data.pop("log_tail"))
        return cls(**data)


# -- reading statuses ------------------------------------------------------------------------------
def parse_pytest_report(log: str) -> dict[str, str]:
    """Per-test status from pytest's `-rA` lines, exactly as swebench's `parse_log_pytest` reads them."""
    statuses = {}
    for line in log.split("\n"):
        if not _STATUS_LINE.match(line):
            continue
        if line.startswith("FAILED"):
            line = line.replace(" - ", " ")
        words = line.split()
        if len(words) <= 1 or (words[0] == "SKIPPED" and _SKIP_SUMMARY_COUNT.match(words[1])):
            continue
        statuses[words[1]] = words[0]
    return statuses


def _swebench_parser(task: Task) -> Callable[[str], dict[str, str]]:
    try:
        from swebench.harness.log_parsers import PARSER_REGISTRY
        from swebench.types import TestSpec
    except ImportError as err:
        raise ForagerError(
            f"task {task.instance_id} reads its log with swebench's parser {task.log_parser!r}: "
            "pip install 'forager[eval]'"
        ) from err
    name = task.log_parser
    if name == "swebench":
        name = _swebench_parser_name(task)
    if name not in PARSER_REGISTRY:
        raise ForagerError(f"task {task.instance_id}: swebench has no log parser {name!r}")
    spec = TestSpec(instance_id=task.instance_id, image=task.image or "", eval_script_list=[], repo=task.repo,
                    version=task.version or "", FAIL_TO_PASS=task.FAIL_TO_PASS, PASS_TO_PASS=task.PASS_TO_PASS,
                    log_parser=name)
    return lambda log: PARSER_REGISTRY[name](log, spec)


def _swebench_parser_name(task: Task) -> str:
    """The parser the task's record named (swebench 5 rows carry it), else the one swebench's specs
    name for the repository (swebench < 5), else pytest's."""
    if task.metadata.get("log_parser"):
        return str(task.metadata["log_parser"])
    try:
        from swebench.harness.constants import MAP_REPO_VERSION_TO_SPECS

        specs = MAP_REPO_VERSION_TO_SPECS.get(task.repo, {}).get(task.version or "", {})
        return specs.get("log_parser") or "parse_log_pytest"
    except ImportError:
        return "parse_log_pytest"


def as_swebench_sees_it(statuses: Mapping[str, str]) -> dict[str, str]:
    """The status map swebench would read from the same pytest run's `-rA` log.

    pytest reports a skipped test as `SKIPPED [1] path:line: reason`, without its node id, so
    swebench's `parse_log_pytest` never sees it: a skipped test is absent, and absent tests fail.
    """
    return {test: s for test, s in statuses.items() if s != "SKIPPED"}


# -- swebench's grading semantics ------------------------------------------------------------------
def _resolve_case(case: str, statuses: Mapping[str, str]) -> str | None:
    """swebench's tolerance of truncated parametrized ids (SWE-bench Verified has 676 of them)."""
    if case in statuses:
        return case
    if case.count("[") > case.count("]"):
        matches = [k for k in statuses if k.startswith(case)]
        if matches and len({statuses[k] in PASS_STATUSES for k in matches}) == 1:
            return matches[0]
    return None


def grade_statuses(
    statuses: Mapping[str, str], fail_to_pass: Iterable[str], pass_to_pass: Iterable[str]
) -> tuple[str, dict[str, list[str]], dict[str, list[str]]]:
    """(FULL | PARTIAL | NO, FAIL_TO_PASS success/failure, PASS_TO_PASS success/failure)."""

    statuses = {test: s for test, s in statuses.items() if s != "MISSING"}

    def status(case: str) -> str | None:
        key = _resolve_case(case, statuses)
        return None if key is None else statuses[key]

    # swebench's parsers only ever give PASSED, FAILED, ERROR, SKIPPED or XFAIL, and a test with no
    # status fails; so does any other status here (MISSING, XPASS).
    f2p: dict[str, list[str]] = {"success": [], "failure": []}
    for case in fail_to_pass:
        f2p["success" if status(case) in PASS_STATUSES else "failure"].append(case)
    p2p: dict[str, list[str]] = {"success": [], "failure": []}
    for case in pass_to_pass:
        s = status(case)
        p2p["success" if s in PASS_STATUSES or s == "SKIPPED" else "failure"].append(case)

    def rate(group: dict[str, list[str]]) -> float:
        total = len(group["success"]) + len(group["failure"])
        return 1.0 if total == 0 else len(group["success"]) / total

    f2p_rate, p2p_rate = rate(f2p), rate(p2p)
    if f2p_rate == 1 and p2p_rate == 1:
        resolution = "FULL"
    elif 0 < f2p_rate < 1 and p2p_rate == 1:
        resolution = "PARTIAL"
    else:
        resolution = "NO"
    return resolution, f2p, p2p


# -- the agent's diff --------------------------------------------------------------------------------
def filter_diff(diff: str, protected: Iterable[str], also: Iterable[str] = ()) -> tuple[str, list[str]]:
    """The diff without the files it may not touch, and the paths left out.

    Unsafe paths (absolute, or with a `..` part) are left out too, whatever the patterns say.
    """
    patterns, extra = tuple(protected), set(also)
    kept, excluded = [], []
    for patch in split_diff(diff):
        bad = [p for p in patch.paths if p in extra or is_protected(p, patterns) or _unsafe(p)]
        if bad:
            excluded.extend(sorted(patch.paths))
        else:
            kept.append(patch.text)
    return "".join(kept), sorted(set(excluded))


def _unsafe(path: str) -> bool:
    return path.startswith("/") or ".." in path.split("/")


# -- grading ------------------------------------------------------------------------------------------
def prepare_for_grading(runtime: ShellRuntime, task: Task) -> None:
    """The task's starting tree (base commit plus any planted bug), staged, without rewriting history."""
    command = f"git -c advice.detachedHead=false checkout -q -f {bash_quote(task.base_commit)} && git clean -q -fd"
    if task.setup_patch:
        command += (f" && {runtime.write_command('/tmp/forager-setup.patch', task.setup_patch)}"
                    " && git apply --index --whitespace=nowarn /tmp/forager-setup.patch")
    runtime.run_checked(command)


def apply_patch(runtime: ShellRuntime, patch: str, name: str) -> tuple[bool, str]:
    """Apply with `git apply`, then `git apply --3way`, then `patch --fuzz`; (applied, log)."""
    path = f"/tmp/forager-{name}.patch"
    obs = runtime.run(
        f"{runtime.write_command(path, patch if patch.endswith(chr(10)) else patch + chr(10))} && "
        f"cd {bash_quote(runtime.workdir)} && {{ git apply --whitespace=nowarn {path} || "
        f"git apply --whitespace=nowarn --3way {path} || patch -p1 --batch --fuzz=3 -i {path}; }} 2>&1",
        120,
    )
    return obs.ok, obs.output


def grade_patch(
    task: Task,
    diff: str,
    open_runtime: Callable[[Task], ShellRuntime],
    config: RewardConfig | None = None,
) -> RewardResult:
    """Grade `diff` (the agent's changes against the task's starting state) in a new runtime."""
    config = config or RewardConfig()
    started = time.monotonic()
    hidden = {p for patch in split_diff(task.test_patch or "") for p in patch.paths}
    kept, excluded = filter_diff(diff, config.protected_paths, hidden)

    def result(**kwargs: Any) -> RewardResult:
        kwargs.setdefault("reward", config.unresolved)
        kwargs.setdefault("resolved", False)
        kwargs.setdefault("resolution", "NO")
        return RewardResult(excluded_files=excluded, duration_s=time.monotonic() - started, **kwargs)

    with open_runtime(task) as runtime:
        prepare_for_grading(runtime, task)
        for name, patch in (("agent", kept), ("test", task.test_patch or "")):
            if patch.strip():
                applied, log = apply_patch(runtime, patch, name)
                if not applied:
                    who = "the agent's patch" if name == "agent" else "the task's test patch (a broken task)"
                    return result(patch_applied=False, error=f"{who} does not apply", log=log)
        runtime.run_checked("git add -A")  # the tree as graded: what the test run may not change
        tests_started = time.monotonic()
        statuses, log, error, hardened = _run_tests(runtime, task)
        tests_s = time.monotonic() - tests_started
        touched = runtime.run("git diff --name-only", 60).output.split()
        tampered = [p for p in touched if p in hidden or is_protected(p, config.protected_paths)]
        if tampered and error is None:
            statuses, error = {}, f"the test run rewrote protected files ({', '.join(tampered[:5])}): not trusted"

    graded = as_swebench_sees_it(statuses) if hardened else statuses
    resolution, f2p, p2p = grade_statuses(graded, task.FAIL_TO_PASS, task.PASS_TO_PASS)
    resolved = resolution == "FULL" and bool(task.tests)
    passed = len(f2p["success"]) + len(p2p["success"])
    if resolved:
        reward = config.resolved
    elif config.partial_credit and task.tests and error is None:
        reward = config.unresolved + (config.resolved - config.unresolved) * passed / len(task.tests)
    else:
        reward = config.unresolved
    return result(
        reward=reward, resolved=resolved, resolution=resolution if task.tests else "NO",
        tests_status={t: statuses.get(t, "MISSING") for t in task.tests},
        fail_to_pass=f2p, pass_to_pass=p2p, log=log, error=error, hardened=hardened, tests_s=tests_s,
    )


def _run_tests(runtime: ShellRuntime, task: Task) -> tuple[dict[str, str], str, str | None, bool]:
    """(statuses, log, error, hardened) of the task's tests in `runtime`."""
    command = PytestCommand.parse(task.test_command)
    if command is not None and task.log_parser == "pytest":
        run = PytestHarness(runtime, command).run(task.tests, task.test_timeout, hardened=True)
        error = None
        if run.timed_out:
            error = f"the tests timed out after {task.test_timeout:g} s"
        elif not run.complete:
            error = (f"the test run did not finish normally (exit code {run.exit_code}): the process was killed, "
                     "crashed, or exited early (os._exit); its results do not count")
        statuses = run.statuses if run.complete else {}
        return statuses, run.log, error, True
    # Not pytest: run the command as is and read its log as swebench would, exit code included.
    parse = parse_pytest_report if task.log_parser == "pytest" else _swebench_parser(task)
    tests = " ".join(shlex.quote(t) for t in task.tests)
    obs = runtime.session.run(f"{task.test_command} {tests}", task.test_timeout, max_output_bytes=1 << 26)
    statuses = parse(obs.output)
    error = f"the tests timed out after {task.test_timeout:g} s" if obs.timed_out else None
    if obs.exit_code not in (None, 0) and statuses and not any(s in ("FAILED", "ERROR") for s in statuses.values()):
        statuses, error = {}, f"the test command exited {obs.exit_code} but its log reports no failure: not trusted"
    return statuses, obs.output, error, False
