"""A project's tox settings, read as text for one environment: its deps, extras and setenv.

tox writes a setting once for many environments with factor conditions (`py311,py312: x`,
`unit-!py315t: matplotlib`, `py3{9,10}: y`) and brace expansions; a line applies to an environment
when one of its alternatives names only factors the environment has (and none it negates). The
environment stood for here is the image's: `py3XY` for its Python plus the factors of the first test
environment of `envlist` (not a lint or docs one), so its lines reach pip resolved, never raw.
"""

from __future__ import annotations

import configparser
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from forager.images.metadata import lines_of, read_ini

_CONDITION = re.compile(r"^([\w{}.,!-]+):\s*(.*)$")
_SUBSTITUTIONS = {"{toxinidir}": "/repo", "{toxworkdir}": "/tmp/.tox", "{envtmpdir}": "/tmp", "{/}": "/",
                  "{:}": ":", "{envdir}": "/opt/venv", "{envbindir}": "/opt/venv/bin", "{envpython}": "python"}
# Environments that are not a test run: their factors say nothing about the test environment.
_NOT_TEST_ENV = re.compile(r"lint|docs?|flake8|mypy|typ(e|ing)|style|pre-?commit|build|pkg|package|release|format|"
                           r"coverage|report|clean|bench|spell|check|ruff|black|isort|pylint|readme|manifest|dev$")
# Variables the image's environment must keep its own of, or that would make pip or pytest need more.
_KEEP_OUT = re.compile(r"^(PATH|HOME|VIRTUAL_ENV|PYTHONHOME|PYTHONUSERBASE|PYTEST_ADDOPTS|PIP_\w+|TOX_\w+|"
                       r"COV_CORE_\w+)$")


@dataclass
class ToxEnv:
    """What tox would give the image's environment; `where` names the file it came from."""

    where: str
    factors: set[str]
    deps: list[str] = field(default_factory=list)
    """Requirements, and `-r PATH` lines (PATH relative to the project) where a requirements file is named."""
    extras: list[str] = field(default_factory=list)
    setenv: dict[str, str] = field(default_factory=dict)


def tox_config(root: Path, setup_cfg: configparser.ConfigParser | None,
               pyproject: dict | None) -> tuple[configparser.ConfigParser, str] | None:
    """tox.ini, setup.cfg's [testenv], or pyproject's legacy_tox_ini: the first with a [testenv]."""
    config = read_ini(root / "tox.ini")
    if config is not None and config.has_section("testenv"):
        return config, "tox.ini"
    if setup_cfg is not None and setup_cfg.has_section("testenv"):
        return setup_cfg, "setup.cfg [testenv]"
    legacy = ((pyproject or {}).get("tool", {}).get("tox", {}) or {}).get("legacy_tox_ini")
    if isinstance(legacy, str):
        parsed = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parsed.read_string(legacy)
        except configparser.Error:
            return None
        if parsed.has_section("testenv"):
            return parsed, "pyproject.toml legacy_tox_ini"
    return None


def tox_env(config: configparser.ConfigParser, where: str, python: str) -> ToxEnv:
    """The [testenv] settings that apply to an environment of `python` (`3.13.5`) and the first test env's factors."""
    env = ToxEnv(where, env_factors(config, python))
    for line in conditional_lines(_option(config, "deps"), env.factors):
        if line.startswith(("-r", "--requirement")):
            target = _substitute(re.sub(r"^(-r|--requirement)[\s=]*", "", line)).replace("/repo/", "")
            if "{" not in target:
                env.deps.append(f"-r {target.replace('/repo', '.')}")
        elif match := re.fullmatch(r"\.\[([\w,\s-]+)\]", line):  # the project itself, with extras
            env.extras += [e.strip() for e in match[1].split(",") if e.strip()]
        elif "{" not in line and not line.startswith(("-", ".", "/")):
            env.deps.append(line)
    for line in conditional_lines(_option(config, "extras"), env.factors):
        env.extras += [e.strip() for e in line.split(",") if e.strip() and "{" not in e]
    for line in conditional_lines(_option(config, "setenv") or _option(config, "set_env"), env.factors):
        name, eq, value = line.partition("=")
        name, value = name.strip(), _substitute(value.strip())
        if eq and re.fullmatch(r"[A-Za-z_]\w*", name) and not _KEEP_OUT.match(name) and "{" not in value:
            env.setenv[name] = value
    return env


def env_factors(config: configparser.ConfigParser, python: str) -> set[str]:
    """`py313`-style factors of `python`, plus the non-Python factors of the first test environment listed."""
    major, minor = python.split(".")[:2]
    factors = {"py", f"py{major}", f"py{major}{minor}", f"py{major}.{minor}", f"{major}.{minor}"}
    raw = config.get("tox", "envlist", fallback=None) or config.get("tox", "env_list", fallback="")
    for name in expand_braces(",".join(lines_of(raw))):
        own = {f for f in name.strip().split("-") if f and not _python_factor(f)}
        if name.strip() and not any(_NOT_TEST_ENV.search(f) for f in own):
            return factors | own
    return factors


def conditional_lines(text: str, factors: set[str]) -> list[str]:
    """The lines of a setting that apply to an environment with `factors`, their conditions removed."""
    out = []
    for line in lines_of(text):
        match = _CONDITION.match(line)
        if match is None or "://" in line:
            out.append(line)
            continue
        alternatives = expand_braces(match[1])
        if any(_matches(alternative, factors) for alternative in alternatives) and match[2].strip():
            out.append(match[2].strip())
    return out


def expand_braces(text: str) -> list[str]:
    """`py3{9,10}-{a,b},x` -> [py39-a, py39-b, py310-a, py310-b, x]: top-level commas split, braces multiply."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    out: list[str] = []
    for item in (i.strip() for i in items):
        parts = re.split(r"(\{[^{}]*\})", item)
        choices = [[c.strip() for c in p[1:-1].split(",")] if p.startswith("{") else [p] for p in parts]
        out += ["".join(combo) for combo in itertools.product(*choices) if "".join(combo)]
    return out


def _matches(alternative: str, factors: set[str]) -> bool:
    wanted = [f for f in alternative.split("-") if f]
    return bool(wanted) and all((f[1:] not in factors) if f.startswith("!") else (f in factors) for f in wanted)


def _python_factor(factor: str) -> bool:
    return bool(re.fullmatch(r"(py|pypy|cp)?\d*(\.\d+)?t?", factor)) or factor.startswith("pypy")


def _option(config: configparser.ConfigParser, name: str, depth: int = 0) -> str:
    """A [testenv] option with `{[section]key}` references replaced by that option's text."""
    text = config.get("testenv", name, fallback="")
    return _references(config, text, depth)


def _references(config: configparser.ConfigParser, text: str, depth: int) -> str:
    def replace(match: re.Match) -> str:
        section, key = match[1] or "testenv", match[2]
        if depth > 4 or not config.has_option(section, key):
            return match[0]
        return _references(config, config.get(section, key), depth + 1)

    return re.sub(r"\{\[([^\]]*)\]([\w-]+)\}", replace, text)


def _substitute(value: str) -> str:
    for key, replacement in _SUBSTITUTIONS.items():
        value = value.replace(key, replacement)
    # {env:NAME:default}: the default (the image has none of the host's variables)
    return re.sub(r"\{env:[^:}]+(?::([^}]*))?\}", lambda m: m[1] or "", value)
