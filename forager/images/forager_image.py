"""Forager's own image, for the top-level docker-compose.yml: the collector, the Ray nodes and the trainer.

Built offline like the other images, from a source checkout: the bookworm base (Python 3.11), the
dependencies from a host-side wheelhouse (`pip download` on the host; installed in a build stage that
is thrown away, so no layer keeps a wheel), and Forager as a wheel of this checkout with the plug-ins
it ships (forager_envs, forager_rewards, forager_policies), its configs/ and an entrypoint that cleans
up after the command (images/forager/). Two targets:

- `forager/forager:latest`: Forager, Ray and pytest, enough for the collector and the Ray nodes;
- `forager/forager:train` (`--train`): also the train extra (torch, transformers, gguf, accelerate,
  tensorboard), for the trainer. torch from PyPI brings its CUDA wheels: a 3 GB download, a 6.5 GB
  image, ~20 minutes to build on two cores (the other: 130 MB of wheels, 0.75 GB, 2-5 minutes).

Each is two images, tagged by content hashes of their inputs: the dependencies (`forager/forager-deps`:
the base, the requirements, deps.Dockerfile) rebuilt only when those change, and Forager over them
(the checkout's sources and configs, the Dockerfile, the entrypoint), a build of under a minute.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from forager.core import ForagerError
from forager.files import content_digest, tree_digest
from forager.home import forager_home
from forager.images.bootstrap import DEBIAN_SUITE, SUITE_PYTHONS, bootstrap_base_image
from forager.images.paths import PROJECT_ROOT
from forager.images.sample import commit_tag, sample_repo
from forager.runtime.docker import image_exists

FORAGER_REPOSITORY = "forager/forager"
DEPS_REPOSITORY = "forager/forager-deps"
SOURCES = ["setup.py", "pyproject.toml", "README.md", "forager", "envs", "rewards", "policies"]
"""What the wheel is built from (setup.py maps envs/, rewards/, policies/ to the shipped plug-in packages)."""
SKIP = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
"""Wheels bookworm's glibc (2.36) runs: torch's are manylinux_2_28, which `manylinux2014` alone would refuse."""
PYTHON = ".".join(SUITE_PYTHONS[DEBIAN_SUITE].split(".")[:2])
TOOLS = ["pytest>=8"]
"""Installed beside Forager (not dependencies of it): the local runtime runs a task's tests with the environment's
pytest, as the learning demo of the trainer service does."""
RECIPE_VERSION = 1  # bump when the way these images are made changes


@dataclass(frozen=True)
class ForagerImage:
    tag: str
    """The content tag (`forager/forager:HASH`, `forager/forager:train-HASH`)."""
    alias: str
    """The moving tag compose uses (`forager/forager:latest`, `forager/forager:train`)."""
    cached: bool
    build_s: float
    size_bytes: int


def image_requirements(train: bool) -> list[str]:
    """The project's dependencies and Ray (`ray[default]`, as the train extra names it), or the whole train extra."""
    try:
        import tomllib  # the checkout's pyproject.toml: what the wheel declares

        project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
        base, extra = list(project["dependencies"]), list(project["optional-dependencies"]["train"])
    except (ImportError, OSError, KeyError):  # Python 3.10, or no checkout: the installed metadata
        requires = importlib.metadata.requires("forager") or []
        base = [r for r in requires if "extra ==" not in r]
        extra = [r.split(";")[0].strip() for r in requires if re.search(r"""extra\s*==\s*["']train["']""", r)]
    if not extra:
        raise ForagerError("forager declares no `train` extra; reinstall it (`pip install -e .`)")
    return base + (extra if train else [r for r in extra if re.match(r"ray\b", r)])


def source_checkout() -> Path:
    """The checkout the wheel is built from; a clear error in an installed Forager."""
    missing = [name for name in SOURCES if not (PROJECT_ROOT / name).exists()]
    if missing or not (PROJECT_ROOT / "images" / "forager" / "Dockerfile").exists():
        raise ForagerError(f"`forager images forager` builds from a source checkout of Forager, and {PROJECT_ROOT} is "
                           "not one: run it in a clone (`pip install -e .` there)")
    return PROJECT_ROOT


def build_forager_image(client: docker.DockerClient, *, train: bool = False, force: bool = False,
                        log: Callable[[str], None] = print) -> ForagerImage:
    """Build (or find) Forager's image, the base and the dependencies image first where needed."""
    root = source_checkout()
    started = time.monotonic()
    base = bootstrap_base_image(client, log=log)
    deps = _deps_image(client, base, image_requirements(train), train, force, log)
    with tempfile.TemporaryDirectory(prefix="forager-image-", dir=forager_home()) as tmp:
        context = Path(tmp)
        _stage_sources(root, context / "src")
        shutil.copytree(root / "configs", context / "configs", ignore=shutil.ignore_patterns(*SKIP))
        for name in ("Dockerfile", "entrypoint.sh"):
            shutil.copy2(root / "images" / "forager" / name, context / name)
        key = content_digest(RECIPE_VERSION, TOOLS, client.images.get(deps).id, tree_digest(context / "src", skip=SKIP),
                             tree_digest(context / "configs"), (context / "Dockerfile").read_bytes(),
                             (context / "entrypoint.sh").read_bytes())
        tag = f"{FORAGER_REPOSITORY}:{'train-' if train else ''}{key}"
        alias = f"{FORAGER_REPOSITORY}:{'train' if train else 'latest'}"
        cached = image_exists(client, tag) and not force
        if not cached:
            log("building the Forager wheel from " + str(root))
            _build_wheel(context / "src", context / "dist")
            shutil.rmtree(context / "src")
            for wheel in ensure_platform_wheelhouse(TOOLS, log).glob("*.whl"):
                _link_or_copy(str(wheel), str(context / "dist" / wheel.name))
            (context / "dist" / "requirements.txt").write_text("\n".join(["forager", *TOOLS]) + "\n")
            log(f"building {tag}")
            _docker_build(client, context, tag, {"DEPS": deps}, "Forager's image", log)
    image = client.images.get(tag)
    image.tag(FORAGER_REPOSITORY, alias.split(":")[1])
    return ForagerImage(tag, alias, cached, time.monotonic() - started, int(image.attrs.get("Size") or 0))


def _deps_image(client: docker.DockerClient, base: str, requirements: list[str], train: bool, force: bool,
                log: Callable[[str], None]) -> str:
    dockerfile = (PROJECT_ROOT / "images" / "forager" / "deps.Dockerfile").read_bytes()
    key = content_digest(RECIPE_VERSION, client.images.get(base).id, sorted(requirements), PLATFORMS, dockerfile)
    tag = f"{DEPS_REPOSITORY}:{'train-' if train else ''}{key}"
    if image_exists(client, tag) and not force:
        return tag
    wheels = ensure_platform_wheelhouse(requirements, log)
    with tempfile.TemporaryDirectory(prefix="forager-deps-", dir=forager_home()) as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_bytes(dockerfile)
        # Hard links, not copies: the same 3 GB of wheels, and docker-py reads them into the context as it goes.
        shutil.copytree(wheels, context / "wheelhouse", copy_function=_link_or_copy)
        size = sum(p.stat().st_size for p in (context / "wheelhouse").iterdir())
        log(f"building {tag} from {len(requirements)} requirement(s), {size / 1e6:.0f} MB of wheels "
            f"({'minutes: torch and its CUDA wheels' if train else 'a minute or two'})")
        logs = _docker_build(client, context, tag, {"BASE": base}, "the dependencies image", log)
    for stage in _stage_images(logs):  # the install stage: the wheels and a copy of the environment, ~10 GB with torch
        try:
            client.images.remove(stage)
        except docker.errors.APIError:  # in use by a build running now: `docker image prune` takes it later
            pass
    return tag


def ensure_platform_wheelhouse(requirements: list[str], log: Callable[[str], None] = print) -> Path:
    """Wheels of `requirements` and everything they need, for the base's Python and glibc (cached by its inputs)."""
    import subprocess
    import sys

    key = content_digest(sorted(requirements), PYTHON, PLATFORMS)
    target = forager_home() / "wheelhouse" / f"forager-{key}"
    if (target / "requirements.txt").exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = ", ".join(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in requirements)  # no brackets: rich markup
    log(f"downloading the wheels of {names} and what they need (Python {PYTHON})")
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", PYTHON, "--implementation", "cp", *platforms, "--dest", str(partial), *requirements]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ForagerError(f"pip download failed for Forager's image:\n{result.stderr[-3000:]}")
    (partial / "requirements.txt").write_text("\n".join(requirements) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _link_or_copy(source: str, target: str) -> None:
    try:
        Path(target).hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def _stage_sources(root: Path, target: Path) -> None:
    """The files the wheel is made of, copied out of the checkout (a build there would write build/ into it)."""
    target.mkdir(parents=True)
    for name in SOURCES:
        path = root / name
        if path.is_dir():
            shutil.copytree(path, target / name, ignore=shutil.ignore_patterns(*SKIP, "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(path, target / name)


def _build_wheel(source: Path, dist: Path) -> None:
    import subprocess
    import sys

    # No build isolation: setuptools and wheel come from this environment, so nothing is fetched.
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
           "--disable-pip-version-check", "--wheel-dir", str(dist), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ForagerError("building the Forager wheel failed (it needs setuptools>=68 and wheel installed):\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")


def _docker_build(client: docker.DockerClient, context: Path, tag: str, buildargs: dict[str, str], what: str,
                  log: Callable[[str], None]) -> list[str]:
    """Build `context`, saying each step as it starts, and return the log's lines; a ForagerError with the log's
    tail when the build fails."""
    lines: list[str] = []
    try:
        for chunk in client.api.build(path=str(context), tag=tag, rm=True, forcerm=True, buildargs=buildargs,
                                      labels={"forager": "1"}, network_mode="none", decode=True):
            if "error" in chunk:
                raise ForagerError(f"building {what} ({tag}) failed: {chunk['error'].strip()}\n"
                                   f"{''.join(lines)[-3000:]}")
            line = chunk.get("stream", "")
            lines.append(line)
            if line.startswith("Step "):
                log(f"  {' '.join(line.split())[:160]}")
    except docker.errors.APIError as err:
        raise ForagerError(f"building {what} ({tag}) failed: {err}\n{''.join(lines)[-3000:]}") from err
    if not image_exists(client, tag):
        raise ForagerError(f"building {what} ({tag}) ended without the image:\n{''.join(lines)[-3000:]}")
    return lines


def _stage_images(log: list[str]) -> list[str]:
    """The images of a multi-stage build's earlier stages: the layer the builder names last before each later FROM."""
    stages, last, froms = [], None, 0
    for line in log:
        if re.match(r"Step \d+/\d+ : FROM ", line):
            froms += 1
            if froms > 1 and last:
                stages.append(last)
        elif match := re.match(r" ---> ([0-9a-f]{12,64})\s*$", line):
            last = match[1]
    return stages


def require_sample_image(client: docker.DockerClient) -> str:
    """The sample image the sample tasks name (`forager/sample:commit-...`), or a ForagerError saying how to build it.

    For a container of the stack: it cannot build the image itself (the base needs debootstrap on the host).
    """
    tag = f"forager/sample:{commit_tag(sample_repo())}"
    if not image_exists(client, tag):
        raise ForagerError(f"the sample image {tag} is not on this Docker engine, and the sample tasks run in it. "
                           "Build it on the host (the base image needs debootstrap there): `forager images sample && "
                           "forager images forager`, then `docker-compose --profile cpu up` again")
    return tag
