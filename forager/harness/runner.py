"""Forager's pytest runner, copied into the task's container and run by its own Python.

Standard library and pytest only (coverage for `coverage` mode); it must run on any Python >= 3.8
that an image holds, so it uses no Forager code (`forager_guard.py` beside it is Forager's
`harness/guard.py`). Modes:

    run       read a JSON request from stdin and run pytest once in a CHILD process (`child` mode,
              a fresh `python -I` under the guard); this parent never imports the code under test,
              holds the nonce where the child cannot read it (not dumpable, not in the child's
              memory, argv or environment), reads each test's outcome from signed records on a pipe,
              and prints an end marker with the nonce, the exit code and the statuses (JSON) only
              when the child ended normally after its last record;
    coverage  the same, recording which lines each test executes (coverage.py dynamic contexts);
    serve     a fork server (`forager_fork_server.py` beside it): import pytest and its plugins once,
              then run each request in a forked child.

A request names everything in stdin, never in argv: code under test can read `sys.argv`, and the
grader's report path and nonce must stay out of its reach.
"""

import base64
import hashlib
import hmac
import json
import os
import select
import subprocess
import sys
import warnings


def _prepare_sys_path(cwd):
    """Import pytest from the environment, then make the project importable as `python -m pytest` does.

    Run with `python -I`, the repository is not on sys.path while pytest is imported, so a
    `pytest.py` or `_pytest/` in the repository cannot stand in for the real one.
    """
    import pytest  # noqa: F401  (the real one, imported before the repository is on sys.path)

    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] if sys.flags.isolated else []
    sys.path[0:0] = [cwd] + extra


class _Coverage:
    """Per-test line coverage: one coverage.py context per test node id."""

    def __init__(self, source, out):
        try:  # per-test contexts need a tracer core (sys.monitoring's loses them): the C one when it is there
            import coverage.tracer  # noqa: F401

            os.environ["COVERAGE_CORE"] = "ctrace"
        except ImportError:
            os.environ["COVERAGE_CORE"] = "pytrace"
        import coverage

        self.out = out
        self.cov = coverage.Coverage(data_file=None, source=[source], config_file=False)
        self._quietly(self.cov.start)

    @staticmethod
    def _quietly(call, *args):
        """A project's `filterwarnings = error` must not turn coverage's own warnings into errors."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(*args)

    def pytest_runtest_protocol(self, item, nextitem):  # noqa: ARG002 - pytest hook signature
        self._quietly(self.cov.switch_context, item.nodeid)

    def pytest_sessionfinish(self, session, exitstatus):  # noqa: ARG002
        self._quietly(self.cov.switch_context, "")
        self._quietly(self.cov.stop)
        data = self.cov.get_data()
        ids, files = {}, {}
        for path in data.measured_files():
            lines = {}
            for lineno, contexts in (data.contexts_by_lineno(path) or {}).items():
                tests = [ids.setdefault(c, len(ids)) for c in contexts if c]
                if tests:
                    lines[lineno] = tests
            if lines:
                files[path] = lines
        with open(self.out, "w") as fh:
            json.dump({"tests": sorted(ids, key=ids.get), "files": files}, fh)


class _Statuses:
    """Marks an unexpectedly passing xfail test in the junit XML, which otherwise reports it as passed."""

    def __init__(self):
        import pytest

        self.pytest_runtest_makereport = pytest.hookimpl(hookwrapper=True)(self._makereport)

    @staticmethod
    def _makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        if call.when == "call" and report.passed and hasattr(report, "wasxfail"):
            item.user_properties.append(("forager_status", "XPASS"))


class _OwnRun:
    """Keeps plugins that would take the run elsewhere out of the way, whatever enables them (`addopts`,
    pytest-enabler): pytest-cov's coverage (a second tracer pauses Forager's, so coverage mode saw no
    line, and it slows every run) and pytest-xdist's workers (tests outside this process). It sets the
    options they read: `--no-cov` or `-p no:xdist` would be errors where the plugin is missing, or
    where `addopts` passes its options."""

    def __init__(self):
        import pytest

        wrapper = pytest.hookimpl(hookwrapper=True)
        self.pytest_load_initial_conftests = wrapper(self._initial_conftests)
        self.pytest_cmdline_main = wrapper(self._cmdline_main)

    @staticmethod
    def _initial_conftests(early_config, parser, args):  # noqa: ARG004 - pytest hook signature
        namespace = early_config.known_args_namespace
        if hasattr(namespace, "no_cov"):  # pytest-cov registered its options
            namespace.no_cov = True
        yield

    @staticmethod
    def _cmdline_main(config):
        option = config.option
        if hasattr(option, "numprocesses"):  # pytest-xdist registered its options: `-n`, `--dist`, `--tx`
            option.numprocesses, option.maxprocesses, option.tx = None, None, []
            option.dist, option.distload = "no", False
        yield


def _pytest_args(request):
    args = list(request["args"])
    if request.get("junit"):
        args += ["--junitxml=" + request["junit"], "-o", "junit_family=xunit1", "-o", "junit_logging=no"]
    return args + ["-p", "no:cacheprovider"]


def _run(request, coverage=False):
    cwd = request.get("cwd") or os.getcwd()
    os.chdir(cwd)
    _prepare_sys_path(cwd)
    import pytest

    plugins = [_Statuses(), _OwnRun()] + ([_Coverage(cwd, request["coverage_out"])] if coverage else [])
    rc = int(pytest.main(_pytest_args(request), plugins=plugins))
    # Reached only when pytest returned: os._exit in code under test, a crash or a kill skip it.
    # The report travels in the output right away, so nothing that runs later (an atexit hook of
    # the code under test, a process it left behind) can rewrite it; then exit before those hooks.
    xml = b""
    if request.get("junit") and os.path.exists(request["junit"]):
        with open(request["junit"], "rb") as fh:
            xml = fh.read()
        os.unlink(request["junit"])
    sys.stdout.flush()
    sys.stderr.flush()
    line = "\nFORAGER-END %s %d %s\n" % (request.get("nonce", ""), rc, base64.b64encode(xml).decode())
    os.write(1, line.encode())
    os._exit(rc)


def _serve(request):
    """The fork server (`fork_server.py`, copied beside this file): mutate-fix validation, never grading."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import forager_fork_server

    sys.path.remove(here)

    def run_pytest(request, plugins):
        import pytest

        return pytest.main(_pytest_args(request), plugins=[_Statuses(), _OwnRun(), *plugins])

    forager_fork_server.serve(request, run_pytest)


def _undumpable():
    """Keep the child (same user) out of this process: no /proc/<pid>/mem, fd or environ access, no ptrace."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:  # noqa: BLE001 - best effort: not Linux, no libc
        pass


def _read_sources(tests):
    """The clean text of the test files, read before any code of the repository runs."""
    sources = {}
    for path in sorted({t.split("::")[0] for t in tests if "::" in t}):
        try:
            with open(path, "rb") as fh:
                sources[path] = fh.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            pass
    return sources


def _collect(fd, proc):
    """Everything the child wrote on the record pipe, until it exited (a grandchild may hold the pipe)."""
    data = b""
    while True:
        exited = proc.poll() is not None
        ready, _, _ = select.select([fd], [], [], 0 if exited else 0.2)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                data += chunk
                continue
            break
        if exited:
            break
    proc.wait()
    return data


def _records(data, key):
    """The records the guard signed, and whether anything else was written on the pipe."""
    records, forged = [], False
    for line in data.decode("utf-8", "replace").splitlines():
        mac, _, body = line.partition(" ")
        if hmac.compare_digest(mac, hmac.new(key, body.encode(), hashlib.sha256).hexdigest()):
            records.append(json.loads(body))
        else:
            forged = True
    return records, forged


def _status(phases, seen):
    """A test's status from pytest's reports and the guard's own observation of the call."""
    setup, call, teardown = phases.get("setup"), phases.get("call"), phases.get("teardown")
    if setup is None:
        return None, ""
    if setup["outcome"] == "failed":
        return "ERROR", setup["message"]
    if setup["outcome"] == "skipped":
        return ("XFAIL" if setup["xfail"] else "SKIPPED"), ""
    if call is None:
        return None, ""
    status, message = "FAILED", call["message"]
    if call["outcome"] == "passed" and call["xfail"]:
        status = "XPASS"
    elif call["outcome"] == "passed":
        # A pass counts only if the guard saw the test function return: a patched report cannot make one.
        status, message = ("PASSED", "") if seen == "passed" else ("FAILED", "pytest reported a pass the guard did not see")
    elif call["outcome"] == "skipped":
        status = "XFAIL" if call["xfail"] else "SKIPPED"
    if teardown is not None and teardown["outcome"] == "failed" and status not in ("FAILED", "ERROR"):
        status, message = "ERROR", teardown["message"]
    return status, message


def _verdicts(records, forged):
    phases, seen, tamper = {}, {}, ["a record on the result pipe was not the guard's"] if forged else []
    for record in records:
        if record["t"] == "report":
            phases.setdefault(record["id"], {}).setdefault(record["when"], record)  # the first one counts
        elif record["t"] == "call":
            seen.setdefault(record["id"], record["seen"])
        elif record["t"] == "tamper":
            tamper.append(record["why"])
    statuses, messages = {}, {}
    for test, by_phase in phases.items():
        status, message = _status(by_phase, seen.get(test))
        if status is not None:
            statuses[test] = status
        if message:
            messages[test] = message[-4000:]
    return {"statuses": statuses, "messages": messages, "tamper": tamper}


def _inconsistencies(statuses, rc, output):
    """What the records say against what pytest itself said: its exit status and its `-rA` summary.

    Both come from the child too, but from pytest's own exit path and terminal reporter, not from
    the guard's records: forging one channel does not forge the others.
    """
    failing = ("FAILED", "ERROR")
    found = []
    if rc == 1 and statuses and not any(s in failing for s in statuses.values()):
        found.append("pytest exited with 1 (a test failed) but every record says the tests passed")
    summary = {}
    for line in output.decode("utf-8", "replace").splitlines():
        word, _, rest = line.partition(" ")
        if word in failing and rest:
            summary[rest.split(" - ", 1)[0].strip()] = word
    contradicted = [t for t, s in statuses.items() if s not in failing and t in summary]
    if contradicted:
        found.append("pytest's summary reports %s as %s, the records do not" % (contradicted[0], summary[contradicted[0]]))
    return found


def _run_guarded(request):
    cwd = request.get("cwd") or os.getcwd()
    os.chdir(cwd)
    _undumpable()
    here = os.path.dirname(os.path.abspath(__file__))
    sources = _read_sources(request.get("tests") or [])
    key = os.urandom(32)
    read_fd, write_fd = os.pipe()
    child_request = dict(request.get("guard") or {}, args=_pytest_args(dict(request, junit=None)), cwd=cwd,
                         fd=write_fd, key=key.hex(), sources=sources, private=here)
    log = open(os.path.join(here, "child.log"), "w+b")
    proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "child"], stdin=subprocess.PIPE,
                            stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,), close_fds=True)
    os.close(write_fd)
    proc.stdin.write(json.dumps(child_request).encode() + b"\n")
    proc.stdin.close()
    records, forged = _records(_collect(read_fd, proc), key)
    if request.get("self_destruct"):
        for name in ("runner.py", "forager_guard.py"):
            try:
                os.unlink(os.path.join(here, name))
            except OSError:
                pass
    log.seek(0)
    output = log.read()
    os.write(1, output)
    done = [r["rc"] for r in records if r["t"] == "done"]
    if not done or proc.returncode != done[0]:
        os._exit(proc.returncode if proc.returncode > 0 else 70)  # killed, crashed or exited early: no marker
    verdicts = _verdicts(records, forged)
    verdicts["tamper"] += _inconsistencies(verdicts["statuses"], done[0], output)
    changed = [p for p, text in sources.items() if _read_sources([p + "::"]).get(p) != text]
    verdicts["tamper"] += ["the test file %s changed during the run" % p for p in changed]
    payload = base64.b64encode(json.dumps(verdicts).encode()).decode()
    os.write(1, ("\nFORAGER-END %s %d %s\n" % (request.get("nonce", ""), done[0], payload)).encode())
    os._exit(done[0])


def _child(request):
    """One pytest session under the guard, which is in place before any code of the repository runs."""
    cwd = request["cwd"]
    os.chdir(cwd)
    fd, key = request.pop("fd"), bytes.fromhex(request.pop("key"))
    os.set_inheritable(fd, False)  # processes the tests start do not get the record pipe
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import forager_guard

    sys.path.remove(here)
    del sys.modules["forager_guard"]
    _prepare_sys_path(cwd)
    import pytest

    forager_guard.mark_hooks()
    guard = forager_guard.Guard(request, fd, key)
    del key, request["sources"]
    sys.addaudithook(guard.audit)
    # _OwnRun: a project's pytest-cov (`--cov-fail-under` would fail a run whose tests all pass) and
    # pytest-xdist (its workers run the tests where the guard does not look) stay out of the grade.
    rc = int(pytest.main(request["args"], plugins=[guard, _OwnRun()]))
    guard.emit({"t": "done", "rc": rc})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def main():
    mode = sys.argv[1]
    request = json.loads(sys.stdin.readline())
    if mode == "serve":
        _serve(request)
        return 0
    if mode == "child":
        return _child(request)
    if mode == "run":
        return _run_guarded(request)
    return _run(request, coverage=(mode == "coverage"))


if __name__ == "__main__":
    sys.exit(main())
