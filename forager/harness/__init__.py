"""Run a repository's pytest tests inside a runtime and read per-test results from junit XML.

The runner (`runner.py`) is copied into the runtime and run by the image's own Python. Three ways
to run it, one result type:

- `run(tests)`: a parent runner that never imports the code under test and one pytest CHILD under
  the guard (`guard.py`). `hardened=True` is the grader's mode: `python -I` (a `pytest.py` or
  `sitecustomize.py` in the repository cannot shadow the real ones), the request travels on stdin
  in a fresh random directory, the child's outcomes travel to the parent as signed records (the
  parent decides each status from pytest's report AND the guard's own observation of the call),
  and a run counts as complete only when the parent printed its end marker with the request's
  nonce, which it prints only when the child ended normally after its last record.
- `serve()` + `run(tests)`: a fork server (`fork_server.py`) that imports pytest and its plugins
  once, and can keep compiled modules between runs; each run is a forked child. What mutation
  validation uses, where pytest's start-up would otherwise dominate. Never for grading.
- `coverage()`: the whole suite once, with one coverage.py context per test.

The modules: `command` (the task's pytest command and the runner's shell command), `pytest_harness`
(the three ways above), `line_coverage`, `results` (junit XML into statuses), and `protected` (the
paths a patch may not touch).
"""

from forager.harness.command import PytestCommand
from forager.harness.line_coverage import CoverageMap
from forager.harness.protected import PROTECTED_PATHS, FilePatch, is_protected, split_diff
from forager.harness.pytest_harness import RUNNER, PytestHarness
from forager.harness.results import PASS_STATUSES, TestRun, junit_key, parse_junit

__all__ = [
    "PASS_STATUSES", "PROTECTED_PATHS", "RUNNER", "CoverageMap", "FilePatch", "PytestCommand", "PytestHarness",
    "TestRun", "is_protected", "junit_key", "parse_junit", "split_diff",
]
