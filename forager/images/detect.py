"""An install plan read from a project's files: its Python, build backend, test extras and requirements,
pytest plugins, the test environment's variables and options.

Nothing here runs the project's code: `setup.py` is read as an AST, tox and nox files as text. What
cannot be known statically (dependencies computed in `setup.py`) is left to pip, which resolves the
project directory itself on the host.
"""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

from pydantic import BaseModel, Field

from forager.images.bootstrap import SUITE_PYTHONS
from forager.images.metadata import (
    lines_of,
    literal_version,
    pkg_info_fields,
    read_ini,
    read_requirements,
    read_toml,
    setup_py_keywords,
    text_or_none,
)
from forager.images.pythons import choose_python
from forager.images.testsuite import (
    lint_plugin_args,
    missing_test_support,
    plugins_needed,
    pytest_settings,
    test_imports,
    unittest_warning_args,
)
from forager.images.tox import tox_config, tox_env

TEST_NAMES = ("test", "tests", "testing")
DEV_NAMES = ("dev", "develop", "development")
LEGACY_BACKEND = "setuptools.build_meta:__legacy__"
# Build requirements that take the version from version control: they need a pretend version when
# the repository has no tags.
VCS_VERSIONING = ("setuptools-scm", "hatch-vcs", "setuptools-git-versioning", "versioningit", "dunamai",
                  "poetry-dynamic-versioning", "pdm-backend", "versioneer")
# Development tools that requirement files and dev groups list but no test needs.
NOT_FOR_TESTS = re.compile(
    r"^(tox|nox|pre-commit|sphinx.*|furo|myst-parser|twine|build|black|ruff|flake8.*|pylint|isort|mypy|pyright|"
    r"codecov|towncrier|check-manifest|bump2?version|ipython|ipdb|jupyter.*|readme-renderer|pip-tools|"
    r"docutils|restructuredtext-lint|pyroma|zest\.releaser|wheel|setuptools|coveralls|pydocstyle|doc8)$"
)
EDITABLE_REQUIRES = {"setuptools": "wheel", "hatchling": "editables"}


class InstallPlan(BaseModel):
    """How to install a project and its tests' requirements; `notes` say where each choice came from."""

    name: str | None = None
    version: str | None = None
    """The version the files state (pyproject, setup.cfg, setup.py, an sdist's PKG-INFO)."""
    build_backend: str = LEGACY_BACKEND
    build_requires: list[str] = Field(default_factory=lambda: ["setuptools>=64", "wheel"])
    requires_python: str | None = None
    classifiers: list[str] = Field(default_factory=list)
    python: str | None = None
    """The base Python chosen for the project (`3.13.5`); None when no base fits (`notes` says why)."""
    dependencies: list[str] | None = None
    """The project's own requirements when declared statically (None: only its build can tell)."""
    extras: list[str] = Field(default_factory=list)
    """Test extras of the project to install (`.[test]`)."""
    test_requirements: list[str] = Field(default_factory=list)
    """From dependency groups, requirement files, tox, nox, Poetry/Hatch/PDM dev settings, pytest addopts."""
    vcs_version: bool = False
    """The build takes its version from git tags (setuptools-scm, hatch-vcs, ...)."""
    has_tests: bool = False
    pytest_args: list[str] = Field(default_factory=list)
    """Options for the test command: lint plugins blocked (`-p no:ruff`), their addopts flags dropped."""
    test_env: dict[str, str] = Field(default_factory=dict)
    """Variables the tests run with (tox's setenv for the image's environment)."""
    missing_test_support: str | None = None
    """Why most test files cannot import: modules of the test tree that a source release left out."""
    notes: list[str] = Field(default_factory=list)


def detect_install(root: Path, available: list[str] | None = None, python: str | None = None) -> InstallPlan:
    """Read `root`'s packaging and test files into an install plan for one of the `available` Pythons
    (exact versions; default: the base images'), or `python` when given."""
    plan = InstallPlan()
    pyproject = read_toml(root / "pyproject.toml")
    setup_cfg = read_ini(root / "setup.cfg")
    setup_py = setup_py_keywords(root / "setup.py")
    extras_available = _from_pyproject(plan, pyproject)
    if setup_cfg is not None:
        extras_available.update(_from_setup_cfg(plan, setup_cfg, pyproject is not None))
    if setup_py is not None:
        extras_available.update(_from_setup_py(plan, setup_py))
    pkg_info = pkg_info_fields(root / "PKG-INFO")  # an sdist's: what a computed setup.py said
    plan.version = plan.version or next(iter(pkg_info.get("Version", [])), None)
    plan.requires_python = plan.requires_python or next(iter(pkg_info.get("Requires-Python", [])), None)
    plan.classifiers = plan.classifiers or pkg_info.get("Classifier", [])
    _choose_python(plan, available or list(SUITE_PYTHONS.values()), python)

    chosen = _pick(set(extras_available))
    if chosen:
        plan.extras = chosen
        plan.notes.append(f"extras {', '.join(chosen)} (of {', '.join(sorted(extras_available))})")
    if pyproject is not None:
        _tool_requirements(plan, pyproject)
    _requirement_files(plan, root)
    _tox(plan, root, setup_cfg, pyproject)
    _nox(plan, root)
    settings = pytest_settings(root, setup_cfg, pyproject)
    have = {_req_name(r) for r in plan.test_requirements}
    _add(plan, [p for p in plugins_needed(settings) if _req_name(p) not in have], "the pytest configuration")
    addopts = settings.get("addopts", "")
    extras_reqs = [r for extra in plan.extras for r in extras_available.get(extra, [])]
    _imported_by_tests(plan, root, pyproject, extras_available, extras_reqs)
    plan.pytest_args = lint_plugin_args({_req_name(r) for r in [*plan.test_requirements, *extras_reqs]}, addopts)
    plan.pytest_args += unittest_warning_args(root)
    _settle(plan)
    plan.has_tests = _has_tests(root)
    _test_support(plan, root)
    return plan


def _imported_by_tests(plan: InstallPlan, root: Path, pyproject: dict | None, extras: dict[str, list[str]],
                       picked: list[str]) -> None:
    """What the tests import that the project declares only in a group or extra not picked (urllib3's
    conftest imports trustme, which only its `dev` group lists): added, as declared."""
    groups = (pyproject or {}).get("dependency-groups", {})
    testing = re.compile(r"test|dev|ci\b|check", re.IGNORECASE)  # not docs, typing, a platform's own (emscripten)
    declared: dict[str, str] = {}
    for requirement in [*(r for g in groups if testing.search(g) for r in _expand_group(groups, g, set())),
                        *(r for name, reqs in extras.items() if testing.search(name) for r in reqs)]:
        declared.setdefault(_req_name(requirement), requirement)
    have = {_req_name(r) for r in [*plan.test_requirements, *picked, *(plan.dependencies or []), plan.name or ""]}
    wanted = [declared[m] for m in sorted(test_imports(root)) if m in declared and m not in have]
    _add(plan, wanted, "imports of the tests, declared in other groups or extras")


def _choose_python(plan: InstallPlan, available: list[str], forced: str | None) -> None:
    choice = choose_python(plan.requires_python, plan.classifiers, available, forced)
    plan.python = choice.version
    plan.notes.append(choice.why)


def _test_support(plan: InstallPlan, root: Path) -> None:
    """Most test files import test-tree modules that are not there: a source release that left them out."""
    missing, affected, total = missing_test_support(root)
    if not missing:
        return
    what = f"{affected} of {total} test files import what the tree lacks: {'; '.join(missing[:3])}"
    if (root / "PKG-INFO").is_file() and affected * 2 >= total > 0:
        plan.missing_test_support = (f"the source release lacks test support files ({what}): build from the "
                                     "git repository instead")
    else:
        plan.notes.append(what)


# -- project metadata: name, version, dependencies and the extras on offer ---------------------------
def _from_pyproject(plan: InstallPlan, pyproject: dict | None) -> dict[str, list[str]]:
    """Name, version, requires-python, classifiers, dependencies; returns the extras on offer and their requirements."""
    if pyproject is None:
        plan.notes.append("no pyproject.toml: setuptools' legacy backend")
        return {}
    build = pyproject.get("build-system", {})
    if build.get("requires") is not None:
        plan.build_requires = list(build["requires"])
    plan.build_backend = build.get("build-backend") or LEGACY_BACKEND
    plan.notes.append(f"build backend {plan.build_backend} (pyproject.toml)")
    project = pyproject.get("project", {})
    plan.name = project.get("name")
    plan.version = project.get("version")
    plan.requires_python = project.get("requires-python")
    plan.classifiers = [c for c in project.get("classifiers", []) if isinstance(c, str)]
    if "dependencies" not in project.get("dynamic", []) and "name" in project:
        plan.dependencies = list(project.get("dependencies", []))
    return {k: [r for r in v if isinstance(r, str)] for k, v in project.get("optional-dependencies", {}).items()
            if isinstance(v, list)}


def _from_setup_cfg(plan: InstallPlan, setup_cfg: configparser.ConfigParser,
                    has_pyproject: bool) -> dict[str, list[str]]:
    plan.name = plan.name or setup_cfg.get("metadata", "name", fallback=None)
    plan.version = plan.version or literal_version(setup_cfg.get("metadata", "version", fallback=None))
    plan.requires_python = plan.requires_python or setup_cfg.get("options", "python_requires", fallback=None)
    plan.classifiers = plan.classifiers or lines_of(setup_cfg.get("metadata", "classifiers", fallback=""))
    if setup_cfg.has_option("options", "install_requires") and plan.dependencies is None and not has_pyproject:
        plan.dependencies = lines_of(setup_cfg.get("options", "install_requires"))
    if setup_cfg.has_option("options", "setup_requires"):
        plan.build_requires += lines_of(setup_cfg.get("options", "setup_requires"))
    if setup_cfg.has_option("options", "tests_require"):
        _add(plan, lines_of(setup_cfg.get("options", "tests_require")), "setup.cfg tests_require")
    if setup_cfg.has_section("options.extras_require"):
        return {k: lines_of(v) for k, v in setup_cfg.items("options.extras_require")}
    return {}


def _from_setup_py(plan: InstallPlan, setup_py: dict) -> dict[str, list[str]]:
    plan.name = plan.name or text_or_none(setup_py.get("name"))
    plan.version = plan.version or text_or_none(setup_py.get("version"))
    plan.requires_python = plan.requires_python or text_or_none(setup_py.get("python_requires"))
    if not plan.classifiers and isinstance(setup_py.get("classifiers"), list):
        plan.classifiers = [c for c in setup_py["classifiers"] if isinstance(c, str)]
    if isinstance(setup_py.get("tests_require"), list):
        _add(plan, [r for r in setup_py["tests_require"] if isinstance(r, str)], "setup.py tests_require")
    if isinstance(setup_py.get("setup_requires"), list):
        plan.build_requires += [r for r in setup_py["setup_requires"] if isinstance(r, str)]
    if setup_py.get("use_scm_version"):
        plan.vcs_version = True
        plan.build_requires.append("setuptools-scm")
    extras = setup_py.get("extras_require")
    if not isinstance(extras, dict):
        return {}
    return {k: [r for r in v if isinstance(r, str)] if isinstance(v, list) else [] for k, v in extras.items()
            if isinstance(k, str)}


def _settle(plan: InstallPlan) -> None:
    """What follows from everything read: VCS versioning, editable-build needs, pytest, no duplicates."""
    plan.vcs_version = plan.vcs_version or any(_req_name(r) in VCS_VERSIONING for r in plan.build_requires)
    # What a backend's get_requires_for_build_editable adds: with --no-build-isolation nobody installs it.
    for backend, needed in EDITABLE_REQUIRES.items():
        if plan.build_backend.startswith(backend) and not any(_req_name(r) == needed for r in plan.build_requires):
            plan.build_requires.append(needed)
    own = _req_name(plan.name or "")
    plan.test_requirements = _dedupe(r for r in plan.test_requirements if _req_name(r) != own)
    if not any(_req_name(r) == "pytest" for r in plan.test_requirements):
        plan.test_requirements.append("pytest")
    plan.build_requires = _dedupe(plan.build_requires)


# -- sources of test requirements ----------------------------------------------------------------------
def _tool_requirements(plan: InstallPlan, pyproject: dict) -> None:
    groups = pyproject.get("dependency-groups", {})
    for name in _pick(set(groups)):
        _add(plan, _expand_group(groups, name, set()), f"[dependency-groups] {name}", filter_tools=True)
    tool = pyproject.get("tool", {})
    poetry = tool.get("poetry", {})
    poetry_groups = poetry.get("group", {})
    for name in _pick(set(poetry_groups)):
        deps = poetry_groups[name].get("dependencies", {})
        _add(plan, [_poetry_req(k, v) for k, v in deps.items() if k != "python"], f"poetry group {name}", True)
    if not poetry_groups and isinstance(poetry.get("dev-dependencies"), dict):
        deps = poetry["dev-dependencies"]
        _add(plan, [_poetry_req(k, v) for k, v in deps.items() if k != "python"], "poetry dev-dependencies", True)
    if plan.dependencies is None and isinstance(poetry.get("dependencies"), dict):
        plan.dependencies = [_poetry_req(k, v) for k, v in poetry["dependencies"].items() if k != "python"]
    pdm = tool.get("pdm", {}).get("dev-dependencies", {})
    for name in _pick(set(pdm)):
        _add(plan, list(pdm[name]), f"pdm dev-dependencies {name}", True)
    envs = tool.get("hatch", {}).get("envs", {})
    for name in [n for n in ("hatch-test", "test", "tests", "default") if n in envs][:1]:
        env = envs[name]
        _add(plan, list(env.get("dependencies", [])) + list(env.get("extra-dependencies", [])),
             f"hatch env {name}", True)
        _extras(plan, env.get("features", []), f"hatch env {name}")


def _expand_group(groups: dict, name: str, seen: set[str]) -> list[str]:
    if name in seen:
        return []
    seen.add(name)
    out: list[str] = []
    for item in groups.get(name, []):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and "include-group" in item:
            out += _expand_group(groups, item["include-group"], seen)
    return out


def _requirement_files(plan: InstallPlan, root: Path) -> None:
    candidates = sorted({*root.glob("*requirements*.txt"), *root.glob("requirements/*.txt"),
                         *root.glob("requirements/*.in"), *root.glob("*requirements*.in"),
                         *root.glob("test*/requirements*.txt"), *root.glob("ci/requirements*.txt")})
    by_kind: dict[str, list[Path]] = {"test": [], "dev": [], "runtime": []}
    for path in candidates:
        if path.suffix == ".in" and path.with_suffix(".txt").exists():
            continue
        rel = str(path.relative_to(root)).lower()
        if re.search(r"doc|lint|release|packag|typing|mypy|style|bench|publish|upload", rel):
            continue
        # a file for one Python (jinja2's requirements/tests37.txt): only when it is the image's
        for_python = re.search(r"(?:py)?3\.?(\d{1,2})$", path.stem)
        if for_python and plan.python and not plan.python.startswith(f"3.{for_python[1]}."):
            continue
        kind = "test" if "test" in rel else "dev" if "dev" in rel else "runtime" if path.name == "requirements.txt" \
            else None
        if kind:
            by_kind[kind].append(path)
    for kind in ("test", "dev"):
        if by_kind[kind]:
            for path in by_kind[kind]:
                _add(plan, read_requirements(path), str(path.relative_to(root)), filter_tools=True)
            break
    if plan.dependencies is None:
        for path in by_kind["runtime"]:
            _add(plan, read_requirements(path), str(path.relative_to(root)), filter_tools=True)


def _tox(plan: InstallPlan, root: Path, setup_cfg: configparser.ConfigParser | None, pyproject: dict | None) -> None:
    """tox's deps, extras and setenv as they apply to the image's environment (factor conditions resolved)."""
    found = tox_config(root, setup_cfg, pyproject)
    if found is None:
        return
    config, where = found
    env = tox_env(config, where, plan.python or max(SUITE_PYTHONS.values()))
    deps: list[str] = []
    for line in env.deps:
        deps += read_requirements(root / line[3:]) if line.startswith("-r ") else [line]
    _add(plan, deps, f"{where} deps (factors {', '.join(sorted(env.factors))})", filter_tools=True)
    _extras(plan, env.extras, where)
    if env.setenv:
        plan.test_env.update(env.setenv)
        plan.notes.append(f"test environment {', '.join(env.setenv)} ({where} setenv)")


def _nox(plan: InstallPlan, root: Path) -> None:
    path = root / "noxfile.py"
    if not path.is_file():
        return
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except SyntaxError:
        return
    reqs: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "install":
            words = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            skip_next = False
            for i, word in enumerate(words):
                if skip_next:
                    skip_next = False
                    continue
                if word in ("-r", "--requirement") and i + 1 < len(words):
                    reqs += read_requirements(root / words[i + 1])
                    skip_next = True
                elif match := re.fullmatch(r"(?:-e\s*)?\.\[([\w,\s-]+)\]", word):
                    _extras(plan, [e.strip() for e in match[1].split(",")], "noxfile.py")
                elif not word.startswith(("-", ".")):
                    reqs.append(word)
    _add(plan, reqs, "noxfile.py", filter_tools=True)


# -- helpers --------------------------------------------------------------------------------------
def _pick(names: set[str]) -> list[str]:
    """Every test-named entry, or the dev-named ones when there is none."""
    for wanted in (TEST_NAMES, DEV_NAMES):
        found = [n for n in sorted(names) if n.lower() in wanted]
        if found:
            return found
    return []


def _extras(plan: InstallPlan, extras, where: str) -> None:
    new = [e for e in extras if e and e not in plan.extras]
    if new:
        plan.extras += new
        plan.notes.append(f"extras {', '.join(new)} ({where})")


def _add(plan: InstallPlan, reqs: list[str], where: str, filter_tools: bool = False) -> None:
    kept = [r.strip() for r in reqs if isinstance(r, str) and r.strip()
            and not (filter_tools and NOT_FOR_TESTS.match(_req_name(r)))]
    if kept:
        plan.test_requirements += kept
        plan.notes.append(f"{len(kept)} test requirement(s) from {where}")


def _req_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match[1]).lower() if match else ""


def _poetry_req(name: str, spec) -> str:
    # Poetry's caret/tilde constraints have no PEP 508 spelling worth reproducing here: the name is
    # enough for a test environment, and pip's resolver picks a version compatible with the rest.
    extras = spec.get("extras") if isinstance(spec, dict) else None
    return f"{name}[{','.join(extras)}]" if extras else name


def _dedupe(items) -> list[str]:
    seen: dict[str, str] = {}
    for item in items:
        seen.setdefault(item.strip(), item.strip())
    return list(seen)


def _has_tests(root: Path) -> bool:
    skip = {".git", "node_modules", ".tox", ".nox", "build", "dist"}
    for path in root.rglob("*.py"):
        if skip & set(path.relative_to(root).parts):
            continue
        if re.fullmatch(r"test_.*\.py|.*_test\.py|conftest\.py", path.name):
            return True
    return False
