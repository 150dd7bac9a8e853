"""What a pytest run told: per-test statuses read from junit XML, failure excerpts, and the end marker."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PASS_STATUSES = frozenset({"PASSED", "XFAIL"})
"""What swebench counts as a pass."""
END_MARKER = re.compile(r"^FORAGER-END (\S*) (-?\d+) ([A-Za-z0-9+/=]*)$", re.MULTILINE)
"""The runner's last line: the request's nonce, pytest's exit code, and in base64 either the junit XML
(coverage mode) or the guarded run's verdicts as JSON (`statuses`, `messages`, `tamper`)."""


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
    tampered: list[str] = field(default_factory=list)
    """What the guard caught the code under test doing to the test run (its statuses do not count)."""

    def status(self, test: str) -> str:
        return self.statuses.get(test, "MISSING")

    def passed(self, test: str) -> bool:
        return self.status(test) in PASS_STATUSES


def end_markers(output: str, nonce: str) -> list[re.Match[str]]:
    """The end markers in `output` that carry `nonce` (code under test cannot know it), in order."""
    return [m for m in END_MARKER.finditer(output) if m.group(1) == nonce]


def marker_report(marker: re.Match[str]) -> tuple[str, int]:
    """(junit XML, pytest's exit code) an end marker carries."""
    return base64.b64decode(marker.group(3)).decode("utf-8", "replace"), int(marker.group(2))


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


def run_result(
    tests: Sequence[str], xml: str, log: str, exit_code: int | None, complete: bool, timed_out: bool,
    duration: float,
) -> TestRun:
    """The TestRun of `tests` from a run's report and log (not complete when the two disagree)."""
    statuses: dict[str, str] = {}
    messages: dict[str, str] = {}
    tampered: list[str] = []
    if xml.lstrip().startswith("{"):  # a guarded run's verdicts, keyed by node id
        verdicts = json.loads(xml)
        wanted = set(tests)
        statuses = {t: s for t, s in verdicts["statuses"].items() if t in wanted}
        messages = {t: m for t, m in verdicts["messages"].items() if t in statuses}
        tampered = list(verdicts.get("tamper") or [])
    elif xml.strip():
        try:
            statuses, messages = parse_junit(xml, tests)
        except ET.ParseError:
            complete = False
    if complete and exit_code == 0 and any(s in ("FAILED", "ERROR") for s in statuses.values()):
        complete = False  # pytest says all passed but the report says otherwise: not to be trusted
    return TestRun(
        {t: statuses.get(t, "MISSING") for t in tests}, messages, log, exit_code, complete, timed_out, duration,
        tampered,
    )
