"""Reading a project's packaging files without running them: TOML, INI, PKG-INFO, and `setup.py` as an AST."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import tomllib


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def read_toml(path: Path) -> dict | None:
    try:
        return tomllib.loads(path.read_text(errors="replace")) if path.is_file() else None
    except tomllib.TOMLDecodeError:
        return None


def read_requirements(path: Path, depth: int = 0) -> list[str]:
    """Requirement lines of a pip requirements file; `-r` includes followed, editable and local lines skipped."""
    out: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for raw in text.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r", "--requirement")) and depth < 5:
            target = line.split(None, 1)[1] if " " in line else line[2:]
            target = target.replace("{toxinidir}/", "").strip()
            out += read_requirements(path.parent / target, depth + 1)
            continue
        if line.startswith("-") or line.startswith(".") or "://" in line or line.startswith("/"):
            continue
        out.append(line.split(";")[0].strip() + (";" + line.split(";", 1)[1] if ";" in line else ""))
    return out


def read_ini(path: Path) -> configparser.ConfigParser | None:
    if not path.is_file():
        return None
    config = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        config.read(path)
    except (configparser.Error, UnicodeDecodeError):
        return None
    return config


def literal_version(value: str | None) -> str | None:
    return value if value and re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", value) else None


def text_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def setup_py_keywords(path: Path) -> dict | None:
    """The literal keyword arguments of `setup(...)` in setup.py (names bound at module level resolved)."""
    if not path.is_file():
        return None
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except SyntaxError:
        return {}
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = _literal(node.value, names)
            except (ValueError, TypeError):
                pass
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup":
            out: dict[str, object] = {}
            for keyword in node.keywords:
                if keyword.arg is None:
                    continue
                try:
                    out[keyword.arg] = _literal(keyword.value, names)
                except (ValueError, TypeError):
                    out[keyword.arg] = True if keyword.arg == "use_scm_version" else None
            return out
    return {}


def _literal(node: ast.AST, names: dict[str, object]) -> object:
    """A literal, with module-level names and list concatenation resolved; ValueError for anything computed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(e, names) for e in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, names): _literal(v, names)  # type: ignore[arg-type]
                for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left, names), _literal(node.right, names)
        if isinstance(left, list) and isinstance(right, list):
            return left + right
    raise ValueError(ast.dump(node)[:80])


def pkg_info_fields(path: Path) -> dict[str, list[str]]:
    """An sdist's PKG-INFO headers (the metadata its build computed), each name to every value it has."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():  # the headers end at the first blank line
        name, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "\t")):
            fields.setdefault(name.strip(), []).append(value.strip())
    return fields
