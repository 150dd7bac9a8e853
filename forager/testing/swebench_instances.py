"""SWE-bench instances the project makes itself: the sample library's planted bugs as issue-fix commits.

`make_sample_instances(folder)` writes what an evaluation over real SWE-bench needs, in its formats:

- `repos/forager__semverkit`: a bare git mirror. Its root commit is the sample library; for each
  bug, a branch holds a base commit (the bug planted) and, on top of it, the fix with a new test file
  that reproduces the issue (the issue-fix commit, as a pull request would land it);
- `instances.jsonl`: one swebench row per bug (all twelve SWE-bench fields: `patch` the source half of
  the fix commit, `test_patch` its test file, FAIL_TO_PASS and PASS_TO_PASS JSON-encoded as the
  dataset ships them, `version` "1.0");
- `specs.json`: the swebench-style spec of `forager/semverkit` 1.0 (Python 3.11, pytest pinned,
  `pytest -rA` on the test files), as a user passes one with `--specs`.

The repository's existing tests are not among the test files that run (swebench runs the files the test
patch touches), so each instance's verdict is decided by its issue's tests alone, as in SWE-bench.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forager.git import FIXED_IDENTITY, run_git
from forager.images.paths import asset
from forager.images.sample import SAMPLE_REQUIREMENTS, sample_repo

REPO = "forager/semverkit"
VERSION = "1.0"
SPEC = {"python": "3.11", "pip_packages": SAMPLE_REQUIREMENTS, "install": "python -m pip install -e .",
        "test_cmd": "pytest -rA -p no:cacheprovider"}

_HEADER = "from semverkit import Range, Version, bump_major, latest_per_major\n"
ISSUE_TESTS: dict[str, tuple[str, list[str], list[str]]] = {
    # bug: (test file body after the header, FAIL_TO_PASS names, PASS_TO_PASS names)
    "prerelease-numeric-order": (
        "\n\ndef test_multi_digit_prerelease_numbers_compare_numerically():\n"
        "    assert Version.parse('1.0.0-beta.2') < Version.parse('1.0.0-beta.11')\n"
        "\n\ndef test_release_outranks_its_prerelease():\n"
        "    assert Version.parse('1.0.0') > Version.parse('1.0.0-rc.1')\n",
        ["test_multi_digit_prerelease_numbers_compare_numerically"], ["test_release_outranks_its_prerelease"]),
    "bump-major-no-reset": (
        "\n\ndef test_bump_major_resets_minor_and_patch():\n"
        "    assert str(bump_major('1.2.3')) == '2.0.0'\n"
        "\n\ndef test_version_parses():\n"
        "    assert str(Version.parse('1.2.3')) == '1.2.3'\n",
        ["test_bump_major_resets_minor_and_patch"], ["test_version_parses"]),
    "tilde-minor-upper-bound": (
        "\n\ndef test_tilde_minor_excludes_the_next_minor():\n"
        "    assert '1.3.0' not in Range.parse('~1.2')\n"
        "\n\ndef test_tilde_minor_includes_patches():\n"
        "    assert '1.2.9' in Range.parse('~1.2')\n",
        ["test_tilde_minor_excludes_the_next_minor"], ["test_tilde_minor_includes_patches"]),
    "latest-per-major-prereleases": (
        "\n\ndef test_prereleases_are_left_out_unless_asked_for():\n"
        "    assert [str(v) for v in latest_per_major(['1.0.0', '1.1.0-beta']).values()] == ['1.0.0']\n",
        ["test_prereleases_are_left_out_unless_asked_for"], []),
}


@dataclass(frozen=True)
class SampleInstances:
    """Where `make_sample_instances` put things."""

    rows: list[dict[str, Any]]
    instances: Path
    """`instances.jsonl`."""
    repos: Path
    """The folder of mirrors (`--repos`)."""
    specs: Path
    """`specs.json` (`--specs`)."""


def make_sample_instances(folder: Path, bugs: list[str] | None = None) -> SampleInstances:
    """The sample bugs (all, or `bugs`) as swebench instances of a mirror in `folder` (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    repos = folder / "repos"
    mirror = repos / REPO.replace("/", "__")
    if mirror.exists():
        shutil.rmtree(mirror)
    bug_table = {bug["name"]: bug for bug in json.loads((asset("sample-bugs") / "bugs.json").read_text())}
    chosen = bugs or list(ISSUE_TESTS)
    with tempfile.TemporaryDirectory(prefix="forager-instances-") as tmp:
        work = Path(tmp) / "repo"
        git = _git(work)
        run_git(Path(tmp), "clone", "-q", str(sample_repo().path), str(work), env=FIXED_IDENTITY)
        root = git("rev-parse", "HEAD").strip()
        rows = [_instance(git, work, root, name, bug_table[name], number) for number, name in enumerate(chosen, 1)]
        run_git(Path(tmp), "clone", "-q", "--bare", "--no-local", str(work), str(mirror), env=FIXED_IDENTITY)
    instances = folder / "instances.jsonl"
    instances.write_text("".join(json.dumps(row) + "\n" for row in rows))
    specs = folder / "specs.json"
    specs.write_text(json.dumps({REPO: {VERSION: SPEC}}, indent=2) + "\n")
    return SampleInstances(rows, instances, repos, specs)


def _git(work: Path):  # noqa: ANN202 - a small closure
    return lambda *args: run_git(work, *args, env=FIXED_IDENTITY)


def _instance(git, work: Path, root: str, name: str, bug: dict[str, Any], number: int) -> dict[str, Any]:  # noqa: ANN001
    body, fail_to_pass, pass_to_pass = ISSUE_TESTS[name]
    test_file = f"tests/test_issue_{name.replace('-', '_')}.py"
    git("checkout", "-q", "-b", f"issue/{name}", root)
    (work / "bug.patch").write_text((asset("sample-bugs") / bug["patch"]).read_text())
    git("apply", "bug.patch")
    (work / "bug.patch").unlink()
    git("commit", "-q", "-am", f"semverkit: {name.replace('-', ' ')} (the state the issue was filed against)")
    base = git("rev-parse", "HEAD").strip()
    patch = git("diff", base, root, "--", "semverkit")  # the fix: back to the library as it was
    (work / test_file).write_text(_HEADER + body)
    _apply(work, patch)
    git("add", "-A")
    git("commit", "-q", "-m", f"Fix {name.replace('-', ' ')} (closes #{number})")
    test_patch = git("diff", base, "HEAD", "--", test_file)
    return {
        "repo": REPO, "instance_id": f"forager__semverkit-{name}", "base_commit": base, "patch": patch,
        "test_patch": test_patch, "problem_statement": bug["problem_statement"], "hints_text": "",
        "created_at": "2025-01-01T00:00:00Z", "version": VERSION, "environment_setup_commit": root,
        "FAIL_TO_PASS": json.dumps([f"{test_file}::{t}" for t in fail_to_pass]),
        "PASS_TO_PASS": json.dumps([f"{test_file}::{t}" for t in pass_to_pass]),
    }


def _apply(work: Path, patch: str) -> None:
    (work / "fix.patch").write_text(patch)
    run_git(work, "apply", "fix.patch", env=FIXED_IDENTITY)
    (work / "fix.patch").unlink()


__all__ = ["ISSUE_TESTS", "REPO", "SPEC", "VERSION", "SampleInstances", "make_sample_instances"]
