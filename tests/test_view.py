"""The trajectory viewer, rendered by headless Chromium, and the dedup / export / view commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from forager.trajectories.view import render_html, write_view
from forager.cli import app
from forager.core import Trajectory, TrajectoryMessage

INJECTION = "</script><script>document.body.setAttribute('data-pwned', '1'); alert(1)</script>"
IMG = '<img src=x onerror="document.body.setAttribute(\'data-pwned\', \'2\')">'
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def episode(tid: str, sample: int = 0, resolved: bool = False, termination: str = "submitted",
            observation: str = "tests/test_a.py F", diff: str = "", command: str = "python -m pytest -x") -> Trajectory:
    words = " ".join(f"{tid}-{n}" for n in range(12))  # different tasks, different actions
    messages = [
        TrajectoryMessage(role="system", content="You are an agent."),
        TrajectoryMessage(role="user", content=f"Fix the failing test of {tid}."),
        TrajectoryMessage(role="assistant", content="Run the tests first.", loss_mask=1,
                          action={"name": "bash", "arguments": {"command": f"{command} {words}"}}),
        TrajectoryMessage(role="user", content=observation),
        TrajectoryMessage(role="assistant", content="Fix it.", loss_mask=1,
                          action={"name": "str_replace", "arguments": {
                              "path": "pkg/a.py", "old_str": "return a - b", "new_str": f"return a + b  # {words}"}}),
        TrajectoryMessage(role="user", content="edited pkg/a.py"),
        TrajectoryMessage(role="assistant", content="not a tool call", loss_mask=1, action_error="no tool call found"),
        TrajectoryMessage(role="user", content="error: no tool call found"),
        TrajectoryMessage(role="assistant", content="<tool: submit>\n</tool>", loss_mask=1,
                          action={"name": "submit", "arguments": {}}),
    ]
    details = {"resolution": "FULL" if resolved else "NO", "tests_status": {"t::f2p": "PASSED" if resolved else "FAILED",
                                                                         "t::p2p": "PASSED"},
               "fail_to_pass": {"success": ["t::f2p"] if resolved else [], "failure": [] if resolved else ["t::f2p"]},
               "pass_to_pass": {"success": ["t::p2p"], "failure": []}, "log": "== 2 passed ==", "patch_applied": True}
    return Trajectory(trajectory_id=f"{tid}#{sample}", task_id=tid, sample=sample, repo="org/pkg", kind="mutate-fix",
                      messages=messages, termination=termination, resolved=resolved, reward=1.0 if resolved else -1.0,
                      reward_details=details,
                      diff=diff or "--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1 +1 @@\n-a - b\n+a + b\n",
                      num_turns=4, prompt_tokens=1234, completion_tokens=321, timings={"total": 12.5, "policy": 4.0})


def sample_set() -> list[Trajectory]:
    return [
        episode("pkg__add__f1", resolved=True),
        episode("pkg__evil__f2", termination="out_of_turns", observation=f"output {INJECTION} end",
                diff=f"--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-x\n+{INJECTION}\n", command=f"echo '{IMG}'"),
        episode("pkg__other__f3", sample=2, termination="crashed"),
    ]


class _DOM(HTMLParser):
    """Elements of a dumped page: (tag, attributes), and the text inside the detail pane."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        """The text of each script element, in order."""
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict((k, v or "") for k, v in attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def test_render_html_embeds_data_safely():
    page = render_html(sample_set(), title="<b>runs</b>")
    assert "</script><script>" not in page and "<img src=x" not in page
    assert "\\u003c/script\\u003e\\u003cscript\\u003e" in page
    assert "<title>&lt;b&gt;runs&lt;/b&gt;</title>" in page
    assert len(re.findall(r"<script\b", page)) == 3 + 2  # one per trajectory, the summary, the page's code
    assert "http://" not in page and "https://" not in page  # nothing to fetch


def _dump_dom(html_path: Path, tmp_path: Path, fragment: str = "") -> _DOM:
    url = html_path.resolve().as_uri() + fragment
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the browser and its helper processes
        process.communicate()
        pytest.fail("Chromium did not finish the page in 60 s: an injected alert() would block it like this")
    assert process.returncode == 0, stderr[-2000:]
    dom = _DOM()
    dom.feed(stdout)
    dom.text = stdout
    return dom


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (scripts/test installs Debian's `chromium` as root)")
def test_page_in_headless_chromium(tmp_path):
    trajs = sample_set()
    path = write_view([_write(tmp_path / "runs", trajs)], tmp_path / "view.html", title="runs")
    evil = trajs[1].trajectory_id

    dom = _dump_dom(path, tmp_path, "#traj=" + quote(evil, safe=""))
    rows = dom.find("tr", **{"data-id": evil})
    assert [a["data-id"] for t, a in dom.elements if t == "tr" and "data-id" in a] == [t.trajectory_id for t in trajs]
    assert "selected" in rows[0].get("class", "")
    assert dom.find("div", id="trajectory", **{"data-id": evil})
    assert len([a for t, a in dom.elements if t == "div" and "data-turn" in a]) == len(trajs[1].messages)
    # the payloads are text on the page, not elements
    escaped = "&lt;/script&gt;&lt;script&gt;document.body.setAttribute('data-pwned', '1'); alert(1)&lt;/script&gt;"
    assert f"output {escaped} end" in dom.text  # the observation
    assert f"+{escaped}" in dom.text  # the diff
    assert "echo '&lt;img src=x onerror=" in dom.text  # the tool call's argument
    assert not any("data-pwned" in a for _, a in dom.elements)
    assert dom.find("img") == []
    scripts = [a for t, a in dom.elements if t == "script"]
    assert sum(a.get("type") != "application/json" for a in scripts) == 1
    assert not any("alert(1)" in s for s, a in zip(dom.scripts, scripts) if a.get("type") != "application/json")
    # the rest of the episode: the parsed calls, the action error, the tests and the diff
    assert "str_replace" in dom.text and "return a + b" in dom.text and "action error: no tool call found" in dom.text
    assert "FAIL_TO_PASS: 0 passed, 1 failed" in dom.text and "PASS_TO_PASS: 1 passed, 0 failed" in dom.text
    assert 'class="del">-x' in dom.text

    plain = _dump_dom(path, tmp_path)
    assert "Choose a trajectory." in plain.text and not plain.find("div", id="trajectory")
    assert "3 trajectories, 1 resolved (33.3%)" in plain.text
    assert [a["value"] for a in plain.find("option") if a.get("value")][:3] == ["crashed", "out_of_turns", "submitted"]


def _write(directory: Path, trajs: list[Trajectory]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trajectories.jsonl").write_text("".join(t.to_json() + "\n" for t in trajs))
    return directory


def test_cli_dedup_export_and_view(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trajs = sample_set()
    trajs.append(episode("pkg__add__f1", sample=1))  # the same actions as the first one, unresolved
    runs = _write(tmp_path / "runs", trajs)
    runner = CliRunner()

    result = runner.invoke(app, ["dedup", str(runs), "--out", "dedup.jsonl"])
    assert result.exit_code == 0, result.output
    assert "org/pkg" in result.output and "kept 3 of 4" in result.output
    kept = [json.loads(line)["trajectory_id"] for line in Path("dedup.jsonl").read_text().splitlines()]
    assert kept == [t.trajectory_id for t in trajs[:3]]

    result = runner.invoke(app, ["export", "dedup.jsonl", "--out", "sft/data", "--resolved-only", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert "exported 1 trajectories" in result.output and "2 not resolved" in result.output
    assert [json.loads(line)["id"] for line in Path("sft/data.jsonl").read_text().splitlines()] == ["pkg__add__f1#0"]
    assert not Path("sft/data.parquet").exists()

    result = runner.invoke(app, ["export", str(runs), "--out", "all", "--mask-observations", "0.5",
                                 "--terminations", "submitted,crashed"])
    assert result.exit_code == 0, result.output
    assert Path("all.jsonl").exists() and Path("all.parquet").exists()
    assert "1 termination out_of_turns" in result.output

    result = runner.invoke(app, ["view", str(runs), "--out", "v.html"])
    assert result.exit_code == 0, result.output
    assert f"wrote {Path('v.html')}" in result.output
    assert (tmp_path / "v.html").resolve().as_uri() in result.output.replace("\n", "")


def test_cli_errors_are_readable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = episode("a__b__c").to_json()
    Path("bad.jsonl").write_text(good + "\n" + '{"trajectory_id": "x#0", "task_id": "x", "reward": "lots"}\n')
    runner = CliRunner()
    for args in (["dedup", "bad.jsonl", "--out", "o.jsonl"], ["export", "bad.jsonl", "--out", "o"],
                 ["view", "bad.jsonl"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "bad.jsonl:2: not a trajectory: reward:" in result.output
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    result = runner.invoke(app, ["export", "bad.jsonl", "--out", "o", "--format", "csv"])
    assert result.exit_code == 1 and "--format must be jsonl, parquet or both" in result.output
    result = runner.invoke(app, ["export", "bad.jsonl", "--out", "o", "--terminations", "done"])
    assert result.exit_code == 1 and "unknown termination(s) done" in result.output
    result = runner.invoke(app, ["dedup", "missing-dir", "--out", "o.jsonl"])
    assert result.exit_code == 1 and "missing-dir: no such file or directory" in result.output
    assert not Path("o.jsonl").exists() and not Path("trajectories.html").exists()
