"""Forager and swebench read the same test run the same way.

One real pytest run in a container, over tests that end in every status pytest has, gives a `-rA`
log and a junit XML. swebench's `parse_log_pytest` and `get_eval_tests_report` /
`get_resolution_status` grade the log; Forager grades both the log and the junit XML. Statuses,
success/failure lists and the resolution must agree for many choices of FAIL_TO_PASS/PASS_TO_PASS.
"""

from __future__ import annotations

import itertools
import random

import pytest

from forager.harness import PytestHarness
from forager.rewards.grading import as_swebench_sees_it, grade_statuses, parse_pytest_report
from forager.runtime import DockerRuntime

from conftest import SAMPLE_IMAGE, needs_docker

swebench_grading = pytest.importorskip("swebench.harness.grading")
from swebench.harness.constants import FAIL_TO_PASS, PASS_TO_PASS  # noqa: E402
from swebench.harness.log_parsers.python import parse_log_pytest  # noqa: E402

STATUS_TESTS = '''
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("fixture failed")

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown failed")

def test_passes():
    assert True

def test_fails():
    assert 1 == 2, "one is not two"

def test_errors_in_setup(broken):
    pass

def test_passes_then_errors_in_teardown(bad_teardown):
    pass

def test_skipped():
    pytest.skip("not today")

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    assert True

@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(n):
    assert n != 2

class TestGroup:
    def test_method(self):
        assert True

    def test_method_fails(self):
        raise ValueError("bad value")
'''


@pytest.fixture(scope="module")
def one_run():
    with DockerRuntime(SAMPLE_IMAGE, "/repo") as rt:
        rt.write_file("tests/test_statuses.py", STATUS_TESTS)
        harness = PytestHarness(rt)
        tests = [t for t in harness.collect() if "test_statuses" in t]
        run = harness.run(tests, 120, hardened=True)
    return tests, run


def _swebench(log: str, f2p: list[str], p2p: list[str]):
    statuses = parse_log_pytest(log, None)
    report = swebench_grading.get_eval_tests_report(statuses, {FAIL_TO_PASS: f2p, PASS_TO_PASS: p2p})
    return statuses, report, swebench_grading.get_resolution_status(report)


@needs_docker
def test_the_run_covers_every_status(one_run):
    tests, run = one_run
    assert run.complete and len(tests) == 12
    assert set(run.statuses.values()) == {"PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"}


@needs_docker
def test_log_statuses_are_swebenchs(one_run):
    _, run = one_run
    assert parse_pytest_report(run.log) == parse_log_pytest(run.log, None)


@needs_docker
def test_junit_statuses_agree_with_swebenchs_log_reading(one_run):
    tests, run = one_run
    from_log = parse_log_pytest(run.log, None)
    seen = as_swebench_sees_it(run.statuses)
    for test in tests:
        expected = from_log.get(test, "MISSING")  # swebench has no XPASS: such a test is not in its map
        got = seen.get(test, "MISSING")
        assert got == expected or (got == "XPASS" and expected == "MISSING"), test


@needs_docker
def test_resolution_agrees_with_swebench_for_many_splits(one_run):
    tests, run = one_run
    rng = random.Random(7)
    splits = [(tests[:1], tests[1:2])] + [
        (rng.sample(tests, rng.randint(0, 4)), rng.sample(tests, rng.randint(0, 4))) for _ in range(300)
    ]
    splits += [([a], [b]) for a, b in itertools.product(tests, tests)]
    seen = set()
    for f2p, p2p in splits:
        _, report, resolution = _swebench(run.log, f2p, p2p)
        for source in (parse_pytest_report(run.log), as_swebench_sees_it(run.statuses)):
            ours, our_f2p, our_p2p = grade_statuses(source, f2p, p2p)
            assert f"RESOLVED_{ours}" == resolution, (f2p, p2p)
            assert our_f2p == report[FAIL_TO_PASS] and our_p2p == report[PASS_TO_PASS], (f2p, p2p)
        seen.add(resolution)
    assert seen == {"RESOLVED_FULL", "RESOLVED_PARTIAL", "RESOLVED_NO"}
