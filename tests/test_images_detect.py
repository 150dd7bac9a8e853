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
    pinned = detect_install(tree(tmp_path / "pinned", {
        "requirements/tests.txt": "pytest==8.3.4\n", "requirements/tests37.txt": "pytest==7.4.4\n"}), ["3.13.5"])
    assert pinned.test_requirements == ["pytest==8.3.4"]  # jinja2's: the 3.7 file is for another Python


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
    }), python="3.11")  # the py311 factor's line applies to a 3.11 image only
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


# -- the base Python, tox factors and setenv, pytest options, test support files ---------------------------
BASES = ["3.9.2", "3.11.2", "3.13.5"]


def test_the_base_python_follows_requires_python_and_the_classifiers(tmp_path):
    def python_of(name: str, files: dict[str, str], **kw) -> str | None:
        return detect_install(tree(tmp_path / name, files), BASES, **kw).python

    pyproject = "[project]\nname = 'p'\nversion = '1'\nrequires-python = '{}'\nclassifiers = [{}]\n"
    assert python_of("open", {"pyproject.toml": pyproject.format(">=3.8", "")}) == "3.13.5"  # the newest that fits
    assert python_of("patch", {"pyproject.toml": pyproject.format(">=3.11.5", "")}) == "3.13.5"  # 3.11.2 is too old
    assert python_of("capped", {"pyproject.toml": pyproject.format(">=3.7,<3.12", "")}) == "3.11.2"
    listed = '"Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.11"'
    assert python_of("hinted", {"pyproject.toml": pyproject.format(">=3.8", listed)}) == "3.11.2"
    old = '"Programming Language :: Python :: 3.7", "Programming Language :: Python :: 3.8"'
    assert python_of("old", {"pyproject.toml": pyproject.format(">=3.7", old)}) == "3.9.2"  # the nearest above
    cfg = "[metadata]\nname = c\n[options]\npython_requires = >=3.10, <3.12\n"
    assert python_of("cfg", {"setup.cfg": cfg, "setup.py": "from setuptools import setup\nsetup()\n"}) == "3.11.2"
    setup_py = "from setuptools import setup\nsetup(name='s', python_requires='<3.10')\n"
    assert python_of("setup_py", {"setup.py": setup_py}) == "3.9.2"
    pkg_info = "Metadata-Version: 2.1\nName: s\nVersion: 1\nRequires-Python: >=3.12\n\nlong description\n"
    assert python_of("sdist", {"PKG-INFO": pkg_info, "setup.py": "setup(**computed())\n"}) == "3.13.5"
    assert python_of("forced", {"pyproject.toml": pyproject.format(">=3.8", "")}, python="3.9") == "3.9.2"
    future = detect_install(tree(tmp_path / "future", {"pyproject.toml": pyproject.format(">=3.14", "")}), BASES)
    assert future.python is None
    assert "requires Python >=3.14, but the bases have 3.9, 3.11, 3.13" in " ".join(future.notes)


def test_tox_factor_conditions_resolve_for_the_image_python_and_the_first_test_env(tmp_path):
    def plan_for(python: str):
        return detect_install(tree(tmp_path / python, {
            "pyproject.toml": "[project]\nname = 't'\nversion = '1'\n"
                              "[project.optional-dependencies]\nunit = ['x']\ndiagrams = ['y']\n",
            "tox.ini": """
[tox]
envlist = lint, unit-py{39,311,313}, integration
[base]
deps = freezegun
[testenv]
extras =
    unit: diagrams
    lint: docs
deps =
    {[base]deps}
    unit-!py315t: matplotlib
    py3{9,10}: backports.zoneinfo
    py311,py313: tomli-w
    integration: requests-mock
    -r{toxinidir}/requirements/{envname}.txt
setenv =
    PYTHONHASHSEED = 0
    RUN_SLOW_TESTS = 1
    DATA_DIR = {toxinidir}/data
    CACHE = {env:XDG_CACHE_HOME:/tmp/cache}
    py39: OLD_PYTHON = yes
    PIP_INDEX_URL = https://example.invalid
commands = pytest {posargs}
""",
        }), BASES, python=python)

    new, old = plan_for("3.13"), plan_for("3.9")
    assert new.python == "3.13.5" and old.python == "3.9.2"
    # lint is not a test env: the factors are the first test env's (unit) and the image's Python
    assert new.test_requirements == ["freezegun", "matplotlib", "tomli-w", "pytest"]
    assert old.test_requirements == ["freezegun", "matplotlib", "backports.zoneinfo", "pytest"]
    assert "diagrams" in new.extras and "docs" not in new.extras
    assert not any(":" in r or "{" in r for r in new.test_requirements + new.extras)  # nothing raw reaches pip
    assert new.test_env == {"PYTHONHASHSEED": "0", "RUN_SLOW_TESTS": "1", "DATA_DIR": "/repo/data",
                            "CACHE": "/tmp/cache"}  # pip's settings stay the host's
    assert old.test_env["OLD_PYTHON"] == "yes"


def test_tox_setenv_and_lint_plugins_reach_the_test_command(tmp_path):
    from forager.images.layers import test_command_for
    from forager.images.spec import Recipe

    plan = detect_install(tree(tmp_path, {
        "pyproject.toml": """
[project]
name = "jaraco.demo"
version = "1"
[project.optional-dependencies]
test = ["pytest >= 6", "pytest-checkdocs >= 2.4", "pytest-cov", "pytest-mypy", "pytest-enabler >= 2.2",
        "pytest-ruff >= 0.2.1; sys_platform != 'cygwin'", "jaraco.test"]
[tool.pytest.ini_options]
addopts = "--doctest-modules --flake8 --mypy-ignore-missing-imports --import-mode importlib"
""",
        "tox.ini": "[testenv]\nsetenv =\n    DEMO_MODE = full tests\n",
    }))
    assert plan.pytest_args == ["-p", "no:checkdocs", "-p", "no:enabler", "-p", "no:flake8", "-p", "no:mypy",
                                "-p", "no:ruff", "-o", "addopts=--doctest-modules --import-mode importlib"]
    assert "pytest-flake8" not in plan.test_requirements  # its flag is dropped, so it need not be installed
    command = test_command_for(Recipe(ignore_tests=["tests/test_net.py"]), plan)
    assert command == ("DEMO_MODE='full tests' python -m pytest -rA -p no:cacheprovider -o console_output_style=classic"
                       " -p no:checkdocs -p no:enabler -p no:flake8 -p no:mypy -p no:ruff"
                       " -o 'addopts=--doctest-modules --import-mode importlib' --ignore=tests/test_net.py")
    from forager.harness import PytestCommand

    parsed = PytestCommand.parse(command)
    assert parsed.env == (("DEMO_MODE", "full tests"),) and "addopts=--doctest-modules --import-mode importlib" \
        in parsed.args
    assert test_command_for(Recipe(test_command="python -m pytest -x"), plan) == "python -m pytest -x"  # a recipe wins


def test_a_unittest_suite_that_makes_warnings_errors_at_import_collects_no_plain_classes(tmp_path):
    legacy = ("import unittest\nimport warnings\n\nwarnings.simplefilter('error')\n\n\n"
              "class TestLegacy(unittest.TestCase):\n    def test_it(self):\n        pass\n")
    later = "from unittest import TestSuite\n\n\ndef load_tests(loader, tests, pattern):\n    return TestSuite()\n"
    plan = detect_install(tree(tmp_path / "md", {"pyproject.toml": "[project]\nname = 'md'\nversion = '1'\n",
                                                 "tests/test_legacy.py": legacy, "tests/test_later.py": later}))
    assert plan.pytest_args == ["-o", "python_classes="]
    pytest_suite = detect_install(tree(tmp_path / "pt", {
        "tests/test_legacy.py": legacy, "tests/test_p.py": "import pytest\n\n\ndef test_p():\n    pass\n"}))
    assert pytest_suite.pytest_args == []  # a pytest suite keeps its plain Test* classes


def test_a_source_release_without_its_test_support_files_says_build_from_git(tmp_path):
    files = {"PKG-INFO": "Metadata-Version: 2.1\nName: jm\nVersion: 1.0\n\n",
             "setup.py": "from setuptools import setup\nsetup(name='jm')\n",
             "tests/test_a.py": "from tests import unittest, OrderedDict\n",
             "tests/test_b.py": "from tests import json\nimport tests.helpers\n",
             "tests/test_c.py": "from . import fixtures\nfrom conftest import make\n"}
    plan = detect_install(tree(tmp_path / "sdist", files))
    assert plan.missing_test_support is not None
    assert plan.missing_test_support.startswith("the source release lacks test support files (3 of 4 test files")
    assert "tests/__init__.py (imported by tests/test_a.py, tests/test_b.py and others)" in plan.missing_test_support
    assert "tests/helpers.py" in plan.missing_test_support
    assert plan.missing_test_support.endswith("build from the git repository instead")
    complete = dict(files, **{"tests/__init__.py": "import unittest, json\nfrom collections import OrderedDict\n",
                              "tests/helpers.py": "", "tests/fixtures.py": "", "tests/conftest.py": "make = 1\n",
                              # zipp's: a module that registers `tests.compat.py39.os_helper` in sys.modules
                              "tests/compat/__init__.py": "", "tests/compat/py39.py": "os_helper = object()\n",
                              "tests/test_d.py": "from .compat.py39.os_helper import FakePath\n"})
    assert detect_install(tree(tmp_path / "complete", complete)).missing_test_support is None
    # one file of many lacking a helper: collection leaves that file out; the build goes on
    few = {"PKG-INFO": files["PKG-INFO"], "tests/test_a.py": "from tests.gone import x\n",
           **{f"tests/test_{i}.py": "def test_x():\n    pass\n" for i in range(5)}}
    partial = detect_install(tree(tmp_path / "few", few))
    assert partial.missing_test_support is None and any("tests/gone.py" in n for n in partial.notes)


def test_what_the_tests_import_from_a_group_not_picked_is_added(tmp_path):
    plan = detect_install(tree(tmp_path, {
        "pyproject.toml": """
[project]
name = "u3"
version = "1"
[dependency-groups]
test = ["pytest>=8"]
dev = [{include-group = "test"}, "trustme>=1.2.1", "towncrier"]
emscripten = ["pytest-pyodide"]
""",
        "test/conftest.py": "import os\n\nimport trustme\n\ntry:\n    import brotli\nexcept ImportError:\n    brotli = None\n",
        "test/test_web.py": "import pytest_pyodide\n",
    }))
    # trustme: the conftest needs it and the dev group declares it; a platform's own group is not taken
    assert plan.test_requirements == ["pytest>=8", "trustme>=1.2.1"]


def test_a_conftest_that_does_not_import_is_named_in_the_failure():
    from forager.images.verify import _why_nothing

    output = ("ImportError while loading conftest '/repo/test/conftest.py'.\ntest/conftest.py:10: in <module>\n"
              "    import trustme\nE   ModuleNotFoundError: No module named 'trustme'\n")
    assert _why_nothing(output, "/repo") == \
        "conftest test/conftest.py does not import: ModuleNotFoundError: No module named 'trustme'"


def test_failure_reasons_are_cut_at_a_word_boundary():
    from forager.images.manifest import clip

    reason = "collection error: tests/test_syntax/test_md.py: ModuleNotFoundError: No module named 'pygments'"
    assert clip(reason, 500) == reason
    short = clip(reason, 60)
    assert len(short) <= 60 and short.endswith("…")
    assert reason.startswith(short[:-1]) and reason[len(short) - 1] in " /:"  # cut where a word ends
    assert clip("x" * 100, 20) == "x" * 19 + "…"  # one long word: cut, but marked


def test_resolution_checks_requires_python_and_markers_for_the_image_python(tmp_path, monkeypatch):
    """pip resolves on the host (3.11 here) for the image's Python: a project requiring 3.12 resolves for
    3.13, and a 3.9 image gets what markers ask for on 3.9 only (this one asks PyPI)."""
    from forager.images.resolve import Target, resolve_lock

    monkeypatch.setenv("FORAGER_HOME", str(tmp_path / "home"))
    project = tree(tmp_path / "p", {"pyproject.toml": """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"
[project]
name = "needs-new"
version = "0.1"
requires-python = ">=3.8"
dependencies = ['tomli; python_version < "3.11"']
"""})
    plan = detect_install(project)
    old = resolve_lock(project, "c1", plan, Target("3.9", "x86_64", "2.31", "3.9.2"), [], log=lambda _: None)
    assert any(p.startswith("tomli==") for p in old.pins)  # 3.9's marker, not the host's
    pytest_pin = next(p for p in old.pins if p.startswith("pytest=="))
    assert pytest_pin.split("==")[1].split(".")[0] in {"7", "8"}  # a pytest that still runs on 3.9
    # pytidylib ships no wheel (its last release is from 2017): the second attempt allows sdists, still for 3.13
    text = (project / "pyproject.toml").read_text().replace(">=3.8", ">=3.12").replace("dependencies = [", \
        "dependencies = ['pytidylib', ")
    (project / "pyproject.toml").write_text(text)
    new = resolve_lock(project, "c2", plan, Target("3.13", "x86_64", "2.41", "3.13.5"), [], log=lambda _: None)
    assert not any(p.startswith("tomli==") for p in new.pins)  # the host's 3.11 is not asked
    assert [p.split("==")[0] for p in new.from_source] == ["pytidylib"]
