"""Run a repository's pytest tests inside a runtime and read per-test results from junit XML.

The runner (`runner.py`) is copied into the runtime and run by the image's own Python. Three ways
to run it, one result type:

- `run(tests)`: one pytest process. `hardened=True` is the grader's mode: `python -I` (a `pytest.py`
  or `sitecustomize.py` in the repository cannot shadow the real ones), the request and report paths
  travel on stdin in a fresh random directory, and a run counts as complete only when the runner
  printed its end marker with the request's nonce (an `os._exit(0)` in the code under test skips it).
- `serve()` + `run(tests)`: a fork server that imports pytest once; each run is a forked child.
  What mutation validation uses, where pytest's start-up would otherwise dominate.
- `coverage()`: the whole suite once, with one coverage.py context per test.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forager.core import ForagerError
from forager.runtime.base import ShellRuntime, q

RUNNER = Path(__file__).with_name("runner.py")
PASS_STATUSES = frozenset({"PASSED", "XFAIL"})
"""What swebench counts as a pass."""
_END = re.compile(r"^FORAGER-END (\S*) (-?\d+) ([A-Za-z0-9+/=]*)$", re.MULTILINE)
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class TestRun:
    """What one pytest run told: a status per requested test, failure excerpts, and the log."""

    statuses: dict[str, str]
    """PASSED, FAILED, ERROR, SKIPPED, XFAIL, XPASS, or MISSING when the test produced no result."""
    messages: dict[str, str] = field(default_factory=dict)
    """For failed and errored tests: the failure's message and the last lines of its report."""
    log: str = ""
    exit_code: int | None = None
    complete: bool = True
    """False when pytest did not return normally (killed, timed out, `os._exit`, a crash)."""
    timed_out: bool = False
    duration_s: float = 0.0

    def status(self, test: str) -> str:
        return self.statuses.get(test, "MISSING")

    def passed(self, test: str) -> bool:
        return self.status(test) in PASS_STATUSES


@dataclass(frozen=True)
class PytestCommand:
    """A task's test command split into its interpreter, environment and pytest options."""

    python: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, command: str) -> PytestCommand | None:
        """`[VAR=x ...] python -m pytest ARGS` or `[VAR=x ...] pytest ARGS`; None for anything else."""
        try:
            words = shlex.split(command)
        except ValueError:
            return None
        env = []
        while words and _ENV_ASSIGNMENT.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            env.append((name, value))
        if len(words) >= 3 and re.fullmatch(r"(.*/)?python[0-9.]*", words[0]) and words[1:3] == ["-m", "pytest"]:
            return cls(words[0], tuple(words[3:]), tuple(env))
        if words and re.fullmatch(r"(.*/)?(py\.test|pytest)", words[0]):
            return cls("python", tuple(words[1:]), tuple(env))
        return None

    def env_prefix(self) -> str:
        return "".join(f"{name}={q(value)} " for name, value in self.env)


def junit_key(nodeid: str) -> tuple[str, str]:
    """The (classname, name) pytest's junit XML gives a node id (`_pytest.junitxml.mangle_test_address`)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def parse_junit(xml: str, tests: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Statuses and failure excerpts of `tests` from a junit XML report (missing tests are left out)."""
    wanted = {junit_key(t): t for t in tests}
    statuses: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.fromstring(xml).iter("testcase"):
        test = wanted.get((case.get("classname", ""), case.get("name", "")))
        if test is None:
            continue
        status, message = "PASSED", ""
        for child in case:
            if child.tag == "failure":
                status, message = "FAILED", _excerpt(child)
            elif child.tag == "error":
                status, message = "ERROR", _excerpt(child)
            elif child.tag == "skipped" and status == "PASSED":
                status = "XFAIL" if child.get("type") == "pytest.xfail" else "SKIPPED"
            elif child.tag == "properties":
                if any(p.get("name") == "forager_status" and p.get("value") == "XPASS" for p in child):
                    status = "XPASS"
        if statuses.get(test) in ("FAILED", "ERROR"):
            continue  # a teardown error after a failure: keep the first failure
        statuses[test] = status
        if message:
            messages[test] = message
    return statuses, messages


def _excerpt(element: ET.Element, lines: int = 12) -> str:
    text = (element.text or "").rstrip().splitlines()
    head = element.get("message", "").strip()
    tail = "\n".join(text[-lines:])
    return f"{head}\n{tail}".strip() if head and head not in tail else tail or head


@dataclass
class CoverageMap:
    """Which tests executed which lines: `files[path][line]` are indexes into `tests`."""

    tests: list[str]
    files: dict[str, dict[int, list[int]]]

    def tests_for(self, path: str, start: int, end: int) -> set[str]:
        lines = self.files.get(path, {})
        return {self.tests[i] for line in range(start, end + 1) for i in lines.get(line, ())}


class PytestHarness:
    """Runs pytest in `runtime` at its workdir with the task's test command."""

    def __init__(self, runtime: ShellRuntime, command: PytestCommand | str | None = None) -> None:
        if command is None or isinstance(command, str):
            from forager.core import DEFAULT_TEST_COMMAND

            parsed = PytestCommand.parse(command or DEFAULT_TEST_COMMAND)
            if parsed is None:
                raise ForagerError(f"not a pytest command: {command!r} (expected `[VAR=x] python -m pytest ...`)")
            command = parsed
        self.runtime = runtime
        self.command = command
        self._dir: str | None = None
        self._fifo: str | None = None
        self._server_pid = 0

    # -- set-up ----------------------------------------------------------------------------------
    def _tools(self) -> str:
        """A private directory in the runtime holding the runner (made once)."""
        if self._dir is None:
            self._dir = self.runtime.run_checked("mktemp -d /tmp/forager-XXXXXXXX").strip()
            self.runtime.write_file(f"{self._dir}/runner.py", RUNNER.read_text())
        return self._dir

    def _request_command(
        self, mode: str, request: dict, *, isolated: bool = False, log: str | None = None, script: str | None = None,
        pythonpath: str | None = None,
    ) -> str:
        script = script or f"{self._tools()}/runner.py"
        flags = "-I " if isolated else ""
        output = f"> {q(log)} 2>&1" if log else "2>&1"
        extra = ""
        if pythonpath:  # in front of the task's own PYTHONPATH (its command's, or the image's)
            own = dict(self.command.env).get("PYTHONPATH")
            extra = f"PYTHONPATH={q(f'{pythonpath}:{own}')} " if own else \
                f"PYTHONPATH={q(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}} "
        return (
            f"cd {q(self.runtime.workdir)} && {self.command.env_prefix()}{extra}PYTHONDONTWRITEBYTECODE=1 "
            f"{self.command.python} {flags}{script} {mode} {output} <<'FORAGER_REQUEST'\n"
            f"{json.dumps(request)}\nFORAGER_REQUEST"
        )

    # -- running -----------------------------------------------------------------------------------
    def run(self, tests: Sequence[str], timeout: float, *, hardened: bool = False, suite: bool = False) -> TestRun:
        """Run `tests` (node ids) once and read their statuses; `suite=True` runs the whole suite instead
        (no node ids on the command line) and reads the statuses of `tests` from its report."""
        if self._fifo and not hardened and not suite:
            return self._run_served(tests, timeout)
        # A one-shot directory with a random name and a runner that deletes itself once it has read
        # the request; set up, run and cleaned up in one round trip.
        work = f"/tmp/forager-{secrets.token_hex(8)}"
        script = f"{work}/runner.py"
        nonce = secrets.token_hex(16)
        args = [*self.command.args, *([] if suite else tests)]
        request = {"args": args, "junit": f"{work}/{secrets.token_hex(8)}.xml", "nonce": nonce,
                   "cwd": self.runtime.workdir, "self_destruct": True}
        obs = self.runtime.session.run(
            f"mkdir -m 700 {work} && {self.runtime.write_command(script, RUNNER.read_text())} && "
            f"{self._request_command('run', request, script=script, isolated=hardened)}\n"
            f"rc=$?; rm -rf {work}; (exit $rc)",
            timeout, max_output_bytes=1 << 28, internal=True,
        )
        # The first marker with our nonce counts; anything printed after it is ignored.
        end = next((m for m in _END.finditer(obs.output) if m.group(1) == nonce), None)
        if end is None:
            return self._result(tests, "", obs.output, obs.exit_code, False, obs.timed_out, obs.duration_s)
        xml = base64.b64decode(end.group(3)).decode("utf-8", "replace")
        return self._result(tests, xml, obs.output[:end.start()], int(end.group(2)), True, False, obs.duration_s)

    def collect(self, timeout: float = 300.0) -> list[str]:
        """Node ids of every test pytest collects with the task's options."""
        obs = self.runtime.session.run(
            f"cd {q(self.runtime.workdir)} && {self.command.env_prefix()}PYTHONDONTWRITEBYTECODE=1 "
            f"{self.command.python} -m pytest --collect-only -q -p no:cacheprovider "
            f"{' '.join(q(a) for a in self.command.args if a not in ('-rA',))}",
            timeout, max_output_bytes=1 << 28, internal=True,
        )
        tests = [line.strip() for line in obs.output.splitlines() if "::" in line and not line.startswith(" ")]
        if not tests and not obs.ok:
            raise ForagerError(f"pytest could not collect the tests:\n{obs.output[-3000:]}")
        return tests

    def coverage(self, timeout: float = 1800.0) -> tuple[TestRun, CoverageMap]:
        """Run the whole suite once with per-test line coverage."""
        tests = self.collect(timeout)
        work = self.runtime.run_checked("mktemp -d /tmp/forager-XXXXXXXX").strip()
        site = self._coverage_site()
        nonce = secrets.token_hex(16)
        junit, log, out = f"{work}/report.xml", f"{work}/log", f"{work}/coverage.json"
        request = {"args": list(self.command.args), "junit": junit, "nonce": nonce,
                   "cwd": self.runtime.workdir, "coverage_out": out}
        command = self._request_command("coverage", request, log=log, pythonpath=site)
        obs = self.runtime.session.run(command, timeout, internal=True)
        text = self._read(log)
        end = [m for m in _END.finditer(text) if m.group(1) == nonce]
        if not end:
            raise ForagerError(f"the coverage run did not finish (timed out: {obs.timed_out}):\n{text[-3000:]}")
        xml = base64.b64decode(end[-1].group(3)).decode("utf-8", "replace")
        run = self._result(tests, xml, text[:end[-1].start()], int(end[-1].group(2)), True, False, obs.duration_s)
        raw = json.loads(self._read(out))
        prefix = self.runtime.workdir.rstrip("/") + "/"
        files = {
            path[len(prefix):] if path.startswith(prefix) else path: {int(k): v for k, v in lines.items()}
            for path, lines in raw["files"].items()
        }
        self.runtime.run(f"rm -rf {q(work)}", 30)
        return run, CoverageMap(raw["tests"], files)

    def _coverage_site(self) -> str | None:
        """Where coverage.py is importable from: the image's own, or a wheel from the host's wheelhouse."""
        probe = self.runtime.run(f"{self.command.python} -c 'import coverage'", 60)
        if probe.ok:
            return None
        from forager.images.wheelhouse import ensure_wheelhouse

        info = self.runtime.run_checked(
            f"{self.command.python} -c \"import sys, platform; "
            "print('%d.%d' % sys.version_info[:2], platform.machine())\""
        ).split()
        wheels = ensure_wheelhouse(["coverage"], info[0], platform=f"manylinux2014_{info[1]}")
        wheel = next(wheels.glob("coverage-*.whl"), None)
        if wheel is None:
            raise ForagerError(f"no coverage wheel in {wheels} for Python {info[0]} on {info[1]}")
        site = f"{self._tools()}/site"
        self.runtime.put_file(f"{self._tools()}/{wheel.name}", wheel.read_bytes())
        self.runtime.run_checked(f"{self.command.python} -m zipfile -e {q(self._tools())}/{wheel.name} {q(site)}")
        return site

    # -- the fork server -------------------------------------------------------------------------
    def serve(self, timeout: float = 60.0) -> None:
        """Start the fork server (a background job of the runtime's shell); later `run`s go through it."""
        if self._fifo:
            return
        fifo, log = f"{self._tools()}/server", f"{self._tools()}/server.log"
        command = self._request_command("serve", {"fifo": fifo, "cwd": self.runtime.workdir}, log=log)
        self.runtime.session.run(f"(\n{command}\n) &", 30, internal=True)
        wait = self.runtime.session.run(
            f"(for i in $(seq 1 {int(timeout * 20)}); do grep -q FORAGER-SERVING {q(log)} 2>/dev/null && exit 0; "
            f"sleep 0.05; done; cat {q(log)}; exit 1)",
            timeout + 5, internal=True,
        )
        if not wait.ok:
            raise ForagerError(f"the pytest fork server did not start:\n{wait.output[-3000:]}")
        self._server_pid = int(self.runtime.read_file(log).split()[1])
        self._fifo = fifo

    def stop(self) -> None:
        if self._fifo:
            self.runtime.run(f"rm -f {q(self._fifo)}.in {q(self._fifo)}.out; kill {self._server_pid}", 30)
            self._fifo = None

    def _run_served(self, tests: Sequence[str], timeout: float) -> TestRun:
        """One round trip: send the request, wait for the reply, print the report and the log."""
        work = f"{self._tools()}/run-{secrets.token_hex(4)}"
        junit, log = f"{work}.xml", f"{work}.log"
        request = {"args": [*self.command.args, *tests], "junit": junit, "log": log, "timeout": timeout}
        sep = f"@@FORAGER-{secrets.token_hex(6)}@@"
        obs = self.runtime.session.run(
            f"kill -0 {self._server_pid} 2>/dev/null && "
            f"printf '%s\\n' {q(json.dumps(request))} > {q(self._fifo or '')}.in && "
            f"IFS= read -r reply < {q(self._fifo or '')}.out && printf '%s\\n{sep}\\n' \"$reply\" && "
            f"cat {q(junit)} 2>/dev/null; printf '\\n{sep}\\n'; cat {q(log)}; rm -f {q(junit)} {q(log)}",
            timeout + 30, max_output_bytes=1 << 28, internal=True,
        )
        parts = obs.output.split(f"\n{sep}\n")
        try:
            reply = json.loads(parts[0])
            xml, text = parts[1], parts[2]
        except (ValueError, IndexError):
            self._fifo = None  # the server is gone: fall back to one process per run
            return self.run(tests, timeout)
        complete = not reply["timed_out"] and reply["rc"] >= 0
        return self._result(tests, xml, text, reply["rc"], complete, reply["timed_out"], reply["duration"])

    # -- results ---------------------------------------------------------------------------------
    def _read(self, path: str) -> str:
        try:
            return self.runtime.read_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return ""

    @staticmethod
    def _result(
        tests: Sequence[str], xml: str, log: str, exit_code: int | None, complete: bool, timed_out: bool,
        duration: float,
    ) -> TestRun:
        statuses: dict[str, str] = {}
        messages: dict[str, str] = {}
        if xml.strip():
            try:
                statuses, messages = parse_junit(xml, tests)
            except ET.ParseError:
                complete = False
        if complete and exit_code == 0 and any(s in ("FAILED", "ERROR") for s in statuses.values()):
            complete = False  # pytest says all passed but the report says otherwise: not to be trusted
        return TestRun(
            {t: statuses.get(t, "MISSING") for t in tests}, messages, log, exit_code, complete, timed_out, duration
        )
