"""What an image of a real project is made from: its source (a path, a git URL at a commit, a PyPI
release) and an optional recipe that overrides the detected install steps.

    iniconfig==2.3.1                   a PyPI source release (its sdist must carry the tests)
    https://github.com/o/r.git@SHA     a git URL at a commit (`git+URL@REV` too; no @REV: the default branch)
    ./path/to/project[@REV]            a local directory (a git work tree at REV, HEAD by default, or plain files)

Recipes are YAML files, `images/recipes/NAME.yaml` (used by default for the project NAME) or any path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forager.core import ForagerError
from forager.images.paths import PROJECT_ROOT

RECIPES_DIR = PROJECT_ROOT / "images" / "recipes"
_PYPI = re.compile(r"^(?:pypi:)?([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
_GIT_URL = re.compile(r"^(git\+)?(https?://|ssh://|git://|file://|git@[^:]+:)")
_REV = re.compile(r"^[A-Za-z0-9._-]+$")


class SpecError(ForagerError):
    """A source or recipe that cannot be used; the message says how to fix it."""


class Recipe(BaseModel):
    """Overrides for one project's image; every field is optional and replaces what detection found."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    """The project this recipe is for (informational; the file name is what selects it)."""
    python: str | None = None
    """The Python version the image must have (`3.11`): the base with it, instead of the one requires-python picks."""
    base: str | None = None
    """Base image to build on (default: the forager/base:SUITE whose Python the project accepts)."""
    system_packages: list[str] = Field(default_factory=list)
    """Debian packages installed with apt-get in the environment layer (the one step that needs a mirror)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables set in the image (and during the install)."""
    extras: list[str] | None = None
    """Extras to install the project with, instead of the detected test extras."""
    requirements: list[str] = Field(default_factory=list)
    """More requirements for the environment (added to the detected ones)."""
    replace_requirements: bool = False
    """Use `requirements` instead of the detected test requirements (the project's own stay)."""
    pre_install: list[str] = Field(default_factory=list)
    """Shell commands run as root in /repo before the project is installed."""
    install: str | None = None
    """Replaces the editable install command (`pip install --no-deps --no-build-isolation -e .`)."""
    version: str | None = None
    """The project's version, for VCS-versioned builds (SETUPTOOLS_SCM_PRETEND_VERSION)."""
    test_command: str | None = None
    """The pytest command tests are run with (node ids are appended to it)."""
    ignore_tests: list[str] = Field(default_factory=list)
    """Test files or directories (`--ignore`) and node ids (`--deselect`) to leave out."""
    min_pass_share: float | None = Field(default=None, ge=0.0, le=1.0)
    """Share of the non-skipped tests that must pass for the image to count as executable."""
    test_timeout: float | None = Field(default=None, gt=0)
    """Seconds the whole suite may take during verification."""

    @field_validator("python", mode="before")
    @classmethod
    def _python_version(cls, value: object) -> str | None:
        if value is not None and not (isinstance(value, str) and re.fullmatch(r"3\.\d+", value)):
            raise ValueError(f"python must be a quoted version like '3.11' (YAML reads 3.10 as 3.1), not {value!r}")
        return value


SourceKind = Literal["pypi", "git", "path"]


class ImageSpec(BaseModel):
    """One image to build: where the source comes from, and the recipe (if any)."""

    model_config = ConfigDict(extra="forbid")

    kind: SourceKind
    source: str
    """The source as the user wrote it."""
    name: str | None = None
    """The project's name (PyPI name; for git and path sources, found in the project files)."""
    version: str | None = None
    url: str | None = None
    """git: the repository URL."""
    path: str | None = None
    """path: the local directory."""
    rev: str | None = None
    """git and path: the commit (or any revision) to build; None: HEAD / the default branch."""
    recipe: Recipe | None = None
    recipe_path: str | None = None


def parse_source(source: str) -> ImageSpec:
    """`name==version`, a git URL with an optional `@REV`, or a local path with an optional `@REV`."""
    text = source.strip()
    if match := _PYPI.match(text):
        return ImageSpec(kind="pypi", source=text, name=match[1], version=match[2])
    if _GIT_URL.match(text):
        url, rev = _split_rev(re.sub(r"^git\+", "", text))
        return ImageSpec(kind="git", source=text, url=url, rev=rev)
    path, rev = (text, None) if Path(text).exists() else _split_rev(text)
    if Path(path).is_dir():
        return ImageSpec(kind="path", source=text, path=str(Path(path).resolve()), rev=rev)
    raise SpecError(
        f"cannot tell what {source!r} is: give a PyPI release as NAME==VERSION (e.g. iniconfig==2.3.1), a git URL "
        "(https://..., git+ssh://..., file://...) with an optional @COMMIT, or an existing directory"
    )


def _split_rev(text: str) -> tuple[str, str | None]:
    """`URL@REV` -> (URL, REV); the `@` of `git@host:` is not a revision (a REV has no `/` or `:`)."""
    head, at, rev = text.rpartition("@")
    if at and head and _REV.match(rev) and "/" not in rev:
        return head, rev
    return text, None


def recipe_for(name: str | None, explicit: str | None = None) -> tuple[Recipe | None, str | None]:
    """The recipe to use: `explicit` (a path or a name in images/recipes), else images/recipes/NAME.yaml if any."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            path = RECIPES_DIR / f"{explicit}.yaml"
        if not path.is_file():
            raise SpecError(f"no recipe {explicit!r}: not a file, and no {RECIPES_DIR / (explicit + '.yaml')}")
        return load_recipe(path), str(path)
    if name:
        for candidate in {name, name.lower(), normalize_name(name)}:
            path = RECIPES_DIR / f"{candidate}.yaml"
            if path.is_file():
                return load_recipe(path), str(path)
    return None, None


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate a recipe file; errors name the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SpecError(f"recipe {path} must be a mapping of fields (python, system_packages, test_command, ...)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'recipe'}: {e['msg']}" for e in err.errors())
        fields = ", ".join(Recipe.model_fields)
        raise SpecError(f"recipe {path} is invalid: {problems} (known fields: {fields})") from err


def normalize_name(name: str) -> str:
    """PEP 503 normalisation, also used in image names (`forager/repo-NAME`)."""
    return re.sub(r"[-_.]+", "-", name).lower()
