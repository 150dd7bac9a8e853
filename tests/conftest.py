"""Shared fixtures: real git repositories, the real Docker engine, the sample image."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from forager.runtime import DockerRuntime, LocalRuntime, docker_available

SAMPLE_IMAGE = "forager/sample:latest"

# Ray 2.60 turns token authentication on by itself once ~/.ray/auth_token exists (a local `ray.init()` writes
# one), and a process reads the mode once: a test that started a cluster without it and a later one with it
# would refuse each other. Every cluster and driver of the suite runs without token auth.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _have_sample_image() -> bool:
    if not docker_available():
        return False
    from forager.runtime.docker import docker_client

    client = docker_client()
    try:
        client.images.get(SAMPLE_IMAGE)
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        client.close()


HAVE_DOCKER = _have_sample_image()
needs_docker = pytest.mark.skipif(
    not HAVE_DOCKER, reason="needs a Docker engine with forager/sample:latest (run `forager images sample`)"
)


DEMO_FILES = {
    "hello.py": "def greet(name):\n    return 'hello ' + name\n\n\ndef twice(x):\n    return x + x\n",
    "README.md": "# demo\nfoo\nfoo\n",
}


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name, text in DEMO_FILES.items():
        (repo / name).write_text(text)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin:/usr/local/bin"}
    subprocess.run("git init -q && git add -A && git commit -qm init", shell=True, cwd=repo, check=True, env=env)
    return repo


@pytest.fixture(params=["docker", "local"])
def runtime(request, git_repo):
    """The same tests on both runtimes: the sample image in Docker, and a local scratch clone."""
    if request.param == "docker":
        if not HAVE_DOCKER:
            pytest.skip("needs a Docker engine with forager/sample:latest (run `forager images sample`)")
        rt = DockerRuntime(SAMPLE_IMAGE, "/repo", command_timeout=30)
        for name, text in DEMO_FILES.items():  # the same files as the local clone
            rt.write_file(name, text)
        rt.run_checked("git add -A && git commit -qm demo")
    else:
        rt = LocalRuntime(git_repo, command_timeout=30)
    with rt:
        yield rt


# -- the tiny transformers model (tests of the hf policy and the trainer's engines) -----------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """A 64-wide model gains nothing from threads, and on a busy machine their spin-waits cost 10x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from forager.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
