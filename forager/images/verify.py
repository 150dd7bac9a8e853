"""Verify an image: collect its tests and run the whole suite once inside it, through the pytest harness.

Test files that fail to import are left out with `--ignore` (and named in the manifest) when other
tests collect; an image whose suite collects nothing, times out, or passes too little is not executable.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from forager.harness import PASS_STATUSES, PytestCommand, PytestHarness
from forager.images.manifest import clip
from forager.runtime.base import bash_quote
from forager.runtime.docker import DockerRuntime

_ERROR_LINE = re.compile(r"^ERROR (?:collecting )?(\S+?)(?: - (.*))?$")
_ERROR_SECTION = re.compile(r"(?ms)^_+ ERROR collecting (\S+) _+$(.*?)(?=^_+ |^=+ )")
_COLLECT_TIMEOUT = 300.0


@dataclass
class Verification:
    """What the image's tests did; `failure` is None when the image is executable."""

    test_command: str
    tests: list[str] = field(default_factory=list)
    baseline: dict[str, str] = field(default_factory=dict)
    collection_errors: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    failure_stage: str | None = None
    failure: str | None = None
    log: str = ""

    @property
    def passed(self) -> int:
        return sum(s in PASS_STATUSES for s in self.baseline.values())

    @property
    def skipped(self) -> int:
        return sum(s == "SKIPPED" for s in self.baseline.values())

    @property
    def failed(self) -> int:
        return len(self.baseline) - self.passed - self.skipped

    @property
    def pass_share(self) -> float:
        ran = len(self.baseline) - self.skipped
        return self.passed / ran if ran else 0.0


def verify_image(tag: str, test_command: str, *, min_pass_share: float, timeout: float, client=None,
                 workdir: str = "/repo", log=print, on_run=lambda count: None) -> Verification:
    """Collect and run the suite of `tag`; the result says whether (and why not) it is executable."""
    result = Verification(test_command)
    if PytestCommand.parse(test_command) is None:
        result.failure_stage, result.failure = "collect", f"not a pytest command: {test_command!r}"
        return result
    with DockerRuntime(tag, workdir, command_timeout=timeout, client=client) as runtime:
        tests, errors, output, rc = _collect(runtime, result.test_command)
        log(f"$ pytest --collect-only: {len(tests)} tests, {len(errors)} collection errors (exit {rc})")
        files = [path for path in errors if "::" not in path]
        if files and len(files) < len({t.split("::")[0] for t in tests}):
            # A few files that cannot import (an optional dependency, a platform-only module) do not
            # condemn the image; most of them do.
            result.collection_errors = errors
            result.test_command += "".join(f" --ignore={shlex.quote(path)}" for path in files)
            log(f"left out after collection errors: {', '.join(files)}")
            tests, errors, output, rc = _collect(runtime, result.test_command)
        elif errors:
            result.collection_errors, tests = errors, []
        result.tests = tests
        if not tests:
            result.failure_stage = "collect"
            if errors or rc in (1, 2, 3, 4):
                first = next(iter(errors.items()), None)
                why = f"{first[0]}: {first[1]}" if first else _why_nothing(output, workdir)
                result.failure = clip(f"collection error: {why}", 500)
            else:
                result.failure = "no tests collected"
            result.log = output
            return result
        on_run(len(tests))
        run = PytestHarness(runtime, result.test_command).run(tests, timeout, suite=True)
        result.duration_s, result.log = run.duration_s, run.log
        result.baseline = dict(run.statuses)
        log(f"suite: {result.passed} passed, {result.failed} failed, {result.skipped} skipped "
            f"in {run.duration_s:.1f}s (exit {run.exit_code})")
    if run.timed_out:
        result.failure_stage, result.failure = "verify", f"suite timed out after {timeout:g}s"
    elif not run.complete and all(s == "MISSING" for s in run.statuses.values()):
        result.failure_stage = "verify"
        killed = " (killed: out of memory?)" if run.exit_code in (137, -9) else ""
        result.failure = f"the suite did not finish (exit {run.exit_code}{killed}): {_tail(run.log, 1)}"
    elif result.pass_share < min_pass_share:
        result.failure_stage = "verify"
        result.failure = (f"only {result.pass_share:.0%} of the tests that ran pass ({result.passed}/"
                          f"{len(tests) - result.skipped}); at least {min_pass_share:.0%} must")
    return result


def _collect(runtime: DockerRuntime, test_command: str) -> tuple[list[str], dict[str, str], str, int | None]:
    command = PytestCommand.parse(test_command)
    assert command is not None
    args = " ".join(bash_quote(a) for a in command.args if a != "-rA")
    obs = runtime.session.run(
        f"cd {bash_quote(runtime.workdir)} && {command.env_prefix()}PYTHONDONTWRITEBYTECODE=1 "
        f"{command.python} -m pytest "
        f"--collect-only -q -p no:cacheprovider {args}", _COLLECT_TIMEOUT, max_output_bytes=1 << 28, internal=True,
    )
    tests = [line.strip() for line in obs.output.splitlines() if "::" in line and not line.startswith((" ", "ERROR"))]
    errors: dict[str, str] = {}
    for line in obs.output.splitlines():
        if match := _ERROR_LINE.match(line.strip()):
            errors[match[1]] = clip(match[2] or "", 300)
    # -q leaves the reason out of the summary line, or cuts it to the terminal's width ("pytest.Pyt..."):
    # take the last `E   ...` line of each error's section (for its file and the nodes in it)
    for match in _ERROR_SECTION.finditer(obs.output):
        reasons = re.findall(r"(?m)^E\s+(.+)$", match[2])
        for key in [k for k in errors if k == match[1] or k.startswith(match[1] + "::")] if reasons else []:
            if not errors[key] or errors[key].endswith("..."):
                errors[key] = clip(reasons[-1], 300)
    return tests, errors, obs.output, obs.exit_code


def _why_nothing(output: str, workdir: str) -> str:
    """Why collection stopped before any file: a conftest that does not import (its `E` line), else the last line."""
    reasons = re.findall(r"(?m)^E\s+(.+)$", output)
    conftest = re.search(r"ImportError while loading conftest '([^']+)'", output)
    if conftest:
        where = conftest[1].removeprefix(workdir.rstrip("/") + "/")
        return f"conftest {where} does not import: {reasons[-1].strip() if reasons else _tail(output, 1)}"
    return reasons[-1].strip() if reasons else _tail(output, 1)


def _tail(text: str, lines: int) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return clip(" / ".join(kept[-lines:]), 300) if kept else "no output"
