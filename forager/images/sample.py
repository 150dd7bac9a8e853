"""The sample repository (forager/assets/sample-repo, shipped as package data): a git repository on the host, an image, and tasks.

Its commit is made with fixed author, committer and dates, so the same files always give the same
commit id: a task names it, and the image and the local clone agree on it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from forager.core import ForagerError, Task
from forager.files import content_digest, tree_digest
from forager.git import FIXED_IDENTITY, run_git
from forager.home import ensure_wheelhouse, forager_home
from forager.images.bootstrap import BASE_REPOSITORY, bootstrap_base_image
from forager.images.paths import asset
from forager.runtime.docker import docker_client, image_exists
from forager.runtime.registry import choose_runtime

SAMPLE_REPOSITORY = "forager/sample"
SAMPLE_REQUIREMENTS = ["pytest==8.3.4"]
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".git")


@dataclass(frozen=True)
class SampleRepo:
    path: Path
    commit: str


def _git(cwd: Path, *args: str) -> str:
    return run_git(cwd, *args, env=FIXED_IDENTITY)  # the fixed identity: the same files, the same commit id


def sample_repo() -> SampleRepo:
    """The sample library as a one-commit git repository under $FORAGER_HOME (made once per content)."""
    return asset_repo("sample-repo", forager_home() / "sample", "semverkit 1.0.0")


def asset_repo(name: str, parent: Path, message: str) -> SampleRepo:
    """The asset directory `name` as a one-commit git repository in `parent` (made once per content)."""
    source = asset(name)
    target = parent / f"repo-{tree_digest(source, skip=('__pycache__', '.pytest_cache'))}"
    if not (target / ".git").exists():
        partial = Path(tempfile.mkdtemp(prefix="repo-", dir=target.parent if target.parent.exists()
                                        else forager_home()))
        shutil.rmtree(partial)
        shutil.copytree(source, partial, ignore=_IGNORED)
        _git(partial, "init", "-q", "-b", "main")
        _git(partial, "add", "-A")
        _git(partial, "commit", "-q", "-m", message)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            partial.rename(target)
        except OSError:  # another process made it first
            shutil.rmtree(partial, ignore_errors=True)
    return SampleRepo(target, _git(target, "rev-parse", "HEAD").strip())


def sample_image_tag(client: docker.DockerClient, base: str, repo: SampleRepo) -> str:
    base_id = client.images.get(base).id
    dockerfile = asset("sample.Dockerfile").read_bytes()
    key = content_digest(f"{base_id}|{repo.commit}|{SAMPLE_REQUIREMENTS}", dockerfile)
    return f"{SAMPLE_REPOSITORY}:{key}"


def build_sample_image(client: docker.DockerClient, *, from_registry: bool = False, log=print) -> str:
    """Build (or find) the sample image, bootstrapping the base image first if needed."""
    base = bootstrap_base_image(client, from_registry=from_registry, log=log)
    repo = sample_repo()
    tag = sample_image_tag(client, base, repo)
    if image_exists(client, tag):
        _alias(client, tag, repo)
        return tag
    python_version = client.containers.run(
        base, ["python3", "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        remove=True, network_mode="none",
    ).decode().strip()
    wheels = ensure_wheelhouse(SAMPLE_REQUIREMENTS, python_version)
    with tempfile.TemporaryDirectory(prefix="forager-sample-", dir=forager_home()) as tmp:
        context = Path(tmp)
        shutil.copy(asset("sample.Dockerfile"), context / "Dockerfile")
        shutil.copytree(repo.path, context / "repo")
        shutil.copytree(wheels, context / "wheelhouse")
        log(f"building {tag}")
        try:
            client.images.build(
                path=str(context), tag=tag, rm=True, forcerm=True, buildargs={"BASE": base},
                labels={"forager": "1", "forager.base_commit": repo.commit}, network_mode="none",
            )
        except docker.errors.BuildError as err:
            lines = "".join(item.get("stream", "") or item.get("error", "") for item in err.build_log)
            raise ForagerError(f"building the sample image failed: {err}\n{lines[-3000:]}") from err
    _alias(client, tag, repo)
    return tag


def _alias(client: docker.DockerClient, tag: str, repo: SampleRepo) -> None:
    image = client.images.get(tag)
    image.tag(SAMPLE_REPOSITORY, "latest")
    image.tag(SAMPLE_REPOSITORY, commit_tag(repo))


def commit_tag(repo: SampleRepo) -> str:
    """The tag that names the sample image of this exact commit (what tasks refer to)."""
    return f"commit-{repo.commit[:12]}"


def reverse_patch(repo: SampleRepo, patch: str) -> str:
    """The diff that undoes `patch`: apply it to a scratch clone, then diff back to the commit."""
    with tempfile.TemporaryDirectory(prefix="forager-rev-") as tmp:
        clone = Path(tmp) / "repo"
        _git(Path(tmp), "clone", "-q", str(repo.path), str(clone))
        (Path(tmp) / "bug.patch").write_text(patch)
        _git(clone, "apply", str(Path(tmp) / "bug.patch"))
        return _git(clone, "diff", "-R")


def sample_tasks(image: str | None = None) -> list[Task]:
    """Tasks with planted bugs in the sample repository (forager/assets/sample-bugs)."""
    repo = sample_repo()
    bugs_dir = asset("sample-bugs")
    tasks = []
    for bug in json.loads((bugs_dir / "bugs.json").read_text()):
        setup_patch = (bugs_dir / bug["patch"]).read_text()
        tasks.append(Task(
            instance_id=f"semverkit__{bug['name']}",
            repo="forager/semverkit",
            image=image or f"{SAMPLE_REPOSITORY}:{commit_tag(repo)}",
            local_repo=str(repo.path),
            base_commit=repo.commit,
            problem_statement=bug["problem_statement"],
            setup_patch=setup_patch,
            patch=reverse_patch(repo, setup_patch),
            FAIL_TO_PASS=bug["FAIL_TO_PASS"],
            PASS_TO_PASS=bug["PASS_TO_PASS"],
            kind="mutate-fix",
            metadata={"source": "forager/assets/sample-bugs", "bug": bug["name"]},
        ))
    return tasks


def sample_tasks_for_runtime(
    runtime: str, *, log: Callable[[str], None] = print, warn: Callable[[str], None] = print,
    busy: Callable[[str], AbstractContextManager[Any]] = nullcontext,
) -> tuple[list[Task], str]:
    """The sample tasks and the runtime to run them on, building the sample image when Docker is chosen.

    `auto` falls back to the local runtime (said through `warn`) when no engine answers or the image
    cannot be built; `docker` raises instead. `busy(text)` wraps the build (a spinner, say).
    """
    kind = choose_runtime(runtime, log=warn)
    if kind != "docker":
        return sample_tasks(None), kind
    image = None
    with busy("building the base and sample images (first run only)"):
        try:
            image = build_sample_image(docker_client(), log=log)
        except ForagerError as err:
            if runtime == "docker":
                raise
            warn(f"could not build the sample image ({err}); using the local runtime")
    return sample_tasks(image), "docker" if image else "local"


__all__ = ["BASE_REPOSITORY", "SampleRepo", "asset_repo", "reverse_patch", "build_sample_image", "sample_repo", "sample_tasks",
           "sample_tasks_for_runtime"]
