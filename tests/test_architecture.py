"""The map stays true: every import in `forager/` runs down the floors of ARCHITECTURE.md, never up.

The floors, bottom up. A module may import from its own package and from lower floors; packages on
the same floor do not import each other. `trajectories` is stricter still: it reads and writes
trajectory files for replay, the trainer and the evaluation, so it depends on the core alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "forager"

FLOORS: list[set[str]] = [
    {"core"},
    {"plugins"},  # entry points and plug-in folders: read by `registration` and `loading`
    {"files", "registration", "git", "workers", "loading"},
    {"home"},  # the cache directory and its wheelhouse: keyed with `files.content_digest`
    {"runtime"},
    {"harness"},
    {"images", "rewards"},
    {"tasks"},
    {"envs"},
    {"trajectories"},
    {"policies"},
    {"agent", "testing"},
    {"train", "eval"},
    {"cli", "__init__"},  # `forager/__init__.py` loads its names lazily: nothing may import the package root
    {"__main__"},
]
ONLY = {"trajectories": {"core", "files"}}
"""Packages held to an explicit list of what they may import, whatever their floor."""


def room(module: str) -> str:
    """`forager.tasks.store` -> `tasks`; `forager` (the package's own __init__) -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a forager module in `source`, at any depth."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []  # relative: from its package
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
    return [(line, name) for line, name in found if name == "forager" or name.startswith("forager.")]


def forager_imports(path: Path) -> list[tuple[int, str]]:
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def floor_of(name: str) -> int:
    for level, rooms in enumerate(FLOORS):
        if name in rooms:
            return level
    raise KeyError(name)


def back_edges(edges: list[tuple[str, int, str]]) -> list[str]:
    """The imports that break the rule, as `file:line: importer -> imported (why)`."""
    broken = []
    for source, line, target in edges:
        importer, imported = room(module_name(ROOT / source)), room(target)
        if importer == imported:
            continue
        if importer in ONLY:
            if imported not in ONLY[importer]:
                broken.append(f"{source}:{line}: {importer} -> {imported} ({importer} may import only "
                              f"{', '.join(sorted(ONLY[importer]))})")
            continue
        low, high = floor_of(imported), floor_of(importer)
        if low > high:
            broken.append(f"{source}:{line}: {importer} -> {imported} (runs up the floors)")
        elif low == high:
            broken.append(f"{source}:{line}: {importer} -> {imported} (same floor: neither may import the other)")
    return broken


def modules() -> list[Path]:
    """Forager's own modules (not the sample repository it ships as data)."""
    return sorted(p for p in PACKAGE.rglob("*.py") if "assets" not in p.relative_to(PACKAGE).parts)


def all_edges() -> list[tuple[str, int, str]]:
    return [(str(path.relative_to(ROOT)), line, target) for path in modules() for line, target in forager_imports(path)]


def test_every_room_is_on_the_map():
    rooms = {room(module_name(p)) for p in modules()}
    unmapped = sorted(r for r in rooms if not any(r in floor for floor in FLOORS))
    assert not unmapped, f"put these in FLOORS (and in ARCHITECTURE.md): {unmapped}"


def test_no_import_runs_up_the_floors():
    edges = all_edges()
    assert len(edges) > 100  # the reader does see the package's imports
    broken = back_edges(edges)
    assert not broken, "imports against ARCHITECTURE.md's floors:\n" + "\n".join(broken)


def test_the_rule_catches_back_edges():
    """The checker itself: each kind of broken import is reported, an allowed one is not."""
    planted = [
        ("forager/core.py", 1, "forager.tasks.store"),         # bottom floor reaching up
        ("forager/harness/runner.py", 2, "forager.images.wheelhouse"),  # one floor up
        ("forager/images/build.py", 3, "forager.rewards"),      # a sibling on the same floor
        ("forager/trajectories/view.py", 4, "forager.runtime"),  # below, but outside its list
        ("forager/policies/replay.py", 5, "forager"),           # the package root, which loads lazily
        ("forager/agent/loop.py", 6, "forager.envs.swe"),       # allowed: down the floors
        ("forager/tasks/store.py", 7, "forager.tasks.checkout"),  # allowed: its own package
    ]
    broken = back_edges(planted)
    assert [b.split(":")[1] for b in broken] == ["1", "2", "3", "4", "5"]


def test_relative_and_nested_imports_are_read():
    source = "from .store import load_tasks\nfrom ..core import Task\nfrom . import checkout\n" \
             "def f():\n    import forager.envs.swe\n"
    assert [name for _, name in imports_of(source, "forager.tasks.validate")] == [
        "forager.tasks.store", "forager.core", "forager.tasks", "forager.envs.swe"]
    assert [name for _, name in imports_of("from .store import x\n", "forager.tasks", is_package=True)] == [
        "forager.tasks.store"]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_importing_the_core_stays_light():
    done = _python("""
        import sys, forager.core, forager.files, forager.trajectories, forager.tasks.store
        print(sorted(m for m in ("gymnasium", "docker", "numpy", "torch") if m in sys.modules))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("order", ["import forager\nimport gymnasium", "import gymnasium\nimport forager"])
def test_import_forager_registers_the_env_in_either_order(order):
    done = _python(order + """
print("forager/SWE-v0" in gymnasium.registry, gymnasium.spec("forager/SWE-v0").entry_point)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "forager.envs.swe:SWEEnv"]
