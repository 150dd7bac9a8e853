"""A build's base image: the one asked for, or the one whose Python the project accepts, bootstrapped when
first needed.

Detection has already chosen a Python from the bases' table (`bootstrap.SUITE_PYTHONS`), so a build
that fits no base stops at detect, before anything is resolved or built; the base's probe then
confirms the exact version that resolution targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker

from forager.images.bootstrap import (
    available_pythons,
    base_alias,
    base_image_tag,
    bootstrap_base_image,
    suite_for_python,
)
from forager.images.detect import InstallPlan, detect_install
from forager.images.layers import probe_base
from forager.images.manifest import ImageBuildError
from forager.images.pythons import choose_python
from forager.images.resolve import Target
from forager.runtime.docker import image_exists


OLD_VENV_PIP = {"bullseye": "pip>=21.3"}
"""Suites whose venv pip (bullseye's 20.3) cannot install a pyproject-only project editable (PEP 660):
the lock carries a newer pip, which the environment layer installs over it."""


@dataclass(frozen=True)
class BaseChoice:
    base: str
    """The base image's name (`forager/base:trixie`, or the one asked for)."""
    base_id: str
    target: Target
    install: InstallPlan
    """The install plan for the base's Python (tox factors, extras and markers depend on it)."""


def choose_base(client: docker.DockerClient, root: Path, install: InstallPlan, *, base: str | None = None,
                python: str | None = None, log: Callable[[str], None] = print,
                on_bootstrap: Callable[[str], None] = lambda suite: None) -> BaseChoice:
    """The base for `install` (detected in `root`): `base` if given (its Python must be `python`, when given),
    else the base of `python`, else the one detection chose; `on_bootstrap(suite)` before a base is built."""
    if base:
        base_id, target = probe_base(client, base)
        if python and python != target.python:
            raise ImageBuildError("detect", f"Python {python} was asked for, but {base} has {target.python}: "
                                  "set `base` to an image with that Python, or drop `python`")
        return BaseChoice(base, base_id, target, detect_install(root, python=target.version or target.python))
    if python:
        install = detect_install(root, python=python)
    if install.python is None:
        why = next((n for n in install.notes if "but the bases have" in n), "no base image fits")
        raise ImageBuildError("detect", f"{why}: no base image fits (bases: {available_pythons()}); a recipe's "
                              "`python` or `forager images build --python` forces one")
    suite = suite_for_python(install.python)
    if not image_exists(client, base_image_tag(suite=suite)):
        on_bootstrap(suite)
    bootstrap_base_image(client, suite=suite, log=log)
    name = base_alias(suite)
    base_id, target = probe_base(client, name)
    if target.version != install.python:
        log(f"note: {name} has Python {target.version}, not {install.python} as its table says")
        if python is None and choose_python(install.requires_python, [], [target.version]).version is None:
            raise ImageBuildError("detect", f"{name} has Python {target.version}, which the project's requires-python "
                                  f"{install.requires_python} excludes")
        install = detect_install(root, python=target.version)
    if suite in OLD_VENV_PIP and OLD_VENV_PIP[suite] not in install.build_requires:
        install.build_requires.append(OLD_VENV_PIP[suite])
        install.notes.append(f"{OLD_VENV_PIP[suite]}: {suite}'s venv pip is too old for editable installs")
    return BaseChoice(name, base_id, target, install)
