"""Test-generation tasks: a SWE task whose start tree no longer holds the tests that reveal its bug.

A mutate-fix task's FAIL_TO_PASS tests are in the repository already: a "reproduction test" that
runs the existing suite would fail on the buggy code and pass with the fix without saying anything
about the issue. So the tests that reveal the bug come out of the start tree (the agent's and the
grader's alike), folded into the task's setup patch, whose one-commit history keeps no trace of
them. An issue-fix task's FAIL_TO_PASS tests usually come with its hidden `test_patch` and are not
in the tree: nothing comes out.

The task keeps its reference fix (`patch`); `metadata["reference_diff"]` is a diff that puts the
revealing tests back (the test patch's version when the task has one): what a perfect agent
writes, and what the reference policy replays.
"""

from __future__ import annotations

import ast
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from forager.core import ForagerError, Task
from forager.harness.protected import split_diff
from forager.runtime.base import bash_quote

TESTGEN_KIND = "test-generation"
_GIT = ["git", "-c", "user.name=forager", "-c", "user.email=forager@localhost", "-c", "commit.gpgsign=false"]


def node_targets(node_ids: Iterable[str]) -> dict[str, set[tuple[str, ...]]]:
    """{file: {(Class, ..., function)}} of pytest node ids (parameters dropped); other ids are skipped."""
    targets: dict[str, set[tuple[str, ...]]] = {}
    for node in node_ids:
        path, sep, rest = node.split("[", 1)[0].partition("::")
        if sep and path.endswith(".py") and rest:
            targets.setdefault(path, set()).add(tuple(rest.split("::")))
    return targets


def without_tests(source: str, names: set[tuple[str, ...]], path: str = "<test file>") -> str:
    """`source` without the test functions `names` (with their decorators); a class left empty gets `pass`."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ForagerError(f"{path}: cannot take its tests out, it does not parse: {err}") from err
    lines = source.splitlines(keepends=True)
    cuts: list[tuple[int, int, str | None]] = []  # (first line, last line, what replaces them), 1-based

    def visit(body: list[ast.stmt], prefix: tuple[str, ...], indent: str | None) -> None:
        kept = 0
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (*prefix, node.name) in names:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                cuts.append((first, node.end_lineno or node.lineno, None))
                continue
            kept += 1
            if isinstance(node, ast.ClassDef) and any(n[:len(prefix) + 1] == (*prefix, node.name) for n in names):
                visit(node.body, (*prefix, node.name), " " * node.body[0].col_offset)
        if kept == 0 and indent is not None and cuts:
            first, last, _ = cuts[-1]
            cuts[-1] = (first, last, f"{indent}pass\n")

    visit(tree.body, (), None)
    for first, last, replacement in sorted(cuts, reverse=True):
        lines[first - 1:last] = [replacement] if replacement else []
    return "".join(lines)


def _git(repo: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*_GIT, *args], cwd=repo, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise ForagerError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()[:2000]}")
    return done.stdout


def _paths(patch: str | None) -> set[str]:
    return {p for file in split_diff(patch or "") for p in file.paths}


def to_testgen_task(task: Task, read_base: Callable[[list[str]], dict[str, str | None]]) -> Task:
    """`task` as a test-generation task (unchanged when it is one already).

    `read_base(paths)` gives each path's text at the task's base commit (None where there is none):
    `base_reader` reads a local repository or the task's image.
    """
    if task.kind == TESTGEN_KIND:
        return task
    targets = node_targets(task.FAIL_TO_PASS)
    paths = sorted(_paths(task.setup_patch) | _paths(task.test_patch) | set(targets))
    with tempfile.TemporaryDirectory(prefix="forager-testgen-") as tmp:
        repo = Path(tmp)
        _git(repo, "init", "-q")
        for path, text in read_base(paths).items():
            if text is not None:
                (repo / path).parent.mkdir(parents=True, exist_ok=True)
                (repo / path).write_text(text)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", "base")
        if task.setup_patch:
            _git(repo, "apply", "--whitespace=nowarn", "-", stdin=task.setup_patch)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", "start")
        hidden = []
        for path, names in sorted(targets.items()):
            file = repo / path
            if file.is_file():
                before = file.read_text()
                after = without_tests(before, names, path)
                if after != before:
                    file.write_text(after)
                    hidden.append(path)
        if hidden:
            setup_patch = _git(repo, "diff", "HEAD~1")
            _git(repo, "add", "-A")
            _git(repo, "commit", "-q", "-m", "hidden")
            _git(repo, "checkout", "-q", "HEAD~1", "--", ".")  # the start tree ...
            if task.test_patch:
                _git(repo, "apply", "--whitespace=nowarn", "-", stdin=task.test_patch)  # ... with its tests
            _git(repo, "add", "-A")
            reference_test = _git(repo, "diff", "--cached", "HEAD")
        else:  # nothing reveals the bug in the start tree: the tests that do are the test patch's
            setup_patch, reference_test = task.setup_patch or "", task.test_patch or ""
    metadata = {**task.metadata, "reference_diff": reference_test, "hidden_tests": hidden, "source_kind": task.kind}
    return task.model_copy(update={"kind": TESTGEN_KIND, "setup_patch": setup_patch or None, "metadata": metadata})


def base_reader(task: Task, runtime: str = "auto") -> Callable[[list[str]], dict[str, str | None]]:
    """Reads files at the task's base commit: from its `local_repo` on this machine, else in its image."""

    def from_local(paths: list[str]) -> dict[str, str | None]:
        texts: dict[str, str | None] = {}
        for path in paths:
            spec = f"{task.base_commit}:{path}"
            if subprocess.run(["git", "-C", str(task.local_repo), "cat-file", "-e", spec], capture_output=True).returncode:
                texts[path] = None
                continue
            done = subprocess.run(["git", "-C", str(task.local_repo), "show", spec], capture_output=True, text=True)
            if done.returncode != 0:
                raise ForagerError(f"cannot read {path} at {task.base_commit[:12]}: {done.stderr.strip()[:500]}")
            texts[path] = done.stdout
        return texts

    def from_image(paths: list[str]) -> dict[str, str | None]:
        from forager.runtime.registry import open_runtime

        texts: dict[str, str | None] = {}
        with open_runtime(task, runtime) as rt:
            scratch = rt.scratch_path("base-file")
            for path in paths:
                spec = bash_quote(f"{task.base_commit}:{path}")
                obs = rt.run(f"cd {bash_quote(rt.workdir)} && if git cat-file -e {spec} 2>/dev/null; then "
                             f"git show {spec} > {bash_quote(scratch)} && echo found; else echo absent; fi", 120)
                if not obs.ok:
                    raise ForagerError(f"cannot read {path} at {task.base_commit[:12]} in {task.image}: {obs.output[-500:]}")
                texts[path] = rt.read_file(scratch) if obs.output.strip().endswith("found") else None
        return texts

    return from_local if task.local_repo and Path(task.local_repo).is_dir() else from_image


__all__ = ["TESTGEN_KIND", "base_reader", "node_targets", "to_testgen_task", "without_tests"]
