"""What a project's test files need beyond its requirements: lint plugins kept out, warnings filters that
pytest's collection trips on, and support files present.

Lint plugins (pytest-ruff, pytest-mypy, pytest-flake8, pytest-checkdocs, ..., and jaraco's pytest-enabler,
which switches them on) turn every source file into a "test" that checks style, not behaviour: they
are blocked with `-p no:NAME`, and their flags taken out of `addopts`. A source release that ships
test files without the modules they import from the test tree (jmespath's tests import `tests`, whose
`__init__.py` it leaves out) cannot collect; detection says so and points at the git repository.

A unittest suite whose test module turns warnings into errors when imported (markdown's test_legacy.py:
`warnings.simplefilter('error')`) is run by unittest, where that filter is harmless; under pytest it
stays in force for the rest of collection, where pytest's own PytestCollectionWarning (a module that
imports `unittest.TestSuite`, a class named Test* with an __init__) becomes a collection error. Its
filter goes to the front of the list, so no `-W` or PYTHONWARNINGS can outrank it: instead pytest is
told to collect no plain classes (`-o python_classes=`), which changes nothing for a unittest suite
(TestCase subclasses are collected whatever their names) and leaves nothing to warn about.
"""

from __future__ import annotations

import ast
import configparser
import re
import shlex
from pathlib import Path

from forager.images.metadata import read_ini

# requirement name -> (the plugin's pytest11 entry-point name, the addopts flags that switch it on)
LINT_PLUGINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pytest-ruff": ("ruff", ("--ruff", "--ruff-format")),
    "pytest-mypy": ("mypy", ("--mypy",)),
    "pytest-flake8": ("flake8", ("--flake8",)),
    "pytest-checkdocs": ("checkdocs", ()),
    "pytest-black": ("black", ("--black",)),
    "pytest-isort": ("isort", ("--isort",)),
    "pytest-pylint": ("pylint", ("--pylint",)),
    "pytest-pycodestyle": ("pycodestyle", ("--pycodestyle",)),
    "pytest-pydocstyle": ("pydocstyle", ("--pydocstyle",)),
    "pytest-enabler": ("enabler", ()),
}
LINT_FLAGS = {flag: name for name, (_, flags) in LINT_PLUGINS.items() for flag in flags}
# pytest options (from addopts) and the plugins that provide them.
ADDOPT_PLUGINS = {
    "--cov": "pytest-cov", "--no-cov": "pytest-cov", "-n": "pytest-xdist", "--numprocesses": "pytest-xdist",
    "--dist": "pytest-xdist", "--timeout": "pytest-timeout", "--benchmark": "pytest-benchmark",
    "--hypothesis": "hypothesis", "--reruns": "pytest-rerunfailures",
    "--forked": "pytest-forked", "--randomly": "pytest-randomly", "--doctest-rst": "pytest-doctestplus",
    "--doctest-plus": "pytest-doctestplus", "--asyncio-mode": "pytest-asyncio",
}
INI_PLUGINS = {"asyncio_mode": "pytest-asyncio", "timeout": "pytest-timeout",
               "mock_use_standalone_module": "pytest-mock",
               "django_find_project": "pytest-django", "DJANGO_SETTINGS_MODULE": "pytest-django"}
TEST_DIRS = ("tests", "test", "testing")
_SKIP = {".git", "node_modules", ".tox", ".nox", "build", "dist", ".venv", "venv"}


def pytest_settings(root: Path, setup_cfg: configparser.ConfigParser | None, pyproject: dict | None) -> dict[str, str]:
    """The pytest ini settings, from pytest.ini, tox.ini, setup.cfg and pyproject.toml (later ones win)."""
    settings: dict[str, str] = {}
    for path in (root / "pytest.ini", root / "tox.ini"):
        config = read_ini(path)
        if config is not None and config.has_section("pytest"):
            settings.update(config.items("pytest"))
    if setup_cfg is not None and setup_cfg.has_section("tool:pytest"):
        settings.update(setup_cfg.items("tool:pytest"))
    ini = ((pyproject or {}).get("tool", {}).get("pytest", {}) or {})
    for key, value in {**ini, **(ini.get("ini_options") or {})}.items():
        if key != "ini_options":
            settings[key] = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return settings


def plugins_needed(settings: dict[str, str]) -> list[str]:
    """Plugins that the pytest configuration needs to even start (addopts, required_plugins, ini keys);
    lint plugins are left out: they are blocked and their flags dropped."""
    needed = []
    for option in settings.get("addopts", "").split():
        plugin = ADDOPT_PLUGINS.get(option.split("=")[0]) or next(
            (p for o, p in ADDOPT_PLUGINS.items() if o.startswith("--") and option.startswith(o + "-")), None)
        if plugin:
            needed.append(plugin)
    needed += [p for p in settings.get("required_plugins", "").split() if p]
    needed += [plugin for key, plugin in INI_PLUGINS.items() if key in settings]
    return [p for p in dict.fromkeys(needed) if re.split(r"[<>=!~;\[ ]", p)[0].lower() not in LINT_PLUGINS]


def lint_plugin_args(requirement_names: set[str], addopts: str) -> list[str]:
    """pytest options that keep the lint plugins among `requirement_names` (or `addopts`' flags) from collecting."""
    try:
        words = shlex.split(addopts) if addopts else []
    except ValueError:
        words = addopts.split()
    named = {plugin for w in words if (plugin := _lint_flag(w))}
    plugins = sorted((requirement_names & set(LINT_PLUGINS)) | named)
    args = [a for name in plugins for a in ("-p", f"no:{LINT_PLUGINS[name][0]}")]
    if named:  # a blocked plugin's flag in addopts would be an unknown option: addopts without them
        args += ["-o", f"addopts={shlex.join(w for w in words if not _lint_flag(w))}"]
    return args


def _lint_flag(word: str) -> str | None:
    """The lint plugin an addopts word belongs to (`--mypy`, `--flake8-ignore=x`), or None."""
    flag = word.split("=")[0]
    return LINT_FLAGS.get(flag) or next((p for f, p in LINT_FLAGS.items() if flag.startswith(f + "-")), None)


def unittest_warning_args(root: Path) -> list[str]:
    """`-o python_classes=` for a unittest suite (no pytest import, no conftest.py) with a test module that
    makes warnings errors at import; [] otherwise."""
    files = test_files(root)
    if not files or any(root.rglob("conftest.py")):
        return []
    uses_unittest = errors_at_import = False
    for path in files:
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if "pytest" in imported or "_pytest" in imported:
            return []
        uses_unittest = uses_unittest or "unittest" in imported
        errors_at_import = errors_at_import or any(_errors_filter(node) for node in tree.body)
    return ["-o", "python_classes="] if uses_unittest and errors_at_import else []


def _errors_filter(node: ast.stmt) -> bool:
    """A module-level `warnings.simplefilter('error')` or `warnings.filterwarnings('error', ...)`."""
    call = node.value if isinstance(node, ast.Expr) else None
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("simplefilter", "filterwarnings") and bool(call.args)
            and isinstance(call.args[0], ast.Constant) and call.args[0].value == "error")


def test_imports(root: Path) -> set[str]:
    """The top-level modules that test files and conftest.py files import unconditionally (at module level,
    not inside a try), names normalised like distributions' (`trustme`, `pytest-httpbin`)."""
    found: set[str] = set()
    conftests = [p for p in root.rglob("conftest.py") if not _SKIP & set(p.relative_to(root).parts)]
    for path in [*test_files(root), *conftests]:
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {re.sub(r"[-_.]+", "-", name).lower() for name in found}


def test_files(root: Path) -> list[Path]:
    """The files pytest would collect by name (test_*.py, *_test.py), outside build and tool directories."""
    return sorted(p for p in root.rglob("*.py") if not _SKIP & set(p.relative_to(root).parts)
                  and re.fullmatch(r"test_.*\.py|.*_test\.py", p.name))


def missing_test_support(root: Path) -> tuple[list[str], int, int]:
    """(what the test files import from the test tree that is not there, test files affected, test files)."""
    files = test_files(root)
    conftests = [p for p in root.rglob("conftest.py") if not _SKIP & set(p.relative_to(root).parts)]
    missing: dict[str, set[str]] = {}
    affected = 0
    for path in [*files, *conftests]:
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        lacks = [need for need in _imports(tree, path, root) if not _exists(need)]
        for need in lacks:
            missing.setdefault(str(need.relative_to(root)), set()).add(str(path.relative_to(root)))
        affected += bool(lacks) and path in files
    described = [f"{need}.py (imported by {', '.join(sorted(users)[:2])}{' and others' if len(users) > 2 else ''})"
                 for need, users in sorted(missing.items())]
    return described, affected, len(files)


def _imports(tree: ast.Module, path: Path, root: Path) -> list[Path]:
    """The module paths (without .py) that `path` imports from the test tree, conftest and pytest_plugins."""
    tops = {d for d in TEST_DIRS if (root / d).is_dir()}
    needs: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
            elif node.module and (node.module.split(".")[0] in tops or node.module.split(".")[0] == "conftest") \
                    and not node.module.startswith("test.support"):  # the standard library's test package
                base = root if node.module.split(".")[0] in tops else _conftest_dir(path, root)
            else:
                continue
            module = base.joinpath(*node.module.split(".")) if node.module else base
            if module.is_dir() and not (module / "__init__.py").is_file():
                # a directory without __init__.py: each imported name must be a module of its own
                needs += [module / a.name if (module / a.name).is_dir() or (module / f"{a.name}.py").is_file()
                          else module / "__init__" for a in node.names]
            else:
                needs.append(module)
        elif isinstance(node, ast.Import):
            needs += [root.joinpath(*a.name.split(".")) for a in node.names
                      if "." in a.name and a.name.split(".")[0] in tops]
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytest_plugins" for t in node.targets):
            names = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            needs += [root.joinpath(*n.value.split(".")) for n in names if isinstance(n, ast.Constant)
                      and isinstance(n.value, str) and n.value.split(".")[0] in tops]
    return needs


def _conftest_dir(path: Path, root: Path) -> Path:
    """Where `import conftest` finds one: the test file's directory or the nearest parent with a conftest.py."""
    for parent in [path.parent, *path.parent.parents]:
        if (parent / "conftest.py").is_file() or parent == root:
            return parent
    return root


def _exists(module: Path) -> bool:
    if module.name == "__init__":
        return module.with_suffix(".py").is_file()
    if module.with_suffix(".py").is_file() or module.is_dir() or module.with_suffix(".pyi").is_file():
        return True
    # a "submodule" of a plain module (zipp's tests.compat.py39.os_helper) is one only if that module
    # registers it in sys.modules when imported: not a file to look for, so not a missing one
    return any(parent.with_suffix(".py").is_file() for parent in module.parents if parent.name)
