"""PytestHarness: runs a task's pytest tests in a runtime through the runner it copies there."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path

from forager.core import DEFAULT_TEST_COMMAND, ForagerError
from forager.harness.command import PytestCommand, runner_command
from forager.harness.line_coverage import CoverageMap, run_coverage
from forager.harness.results import TestRun, end_markers, marker_report, run_result
from forager.runtime.base import ShellRuntime, bash_quote

RUNNER = Path(__file__).with_name("runner.py")
GUARD = Path(__file__).with_name("guard.py")
"""Copied next to the runner as `forager_guard.py`: the child's audit hook and pytest plugin."""
FORK_SERVER = Path(__file__).with_name("fork_server.py")
"""Copied next to the runner as `forager_fork_server.py` when the fork server starts."""


class PytestHarness:
    """Runs pytest in `runtime` at its workdir with the task's test command."""

    def __init__(self, runtime: ShellRuntime, command: PytestCommand | str | None = None) -> None:
        if command is None or isinstance(command, str):
            parsed = PytestCommand.parse(command or DEFAULT_TEST_COMMAND)
            if parsed is None:
                raise ForagerError(f"not a pytest command: {command!r} (expected `[VAR=x] python -m pytest ...`)")
            command = parsed
        self.runtime = runtime
        self.command = command
        self._dir: str | None = None
        self._fifo: str | None = None
        self._server_pid = 0
        self.last_cpu_s: float | None = None
        """CPU seconds of the last run through the fork server (its child's own, whatever else ran)."""

    # -- set-up ----------------------------------------------------------------------------------
    def tools_dir(self) -> str:
        """A private directory in the runtime holding the runner (made once)."""
        if self._dir is None:
            self._dir = self.runtime.run_checked(
                f"mktemp -d {bash_quote(self.runtime.scratch_path('XXXXXXXX'))}").strip()
            self.runtime.write_file(f"{self._dir}/runner.py", RUNNER.read_text())
        return self._dir

    def runner_command(
        self, mode: str, request: dict, *, isolated: bool = False, log: str | None = None, script: str | None = None,
        pythonpath: str | None = None,
    ) -> str:
        """The shell command that runs the runner (the copy in `tools_dir` unless `script` names another)."""
        return runner_command(self.command, self.runtime.workdir, script or f"{self.tools_dir()}/runner.py", mode,
                              request, isolated=isolated, log=log, pythonpath=pythonpath)

    def read_text(self, path: str) -> str:
        """A file of the runtime, or "" when there is none."""
        try:
            return self.runtime.read_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return ""

    # -- running -----------------------------------------------------------------------------------
    def run(
        self, tests: Sequence[str], timeout: float, *, hardened: bool = False, suite: bool = False,
        guard: dict | None = None, changed: Sequence[str] = (),
    ) -> TestRun:
        """Run `tests` (node ids) once and read their statuses; `suite=True` runs the whole suite instead
        (no node ids on the command line) and reads the statuses of `tests` from its report.

        The run is a child process under the guard (`guard.py`); `guard` tells it what the agent
        changed: `agent_lines` ({path: [added line numbers]}), `agent_files` and `test_patterns`.
        Through the fork server, `changed` names the files written since its last run (see `serve`)."""
        if self._fifo and not hardened and not suite:
            return self._run_served(tests, timeout, changed)
        # A one-shot directory with a random name and a runner that deletes itself once it has read
        # the request; set up, run and cleaned up in one round trip.
        work = self.runtime.scratch_path(secrets.token_hex(8))
        script = f"{work}/runner.py"
        nonce = secrets.token_hex(16)
        args = [*self.command.args, *([] if suite else tests)]
        request = {"args": args, "nonce": nonce, "tests": list(tests), "guard": guard or {},
                   "cwd": self.runtime.workdir, "self_destruct": True}
        obs = self.runtime.session.run(
            f"mkdir -m 700 {work} && {self.runtime.write_command(script, RUNNER.read_text())} && "
            f"{self.runtime.write_command(f'{work}/forager_guard.py', GUARD.read_text())} && "
            f"{self.runner_command('run', request, script=script, isolated=hardened)}\n"
            f"rc=$?; rm -rf {work}; (exit $rc)",
            timeout, max_output_bytes=1 << 28, internal=True,
        )
        # The first marker with our nonce counts; anything printed after it is ignored.
        end = next(iter(end_markers(obs.output, nonce)), None)
        if end is None:
            return run_result(tests, "", obs.output, obs.exit_code, False, obs.timed_out, obs.duration_s)
        xml, exit_code = marker_report(end)
        return run_result(tests, xml, obs.output[:end.start()], exit_code, True, False, obs.duration_s)

    def collect(self, timeout: float = 300.0, paths: Sequence[str] = ()) -> list[str]:
        """Node ids of every test pytest collects with the task's options (in `paths` only, when given)."""
        args = [a for a in self.command.args if a != "-rA"] + (["--", *paths] if paths else [])
        obs = self.runtime.session.run(
            f"cd {bash_quote(self.runtime.workdir)} && {self.command.env_prefix()}PYTHONDONTWRITEBYTECODE=1 "
            f"{self.command.python} -m pytest --collect-only -q -p no:cacheprovider "
            f"{' '.join(bash_quote(a) for a in args)}",
            timeout, max_output_bytes=1 << 28, internal=True,
        )
        tests = [line.strip() for line in obs.output.splitlines() if "::" in line and not line.startswith(" ")]
        if not tests and not obs.ok:
            raise ForagerError(f"pytest could not collect the tests:\n{obs.output[-3000:]}")
        return tests

    def coverage(self, timeout: float = 1800.0) -> tuple[TestRun, CoverageMap]:
        """Run the whole suite once with per-test line coverage."""
        return run_coverage(self, timeout)

    # -- the fork server -------------------------------------------------------------------------
    def serve(self, timeout: float = 60.0, *, bytecode_cache: bool = False) -> None:
        """Start the fork server (a background job of the runtime's shell); later `run`s go through it.

        With `bytecode_cache`, its children keep compiled modules in the tools directory, so each run
        compiles only what changed; every later `run` must then name in `changed` the files written
        since the run before (they get a new mtime, so no stale compiled file is ever trusted)."""
        if self._fifo:
            return
        tools = self.tools_dir()
        fifo, log = f"{tools}/server", f"{tools}/server.log"
        self.runtime.write_file(f"{tools}/forager_fork_server.py", FORK_SERVER.read_text())
        request = {"fifo": fifo, "cwd": self.runtime.workdir, "pycache": f"{tools}/pycache" if bytecode_cache else None}
        command = self.runner_command("serve", request, log=log)
        self.runtime.session.run(f"(\n{command}\n) &", 30, internal=True)
        wait = self.runtime.session.run(
            f"(for i in $(seq 1 {int(timeout * 20)}); do grep -q FORAGER-SERVING {bash_quote(log)} 2>/dev/null "
            f"&& exit 0; sleep 0.05; done; cat {bash_quote(log)}; exit 1)",
            timeout + 5, internal=True,
        )
        if not wait.ok:
            raise ForagerError(f"the pytest fork server did not start:\n{wait.output[-3000:]}")
        self._server_pid = int(self.runtime.read_file(log).split()[1])
        self._fifo = fifo

    def stop(self) -> None:
        if self._fifo:
            self.runtime.run(f"rm -f {bash_quote(self._fifo)}.in {bash_quote(self._fifo)}.out; "
                             f"kill {self._server_pid}", 30)
            self._fifo = None

    def _run_served(self, tests: Sequence[str], timeout: float, changed: Sequence[str] = ()) -> TestRun:
        """One round trip: send the request, wait for the reply, print the report and the log."""
        work = f"{self.tools_dir()}/run-{secrets.token_hex(4)}"
        junit, log = f"{work}.xml", f"{work}.log"
        request = {"args": [*self.command.args, *tests], "junit": junit, "log": log, "timeout": timeout,
                   "changed": list(changed)}
        sep = f"@@FORAGER-{secrets.token_hex(6)}@@"
        fifo = bash_quote(self._fifo or "")
        obs = self.runtime.session.run(
            f"kill -0 {self._server_pid} 2>/dev/null && "
            f"printf '%s\\n' {bash_quote(json.dumps(request))} > {fifo}.in && "
            f"IFS= read -r reply < {fifo}.out && printf '%s\\n{sep}\\n' \"$reply\" && "
            f"cat {bash_quote(junit)} 2>/dev/null; printf '\\n{sep}\\n'; cat {bash_quote(log)}; "
            f"rm -f {bash_quote(junit)} {bash_quote(log)}",
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
        self.last_cpu_s = reply.get("cpu")
        return run_result(tests, xml, text, reply["rc"], complete, reply["timed_out"], reply["duration"])
