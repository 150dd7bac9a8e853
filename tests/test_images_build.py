"""Images of real projects, end to end on the real Docker engine: a PyPI sdist (downloaded now) becomes
an image whose suite runs, a rebuild is free, and broken sources fail at the stage that broke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forager.core import DEFAULT_TEST_COMMAND
from forager.runtime import DockerRuntime, docker_available

pytestmark = pytest.mark.docker

PROJECT = "iniconfig==2.3.1"  # small, pure Python, setuptools + setuptools-scm, tests in its sdist
ON_BOOKWORM = {"python": "3.11"}  # these builds would get 3.13 from requires-python; the base the suite has


def _have_base() -> bool:
    if not docker_available():
        return False
    from forager.runtime.docker import docker_client

    client = docker_client()
    try:
        client.images.get("forager/base:latest")
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        client.close()


if not _have_base():
    pytest.skip("needs a Docker engine with forager/base:latest (`forager images bootstrap`)", allow_module_level=True)

from forager.images.build import BuildOptions, build_image  # noqa: E402
from forager.images.manifest import Manifest  # noqa: E402
from forager.images.prune import prune_images  # noqa: E402


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh $FORAGER_HOME: the sdist, the lock and the wheelhouse are fetched again."""
    path = tmp_path_factory.mktemp("forager-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORAGER_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def built(home):
    stages: list[str] = []
    # force: the layers are built now even if an earlier run left them on this engine
    result = build_image(PROJECT, BuildOptions(force=True, **ON_BOOKWORM),
                         on_stage=lambda src, stage, detail: stages.append(stage))
    return result, stages


def test_a_pypi_sdist_becomes_an_executable_image(built, home):
    result, stages = built
    assert result.error is None, result.error
    assert result.ok and not result.cached
    assert stages[:8] == ["fetch", "detect", "resolve", "wheelhouse", "env", "repo", "collect", "verify"]
    assert stages[-1] == "done"
    entry = result.entry
    assert entry.tag == result.tag and entry.tag.startswith("forager/repo-iniconfig:")
    assert (entry.name, entry.version, entry.source, entry.source_kind) == ("iniconfig", "2.3.1", PROJECT, "pypi")
    assert entry.python == "3.11" and entry.workdir == "/repo"
    assert entry.test_command == DEFAULT_TEST_COMMAND
    assert entry.env_image.startswith("forager/env:") and entry.base_image == "forager/base:bookworm"
    assert entry.collected >= 40 and len(entry.tests) == entry.collected
    assert set(entry.baseline) == set(entry.tests)
    assert entry.passed == entry.collected and entry.pass_share == 1.0 and entry.executable
    assert entry.image_size > 200e6 and entry.build_s > 0 and entry.suite_duration_s > 0
    assert {"env", "repo", "verify"} <= set(entry.stage_s)
    assert any(r.startswith("pytest==") for r in entry.requirements)
    assert not any(r.lower().startswith("iniconfig==") for r in entry.requirements)  # the project is editable
    log = Path(entry.log).read_text()
    assert "== env" in log and "--no-index" in log and "committed forager/repo-iniconfig:" in log
    assert Manifest(home / "images" / "manifest.json").get(entry.tag) == entry
    listed = subprocess.run([sys.executable, "-m", "forager", "images", "list", "--json"], capture_output=True,
                            text=True, env={**os.environ, "FORAGER_HOME": str(home)}, check=True).stdout
    assert json.loads(listed.splitlines()[0])["tag"] == entry.tag


def test_the_image_holds_the_repository_at_one_commit_installed_editable(built):
    entry = built[0].entry
    with DockerRuntime(entry.tag, "/repo") as rt:
        assert rt.run_checked("whoami && pwd").split() == ["forager", "/repo"]
        assert rt.run_checked("git rev-parse HEAD").strip() == entry.commit
        assert rt.run_checked("git rev-list --count --all").strip() == "1"
        assert rt.run_checked("git remote").strip() == ""
        assert rt.run_checked("git status --porcelain").strip() == ""  # the install left the commit's files alone
        assert rt.run_checked("python -c 'import iniconfig; print(iniconfig.__file__)'").strip() \
            == "/repo/src/iniconfig/__init__.py"
        assert not rt.run("pip download --no-deps -d /tmp/x six", 60).ok  # no network in the image
    labels = rt.client.images.get(entry.tag).labels
    assert labels["forager"] == "1" and labels["forager.base_commit"] == entry.commit
    assert labels["forager.kind"] == "repo" and labels["forager.env"] == entry.env_image
    assert labels["forager.python"] and not any(v for k, v in labels.items() if k.startswith("forager.owner"))


def test_a_rebuild_with_unchanged_inputs_builds_nothing(built):
    first = built[0]
    stages: list[str] = []
    again = build_image(PROJECT, BuildOptions(**ON_BOOKWORM), on_stage=lambda src, stage, detail: stages.append(stage))
    assert again.ok and again.cached and again.tag == first.tag
    assert again.entry == first.entry
    assert not {"wheelhouse", "env", "repo", "collect", "verify"} & set(stages)
    assert again.build_s < 5


def test_a_sdist_without_tests_fails_at_detect(home):
    result = build_image("iniconfig==2.0.0")  # its source release leaves the tests out
    assert result.error is not None and result.error.stage == "detect"
    assert "no tests collected: the source has no test files" in result.error.reason
    assert Path(result.error.log_path).is_file() and result.tag is None


def _demo_project(root: Path) -> tuple[Path, str, str]:
    """A local git repository (with a remote and a later commit) whose only other test file cannot import."""
    root.mkdir()
    files = {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
                          '[project]\nname = "demo-proj"\nversion = "0.1"\n',
        "demo_proj/__init__.py": "def double(x):\n    return 2 * x\n",
        "tests/test_ok.py": "from demo_proj import double\n\n\ndef test_a():\n    assert double(2) == 4\n\n\n"
                            "def test_b():\n    assert double(0) == 0\n",
        "tests/test_broken.py": "import no_such_module_anywhere\n\n\ndef test_c():\n    pass\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "first"], cwd=root, check=True)
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    (root / "later.txt").write_text("later\n")
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "later"], cwd=root, check=True)
    later = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "remote", "add", "origin", "https://example.invalid/demo.git"], cwd=root, check=True)
    return root, first, later


def test_local_git_source_at_a_commit_collection_errors_and_recipes(home, tmp_path):
    root, first, later = _demo_project(tmp_path / "demo")
    broken = build_image(f"{root}@{first}", BuildOptions(**ON_BOOKWORM))
    assert broken.error is not None and broken.error.stage == "collect"
    assert "collection error: tests/test_broken.py" in broken.error.reason
    assert "No module named 'no_such_module_anywhere'" in broken.error.reason
    assert broken.entry is not None and not broken.entry.executable  # recorded, with its failure
    with DockerRuntime(broken.tag, "/repo") as rt:
        assert rt.run_checked("git rev-parse HEAD").strip() == first
        assert rt.run_checked("git remote").strip() == ""
        assert not rt.run(f"git cat-file -e {later}", 30).ok  # no later history
        assert rt.run_checked("git rev-list --count --all").strip() == "1"

    recipe = tmp_path / "demo.yaml"
    recipe.write_text("ignore_tests: [tests/test_broken.py]\nmin_pass_share: 1.0\n")
    fixed = build_image(f"{root}@{first}", BuildOptions(recipe=str(recipe), **ON_BOOKWORM))
    assert fixed.ok, fixed.error
    assert fixed.tag == broken.tag  # test selection is not part of the image
    assert fixed.entry.collected == 2 and fixed.entry.passed == 2
    assert fixed.entry.test_command == f"{DEFAULT_TEST_COMMAND} --ignore=tests/test_broken.py"

    failing = tmp_path / "failing.yaml"
    failing.write_text(textwrap.dedent("""\
        pre_install:
          - echo broken-on-purpose >&2; exit 3
    """))
    result = build_image(f"{root}@{first}", BuildOptions(recipe=str(failing), **ON_BOOKWORM))
    assert result.error is not None and result.error.stage == "repo"
    assert result.error.reason.startswith("install error: the step exited with 3")
    assert "broken-on-purpose" in Path(result.error.log_path).read_text()

    report = prune_images(dry_run=True)  # only a dry run: the engine may hold other builds' images
    assert fixed.tag in report.kept and fixed.entry.env_image in report.kept


def test_a_setup_py_that_raises_fails_at_resolve_with_its_error(home, tmp_path):
    root = tmp_path / "raises"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    (root / "setup.py").write_text("raise RuntimeError('this setup.py is broken')\n")
    result = build_image(str(root), BuildOptions(**ON_BOOKWORM))
    assert result.error is not None and result.error.stage == "resolve"
    assert "RuntimeError: this setup.py is broken" in result.error.reason


def _tiny_project(root: Path, requires: str) -> Path:
    files = {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
                          f'[project]\nname = "tiny-new"\nversion = "0.1"\nrequires-python = "{requires}"\n',
        "tiny_new/__init__.py": "def answer():\n    return 42\n",
        "tests/test_tiny.py": "import sys\n\nfrom tiny_new import answer\n\n\ndef test_answer():\n"
                              "    assert answer() == 42\n\n\ndef test_new_python():\n"
                              "    assert sys.version_info >= (3, 12)\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_project_that_needs_python_3_12_builds_on_trixie(home, tmp_path):
    """The base comes from requires-python: trixie (3.13) is bootstrapped when first needed, then cached."""
    result = build_image(str(_tiny_project(tmp_path / "tiny", ">=3.12")))
    assert result.ok, result.error
    entry = result.entry
    assert entry.python == "3.13" and entry.base_image == "forager/base:trixie"
    assert entry.passed == entry.collected == 2
    with DockerRuntime(entry.tag, "/repo") as rt:
        assert rt.run_checked("python -c 'import sys; print(sys.version_info[:2])'").strip() == "(3, 13)"


def test_no_base_fits_fails_at_detect_and_is_listed(home, tmp_path):
    source = str(_tiny_project(tmp_path / "future", ">=3.14"))
    result = build_image(source)
    assert result.error is not None and result.error.stage == "detect" and result.tag is None
    assert "requires Python >=3.14, but the bases have 3.9, 3.11, 3.13" in result.error.reason
    assert "bases: 3.9 (bullseye), 3.11 (bookworm), 3.13 (trixie)" in result.error.reason
    assert [(f.source, f.stage) for f in Manifest().failures() if f.source == source] == [(source, "detect")]
    listed = subprocess.run([sys.executable, "-m", "forager", "images", "list"], capture_output=True, text=True,
                            env={**os.environ, "FORAGER_HOME": str(home)}, check=True).stdout
    row = next(line for line in listed.splitlines() if source in line)  # not a terminal: no cut at 80 columns
    assert "detect" in row and "requires Python >=3.14" in row and len(row) > 80
    forced = build_image(source, BuildOptions(python="3.12"))
    assert forced.error is not None and "Python 3.12 was asked for, but the bases have 3.9, 3.11, 3.13" \
        in forced.error.reason


def test_python_3_9_is_forced_onto_bullseye(home, tmp_path):
    """`--python 3.9`: the bullseye base; its old venv pip is replaced by the lock's for the editable install."""
    result = build_image(str(_tiny_project(tmp_path / "old", ">=3.8")), BuildOptions(python="3.9"))
    assert result.error is not None and result.entry is not None  # test_new_python fails on 3.9, as it should
    entry = result.entry
    assert entry.python == "3.9" and entry.base_image == "forager/base:bullseye"
    assert entry.baseline["tests/test_tiny.py::test_answer"] == "PASSED"
    assert entry.baseline["tests/test_tiny.py::test_new_python"] == "FAILED"
    assert any(r.startswith("pip==") for r in entry.requirements)
