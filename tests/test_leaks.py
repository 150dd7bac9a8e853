"""Issue-fix tasks that cannot leak: whatever the source repository's packs hold (a partial clone's promisor
packs, alternates, cruft and kept packs, grafts, replace refs, a shallow boundary), the episode's repository
holds the base history and nothing else, the check proves it, `tasks validate` rejects a task that shows
more, and the image's tag follows what its `.git` holds. Real git everywhere; Docker where it answers.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import forager.tasks.checkout as checkout_module
from forager.core import Task
from forager.images.git_leaks import KeptHistory, find_leaks, host_runner, keep_base_history
from forager.runtime import DockerRuntime, LocalRuntime
from forager.runtime.base import ShellRuntime, bash_quote
from forager.rewards.grading import prepare_for_grading
from forager.tasks.checkout import checkout_task, leaked_objects
from forager.tasks.validate import check_task

from conftest import SAMPLE_IMAGE, needs_docker

CALC = "def div(a, b):\n    return a // b\n"
TESTS = "from calc import div\n\n\ndef test_whole():\n    assert div(4, 2) == 2\n"
FIX_TESTS = TESTS + "\n\ndef test_half():\n    assert div(1, 2) == 0.5\n"
GIT_ENV = ("GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=dev GIT_AUTHOR_EMAIL=dev@example.com "
           "GIT_COMMITTER_NAME=dev GIT_COMMITTER_EMAIL=dev@example.com")


def _write(path: str, text: str) -> str:
    return f'mkdir -p "$(dirname {path})" && printf %s {bash_quote(text)} > {path}'


def _commit(message: str, day: int) -> str:
    date = f"2024-02-0{day}T12:00:00Z"
    return f"git add -A && GIT_AUTHOR_DATE={date} GIT_COMMITTER_DATE={date} git commit -q -m {bash_quote(message)}"


# origin: Add calc (tag v0.1) -> Document calc (the base) -> Fix div (tag v1.0), and a `feature` branch.
# partial: a blob-less clone that fetched every blob since (promisor packs, complete history);
# plain: a plain local clone of it (the `.promisor` markers come along, the partial-clone config not);
# incomplete: a blob-less clone that only ever checked out the base and the tip (older blobs missing).
SOURCES = "\n".join([
    "set -e", f"export {GIT_ENV}", "git init -q -b main origin", "cd origin",
    "git config uploadpack.allowFilter true", "git config uploadpack.allowAnySHA1InWant true",
    _write("calc.py", CALC), _write("tests/test_calc.py", TESTS), _write("README.md", "draft\n"),
    _commit("Add calc", 1), "git tag v0.1",
    _write("README.md", "# calc\n"), _commit("Document calc", 2),
    _write("calc.py", CALC.replace("//", "/")), _write("tests/test_calc.py", FIX_TESTS),
    _commit("Fix div truncating its result", 3), "git tag -a v1.0 -m 'release 1.0'",
    "git checkout -q -b feature", _write("secret.py", "SECRET = 1\n"), _commit("Secret feature", 4),
    "git checkout -q main", "cd ..",
    'git clone -q --filter=blob:none "file://$PWD/origin" partial',
    "(cd partial && for c in $(git rev-list --all); do git -c advice.detachedHead=false checkout -q $c; done"
    " && git checkout -q main)",
    "git clone -q partial plain",
    'git clone -q --filter=blob:none "file://$PWD/origin" incomplete',
    "(cd incomplete && git -c advice.detachedHead=false checkout -q HEAD~1 && git checkout -q main)",
    "git clone -q incomplete incomplete-plain",
])


@dataclass
class Sources:
    root: Path
    shas: list[str]
    """add, base, fix (oldest first)."""
    secret: str

    @property
    def base(self) -> str:
        return self.shas[1]

    @property
    def fix(self) -> str:
        return self.shas[2]

    def task(self, repo: str, **update) -> Task:
        origin = self.root / "origin"
        diff = git(origin, "diff", self.base, self.fix, "--", "calc.py")
        test_patch = git(origin, "diff", self.base, self.fix, "--", "tests")
        fields = dict(instance_id="calc-1", problem_statement="div(1, 2) is 0", repo="calc", base_commit=self.base,
                      local_repo=str(self.root / repo), patch=diff, test_patch=test_patch,
                      FAIL_TO_PASS=["tests/test_calc.py::test_half"], PASS_TO_PASS=["tests/test_calc.py::test_whole"])
        return Task(**{**fields, **update})


def git(repo: Path, *args: str, input_text: str | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          input=input_text).stdout


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Sources:
    root = tmp_path_factory.mktemp("leaks")
    subprocess.run(["bash", "-c", SOURCES], cwd=root, check=True, capture_output=True)
    origin = root / "origin"
    shas = git(origin, "rev-list", "--reverse", "main").split()
    return Sources(root, shas, git(origin, "rev-parse", "feature").strip())


def copy_of(sources: Sources, name: str, tmp_path: Path) -> Path:
    """A byte-for-byte copy (cp -a keeps the packs, markers and config exactly as they are)."""
    subprocess.run(["cp", "-a", str(sources.root / name), str(tmp_path / name)], check=True)
    return tmp_path / name


def gc_only(run) -> KeptHistory:
    """The cleaning before this fix: one branch, no remotes or reflogs, then `git gc --prune=now`."""
    run("git checkout -q -B main && { git remote | xargs -r -n1 git remote remove; } && "
        "{ git for-each-ref --format='%(refname)' | grep -vx refs/heads/main | xargs -r -n1 git update-ref -d; } && "
        "git reflog expire --expire=now --all && git -c gc.cruftPacks=false gc --prune=now --quiet")
    return KeptHistory("gc")


def assert_only_base_history(rt: ShellRuntime, s: Sources) -> None:
    def out(command: str) -> str:
        return rt.run_checked(command).strip()

    assert out("git rev-parse HEAD") == s.base
    for sha in (s.fix, s.secret):
        assert not rt.run(f"git cat-file -e {sha}").ok, f"{sha} is still readable"
    assert out("git log --all --format=%H").split() == [s.base, s.shas[0]]
    assert out("git for-each-ref --format='%(refname)'").split() == ["refs/heads/main", "refs/tags/v0.1"]
    assert out("git fsck --unreachable --lost-found --no-progress 2>&1") == ""
    assert out("find .git/objects -name '*.promisor' -o -name '*.keep'") == ""
    assert out("git config --get extensions.partialClone || true") == ""
    assert out("git status --porcelain") == ""
    leaks = leaked_objects(rt)
    assert leaks.clean and leaks.count == 0, leaks


# -- the leak is real --------------------------------------------------------------------------------
def test_gc_alone_keeps_the_fix_of_a_promisor_pack(sources, tmp_path):
    repo = copy_of(sources, "plain", tmp_path)
    assert list((repo / ".git" / "objects" / "pack").glob("*.promisor"))  # the marker came with the clone
    git(repo, "-c", "advice.detachedHead=false", "checkout", "-q", sources.base)
    gc_only(host_runner(repo))
    assert git(repo, "show", "--format=%s", "-s", sources.fix).strip() == "Fix div truncating its result"
    leaks = find_leaks(host_runner(repo))
    assert leaks.count >= 4 and not leaks.clean
    assert leaks.describe().startswith("9 objects outside the base history, e.g. ")
    assert f'{sources.fix} (commit "Fix div truncating its result")' in leaks.describe()


# -- checkout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["plain", "partial"])
def test_checkout_leaves_only_the_base_history(sources, name):
    task = sources.task(name)
    with LocalRuntime(task.local_repo, command_timeout=60) as rt:
        assert rt.run("ls .git/objects/pack/*.promisor").ok
        assert checkout_task(rt, task) == sources.base
        assert_only_base_history(rt, sources)


def test_an_incomplete_history_becomes_one_commit_of_the_base_tree(sources, caplog):
    task = sources.task("incomplete-plain")
    with LocalRuntime(task.local_repo, command_timeout=60) as rt, caplog.at_level(logging.WARNING):
        start = checkout_task(rt, task)
        assert start != sources.base
        assert rt.run_checked("git rev-list --all").split() == [start]
        assert rt.run_checked("git rev-parse HEAD^{tree}").strip() == git(sources.root / "origin", "rev-parse",
                                                                          f"{sources.base}^{{tree}}").strip()
        assert rt.run_checked("git log -1 --format=%s").strip() == "Document calc"
        assert not rt.run(f"git cat-file -e {sources.fix}").ok and leaked_objects(rt).clean
        assert rt.run_checked("git status --porcelain").strip() == ""
    assert "one commit of the base tree" in caplog.text and "history is incomplete" in caplog.text


# What a repository may hold that changes what `git gc` sees, made in the runtime's repository before the
# checkout (its scratch clone holds every object of `origin`: the fix, the `feature` branch's secret).
ODD_STATES = {
    "alternates": "echo {origin}/.git/objects > .git/objects/info/alternates && git repack -a -d -l -q",
    "replace ref": "git replace {base} {fix}",  # `git checkout BASE` would write the fix's files
    "kept pack": 'git repack -a -d -q && for p in .git/objects/pack/*.pack; do touch "${{p%.pack}}.keep"; done',
    "cruft pack": "git update-ref -d refs/tags/v1.0 && git -c gc.cruftPacks=true gc --cruft --prune=never -q",
    "grafts": "echo '{base} {fix}' > .git/info/grafts",
    "precious objects": "git config core.repositoryformatversion 1 && git config extensions.preciousObjects true",
    "lost-found": "git fsck --lost-found --no-progress >/dev/null 2>&1; ls .git/lost-found/commit",
}


@pytest.mark.parametrize("state", sorted(ODD_STATES))
def test_odd_repository_states_leave_nothing_behind(sources, state):
    task = sources.task("origin")
    with LocalRuntime(task.local_repo, command_timeout=60) as rt:
        rt.run_checked(ODD_STATES[state].format(origin=sources.root / "origin", base=sources.base, fix=sources.fix))
        assert not leaked_objects(rt, sources.base).clean
        assert checkout_task(rt, task) == sources.base
        assert_only_base_history(rt, sources)
        assert rt.run_checked("git diff HEAD --stat").strip() == ""  # the work tree is the base's
        assert rt.run_checked("cat calc.py") == CALC


def test_a_shallow_clone_keeps_its_boundary(sources, tmp_path):
    repo = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--no-local", "--depth", "2", "--no-single-branch",
                    f"file://{sources.root / 'origin'}", str(repo)], check=True)
    git(repo, "-c", "advice.detachedHead=false", "checkout", "-q", sources.base)
    keep_base_history(host_runner(repo))
    assert git(repo, "log", "--all", "--format=%H").split() == [sources.base]
    assert find_leaks(host_runner(repo)).clean
    assert subprocess.run(["git", "-C", str(repo), "cat-file", "-e", sources.fix]).returncode != 0


# -- the check can fail ----------------------------------------------------------------------------
def test_the_leak_check_names_what_is_left(sources, tmp_path):
    repo = copy_of(sources, "origin", tmp_path)
    run = host_runner(repo)
    git(repo, "-c", "advice.detachedHead=false", "checkout", "-q", sources.base)
    assert not find_leaks(run).clean  # main, feature and v1.0 point past the base: reachable, yet leaks
    for ref in ("refs/heads/feature", "refs/tags/v1.0"):
        git(repo, "update-ref", "-d", ref)
    git(repo, "update-ref", "refs/heads/main", sources.base)
    git(repo, "reflog", "expire", "--expire=now", "--all")
    leaks = find_leaks(run, examples=10)  # unreachable now, still stored
    assert leaks.count == 4 + 4 + 1  # fix and secret: a commit, trees, blobs each; the v1.0 tag object
    assert f'{sources.fix} commit Fix div truncating its result' in leaks.examples
    assert "9 objects outside the base history, e.g." in leaks.describe()

    keep_base_history(run)
    assert find_leaks(run).clean
    git(repo, "hash-object", "-w", "--stdin", input_text="def div(a, b):\n    return a / b\n")
    (repo / ".git" / "objects" / "pack" / "pack-stray.pack").write_bytes(b"PACK")
    leaks = find_leaks(run)
    assert leaks.count == 1 and leaks.garbage == 1 and not leaks.clean
    assert leaks.examples[0].endswith(" blob") and "unreadable file" in leaks.describe()


# -- validate ---------------------------------------------------------------------------------------
def test_validate_accepts_the_clean_task_and_rejects_a_leaking_checkout(sources, monkeypatch):
    task = sources.task("plain")
    opened = lambda t: LocalRuntime(t.local_repo, command_timeout=60)  # noqa: E731
    check = check_task(task, opened)
    assert check.ok and check.leak is None and check.metadata is None, check.problem

    monkeypatch.setattr(checkout_module, "keep_base_history", gc_only)  # a checkout that trusts gc
    check = check_task(task, opened)
    assert not check.ok and check.gold.resolved and not check.empty.resolved
    assert check.leak.startswith("leak: ") and "objects outside the base history, e.g." in check.leak
    assert check.problem == check.leak and '(commit "' in check.leak


def test_cli_validate_reports_leak_and_metadata(sources, tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(sources.task("plain").model_dump_json() + "\n")
    done = subprocess.run([sys.executable, "-m", "forager", "tasks", "validate", "--tasks", str(path),
                           "--runtime", "local", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert row["ok"] and row["leak"] is None and row["metadata"] is None


# -- images: the source and the tag -------------------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FORAGER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_source_from_a_promisor_clone_holds_its_history_only_and_tags_like_a_full_one(sources, home):
    from forager.images.build import repo_tag
    from forager.images.source import fetch_source, git_content_digest
    from forager.images.spec import parse_source

    logged: list[str] = []
    full = fetch_source(parse_source(f"{sources.root / 'origin'}@{sources.base}"), logged.append)
    promisor = fetch_source(parse_source(f"{sources.root / 'plain'}@{sources.base}"), logged.append)
    assert full.commit == promisor.commit == sources.base
    assert any("rebuilt from its reachable objects (promisor packs)" in line for line in logged)
    for fetched in (full, promisor):
        assert find_leaks(host_runner(fetched.root)).clean
        assert subprocess.run(["git", "-C", str(fetched.root), "cat-file", "-e", sources.fix]).returncode != 0
        assert not list((fetched.root / ".git" / "objects" / "pack").glob("*.promisor"))
        assert git(fetched.root, "tag").split() == ["v0.1"]
    # The same objects: the same digest and tag. One more object: another tag at the same commit.
    assert full.git_digest == promisor.git_digest == git_content_digest(full.root)
    tag = repo_tag("calc", "forager/env:x", full, "script", {})
    assert repo_tag("calc", "forager/env:x", promisor, "script", {}) == tag
    git(promisor.root, "hash-object", "-w", "--stdin", input_text="the fix\n")
    grown = type(promisor)(promisor.root, promisor.commit, None, None, "", git_content_digest(promisor.root))
    assert grown.git_digest != full.git_digest and repo_tag("calc", "forager/env:x", grown, "script", {}) != tag


# -- Docker ---------------------------------------------------------------------------------------
@needs_docker
def test_checkout_in_a_container_of_a_promisor_clone(sources):
    task = sources.task("plain", image=SAMPLE_IMAGE, local_repo=None)
    script = SOURCES.replace("git clone -q partial plain", "git clone -q partial /repo")
    with DockerRuntime(SAMPLE_IMAGE, "/repo", command_timeout=120) as rt:
        rt.run_checked("find /repo -mindepth 1 -delete && mkdir -p /tmp/src && cd /tmp/src && "
                       f"bash -c {bash_quote(script)}", timeout=300)
        assert rt.run_checked("git rev-list --reverse main").split() == sources.shas  # the same commits
        assert rt.run("ls .git/objects/pack/*.promisor").ok
        assert checkout_task(rt, task) == sources.base
        assert_only_base_history(rt, sources)



# -- an image built from a promisor clone, checked out at an older release ------------------------------
VERKIT_SETUP = (
    "import pathlib\nimport re\n\nfrom setuptools import setup\n\n"
    "# A file the build generates (ignored by git), as setuptools-scm's write_to would.\n"
    "version = re.search(r'^version = \"(.+)\"', pathlib.Path('pyproject.toml').read_text(), re.M).group(1)\n"
    "pathlib.Path('verkit/_version.py').write_text(f'__version__ = \"{version}\"\\n')\nsetup()\n"
)


def _pyproject(version: str) -> str:
    return ('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "verkit"\nversion = "{version}"\nrequires-python = ">=3.8"\n\n'
            '[tool.setuptools]\npackages = ["verkit"]\n')


VERKIT = "\n".join([
    "set -e", f"export {GIT_ENV}", "git init -q -b main origin", "cd origin",
    "git config uploadpack.allowFilter true", "git config uploadpack.allowAnySHA1InWant true",
    _write("pyproject.toml", _pyproject("1.0.0")), _write("setup.py", VERKIT_SETUP),
    _write(".gitignore", "verkit/_version.py\n"),
    _write("verkit/__init__.py", "from verkit._version import __version__\n\n\n" + CALC),
    _write("tests/test_verkit.py", TESTS.replace("from calc", "from verkit")),
    _commit("Add verkit", 1), "git tag v1.0.0",
    _write("README.md", "# verkit\n"), _commit("Document verkit", 2),
    _write("pyproject.toml", _pyproject("1.1.0")),
    _write("verkit/__init__.py", "from verkit._version import __version__\n\n\n" + CALC.replace("//", "/")),
    _write("tests/test_verkit.py", FIX_TESTS.replace("from calc", "from verkit")),
    _commit("Fix div truncating its result, release 1.1.0", 3), "git tag v1.1.0",
    "git checkout -q -b feature", _write("secret.py", "SECRET = 1\n"), _commit("Secret feature", 4),
    "git checkout -q main", "cd ..",
    'git clone -q --filter=blob:none "file://$PWD/origin" partial',
    "(cd partial && for c in $(git rev-list --all); do git -c advice.detachedHead=false checkout -q $c; done"
    " && git checkout -q main)",
    "git clone -q partial plain",
])

# The versions an agent could read: importlib.metadata, the generated `_version.py`, any egg-info in the
# work tree (the image's came from the host's metadata step; the reinstall writes none), site-packages.
VERSIONS = ("python -c 'import importlib.metadata as m, verkit; print(m.version(\"verkit\"), verkit.__version__)' && "
            "find . -path '*.egg-info/PKG-INFO' -exec sed -n 's/^Version: //p' {} + && "
            "ls /opt/venv/lib/python3*/site-packages | grep -i verkit")


@pytest.fixture(scope="module")
def verkit_image(tmp_path_factory):
    from conftest import HAVE_DOCKER

    if not HAVE_DOCKER:
        pytest.skip("needs a Docker engine with forager/base:latest")
    from forager.images.build import BuildOptions, build_image

    root = tmp_path_factory.mktemp("verkit")
    subprocess.run(["bash", "-c", VERKIT], cwd=root, check=True, capture_output=True)
    shas = git(root / "origin", "rev-list", "--reverse", "main").split()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORAGER_HOME", str(root / "home"))
        result = build_image(str(root / "plain"), BuildOptions(python="3.11"))
    assert result.ok, result.error
    return result.tag, shas, git(root / "origin", "rev-parse", "feature").strip()


@pytest.mark.docker
def test_an_image_of_a_promisor_clone_shows_the_base_release_at_the_base(verkit_image):
    from forager.tasks.validate import inspect_episode, metadata_problem

    tag, (first, base, fix), secret = verkit_image
    task = Task(instance_id="verkit-1", problem_statement="div", image=tag, base_commit=base)
    with DockerRuntime(tag, "/repo", command_timeout=120) as rt:  # the image as built: the fix's release
        assert rt.run_checked("git rev-parse HEAD").strip() == fix
        assert rt.run_checked("cat /forager/installed-commit").strip() == fix
        shown = rt.run_checked(VERSIONS)
        assert shown.split()[:2] == ["1.1.0", "1.1.0"] and "verkit-1.1.0.dist-info" in shown, shown
        assert not rt.run(f"git cat-file -e {secret}").ok and leaked_objects(rt, fix).clean
        assert rt.run_checked("find .git/objects -name '*.promisor'").strip() == ""
        assert rt.run_checked("git tag").split() == ["v1.0.0", "v1.1.0"]
        rt.run_checked(f"git -c advice.detachedHead=false checkout -q {base}")
        assert "the project's install was made at" in metadata_problem(rt, fix)  # a plain checkout is caught

    with DockerRuntime(tag, "/repo", command_timeout=120) as rt:
        assert checkout_task(rt, task) == base
        shown = rt.run_checked(VERSIONS)
        assert "1.1.0" not in shown and shown.split()[:2] == ["1.0.0", "1.0.0"], shown
        assert "verkit-1.0.0.dist-info" in shown and "__editable__.verkit-1.0.0" in shown
        assert rt.run_checked("cat verkit/_version.py").strip() == '__version__ = "1.0.0"'
        assert rt.run_checked("git status --porcelain").strip() == ""
        assert not rt.run(f"git cat-file -e {fix}").ok and leaked_objects(rt).clean
        assert rt.run_checked("git log --all --format=%H").split() == [base, first]
        assert rt.run_checked("git tag").split() == ["v1.0.0"]
        assert metadata_problem(rt, fix) is None
        assert "1 passed" in rt.run_checked("python -m pytest -q tests 2>&1 | tail -1")
    assert inspect_episode(task, lambda t: DockerRuntime(t.image, t.workdir)) == (None, None)
    with DockerRuntime(tag, "/repo", command_timeout=120) as rt:  # the grader runs what the agent saw
        prepare_for_grading(rt, task)
        assert rt.run_checked(VERSIONS).split()[:2] == ["1.0.0", "1.0.0"]
    # A planted bug at the image's commit: one new commit, the install as made (its versions are the base's).
    planted = task.model_copy(update={"base_commit": fix, "setup_patch": "diff --git a/README.md b/README.md\n"
                                      "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# verkit\n+# verkit!\n"})
    assert inspect_episode(planted, lambda t: DockerRuntime(t.image, t.workdir)) == (None, None)
