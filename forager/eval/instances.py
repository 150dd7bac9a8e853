"""SWE-bench instances' environments, built offline from swebench's spec for the repo and version.

An instance's image is Forager's image of the repository at `base_commit` (its history up to that
commit and nothing after it: `forager.images.source`), taken from a local mirror (`find_mirror`), in
the environment swebench's spec asks for. Packages are resolved on the host and installed from the
host's wheelhouse, as every Forager image's are; the spec maps onto a `Recipe`:

    python               the Debian base with that Python (3.9 bullseye, 3.11 bookworm, 3.13 trixie)
    packages             requirements when it lists them; `requirements.txt`: the repository's requirement
                         files, as detection reads them; `environment.yml`: not supported yet
    pip_packages         requirements; a pin the project's own requirements exclude is dropped, as
                         swebench's install of the project would replace it (sphinx 3.0: Jinja2==3.0.3
                         against `Jinja2<3.0`, which its pre_install writes into setup.py)
    extra_requirements   requirements, never dropped (Forager's own field: a spec file's overlay)
    pre_install          run before the install, and seen by resolution too; `apt-get install` lines
                         become system packages (the repo layer has no network); an edit that adds
                         pytest's `-rA` to tox.ini (sphinx) becomes PYTEST_ADDOPTS=-rA in the image,
                         since the layer puts the commit's files back after the install
    install              the editable install the repo layer records (so `refresh_install` makes it again
                         at another commit), offline, with the spec's extras and pip flags
    test_cmd             the recipe's test command when it runs pytest

Images are not verified by running the whole suite: an instance's own tests decide (the grader).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from forager.core import DEFAULT_TEST_COMMAND, ForagerError, Task
from forager.eval.specs import InstanceSpec, SpecTable
from forager.git import git_command
from forager.harness.command import PytestCommand
from forager.home import forager_home
from forager.images.bootstrap import (
    BootstrapError,
    available_pythons,
    base_alias,
    bootstrap_base_image,
    suite_for_python,
)
from forager.images.build import BuildOptions, build_image
from forager.images.layers import VENV, WORKDIR, probe_base
from forager.images.pre_install import pre_installed_tree
from forager.images.prune import keep_image
from forager.images.resolve import project_requirements
from forager.images.source import fetch_source
from forager.images.spec import ImageSpec, Recipe, parse_source
from forager.tasks.formats import task_from_record

Log = Callable[[str], None]
ProgressCallback = Callable[[str, str], None]
"""(instance_id, stage): a build's stages (`fetch`, `resolve`, `env`, `repo`, ...), then `done`, `cached`, `failed`."""

NEEDED = ("instance_id", "repo", "base_commit", "version")
SWEBENCH_WORKDIR = "/testbed"
_RA_IN_TOX = re.compile(r"\bsed\b.*\bpytest -rA\b.*\btox\.ini\b")
_APT = re.compile(r"^(?:DEBIAN_FRONTEND=\S+\s+)?apt(?:-get)?\s+(?P<args>.*)$")
_PIP_INSTALL = re.compile(r"^(?:python[0-9.]*\s+-m\s+)?pip[0-9.]*\s+install\s+(?P<args>.+)$")
_SETUP_PY = re.compile(r"^python[0-9.]*\s+setup\.py\s+(?:build|install|develop)\b")
_KEPT_PIP_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "--no-use-pep517"}
_fetch_locks: dict[str, threading.Lock] = {}
_fetch_locks_guard = threading.Lock()


@dataclass
class InstanceImage:
    """One instance's image, or why it has none."""

    instance_id: str
    tag: str | None = None
    build_s: float = 0.0
    cached: bool = False
    """Nothing was built: the image of these inputs existed."""
    error: str | None = None
    log: str = ""
    """The build's log file (forager.images.build)."""
    notes: list[str] = field(default_factory=list)


# -- the spec as a recipe ---------------------------------------------------------------------------------
def instance_recipe(row: Mapping[str, Any], spec: InstanceSpec) -> Recipe:
    """The Recipe of an instance's image (see the module docstring); a ForagerError for what cannot be built."""
    requirements, replace = spec_requirements(spec, f"{row.get('repo')} version {row.get('version')}")
    pre_install, system_packages, env = split_pre_install(spec.pre_install)
    install, extras = offline_install(spec.install)
    test = spec.test_command
    return Recipe(name=str(row.get("repo") or "") or None, python=spec.python, system_packages=system_packages,
                  env=env, extras=extras, requirements=requirements, replace_requirements=replace,
                  pre_install=pre_install, install=install,
                  test_command=test if test and PytestCommand.parse(test) is not None else None)


def spec_requirements(spec: InstanceSpec, what: str) -> tuple[list[str], bool]:
    """The spec's requirements (packages, then pip_packages, then extra_requirements, installed in that order:
    see `_after`), and whether they replace the detected test requirements."""
    packages, replace = spec.packages, True
    if packages == "environment.yml":
        raise ForagerError(f"the swebench spec for {what} installs the repository's environment.yml (conda), which "
                           "Forager does not support yet: list its packages in a spec file that extends swebench's "
                           "(`packages: \"numpy scipy ...\"` or `extra_requirements`) and pass it with --specs")
    if packages == "requirements.txt":
        listed, replace = [], False  # detection reads the repository's requirement files
    else:
        listed = list(packages) if isinstance(packages, list) else shlex.split(packages or "")
    merged: list[str] = []
    for group in (listed, spec.pip_packages, spec.extra_requirements):
        merged = _after(merged, group)
    return merged, replace


def _after(installed: list[str], later: list[str]) -> list[str]:
    """`installed`, then `later` installed over them as pip would: a later requirement that an earlier one of its
    name already satisfies (a bare `numpy` after `numpy==1.19.2`) changes nothing; one that conflicts replaces it."""
    merged = list(installed)
    for text in later:
        same = [r for r in installed if _name(r) == _name(text)]
        new = _parse(text)
        pins = [s.version for r in same if (old := _parse(r)) for s in old.specifier if s.operator == "=="]
        if same and new is not None and all(new.specifier.contains(v, prereleases=True) for v in pins) and pins:
            continue  # satisfied by the earlier pin
        if same and new is not None and not new.specifier:
            continue  # a bare name: whatever came before satisfies it
        merged = [r for r in merged if r not in same] + [text]
    return merged


def split_pre_install(commands: Iterable[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """(commands, system packages, environment): apt lines become packages; tox.ini's `-rA` becomes PYTEST_ADDOPTS."""
    kept: list[str] = []
    packages: list[str] = []
    env: dict[str, str] = {}
    for command in commands:
        command = command.replace(SWEBENCH_WORKDIR, WORKDIR)
        parts = [p.strip() for p in command.split("&&")]
        apt = [_APT.match(p) for p in parts if p]
        if apt and all(apt):
            for match in apt:
                words = match["args"].split()
                if "install" in words:
                    packages += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
            continue
        if _RA_IN_TOX.search(command):
            env["PYTEST_ADDOPTS"] = "-rA"
        kept.append(command)
    return kept, list(dict.fromkeys(packages)), env


def offline_install(install: str | None) -> tuple[str | None, list[str]]:
    """(the install command, its extras): a pip or setup.py install of the project as Forager's editable install,
    offline, with the spec's extras and flags; another command as it is (None: Forager's default)."""
    command = (install or "").replace(SWEBENCH_WORKDIR, WORKDIR).strip()
    if not command:
        return None, []
    steps = [s.strip() for s in re.split(r";|&&", command) if s.strip()]
    if all(_SETUP_PY.match(s) for s in steps):
        return _editable([], []), []
    match = _PIP_INSTALL.match(command) if len(steps) == 1 else None
    if match is None:
        return command, []
    target, flags = None, []
    words = iter(shlex.split(match["args"]))
    for word in words:
        if word in ("-e", "--editable"):
            target = next(words, None)
        elif word in _KEPT_PIP_FLAGS:
            flags.append(word)
        elif word == "--no-build-isolation":
            continue
        elif not word.startswith("-") and target is None:
            target = word
        else:
            return command, []  # an option this mapping does not know: the spec's command as it is
    extras = re.fullmatch(r"\.(?:\[([\w,.\s-]*)\])?", target or "")
    if extras is None:
        return command, []
    names = [e.strip() for e in (extras[1] or "").split(",") if e.strip()]
    return _editable(names, flags), names


def _editable(extras: list[str], flags: list[str]) -> str:
    pep517 = [] if "--no-use-pep517" in flags else ["--use-pep517"]
    target = "." + (f"[{','.join(extras)}]" if extras else "")
    return " ".join([f"{VENV}/bin/python -m pip install --no-index --no-deps --no-build-isolation",
                     "--disable-pip-version-check", *pep517, *flags, "-e", shlex.quote(target)])


def yield_to_project(requirements: list[str], project: list[str],
                     keep: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(requirements, notes): the `==` pins that the project's own requirements exclude left out, those in `keep`
    (the user's) never; swebench installs the pins first and the project's install then replaces them."""
    wanted: dict[str, list[Requirement]] = {}
    for text in project:
        requirement = _parse(text)
        if requirement is not None:
            wanted.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    kept, notes, protected = [], [], set(keep)
    for text in requirements:
        pin = _parse(text)
        pinned = [s.version for s in pin.specifier if s.operator == "=="] if pin is not None else []
        excluding = [r for r in wanted.get(canonicalize_name(pin.name), []) if pinned and
                     not r.specifier.contains(pinned[0], prereleases=True)] if pin is not None else []
        if excluding and text not in protected:
            notes.append(f"{text} left out: the project requires {excluding[0]} (its install replaces the pin)")
        else:
            kept.append(text)
    return kept, notes


# -- the repository's mirror --------------------------------------------------------------------------
def find_mirror(repos_dir: str | Path, repo: str) -> str:
    """The source of `repo` in `repos_dir` as a file:// URL (`parse_source` takes it with `@COMMIT`): a bare
    repository or a work tree `OWNER__NAME` or `OWNER__NAME.git`, or a bundle `OWNER__NAME.bundle` (cloned once
    into Forager's cache)."""
    return mirror_path(repos_dir, repo).as_uri()


def mirror_path(repos_dir: str | Path, repo: str) -> Path:
    folder = Path(repos_dir).expanduser().absolute()
    name = repo.replace("/", "__")
    looked = [folder / name, folder / f"{name}.git", folder / f"{name}.bundle"]
    for path in looked[:2]:
        if path.is_dir() and ((path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())):
            return path
    if looked[2].is_file():
        return _clone_bundle(looked[2])
    raise ForagerError(f"no mirror of {repo} in {folder}: looked for {', '.join(p.name for p in looked)} (a bare "
                       f"repository or work tree, or a git bundle); e.g. `git clone --mirror "
                       f"https://github.com/{repo}.git {looked[1]}`")


def check_commit(path: Path, repo: str, commit: str) -> None:
    """A ForagerError unless the mirror at `path` holds `commit`."""
    result = git_command(path, "cat-file", "-e", f"{commit}^{{commit}}")
    if result.returncode != 0:
        raise ForagerError(f"the mirror of {repo} at {path} has no commit {commit}: fetch it "
                           f"(`git -C {path} fetch origin {commit}`, or a newer mirror)")


def _clone_bundle(bundle: Path) -> Path:
    digest = hashlib.sha256()
    with bundle.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    target = forager_home() / "sources" / "bundles" / f"{bundle.stem}-{digest.hexdigest()[:12]}.git"
    with _fetch_lock(str(target)):
        if not (target / "HEAD").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            result = git_command(None, "clone", "--quiet", "--mirror", str(bundle), str(partial))
            if result.returncode != 0:
                raise ForagerError(f"cannot clone the bundle {bundle}: {result.stderr.strip()[-500:]}")
            partial.rename(target)
    return target


# -- building ---------------------------------------------------------------------------------------------
def build_instance_image(row: Mapping[str, Any], spec: InstanceSpec, repos_dir: str | Path, *, force: bool = False,
                         layer_timeout: float = 1800.0, log: Log = lambda _: None,
                         on_stage: ProgressCallback | None = None) -> InstanceImage:
    """Build (or find) one instance's image; every failure is the result's `error`, never an exception."""
    instance_id = str(row.get("instance_id") or "?")
    image = InstanceImage(instance_id)
    started = time.monotonic()
    notify = on_stage or (lambda *_: None)

    def note(message: str) -> None:  # what preparing said that matters is kept with the result
        log(message)
        if message.startswith("note: "):
            image.notes.append(message.removeprefix("note: "))

    try:
        image_spec = _prepare(row, spec, repos_dir, note, notify)
        result = build_image(image_spec, BuildOptions(python=spec.python, verify=False, force=force,
                                                      layer_timeout=layer_timeout),
                             on_stage=lambda _source, stage, _detail: notify(instance_id, stage))
        image.log = result.log
        if result.error is not None:
            image.error = str(result.error)
        else:
            image.tag = result.tag
            image.cached = "repo" not in result.stage_s and not force  # no layer was made
            keep_image(result.tag, f"SWE-bench instance {instance_id}")  # no manifest entry: prune must know
    except (ForagerError, docker.errors.DockerException, OSError) as err:
        image.error = str(err)
        notify(instance_id, "failed")
    except Exception as err:  # noqa: BLE001 - one instance's surprise must not stop the others
        log(traceback.format_exc())
        image.error = f"{type(err).__name__}: {err}"
        notify(instance_id, "failed")
    image.build_s = round(time.monotonic() - started, 2)
    return image


def _prepare(row: Mapping[str, Any], spec: InstanceSpec, repos_dir: str | Path, log: Log,
             notify: ProgressCallback) -> ImageSpec:
    """The ImageSpec to build: the recipe, less the pins the project's own requirements replace."""
    missing = [key for key in NEEDED if row.get(key) in (None, "")]
    if missing:
        raise ForagerError(f"the row has no {', '.join(missing)}")
    repo, commit = str(row["repo"]), str(row["base_commit"])
    recipe = instance_recipe(row, spec)
    suite = _suite(spec, repo, str(row["version"]))
    path = mirror_path(repos_dir, repo)
    check_commit(path, repo, commit)
    notify(str(row["instance_id"]), "fetch")
    image_spec = parse_source(f"{path.as_uri()}@{commit}").model_copy(
        update={"recipe": recipe, "recipe_path": f"swebench spec {repo} {row['version']}"})
    with _fetch_lock(path.as_uri()):  # instances of one repository share its mirror in the cache
        fetched = fetch_source(image_spec, log)
    pins = [r for r in recipe.requirements if "==" in r and r not in spec.extra_requirements]
    if not pins:
        return image_spec
    client = docker.from_env(timeout=600)
    try:
        bootstrap_base_image(client, suite=suite, log=log)
        base = base_alias(suite)
        _, target = probe_base(client, base)
        tree = pre_installed_tree(client, base, fetched, recipe.pre_install, log)
    finally:
        client.close()
    project = project_requirements(tree, recipe.extras or [], target, log, env=recipe.env) or []
    kept, notes = yield_to_project(recipe.requirements, project, keep=spec.extra_requirements)
    for note in notes:
        log(f"note: {note}")
    recipe = recipe.model_copy(update={"requirements": kept})
    return image_spec.model_copy(update={"recipe": recipe})


def _suite(spec: InstanceSpec, repo: str, version: str) -> str:
    try:
        return suite_for_python(spec.python)
    except BootstrapError as err:
        raise ForagerError(f"the swebench spec for {repo} {version} asks for Python {spec.python}, and Forager's bases "
                           f"have {available_pythons()}: give it another `python` in a spec file that extends "
                           "swebench's (--specs)") from err


def build_instance_images(rows: Iterable[Mapping[str, Any]], specs: SpecTable, repos_dir: str | Path, workers: int = 2,
                          on_progress: ProgressCallback | None = None, *, force: bool = False,
                          log: Log = lambda _: None) -> list[InstanceImage]:
    """Every row's image, `workers` at a time, in the order of `rows`; a row that cannot have one (a missing
    field, no spec for its version, no mirror or commit, a failed build) is an InstanceImage with `error`."""
    notify = on_progress or (lambda *_: None)

    def one(row: Mapping[str, Any]) -> InstanceImage:
        instance_id = str(row.get("instance_id") or "?")
        try:
            spec = specs.get(str(row.get("repo")), None if row.get("version") is None else str(row["version"]))
        except ForagerError as err:
            notify(instance_id, "failed")
            return InstanceImage(instance_id, error=str(err))
        return build_instance_image(row, spec, repos_dir, force=force, log=log, on_stage=notify)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="forager-instance") as pool:
        return list(pool.map(one, list(rows)))


def instance_task(row: Mapping[str, Any], spec: InstanceSpec, image_tag: str) -> Task:
    """The swebench row as a Task in its Forager image: the repository at /repo, the spec's test command and
    log parser, and the spec itself in `metadata["swebench_spec"]` (the grader's eval script reads it)."""
    task = task_from_record(dict(row), format="swebench")
    metadata = {**task.metadata, "swebench_spec": spec.model_dump(), "test_command_source": "swebench_spec"}
    return Task.model_validate({**task.model_dump(), "image": image_tag, "workdir": WORKDIR,
                                "test_command": spec.test_command or DEFAULT_TEST_COMMAND,
                                "log_parser": spec.log_parser or "parse_log_pytest", "metadata": metadata})


# -- helpers ----------------------------------------------------------------------------------------------
def _name(requirement: str) -> str:
    parsed = _parse(requirement)
    return canonicalize_name(parsed.name) if parsed is not None else requirement


def _parse(requirement: str) -> Requirement | None:
    try:
        return Requirement(requirement)
    except InvalidRequirement:
        return None


def _fetch_lock(key: str) -> threading.Lock:
    with _fetch_locks_guard:
        return _fetch_locks.setdefault(key, threading.Lock())


__all__ = ["InstanceImage", "build_instance_image", "build_instance_images", "check_commit", "find_mirror",
           "instance_recipe", "instance_task", "mirror_path", "offline_install", "spec_requirements",
           "split_pre_install", "yield_to_project"]
