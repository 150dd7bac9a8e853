"""Install plans detected from small synthetic project trees, recipe validation and source parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from forager.images.detect import detect_install
from forager.images.spec import SpecError, load_recipe, parse_source, recipe_for


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "test_it.py").write_text("def test_it():\n    assert True\n")
    return root


def test_setuptools_pyproject_picks_test_extras_over_dev(tmp_path):
    plan = detect_install(tree(tmp_path, {"pyproject.toml": """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"
[project]
name = "demo"
version = "1.2"
dependencies = ["attrs>=22"]
[project.optional-dependencies]
test = ["pytest>=7", "hypothesis"]
dev = ["black", "pytest"]
docs = ["sphinx"]
"""}))
    assert plan.name == "demo" and plan.version == "1.2"
    assert plan.build_backend == "setuptools.build_meta"
    assert plan.build_requires == ["setuptools>=61", "wheel"]  # wheel: setuptools' editable hook may want it
    assert plan.extras == ["test"]
    assert plan.dependencies == ["attrs>=22"]
    assert plan.test_requirements == ["pytest"]
    assert not plan.vcs_version and plan.has_tests


def test_hatchling_dependency_groups_with_includes_and_vcs_version(tmp_path):
    plan = detect_install(tree(tmp_path, {"pyproject.toml": """
[build-system]
requires = ["hatchling", "hatch-vcs"]
build-backend = "hatchling.build"
[project]
name = "demo"
dynamic = ["version"]
[dependency-groups]
base = ["pympler"]
tests = [{include-group = "base"}, "hypothesis", "pytest", "mypy"]
docs = ["furo"]
"""}))
    assert plan.build_backend == "hatchling.build"
    assert "editables" in plan.build_requires  # hatchling's editable hook needs it, --no-build-isolation won't fetch it
    assert plan.vcs_version
    assert plan.test_requirements == ["pympler", "hypothesis", "pytest"]  # mypy: a dev tool, not a test need
    assert plan.extras == []


def test_flit_project_without_test_metadata_gets_pytest(tmp_path):
    plan = detect_install(tree(tmp_path, {"pyproject.toml": """
[build-system]
requires = ["flit_core >=3.4,<4"]
build-backend = "flit_core.buildapi"
[project]
name = "tiny"
version = "0.1"
"""}))
    assert plan.build_backend == "flit_core.buildapi"
    assert plan.build_requires == ["flit_core >=3.4,<4"]
    assert plan.test_requirements == ["pytest"]


def test_poetry_and_pdm_dev_groups(tmp_path):
    poetry = detect_install(tree(tmp_path / "poetry", {"pyproject.toml": """
[build-system]
requires = ["poetry-core>=1.0"]
build-backend = "poetry.core.masonry.api"
[tool.poetry]
name = "p"
version = "0.3"
[tool.poetry.dependencies]
python = "^3.9"
requests = "^2.0"
[tool.poetry.group.test.dependencies]
pytest = "^7"
pytest-mock = {version = "^3", extras = ["x"]}
"""}))
    assert poetry.build_backend == "poetry.core.masonry.api"
    assert poetry.dependencies == ["requests"]
    assert poetry.test_requirements == ["pytest", "pytest-mock[x]"]
    pdm = detect_install(tree(tmp_path / "pdm", {"pyproject.toml": """
[build-system]
requires = ["pdm-backend"]
build-backend = "pdm.backend"
[project]
name = "q"
version = "1"
[tool.pdm.dev-dependencies]
lint = ["ruff"]
testing = ["pytest-asyncio"]
"""}))
    assert pdm.test_requirements == ["pytest-asyncio", "pytest"]


def test_setup_cfg_extras_tests_require_and_pytest_addopts(tmp_path):
    plan = detect_install(tree(tmp_path, {
        "setup.cfg": """
[metadata]
name = cfgdemo
version = 2.0.1
[options]
python_requires = >=3.8
install_requires =
    six
setup_requires = setuptools_scm
tests_require = mock
[options.extras_require]
testing =
    pytest
    freezegun
[tool:pytest]
addopts = --cov=cfgdemo -n 2 --strict-markers
required_plugins = pytest-timeout
""",
        "setup.py": "from setuptools import setup\nsetup()\n",
    }))
    assert plan.name == "cfgdemo" and plan.version == "2.0.1" and plan.requires_python == ">=3.8"
    assert plan.build_backend == "setuptools.build_meta:__legacy__"  # no pyproject.toml
    assert plan.dependencies == ["six"]
    assert plan.extras == ["testing"]
    assert plan.vcs_version  # setuptools_scm among the setup requirements
    assert {"mock", "pytest-cov", "pytest-xdist", "pytest-timeout", "pytest"} <= set(plan.test_requirements)


def test_setup_py_literals_and_module_level_names(tmp_path):
    plan = detect_install(tree(tmp_path, {"setup.py": """
from setuptools import setup
TESTS = ["pytest", "responses"]
setup(
    name="legacy",
    version=read_version(),
    python_requires=">=3.7",
    extras_require={"tests": TESTS, "docs": ["sphinx"]},
    tests_require=TESTS,
    use_scm_version=get_scm_config(),
)
"""}))
    assert plan.name == "legacy"
    assert plan.version is None  # computed: only the build knows it
    assert plan.extras == ["tests"]
    assert plan.test_requirements == ["pytest", "responses"]
    assert plan.vcs_version and "setuptools-scm" in plan.build_requires
    assert plan.dependencies is None  # left to pip, which runs the build to find them


def test_requirement_files_follow_includes_and_skip_docs(tmp_path):
    plan = detect_install(tree(tmp_path, {
        "setup.py": "from setuptools import setup\nsetup(name='r', install_requires=get())\n",
        "requirements.txt": "click>=8  # runtime\n",
        "requirements-test.txt": "-r requirements.txt\n-e .\npytest-randomly\n# comment\ngit+https://x/y.git\n",
        "requirements-docs.txt": "sphinx\n",
        "requirements-dev.txt": "ipdb\n",
    }))
    # the test file wins over the dev file; its include brings the runtime requirement
    assert plan.test_requirements == ["click>=8", "pytest-randomly", "pytest"]


def test_tox_and_nox(tmp_path):
    tox = detect_install(tree(tmp_path / "tox", {
        "pyproject.toml": "[project]\nname = 't'\nversion = '1'\n",
        "tox.ini": """
[tox]
envlist = py311
[testenv]
extras = tests
deps =
    -r{toxinidir}/ci/requirements.txt
    black
    py311: trustme
    {[base]deps}
commands = pytest {posargs}
""",
        "ci/requirements.txt": "pytest-httpbin\n",
    }))
    assert tox.extras == ["tests"]
    assert tox.test_requirements == ["pytest-httpbin", "trustme", "pytest"]
    assert tox.build_backend == "setuptools.build_meta:__legacy__"
    nox = detect_install(tree(tmp_path / "nox", {
        "pyproject.toml": "[project]\nname = 'n'\nversion = '1'\n",
        "noxfile.py": """
import nox
@nox.session
def tests(session):
    session.install("-e", ".[test]")
    session.install("pytest", "-r", "test-reqs.txt")
    session.install("flake8")
    session.run("pytest")
""",
        "test-reqs.txt": "respx\n",
    }))
    assert nox.extras == ["test"]
    assert nox.test_requirements == ["pytest", "respx"]


def test_a_tree_without_tests_says_so(tmp_path):
    (tmp_path / "pkg.py").write_text("x = 1\n")
    plan = detect_install(tmp_path)
    assert not plan.has_tests
    assert plan.test_requirements == ["pytest"]


def test_recipes_validate_with_clear_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("python: '3.11'\nsystem_packages: [tzdata]\nignore_tests: [tests/test_net.py]\n"
                    "env: {TZ: UTC}\nmin_pass_share: 0.5\n")
    recipe = load_recipe(good)
    assert recipe.python == "3.11" and recipe.system_packages == ["tzdata"] and recipe.env == {"TZ": "UTC"}
    typo = tmp_path / "typo.yaml"
    typo.write_text("system_package: [tzdata]\n")
    with pytest.raises(SpecError, match=r"typo.yaml is invalid: system_package: Extra inputs.*known fields: name"):
        load_recipe(typo)
    bad = tmp_path / "bad.yaml"
    bad.write_text("python: 3\nmin_pass_share: 2\n")
    with pytest.raises(SpecError, match=r"python: Value error, python must be a quoted version like '3.11'.*"
                                         r"min_pass_share"):
        load_recipe(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("python: [3.11\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_recipe(broken)
    assert recipe_for("no-such-project-anywhere") == (None, None)
    with pytest.raises(SpecError, match="no recipe 'missing'"):
        recipe_for("x", "missing")
    assert recipe_for("x", str(good))[0] == recipe


def test_sources_parse_into_kinds(tmp_path):
    assert parse_source("iniconfig==2.0.0").model_dump(exclude_none=True) == {
        "kind": "pypi", "source": "iniconfig==2.0.0", "name": "iniconfig", "version": "2.0.0"}
    git = parse_source("https://github.com/pytest-dev/iniconfig.git@v2.0.0")
    assert (git.kind, git.url, git.rev) == ("git", "https://github.com/pytest-dev/iniconfig.git", "v2.0.0")
    ssh = parse_source("git@github.com:o/r.git")
    assert (ssh.kind, ssh.url, ssh.rev) == ("git", "git@github.com:o/r.git", None)
    local = parse_source(f"{tmp_path}@abc123")
    assert (local.kind, local.path, local.rev) == ("path", str(tmp_path), "abc123")
    with pytest.raises(SpecError, match="NAME==VERSION"):
        parse_source("not a thing")
