"""Grading a SWE-bench prediction the official way: swebench's eval script, its log parser, its rules.

What `swebench.harness.run_evaluation` does for one prediction, in a Forager runtime (a container
without a network, from the instance's image: the official one, or one Forager built offline):

1. the model patch is applied with `git apply --verbose`, then `--3way`, then `--reject`, then
   `patch --batch --forward --fuzz=5 -p1`, the tree restored between tries; a patch none of them
   applies is `>>>>> Patch Apply Failed` and the instance is an error;
2. the eval script (swebench 4's `make_eval_script_list_py`): the spec's `eval_commands`, the
   project's install made again, the test files reset to the base commit, the `test_patch` applied,
   the spec's `test_cmd` on the test files of the test patch between the start and end markers;
3. the log between the markers is read by the repository's parser (`swebench.harness.log_parsers`)
   and FAIL_TO_PASS / PASS_TO_PASS are graded by swebench's rules (`rewards.grading.grade_statuses`).

When swebench is installed, its own `get_eval_report` reads the same log too, and the result says
whether the two verdicts agree (`swebench_resolved`): parity is checked on every grading, not once.

In an image Forager built (the repository at /repo, no conda), the install made again is the image's
own recorded one (`/forager/reinstall`, offline, without its reset of the tree); in an official image
(/testbed) it is the spec's, in the conda env `testbed`, as swebench does.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from forager.core import ForagerError, Task
from forager.harness.install import INSTALLED_COMMIT, REINSTALL
from forager.rewards.grading import grade_statuses, swebench_log_parser, swebench_parser_name
from forager.runtime.base import ShellRuntime, bash_quote
from forager.tasks.formats import END_TEST_OUTPUT, START_TEST_OUTPUT, SWEBENCH_WORKDIR

APPLY_PATCH_FAIL = ">>>>> Patch Apply Failed"
APPLY_PATCH_PASS = ">>>>> Applied Patch"
TESTS_TIMEOUT = ">>>>> Tests Timed Out"
BAD_CODES = (APPLY_PATCH_FAIL, ">>>>> Reset Failed", ">>>>> Tests Errored", TESTS_TIMEOUT)
GIT_APPLY_CMDS = ("git apply --verbose", "git apply --verbose --3way", "git apply --verbose --reject",
                  "patch --batch --forward --fuzz=5 -p1 -i")
"""swebench 5.0.2's `run_evaluation.GIT_APPLY_CMDS`, tried in order."""
NON_TEST_EXTS = (".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml")
HEREDOC = "EOF_114329324912"
CONDA = ("source /opt/miniconda3/bin/activate", "conda activate testbed")
DEFAULT_TIMEOUT = 1800.0

Status = Literal["resolved", "unresolved", "empty_patch", "error"]


@dataclass
class InstanceResult:
    """One prediction's grading, as the report and the per-instance results file keep it."""

    instance_id: str
    sample: int = 0
    status: Status = "error"
    resolved: bool = False
    patch_applied: bool = False
    error: str | None = None
    tests_status: dict[str, str] = field(default_factory=dict)
    fail_to_pass: dict[str, list[str]] = field(default_factory=dict)
    pass_to_pass: dict[str, list[str]] = field(default_factory=dict)
    swebench_resolved: bool | None = None
    """swebench's own `get_eval_report` on the same log (None when swebench is not installed)."""
    duration_s: float = 0.0
    tests_s: float = 0.0
    log: str = field(default="", repr=False)

    def to_dict(self, *, with_log: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_log:
            data.pop("log")
        return data


def reset_files(test_patch: str) -> list[str]:
    """The files the test patch changes that exist before it (swebench's `get_modified_files`)."""
    try:
        files = PatchSet(test_patch)
    except UnidiffParseError as err:
        raise ForagerError(f"the test patch is not a diff unidiff reads: {err}") from err
    return [f.source_file.removeprefix("a/") for f in files if f.source_file != "/dev/null"]


def directives_of(task: Task) -> list[str]:
    """What follows `test_cmd`: the test patch's files, without data files; Django's as dotted labels."""
    directives = [d for d in re.findall(r"diff --git a/.* b/(.*)", task.test_patch or "")
                  if not d.endswith(NON_TEST_EXTS)]
    if task.repo == "django/django":
        directives = [d.removesuffix(".py").removeprefix("tests/").replace("/", ".") for d in directives]
    return directives


def eval_script(task: Task) -> str:
    """The instance's eval script, as swebench 4 writes it (`make_eval_script_list_py`) for this image."""
    spec = dict(task.metadata.get("swebench_spec") or {})
    workdir, base = task.workdir, task.base_commit
    official = workdir == SWEBENCH_WORKDIR
    reset = f"git checkout {base} {' '.join(shlex.quote(f) for f in reset_files(task.test_patch or ''))}"
    test_cmd = spec.get("test_cmd") or task.test_command
    test_cmd = " && ".join(test_cmd) if isinstance(test_cmd, list) else str(test_cmd)
    if not official and test_cmd.startswith(CONDA[0]):
        test_cmd = test_cmd.split("&&", 2)[-1].strip()  # an official command given to a Forager image
    # The install made again: the spec's in an official image; in Forager's, the image's own recorded one
    # (offline), without the lines that reset the tree and record the commit: the model's patch must stay.
    install = spec.get("install") if official else (
        f"if [ -x {REINSTALL} ]; then grep -v -e 'git checkout' -e '{INSTALLED_COMMIT}' {REINSTALL} | bash; fi")
    lines = [*(CONDA if official else ()), f"cd {workdir}", *spec.get("eval_commands", []),
             f"git config --global --add safe.directory {workdir}", f"cd {workdir}", "git status", "git show",
             f"git -c core.fileMode=false diff {base}", *(CONDA if official else ()), *([install] if install else []),
             reset, f"git apply -v - <<'{HEREDOC}'\n{task.test_patch}\n{HEREDOC}", f": '{START_TEST_OUTPUT}'",
             " ".join([test_cmd, *directives_of(task)]), f": '{END_TEST_OUTPUT}'", reset]
    return "\n".join(["#!/bin/bash", "set -uxo pipefail", *lines]) + "\n"


def grade_prediction(task: Task, model_patch: str | None, open_runtime: Callable[[Task], ShellRuntime], *,
                     sample: int = 0, timeout: float = DEFAULT_TIMEOUT) -> InstanceResult:
    """Grade one prediction for `task` in a fresh runtime from `open_runtime` (see the module docstring)."""
    started = time.monotonic()
    result = InstanceResult(task.instance_id, sample)
    if not (model_patch or "").strip():
        result.status, result.error = "empty_patch", "the prediction's patch is empty"
        return result
    if not (task.test_patch or "").strip():
        result.error = f"instance {task.instance_id} has no test_patch: it cannot be graded"
        return result
    try:
        with open_runtime(task) as runtime:
            applied, apply_log = _apply_model_patch(runtime, model_patch or "")
            if not applied:
                result.error, result.log = f"{APPLY_PATCH_FAIL}: {apply_log[-1500:]}", f"{APPLY_PATCH_FAIL}\n{apply_log}"
                return result
            result.patch_applied = True
            script = runtime.scratch_path("eval.sh")
            runtime.write_file(script, eval_script(task))
            tests_started = time.monotonic()
            obs = runtime.session.run(f"bash {bash_quote(script)} 2>&1", timeout, max_output_bytes=1 << 28)
            result.tests_s = time.monotonic() - tests_started
            result.log = f"{APPLY_PATCH_PASS}\n{obs.output}" + (f"\n{TESTS_TIMEOUT}" if obs.timed_out else "")
    except ForagerError as err:
        result.error = f"the instance's environment failed: {err}"
        return result
    finally:
        result.duration_s = time.monotonic() - started
    _verdict(task, result)
    return result


def _apply_model_patch(runtime: ShellRuntime, patch: str) -> tuple[bool, str]:
    """swebench's chain of apply commands on a fresh tree; (applied, what the last one said)."""
    path = runtime.scratch_path("patch.diff")
    runtime.write_file(path, patch if patch.endswith("\n") else patch + "\n")
    where = f"cd {bash_quote(runtime.workdir)} && "
    output = ""
    for attempt, command in enumerate(GIT_APPLY_CMDS):
        if attempt:
            runtime.run(where + "git checkout -- . ; git clean -fdq", 120)
        obs = runtime.run(f"{where}{command} {bash_quote(path)} 2>&1", 300)
        output = obs.output
        if obs.ok:
            return True, output
    if runtime.run(f"{where}git apply --check --reverse {bash_quote(path)}", 120).ok:
        return True, output  # the chain left it applied while each command failed
    return False, output


def _verdict(task: Task, result: InstanceResult) -> None:
    """Statuses from the log as swebench's `get_logs_eval` reads it, graded by swebench's rules."""
    statuses = read_statuses(task, result.log)
    if statuses is None:
        result.error = "the eval log holds no test results (bad code or no markers): " + _tail(result.log)
        result.status = "error"
    else:
        resolution, result.fail_to_pass, result.pass_to_pass = grade_statuses(statuses, task.FAIL_TO_PASS,
                                                                              task.PASS_TO_PASS)
        result.resolved = resolution == "FULL"
        result.status = "resolved" if result.resolved else "unresolved"
        result.tests_status = {t: statuses.get(t, "MISSING") for t in task.tests}
    result.swebench_resolved = swebench_verdict(task, result.log)


def read_statuses(task: Task, log: str) -> dict[str, str] | None:
    """The status map of an eval log, or None when the log says the run went wrong (swebench's rules)."""
    if any(code in log for code in BAD_CODES) or START_TEST_OUTPUT not in log or END_TEST_OUTPUT not in log:
        return None
    parse = swebench_log_parser(task)
    sliced = log.split(START_TEST_OUTPUT)[1].split(END_TEST_OUTPUT)[0]
    return parse(sliced) or parse(log)


def swebench_verdict(task: Task, log: str) -> bool | None:
    """swebench's own `get_eval_report` on this log: resolved or not; None without swebench."""
    try:
        from swebench.harness.grading import get_eval_report
        from swebench.types import TestSpec
    except ImportError:
        return None
    spec = TestSpec(instance_id=task.instance_id, image=task.image or "", eval_script_list=[], repo=task.repo,
                    version=task.version or "", FAIL_TO_PASS=task.FAIL_TO_PASS, PASS_TO_PASS=task.PASS_TO_PASS,
                    log_parser=swebench_log_parser_name(task), eval_type="pass_and_fail")
    with tempfile.TemporaryDirectory(prefix="forager-parity-") as tmp:
        path = Path(tmp) / "test_output.txt"
        path.write_text(log)
        prediction = {"instance_id": task.instance_id, "model_name_or_path": "forager", "model_patch": "-"}
        report = get_eval_report(spec, prediction, str(path), include_tests_status=False)
    return bool(report[task.instance_id]["resolved"])


def swebench_log_parser_name(task: Task) -> str:
    """The PARSER_REGISTRY name the task's log is read with."""
    return swebench_parser_name(task) if task.log_parser == "swebench" else task.log_parser


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


__all__ = ["APPLY_PATCH_FAIL", "DEFAULT_TIMEOUT", "InstanceResult", "eval_script", "grade_prediction",
           "read_statuses", "swebench_verdict", "directives_of", "reset_files"]
