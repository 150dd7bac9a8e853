"""SWE-bench instances' images built offline from a spec and a local mirror: a swebench-format instance made
here (a tiny repository whose second commit fixes a bug and adds its test) becomes an image that holds the
repository at base_commit and nothing after it, the project installed, and its tests runnable; each bad input
is a clear error of its own instance."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from forager.core import ForagerError
from forager.eval.instances import (
    build_instance_images,
    find_mirror,
    instance_recipe,
    instance_task,
    offline_install,
    spec_requirements,
    split_pre_install,
    yield_to_project,
)
from forager.eval.specs import InstanceSpec, SpecTable

from tests.conftest import needs_docker

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_CONFIG_GLOBAL": "/dev/null", "PATH": "/usr/bin:/bin:/usr/local/bin"}
# The dependency is a name no index has until the spec's pre_install writes the real one, so the build
# resolves only if resolution sees the pre_install's edits; the pin on iniconfig is one the project excludes.
PYPROJECT = textwrap.dedent("""
    [build-system]
    requires = ["setuptools>=64"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "calc"
    version = "0.1"
    dependencies = ["forager-placeholder-dependency>=2"]
""")
SPEC = {"python": "3.11", "pip_packages": ["pytest", "iniconfig==1.1.1"], "install": "python -m pip install -e .",
        "pre_install": ["sed -i 's/forager-placeholder-dependency/iniconfig/' pyproject.toml"],
        "test_cmd": "pytest -rA"}
BUGGY = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    """(row, repos dir, the fix commit): a bare mirror `owner__calc` holding both commits."""
    root = tmp_path_factory.mktemp("instance")
    work = root / "work"
    (work / "calc").mkdir(parents=True)
    (work / "pyproject.toml").write_text(PYPROJECT)
    (work / "calc" / "__init__.py").write_text(BUGGY)
    _git(root, "init", "-q", "-b", "main", str(work))
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "calc")
    base = _git(work, "rev-parse", "HEAD").strip()
    (work / "calc" / "__init__.py").write_text(BUGGY.replace("a - b", "a + b", 1))
    (work / "tests").mkdir()
    (work / "tests" / "test_calc.py").write_text(
        "from calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_sub():\n    assert sub(3, 2) == 1\n")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "fix add, test it")
    fix = _git(work, "rev-parse", "HEAD").strip()
    repos = root / "repos"
    repos.mkdir()
    _git(root, "clone", "-q", "--bare", str(work), str(repos / "owner__calc"))
    row = {
        "instance_id": "owner__calc-1", "repo": "owner/calc", "base_commit": base, "version": "0.1",
        "problem_statement": "add() subtracts", "hints_text": "", "created_at": "2025-01-01T00:00:00Z",
        "environment_setup_commit": base,
        "patch": _git(work, "diff", base, fix, "--", "calc"),
        "test_patch": _git(work, "diff", base, fix, "--", "tests"),
        "FAIL_TO_PASS": json.dumps(["tests/test_calc.py::test_add"]),
        "PASS_TO_PASS": json.dumps(["tests/test_calc.py::test_sub"]),
    }
    return row, repos, fix


def _table(**changes) -> SpecTable:
    return SpecTable({"owner/calc": {"0.1": InstanceSpec(**{**SPEC, **changes})}}, "the test's specs")


# -- the spec as a recipe (no Docker) --------------------------------------------------------------------------
def test_the_recipe_of_a_spec(instance):
    row, _, _ = instance
    recipe = instance_recipe(row, _table().get("owner/calc", "0.1"))
    assert recipe.python == "3.11" and recipe.test_command == "pytest -rA"
    assert recipe.requirements == ["pytest", "iniconfig==1.1.1"] and recipe.replace_requirements
    assert recipe.pre_install == SPEC["pre_install"] and recipe.extras == []
    assert recipe.install.startswith("/opt/venv/bin/python -m pip install --no-index --no-deps --no-build-isolation")
    assert recipe.install.endswith("--use-pep517 -e .")
    sphinx_like = InstanceSpec(python="3.9", test_cmd="tox --current-env -epy39 -v --",
                               install="python -m pip install -e .[test]",
                               pre_install=["sed -i 's/pytest/pytest -rA/' tox.ini",
                                            "apt-get update && apt-get install -y graphviz"])
    recipe = instance_recipe(row, sphinx_like)
    assert recipe.test_command is None  # not pytest: the caller verifies
    assert recipe.extras == ["test"] and recipe.install.endswith("-e '.[test]'")
    assert recipe.system_packages == ["graphviz"] and recipe.env == {"PYTEST_ADDOPTS": "-rA"}
    assert recipe.pre_install == ["sed -i 's/pytest/pytest -rA/' tox.ini"]


def test_installs_become_offline_editable_installs():
    assert offline_install(None) == (None, [])
    command, extras = offline_install("python -m pip install -v --no-use-pep517 --no-build-isolation -e .")
    assert "--no-use-pep517" in command and "--use-pep517" not in command.replace("--no-use-pep517", "")
    assert command.endswith("-v --no-use-pep517 -e .") and extras == []
    assert offline_install("python -m pip install -e '.[dev]'")[1] == ["dev"]
    assert offline_install("python setup.py build; python setup.py install")[0].endswith("--use-pep517 -e .")
    assert offline_install("python -m pip install .")[0].endswith("-e .")
    assert offline_install("make install") == ("make install", [])  # unknown: as it is
    assert offline_install("python -m pip install --pre -e .") == ("python -m pip install --pre -e .", [])


def test_requirements_of_a_spec():
    spec = InstanceSpec(python="3.9", packages="'numpy==1.19.2' scipy pytest", pip_packages=["numpy", "cython"],
                        extra_requirements=["scipy<1.6"])
    # installed in order as pip would: a bare `numpy` keeps the earlier pin, the user's `scipy<1.6` replaces `scipy`
    assert spec_requirements(spec, "x") == (["numpy==1.19.2", "pytest", "cython", "scipy<1.6"], True)
    pinned = InstanceSpec(python="3.9", packages="numpy==1.19.2", pip_packages=["numpy==1.20.0", "scipy<2"])
    assert spec_requirements(pinned, "x")[0] == ["numpy==1.20.0", "scipy<2"]
    own_file = InstanceSpec(python="3.9", packages="requirements.txt", pip_packages=["a"])
    assert spec_requirements(own_file, "x") == (["a"], False)
    with pytest.raises(ForagerError, match="environment.yml.*not support"):
        spec_requirements(InstanceSpec(python="3.9", packages="environment.yml"), "o/n 1.0")
    assert split_pre_install(["DEBIAN_FRONTEND=noninteractive apt-get install -y -q a b",
                              "apt-get -y update && && apt-get install c",
                              "cd /testbed && make"]) == (["cd /repo && make"], ["a", "b", "c"], {})


def test_pins_the_project_excludes_are_left_out():
    kept, notes = yield_to_project(["tox==4.16.0", "Jinja2==3.0.3", "docutils==0.22", "py"],
                                   ["Jinja2<3.0", "docutils>=0.12", "markupsafe<=2.0.1"])
    assert kept == ["tox==4.16.0", "docutils==0.22", "py"]
    assert notes == ["Jinja2==3.0.3 left out: the project requires Jinja2<3.0 (its install replaces the pin)"]
    assert yield_to_project(["Jinja2==3.0.3"], ["jinja2<3"], keep=["Jinja2==3.0.3"])[0] == ["Jinja2==3.0.3"]


def test_the_task_of_an_instance(instance):
    row, _, _ = instance
    spec = _table(test_cmd=["pytest -rA", "echo done"], eval_commands=["export X=1"]).get("owner/calc", "0.1")
    task = instance_task(row, spec, "forager/repo-calc:abc")
    assert (task.image, task.workdir, task.base_commit) == ("forager/repo-calc:abc", "/repo", row["base_commit"])
    assert task.test_command == "pytest -rA && echo done" and task.log_parser == "parse_log_pytest"
    assert task.FAIL_TO_PASS == ["tests/test_calc.py::test_add"]
    assert task.PASS_TO_PASS == ["tests/test_calc.py::test_sub"]
    assert task.metadata["swebench_spec"]["eval_commands"] == ["export X=1"]
    assert task.metadata["swebench_spec"]["install"] == "python -m pip install -e ."


# -- mirrors and bad inputs (no Docker: each fails before a build) ----------------------------------------------
def test_mirrors_bare_work_tree_and_bundle(instance, tmp_path, monkeypatch):
    row, repos, fix = instance
    monkeypatch.setenv("FORAGER_HOME", str(tmp_path / "home"))
    assert find_mirror(repos, "owner/calc") == (repos / "owner__calc").as_uri()
    (tmp_path / "trees").mkdir()
    _git(tmp_path, "clone", "-q", str(repos / "owner__calc"), str(tmp_path / "trees" / "owner__calc.git"))
    assert find_mirror(tmp_path / "trees", "owner/calc").endswith("/trees/owner__calc.git")
    (tmp_path / "bundles").mkdir()
    _git(repos / "owner__calc", "bundle", "create", str(tmp_path / "bundles" / "owner__calc.bundle"), "--all")
    cloned = find_mirror(tmp_path / "bundles", "owner/calc")
    assert cloned.startswith((tmp_path / "home").as_uri()) and cloned == find_mirror(tmp_path / "bundles", "owner/calc")
    assert _git(Path(cloned.removeprefix("file://")), "cat-file", "-t", fix).strip() == "commit"
    with pytest.raises(ForagerError, match=r"no mirror of owner/other in .*owner__other, owner__other.git, "
                                           r"owner__other.bundle"):
        find_mirror(repos, "owner/other")


def test_bad_instances_are_errors_of_their_own(instance, tmp_path):
    row, repos, _ = instance
    lacking = tmp_path / "lacking"
    lacking.mkdir()
    _git(tmp_path, "init", "-q", "--bare", str(lacking / "owner__calc"))
    missing_commit = {k: v for k, v in row.items() if k != "base_commit"}
    rows = [{**row, "instance_id": "unknown-version", "version": "9.9"},
            {**row, "instance_id": "no-mirror", "repo": "owner/other"},
            {**row, "instance_id": "no-commit"},
            {**missing_commit, "instance_id": "no-base-commit"},
            {**row, "instance_id": "old-python"}]
    specs = SpecTable({"owner/calc": {"0.1": InstanceSpec(**SPEC)}, "owner/other": {"0.1": InstanceSpec(**SPEC)}},
                      "specs")
    progress: list[tuple[str, str]] = []
    images = build_instance_images(rows[:2] + rows[3:4], specs, repos, on_progress=lambda i, s: progress.append((i, s)))
    images += build_instance_images(rows[2:3], specs, lacking)
    old = SpecTable({"owner/calc": {"0.1": InstanceSpec(**{**SPEC, "python": "3.6"})}}, "specs")
    images += build_instance_images(rows[4:], old, repos)
    errors = {i.instance_id: i.error for i in images}
    assert all(i.tag is None for i in images)
    assert list(errors) == [r["instance_id"] for r in rows[:2] + rows[3:4] + rows[2:3] + rows[4:]]
    assert "owner/calc version '9.9'" in errors["unknown-version"]
    assert "known versions: 0.1" in errors["unknown-version"]
    assert "no mirror of owner/other" in errors["no-mirror"]
    assert errors["no-commit"] == (f"the mirror of owner/calc at {lacking / 'owner__calc'} has no commit "
                                   f"{row['base_commit']}: fetch it (`git -C {lacking / 'owner__calc'} fetch origin "
                                   f"{row['base_commit']}`, or a newer mirror)")
    assert errors["no-base-commit"] == "the row has no base_commit"
    assert "asks for Python 3.6" in errors["old-python"] and "3.9 (bullseye)" in errors["old-python"]
    assert sorted(progress) == [("no-base-commit", "failed"), ("no-mirror", "failed"), ("unknown-version", "failed")]


# -- the image, on the real Docker engine -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(instance, tmp_path_factory):
    row, repos, _ = instance
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORAGER_HOME", str(tmp_path_factory.mktemp("home")))
        notes: list[str] = []
        first = build_instance_images([row], _table(), repos, log=notes.append)[0]
        again = build_instance_images([row], _table(), repos)[0]
        yield row, first, again, notes


@needs_docker
def test_an_instance_image_builds_and_runs_its_tests(built, instance):
    from forager.runtime.registry import open_runtime

    row, image, again, notes = built
    _, _, fix = instance
    assert image.error is None, image.error
    assert image.tag and not image.cached and image.build_s > 0
    assert again.tag == image.tag and again.cached and again.error is None
    assert image.notes == ["iniconfig==1.1.1 left out: the project requires iniconfig>=2 "
                           "(its install replaces the pin)"]
    task = instance_task(row, _table().get("owner/calc", "0.1"), image.tag)
    with open_runtime(task, kind="docker") as runtime:
        assert runtime.run_checked("git log --all --format=%H").split() == [row["base_commit"]]
        assert runtime.run(f"git cat-file -e {fix}").exit_code != 0  # the fix is not in the image at all
        assert runtime.run_checked("git status --porcelain").strip() == ""  # pyproject.toml as committed
        assert "forager-placeholder-dependency" in runtime.run_checked("cat pyproject.toml")
        where, version = runtime.run_checked("python -c 'import calc, importlib.metadata as m; "
                                             "print(calc.__file__, m.version(\"iniconfig\"))'").split()
        assert where == "/repo/calc/__init__.py" and int(version.split(".")[0]) >= 2
        assert runtime.run("/forager/reinstall").exit_code == 0  # the recorded install runs again as the image's user
        runtime.write_file("/tmp/test.patch", row["test_patch"])
        runtime.run_checked("git apply /tmp/test.patch")
        before = runtime.run(f"{task.test_command} tests/test_calc.py", timeout=120)
        assert before.exit_code == 1 and "FAILED tests/test_calc.py::test_add" in before.output
        assert "PASSED tests/test_calc.py::test_sub" in before.output
        runtime.write_file("/tmp/fix.patch", row["patch"])
        runtime.run_checked("git apply /tmp/fix.patch")
        after = runtime.run(f"{task.test_command} tests/test_calc.py", timeout=120)
        assert after.exit_code == 0 and "PASSED tests/test_calc.py::test_add" in after.output, after.output


def test_a_mirror_whose_other_refs_lack_objects_still_gives_the_base_history(tmp_path, monkeypatch):
    """A partial snapshot (a pull request's blob missing) cannot be cloned whole: the commit and tags alone are."""
    from forager.images.source import fetch_source
    from forager.images.spec import parse_source

    monkeypatch.setenv("FORAGER_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    _git(tmp_path, "init", "-q", "-b", "main", str(work))
    (work / "a.py").write_text("A = 1\n")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "one")
    _git(work, "tag", "v1.0")
    base = _git(work, "rev-parse", "HEAD").strip()
    _git(work, "checkout", "-qb", "pr")
    (work / "b.py").write_text("B = 'only on the pull request'\n")
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "two")
    blob = _git(work, "rev-parse", "HEAD:b.py").strip()
    mirror = tmp_path / "repos" / "o__n"
    _git(tmp_path, "clone", "-q", "--mirror", str(work), str(mirror))
    (mirror / "objects" / blob[:2] / blob[2:]).unlink()
    said: list[str] = []
    fetched = fetch_source(parse_source(f"{mirror.as_uri()}@{base}"), log=said.append)
    assert any(line.startswith(f"note: cannot clone {mirror.as_uri()} whole") for line in said), said
    assert fetched.commit == base
    assert _git(fetched.root, "tag").split() == ["v1.0"]  # versioning tools read the tags
    assert _git(fetched.root, "log", "--all", "--format=%H").split() == [base]


@needs_docker
def test_the_images_command_shows_each_instance(built, instance, tmp_path):
    import typer
    from typer.testing import CliRunner

    from forager.cli.eval_images import images_command

    row, image, _, _ = built
    _, repos, _ = instance
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text(json.dumps(row) + "\n" + json.dumps({**row, "instance_id": "o__x-1", "repo": "o/x"}) + "\n")
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps({"owner/calc": {"0.1": SPEC}, "o/x": {"0.1": SPEC}}))
    app = typer.Typer()
    app.command()(images_command)
    result = CliRunner().invoke(app, ["--dataset", str(dataset), "--repos", str(repos), "--specs", str(specs),
                                      "--json"])
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [(r["instance_id"], r["tag"], r["cached"]) for r in lines] == [("owner__calc-1", image.tag, True),
                                                                         ("o__x-1", None, False)]
    assert "no mirror of o/x" in lines[1]["error"] and lines[0]["size"] > 100e6


@needs_docker
def test_prune_keeps_instance_images_and_their_environment(built) -> None:
    from forager.images.prune import kept_images, prune_images
    from forager.runtime.docker import docker_client

    image = built[1]  # (row, the first build, the cached one, notes)
    assert image.tag in kept_images()
    env = docker_client().images.get(image.tag).labels["forager.env"]
    report = prune_images(dry_run=True)  # a dry run: the engine may hold other builds' images
    assert image.tag in report.kept and env in report.kept and image.tag not in report.removed
