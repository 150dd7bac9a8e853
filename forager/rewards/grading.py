"""Grading a patch the way SWE-bench does, in a way the agent cannot game.

1. The agent's diff is read once, by one strict parser (`forager.harness.diffparse`); text it
   cannot read exactly is an error, not an empty patch. Each file loses its change when any of its
   paths is protected (`forager.harness.protected`): tests, `conftest.py`, the files the hidden
   `test_patch` touches, interpreter hooks (`sitecustomize.py`, `*.pth`), test settings
   (`pytest.ini`, `tox.ini`, `setup.cfg`, `pyproject.toml`), anything named like pytest, and, for
   every task, `.git` at any depth, `.gitattributes`, package metadata (`*.dist-info`,
   `*.egg-info`), unsafe paths, binary patches, links, submodules and new top-level modules named
   like the standard library or a test tool. Each refusal is listed with its reason.
2. What is left is applied in a fresh runtime from the task image, by Forager: the parsed hunks on
   the start tree's bytes, exactly, the resulting files written back (`forager.rewards.apply`);
   then the hidden `test_patch` (trusted: `git apply`, then `--3way`, then `patch --fuzz`). A diff
   whose every file was refused resolves nothing.
3. The added non-test code is screened for reaching into the test run (`forager.rewards.screen`:
   pytest imports, frame walking, `__code__` swaps, `os._exit`, tracing, heap walking, ...): a
   finding fails the grade and says why. Then only FAIL_TO_PASS and PASS_TO_PASS run, under the
   hardened harness (`forager.harness`): a parent process that never imports the code under test
   runs pytest in a child under the guard (`harness/guard.py`: an audit hook and a plugin that
   observe each call, check the test functions' code against the clean source and the test
   machinery against replacement); outcomes travel on signed records and count only if the child
   ended normally and the guard saw no tampering.
4. The statuses are graded with swebench's semantics (`swebench.harness.grading`, version 5):
   PASSED or XFAIL is a pass (a hardened run's FAIL_TO_PASS needs PASSED); a skipped FAIL_TO_PASS test
   fails, a skipped PASS_TO_PASS test is maintained; FULL when both rates are 1, PARTIAL when some FAIL_TO_PASS pass and every
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
from forager.harness.install import refresh_install
from forager.harness.diffparse import DiffParseError, FileDiff, PatchApplyError, parse_diff, render
from forager.rewards.apply import apply_files, screen_files
from forager.rewards.screen import added_lines, screen_agent_diff
from forager.runtime.base import Preparation, ShellRuntime, bash_quote, prepared

_STATUS_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|SKIPPED)\s")
_SKIP_SUMMARY_COUNT = re.compile(r"^\[\d+\]$")
MAX_DIFF_BYTES = 16 << 20
"""A bigger diff is an error: no fix needs it, and every byte crosses into the grading container."""
_GIT = "git -c core.fsmonitor=false -c core.hooksPath=/dev/null -c core.attributesFile=/dev/null --no-replace-objects"
"""The grader's own git in the grading container: nothing a test run wrote into `.git/config` runs."""


@dataclass
class RewardConfig:
    resolved: float = 1.0
    unresolved: float = 0.0
    """0 by default; CWM used -1."""
    partial_credit: bool = False
    """Give the share of passing tests (scaled between `unresolved` and `resolved`) instead of all or nothing."""
    protected_paths: tuple[str, ...] = PROTECTED_PATHS
    screen: bool = True
    """Screen the agent's diff statically (False only to test the run-time guard on its own)."""


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
    """Files the agent changed that grading left out (protected or refused paths)."""
    excluded_reasons: dict[str, str] = field(default_factory=dict)
    """Why each of `excluded_files` was left out."""
    log: str = ""
    error: str | None = None
    hardened: bool = True
    """False when the test command is not pytest and the log was read with a log parser."""
    duration_s: float = 0.0
    tests_s: float = 0.0
    """Of `duration_s`, the seconds the test run itself took (the rest is Forager's and Docker's)."""
    reward_parts: dict[str, float] = field(default_factory=dict)
    """The reward after each stage of the env's reward (`forager.rewards.functions`), when it has one."""

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


def swebench_log_parser(task: Task) -> Callable[[str], dict[str, str]]:
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
        name = swebench_parser_name(task)
    if name not in PARSER_REGISTRY:
        raise ForagerError(f"task {task.instance_id}: swebench has no log parser {name!r}")
    spec = TestSpec(instance_id=task.instance_id, image=task.image or "", eval_script_list=[], repo=task.repo,
                    version=task.version or "", FAIL_TO_PASS=task.FAIL_TO_PASS, PASS_TO_PASS=task.PASS_TO_PASS,
                    log_parser=name)
    return lambda log: PARSER_REGISTRY[name](log, spec)


def swebench_parser_name(task: Task) -> str:
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
    statuses: Mapping[str, str], fail_to_pass: Iterable[str], pass_to_pass: Iterable[str], *, strict: bool = False
) -> tuple[str, dict[str, list[str]], dict[str, list[str]]]:
    """(FULL | PARTIAL | NO, FAIL_TO_PASS success/failure, PASS_TO_PASS success/failure).

    `strict` (the hardened harness's runs): a FAIL_TO_PASS test passes only when it PASSED. swebench
    also counts XFAIL, and an `xfail` the code under test raises would then count as a fix; a test
    that must go from failing to passing has not passed when it was expected to fail, skipped or
    XPASSed. PASS_TO_PASS keeps swebench's rule (XFAIL maintained): a test the suite itself marks
    xfail stays expected to fail, and the guard refuses an xfail or skip raised by the agent's code.
    """

    statuses = {test: s for test, s in statuses.items() if s != "MISSING"}

    def status(case: str) -> str | None:
        key = _resolve_case(case, statuses)
        return None if key is None else statuses[key]

    # swebench's parsers only ever give PASSED, FAILED, ERROR, SKIPPED or XFAIL, and a test with no
    # status fails; so does any other status here (MISSING, XPASS).
    f2p: dict[str, list[str]] = {"success": [], "failure": []}
    for case in fail_to_pass:
        passed = status(case) == "PASSED" if strict else status(case) in PASS_STATUSES
        f2p["success" if passed else "failure"].append(case)
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
    """The diff without the files it may not touch, and the paths left out (`apply.screen`'s rules).

    Raises DiffParseError when the text is not a diff the parser reads exactly.
    """
    screened = screen_files(parse_diff(diff), protected, set(also))
    return render(screened.kept), sorted(screened.refused)


def hidden_paths(test_patch: str) -> set[str]:
    """Every path the hidden tests touch, as either reader of the (trusted) test patch sees it."""
    paths = {p for patch in split_diff(test_patch) for p in patch.paths}
    try:
        paths |= {p for f in parse_diff(test_patch) for p in f.paths}
    except DiffParseError:
        pass  # applied by `git apply`, which reads it as `split_diff` does
    return paths


def read_agent_diff(diff: str) -> list[FileDiff]:
    """The agent's files; an error for text that is too big or not a diff (empty text is no change)."""
    if len(diff.encode("utf-8", "surrogateescape")) > MAX_DIFF_BYTES:
        raise DiffParseError(f"the diff is over {MAX_DIFF_BYTES >> 20} MiB")
    files = parse_diff(diff) if diff.strip() else []
    if diff.strip() and not files:
        raise DiffParseError("no file diff in the text: not a diff")
    return files


# -- grading ------------------------------------------------------------------------------------------
def prepare_for_grading(runtime: ShellRuntime, task: Task) -> None:
    """The task's starting tree (base commit plus any planted bug), staged, without rewriting history."""
    runtime.run_checked(f"git --no-replace-objects -c advice.detachedHead=false checkout -q -f "
                        f"{bash_quote(task.base_commit)} && git clean -q -fd")
    refresh_install(runtime)  # the base commit's install, as the agent's checkout made it
    if task.setup_patch:
        path = runtime.scratch_path("setup.patch")
        runtime.run_checked(f"{runtime.write_command(path, task.setup_patch)}"
                            f" && git apply --index --whitespace=nowarn {bash_quote(path)}")


def grading_preparation(task: Task) -> Preparation:
    """`prepare_for_grading` for `task` as a `Preparation`: a warm pool runs it while the agent works."""
    return Preparation(f"grading:{task.instance_id}:{task.start_digest}", lambda runtime: prepare_for_grading(runtime, task))


def apply_patch(runtime: ShellRuntime, patch: str, name: str) -> tuple[bool, str]:
    """Apply with `git apply`, then `git apply --3way`, then `patch --fuzz`; (applied, log)."""
    path = bash_quote(scratch := runtime.scratch_path(f"{name}.patch"))
    obs = runtime.run(
        f"{runtime.write_command(scratch, patch if patch.endswith(chr(10)) else patch + chr(10))} && "
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
    """Grade `diff` (the agent's changes against the task's starting state) in a new runtime (one that
    `open_runtime` may hand out prepared already: see `grading_preparation`)."""
    config = config or RewardConfig()
    started = time.monotonic()
    hidden = hidden_paths(task.test_patch or "")
    refused: dict[str, str] = {}

    def result(**kwargs: Any) -> RewardResult:
        kwargs.setdefault("reward", config.unresolved)
        kwargs.setdefault("resolved", False)
        kwargs.setdefault("resolution", "NO")
        if "fail_to_pass" not in kwargs:  # no test ran: every one of them failed
            _, kwargs["fail_to_pass"], kwargs["pass_to_pass"] = grade_statuses({}, task.FAIL_TO_PASS, task.PASS_TO_PASS)
        return RewardResult(excluded_files=sorted(refused), excluded_reasons=dict(sorted(refused.items())),
                            duration_s=time.monotonic() - started, **kwargs)

    try:
        files = read_agent_diff(diff)
    except DiffParseError as err:
        return result(patch_applied=False, error=f"the agent's patch cannot be read: {err}")
    screened = screen_files(files, config.protected_paths, hidden)
    refused.update(screened.refused)
    if files and not screened.kept:
        return result(patch_applied=False, error=_all_refused(refused))
    with open_runtime(task) as runtime:
        prepared(runtime, grading_preparation(task))
        kept, error = _apply_agent_files(runtime, screened.kept, refused)
        if error:
            return result(patch_applied=False, error=error)
        if (task.test_patch or "").strip():
            applied, log = apply_patch(runtime, task.test_patch or "", "test")
            if not applied:
                return result(patch_applied=False, error="the task's test patch (a broken task) does not apply", log=log)
        _stage(runtime, hidden)  # the tree as graded: what the test run may not change
        tests_started = time.monotonic()
        statuses, log, error, hardened = _run_tests(runtime, task, kept, config.protected_paths, config.screen)
        tests_s = time.monotonic() - tests_started
        touched = runtime.run(f"{_GIT} diff --name-only --no-ext-diff", 60).output.split()
        tampered = [p for p in touched if p in hidden or is_protected(p, config.protected_paths)]
        if tampered and error is None:
            statuses, error = {}, f"the test run rewrote protected files ({', '.join(tampered[:5])}): not trusted"

    graded = as_swebench_sees_it(statuses) if hardened else statuses
    resolution, f2p, p2p = grade_statuses(graded, task.FAIL_TO_PASS, task.PASS_TO_PASS, strict=hardened)
    resolved = resolution == "FULL" and bool(task.tests)
    passed = len(f2p["success"]) + len(p2p["success"])
    return result(
        reward=_reward(config, resolved, passed, len(task.tests), error), resolved=resolved, resolution=resolution if task.tests else "NO",
        tests_status={t: statuses.get(t, "MISSING") for t in task.tests},
        fail_to_pass=f2p, pass_to_pass=p2p, log=log, error=error, hardened=hardened, tests_s=tests_s,
    )


def _reward(config: RewardConfig, resolved: bool, passed: int, tests: int, error: str | None) -> float:
    """The resolved reward, else the unresolved one (plus the passing share with partial credit and no error)."""
    if resolved:
        return config.resolved
    if config.partial_credit and tests and error is None:
        return config.unresolved + (config.resolved - config.unresolved) * passed / tests
    return config.unresolved


def _all_refused(refused: dict[str, str]) -> str:
    shown = "; ".join(f"{p}: {why}" for p, why in sorted(refused.items())[:5])
    return f"nothing left to grade: every file of the diff was refused ({shown})"


def _apply_agent_files(runtime: ShellRuntime, files: list[FileDiff], refused: dict[str, str]) -> tuple[str, str | None]:
    """Apply the screened files (`apply.apply_files`), adding the start tree's refusals to `refused`:
    (the applied files as one canonical diff, for the run's screen and guard; an error or None)."""
    try:
        more, applied, error = apply_files(runtime, files)
    except (PatchApplyError, RuntimeError, ValueError) as err:
        return "", f"the agent's patch does not apply: {str(err)[:500]}"
    refused.update(more)
    if error:
        return "", f"the agent's patch does not apply: {error[:500]}"
    if files and not applied:
        return "", _all_refused(refused)
    return render(applied), None


def _stage(runtime: ShellRuntime, hidden: set[str]) -> None:
    """Stage the tree; the hidden tests' files even if an agent's `.gitignore` names them, so the
    check after the run sees any change to them."""
    command = f"{_GIT} add -A"
    if hidden:
        paths = " ".join(bash_quote(p) for p in sorted(hidden))
        command += f' && for p in {paths}; do if [ -e "$p" ]; then {_GIT} --literal-pathspecs add -f -- "$p" || exit 1; fi; done'
    runtime.run_checked(command)


def _run_tests(
    runtime: ShellRuntime, task: Task, agent_diff: str = "", protected: Iterable[str] = PROTECTED_PATHS,
    screen: bool = True,
) -> tuple[dict[str, str], str, str | None, bool]:
    """(statuses, log, error, hardened) of the task's tests in `runtime`, `agent_diff` applied."""
    command = PytestCommand.parse(task.test_command)
    if command is not None and task.log_parser == "pytest":
        findings = screen_agent_diff(runtime, task, agent_diff, protected) if screen else []
        if findings:
            return {}, "\n".join(findings), f"the agent's code reaches into the test run: {'; '.join(findings[:3])}", True
        guard = {"agent_lines": added_lines(agent_diff), "test_patterns": list(protected),
                 "agent_files": sorted({p.new_path for p in split_diff(agent_diff) if p.new_path})}
        run = PytestHarness(runtime, command).run(task.tests, task.test_timeout, hardened=True, guard=guard)
        error = None
        if run.timed_out:
            error = f"the tests timed out after {task.test_timeout:g} s"
        elif run.tampered:
            error = f"the code under test tampered with the test run: {'; '.join(run.tampered[:3])}"
        elif not run.complete:
            error = (f"the test run did not finish normally (exit code {run.exit_code}): the process was killed, "
                     "crashed, or exited early (os._exit); its results do not count")
        statuses = run.statuses if run.complete and not run.tampered else {}
        return statuses, run.log, error, True
    # Not pytest: run the command as is and read its log as swebench would, exit code included.
    parse = parse_pytest_report if task.log_parser == "pytest" else swebench_log_parser(task)
    tests = " ".join(shlex.quote(t) for t in task.tests)
    obs = runtime.session.run(f"{task.test_command} {tests}", task.test_timeout, max_output_bytes=1 << 26)
    statuses = parse(obs.output)
    error = f"the tests timed out after {task.test_timeout:g} s" if obs.timed_out else None
    if obs.exit_code not in (None, 0) and statuses and not any(s in ("FAILED", "ERROR") for s in statuses.values()):
        statuses, error = {}, f"the test command exited {obs.exit_code} but its log reports no failure: not trusted"
    return statuses, obs.output, error, False

