"""The sample repository (examples/sample-repo): a git repository on the host, an image, and tasks.

Its commit is made with fixed author, committer and dates, so the same files always give the same
commit id: a task names it, and the image and the local clone agree on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from forager.core import ForagerError, Task
from forager.images.bootstrap import BASE_REPOSITORY, bootstrap_base_image, image_exists
from forager.images.paths import forager_home, project_file
from forager.images.wheelhouse import ensure_wheelhouse

SAMPLE_REPOSITORY = "forager/sample"
SAMPLE_REQUIREMENTS = ["pytest==8.3.4"]
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Forager", "GIT_AUTHOR_EMAIL": "forager@localhost", "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Forager", "GIT_COMMITTER_EMAIL": "forager@localhost",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
}
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".git")


@dataclass(frozen=True)
class SampleRepo:
    path: Path
    commit: str


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ForagerError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and ".pytest_cache" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def sample_repo() -> SampleRepo:
    """The sample library as a one-commit git repository under $FORAGER_HOME (made once per content)."""
    source = project_file("examples/sample-repo")
    target = forager_home() / "sample" / f"repo-{_tree_digest(source)}"
    if not (target / ".git").exists():
        partial = Path(tempfile.mkdtemp(prefix="repo-", dir=target.parent if target.parent.exists()
                                        else forager_home()))
        shutil.rmtree(partial)
        shutil.copytree(source, partial, ignore=_IGNORED)
        _git(partial, "init", "-q", "-b", "main")
        _git(partial, "add", "-A")
        _git(partial, "commit", "-q", "-m", "semverkit 1.0.0")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            partial.rename(target)
        except OSError:  # another process made it first
            shutil.rmtree(partial, ignore_errors=True)
    return SampleRepo(target, _git(target, "rev-parse", "HEAD").strip())


def sample_image_tag(client: docker.DockerClient, base: str, repo: SampleRepo) -> str:
    base_id = client.images.get(base).id
    dockerfile = project_file("images/sample/Dockerfile").read_bytes()
    key = hashlib.sha256(f"{base_id}|{repo.commit}|{SAMPLE_REQUIREMENTS}".encode() + dockerfile).hexdigest()[:12]
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
        shutil.copy(project_file("images/sample/Dockerfile"), context / "Dockerfile")
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


def _reverse_patch(repo: SampleRepo, patch: str) -> str:
    """The diff that undoes `patch`: apply it to a scratch clone, then diff back to the commit."""
    with tempfile.TemporaryDirectory(prefix="forager-rev-") as tmp:
        clone = Path(tmp) / "repo"
        _git(Path(tmp), "clone", "-q", str(repo.path), str(clone))
        (Path(tmp) / "bug.patch").write_text(patch)
        _git(clone, "apply", str(Path(tmp) / "bug.patch"))
        return _git(clone, "diff", "-R")


def sample_tasks(image: str | None = None) -> list[Task]:
    """Tasks with planted bugs in the sample repository (examples/sample-bugs)."""
    repo = sample_repo()
    bugs_dir = project_file("examples/sample-bugs")
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
            patch=_reverse_patch(repo, setup_patch),
            FAIL_TO_PASS=bug["FAIL_TO_PASS"],
            PASS_TO_PASS=bug["PASS_TO_PASS"],
            kind="mutate-fix",
            metadata={"source": "examples/sample-bugs", "bug": bug["name"]},
        ))
    return tasks


__all__ = ["BASE_REPOSITORY", "SampleRepo", "build_sample_image", "sample_repo", "sample_tasks"]
