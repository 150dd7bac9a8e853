"""Per-test line coverage: the whole suite run once, with one coverage.py context per test."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forager.core import ForagerError
from forager.harness.results import TestRun, end_markers, marker_report, run_result
from forager.home import ensure_wheelhouse
from forager.runtime.base import bash_quote

if TYPE_CHECKING:
    from forager.harness.pytest_harness import PytestHarness  # it imports this module: a real import would be circular


@dataclass
class CoverageMap:
    """Which tests executed which lines: `files[path][line]` are indexes into `tests`."""

    tests: list[str]
    files: dict[str, dict[int, list[int]]]

    def tests_for(self, path: str, start: int, end: int) -> set[str]:
        lines = self.files.get(path, {})
        return {self.tests[i] for line in range(start, end + 1) for i in lines.get(line, ())}


def run_coverage(harness: PytestHarness, timeout: float) -> tuple[TestRun, CoverageMap]:
    """Run the whole suite once with per-test line coverage."""
    runtime = harness.runtime
    tests = harness.collect(timeout)
    work = runtime.run_checked(f"mktemp -d {bash_quote(runtime.scratch_path('XXXXXXXX'))}").strip()
    site = coverage_site(harness)
    nonce = secrets.token_hex(16)
    junit, log, out = f"{work}/report.xml", f"{work}/log", f"{work}/coverage.json"
    request = {"args": list(harness.command.args), "junit": junit, "nonce": nonce,
               "cwd": runtime.workdir, "coverage_out": out}
    command = harness.runner_command("coverage", request, log=log, pythonpath=site)
    obs = runtime.session.run(command, timeout, internal=True)
    text = harness.read_text(log)
    end = end_markers(text, nonce)
    if not end:
        raise ForagerError(f"the coverage run did not finish (timed out: {obs.timed_out}):\n{text[-3000:]}")
    xml, exit_code = marker_report(end[-1])
    run = run_result(tests, xml, text[:end[-1].start()], exit_code, True, False, obs.duration_s)
    raw = json.loads(harness.read_text(out))
    prefix = runtime.workdir.rstrip("/") + "/"
    files = {
        path[len(prefix):] if path.startswith(prefix) else path: {int(k): v for k, v in lines.items()}
        for path, lines in raw["files"].items()
    }
    runtime.run(f"rm -rf {bash_quote(work)}", 30)
    return run, CoverageMap(raw["tests"], files)


def coverage_site(harness: PytestHarness) -> str | None:
    """Where coverage.py is importable from: the image's own, or a wheel from the host's wheelhouse."""
    runtime, python = harness.runtime, harness.command.python
    probe = runtime.run(f"{python} -c 'import coverage'", 60)
    if probe.ok:
        return None
    info = runtime.run_checked(
        f"{python} -c \"import sys, platform; print('%d.%d' % sys.version_info[:2], platform.machine())\""
    ).split()
    wheels = ensure_wheelhouse(["coverage"], info[0], platform=f"manylinux2014_{info[1]}")
    wheel = next(wheels.glob("coverage-*.whl"), None)
    if wheel is None:
        raise ForagerError(f"no coverage wheel in {wheels} for Python {info[0]} on {info[1]}")
    tools = harness.tools_dir()
    site = f"{tools}/site"
    runtime.put_file(f"{tools}/{wheel.name}", wheel.read_bytes())
    runtime.run_checked(f"{python} -m zipfile -e {bash_quote(tools)}/{wheel.name} {bash_quote(site)}")
    return site
