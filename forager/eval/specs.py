"""swebench's install specs: how each repository's instances of one version get their environment.

swebench 4.x ships them as `MAP_REPO_VERSION_TO_SPECS` (`swebench/harness/constants/python.py`:
Python version, packages, pip pins, pre-install commands, install and test commands); swebench 5
moved them out of the package into each row's `eval_script` and the official images. Forager builds an
instance's image offline from the spec for its repo and version, so the specs come from:

- a swebench 4.x `constants/python.py` (it has no imports: it is run, and `MAP_REPO_VERSION_TO_SPECS_PY`
  taken) or a swebench 4.x wheel (the same file read out of it);
- a JSON or YAML file `{repo: {version: spec}}`, which may `extends:` another source (a path relative to
  it, or `swebench` for the installed swebench's) and then overlays it field by field: a version key
  `"*"` overlays every version of its repository. Its specs may carry `extra_requirements`, pip
  requirements added to the environment (sphinx 3.x needs `docutils<0.22`, which its spec does not pin):

      extends: swebench-4.1.0-py3-none-any.whl
      sphinx-doc/sphinx:
        "*": {extra_requirements: ["docutils<0.22"]}

- without a path, the installed swebench's table when it has one (4.x).
"""

from __future__ import annotations

import json
import re
import runpy
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forager.core import ForagerError

WHEEL_SPECS = "swebench/harness/constants/python.py"
"""Where a swebench 4.x wheel keeps the Python repositories' specs."""
ANY_VERSION = "*"
DOWNLOAD_HINT = ("pass a spec file with --specs FILE: swebench 4.x's constants/python.py or its wheel (`pip download "
                 "swebench==4.1.0 --no-deps`), or a JSON/YAML file {\"OWNER/NAME\": {\"VERSION\": "
                 "{\"python\": \"3.9\", \"install\": \"python -m pip install -e .\", \"test_cmd\": \"pytest -rA\"}}}")

# swebench 4.x harness/log_parsers MAP_REPO_TO_PARSER_PY: the parser of a repository whose spec names none.
DEFAULT_PARSERS = {
    "astropy/astropy": "parse_log_astropy",
    "django/django": "parse_log_django",
    "marshmallow-code/marshmallow": "parse_log_marshmallow",
    "matplotlib/matplotlib": "parse_log_matplotlib",
    "mwaskom/seaborn": "parse_log_seaborn",
    "pallets/flask": "parse_log_flask",
    "psf/requests": "parse_log_requests",
    "pvlib/pvlib-python": "parse_log_pvlib",
    "pydata/xarray": "parse_log_xarray",
    "pydicom/pydicom": "parse_log_pydicom",
    "pylint-dev/astroid": "parse_log_astroid",
    "pylint-dev/pylint": "parse_log_pylint",
    "pytest-dev/pytest": "parse_log_pytest",
    "pyvista/pyvista": "parse_log_pyvista",
    "scikit-learn/scikit-learn": "parse_log_scikit",
    "sqlfluff/sqlfluff": "parse_log_sqlfluff",
    "sphinx-doc/sphinx": "parse_log_sphinx",
    "sympy/sympy": "parse_log_sympy",
}
FALLBACK_PARSER = "parse_log_pytest"


class InstanceSpec(BaseModel):
    """One repository version's spec, in swebench 4.x's shape; fields swebench adds later are kept as they are."""

    model_config = ConfigDict(extra="allow")

    python: str
    """The Python version the environment has (`3.9`)."""
    packages: str | list[str] | None = None
    """pip requirements separated by spaces, or `requirements.txt` / `environment.yml`: the repository's own file."""
    pip_packages: list[str] = Field(default_factory=list)
    """Pins installed before the project (its install then replaces those its own requirements exclude)."""
    pre_install: list[str] = Field(default_factory=list)
    """Shell commands run as root in the repository before the install."""
    install: str | None = None
    """The project's install (`python -m pip install -e .[test]`)."""
    test_cmd: str | list[str] | None = None
    eval_commands: list[str] = Field(default_factory=list)
    """Commands the eval script runs before the tests."""
    log_parser: str | None = None
    """The name of the parser in swebench's `PARSER_REGISTRY` that reads the test log (`parse_log_pytest`)."""
    extra_requirements: list[str] = Field(default_factory=list)
    """Forager's own: more pip requirements for the environment, for what the spec leaves unpinned."""

    @field_validator("python", mode="before")
    @classmethod
    def _python_version(cls, value: object) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"\d+\.\d+", value):
            raise ValueError(f"python must be a quoted version like '3.9' (YAML reads 3.10 as 3.1), not {value!r}")
        return value

    @property
    def test_command(self) -> str:
        """`test_cmd` as one command line (a list's commands joined with ` && `)."""
        if isinstance(self.test_cmd, list):
            return " && ".join(self.test_cmd)
        return self.test_cmd or ""


class SpecTable:
    """Specs by repository and version; `get` says what is known when a spec is missing."""

    def __init__(self, specs: Mapping[str, Mapping[str, InstanceSpec]], source: str) -> None:
        self.specs = {repo: dict(versions) for repo, versions in specs.items()}
        self.source = source
        """Where the specs came from, for messages."""

    def get(self, repo: str, version: str | None) -> InstanceSpec:
        """The spec for `repo` at `version`; a ForagerError naming the versions known when there is none."""
        versions = self.specs.get(repo)
        if versions is None:
            raise ForagerError(f"no swebench spec for the repository {repo!r} in {self.source} (it knows "
                               f"{len(self.specs)} repositories): {DOWNLOAD_HINT}")
        spec = versions.get(str(version))
        if spec is None:
            known = ", ".join(sorted(versions, key=_version_key)) or "none"
            raise ForagerError(f"no swebench spec for {repo} version {version!r} in {self.source} (known versions: "
                               f"{known}): add it to a spec file given with --specs")
        return spec

    def repos(self) -> list[str]:
        return sorted(self.specs)

    def __contains__(self, repo: object) -> bool:
        return repo in self.specs


def load_specs(path: str | Path | None = None) -> SpecTable:
    """The specs of `path` (see the module docstring), else the installed swebench's."""
    raw, source = _raw_specs(path, seen=())
    return SpecTable(_validated(raw, source), source)


# -- reading the sources -------------------------------------------------------------------------------------
def _raw_specs(path: str | Path | None, seen: tuple[Path, ...]) -> tuple[dict[str, dict[str, dict]], str]:
    """{repo: {version: fields}} from one source, its `extends` applied; and the source's description."""
    if path is None or str(path) == "swebench":
        return _installed_specs(), "the installed swebench"
    file = Path(path).expanduser()
    if not file.is_file():
        raise ForagerError(f"spec file {file} does not exist: {DOWNLOAD_HINT}")
    if file.suffix == ".whl":
        return _wheel_specs(file), str(file)
    if file.suffix == ".py":
        return _python_specs(file), str(file)
    if file.suffix.lower() in (".json", ".yaml", ".yml"):
        return _file_specs(file, seen), str(file)
    raise ForagerError(f"spec file {file}: give a .json, .yaml, .py (swebench 4.x constants/python.py) or .whl file")


def _installed_specs() -> dict[str, dict[str, dict]]:
    try:
        from swebench.harness import constants
    except ImportError as err:
        raise ForagerError(f"swebench is not installed, and no spec file was given: {DOWNLOAD_HINT}") from err
    specs = getattr(constants, "MAP_REPO_VERSION_TO_SPECS", None)
    if not specs:
        version = getattr(__import__("swebench"), "__version__", "?")
        raise ForagerError(f"the installed swebench {version} ships no specs (swebench 5 moved them out of the "
                           f"package): {DOWNLOAD_HINT}")
    return _plain(specs)


def _python_specs(file: Path) -> dict[str, dict[str, dict]]:
    try:
        names = runpy.run_path(str(file), run_name="forager_swebench_specs")
    except Exception as err:  # noqa: BLE001 - a user's file: any error is reported, with its name
        raise ForagerError(f"{file} cannot be run as swebench's constants/python.py: {type(err).__name__}: {err}") \
            from err
    specs = names.get("MAP_REPO_VERSION_TO_SPECS_PY") or names.get("MAP_REPO_VERSION_TO_SPECS")
    if not isinstance(specs, dict):
        raise ForagerError(f"{file} defines no MAP_REPO_VERSION_TO_SPECS_PY (swebench 4.x's "
                           f"{WHEEL_SPECS}): {DOWNLOAD_HINT}")
    return _plain(specs)


def _wheel_specs(file: Path) -> dict[str, dict[str, dict]]:
    try:
        with zipfile.ZipFile(file) as wheel:
            text = wheel.read(WHEEL_SPECS)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ForagerError(f"{file} is not a swebench 4.x wheel with {WHEEL_SPECS}: {err}") from err
    with tempfile.TemporaryDirectory(prefix="forager-specs-") as tmp:
        copy = Path(tmp) / "python.py"
        copy.write_bytes(text)
        return _python_specs(copy)


def _file_specs(file: Path, seen: tuple[Path, ...]) -> dict[str, dict[str, dict]]:
    """A JSON/YAML spec file over what it `extends` (nothing when it extends nothing)."""
    if file.resolve() in seen:
        raise ForagerError(f"spec file {file} extends itself (through {' -> '.join(map(str, seen))})")
    try:
        data = yaml.safe_load(file.read_text()) if file.suffix.lower() != ".json" else json.loads(file.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ForagerError(f"spec file {file} is not valid {file.suffix[1:].upper()}: {err}") from err
    if not isinstance(data, dict):
        raise ForagerError(f"spec file {file} must be a mapping {{repo: {{version: spec}}}}")
    data = dict(data)
    extends = data.pop("extends", None)
    merged: dict[str, dict[str, dict]] = {}
    for base in [extends] if isinstance(extends, str) else extends or []:
        where = base if base == "swebench" else file.parent / Path(base).expanduser()
        merged = overlay(merged, _raw_specs(where, (*seen, file.resolve()))[0])
    for repo, versions in data.items():
        if not isinstance(versions, dict) or not all(isinstance(v, dict) for v in versions.values()):
            raise ForagerError(f"spec file {file}: {repo!r} must map versions to specs ({{\"3.0\": {{\"python\": "
                               "\"3.9\", ...}}}})")
    return overlay(merged, {repo: {str(v): dict(s) for v, s in versions.items()} for repo, versions in data.items()})


def overlay(base: Mapping[str, Mapping[str, dict]],
            top: Mapping[str, Mapping[str, dict]]) -> dict[str, dict[str, dict]]:
    """`top`'s fields over `base`'s, per repository and version; `top`'s `"*"` over every version of its repository."""
    merged = {repo: {version: dict(fields) for version, fields in versions.items()} for repo, versions in base.items()}
    for repo, versions in top.items():
        target = merged.setdefault(repo, {})
        for version, fields in versions.items():
            if version != ANY_VERSION:
                target[version] = {**target.get(version, {}), **fields}
        if ANY_VERSION in versions:
            for version in target:
                target[version] = {**target[version], **versions[ANY_VERSION]}
    return merged


def _validated(raw: Mapping[str, Mapping[str, dict]], source: str) -> dict[str, dict[str, InstanceSpec]]:
    table: dict[str, dict[str, InstanceSpec]] = {}
    for repo, versions in raw.items():
        for version, fields in versions.items():
            fields = {**fields, "log_parser": fields.get("log_parser") or default_parser(repo)}
            try:
                table.setdefault(repo, {})[version] = InstanceSpec.model_validate(fields)
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in err.errors())
                raise ForagerError(f"{source}: the spec for {repo} version {version} is invalid: {problems}") from err
    return table


def default_parser(repo: str) -> str:
    """The log parser swebench 4.x uses for `repo` (parse_log_pytest for a repository it does not know)."""
    return DEFAULT_PARSERS.get(repo, FALLBACK_PARSER)


def _plain(specs: Mapping[str, Mapping[Any, Mapping[str, Any]]]) -> dict[str, dict[str, dict]]:
    """swebench's table as plain dicts with string versions (copies: swebench's own stays as it is)."""
    return {repo: {str(version): dict(fields) for version, fields in versions.items()}
            for repo, versions in specs.items()}


def _version_key(version: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.split("."))


__all__ = ["DEFAULT_PARSERS", "InstanceSpec", "SpecTable", "default_parser", "load_specs", "overlay"]
