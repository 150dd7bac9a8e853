"""Base images without a registry: debootstrap a Debian root file system and `docker import` it.

One base per Debian suite, each with that suite's Python: bullseye (3.9), bookworm (3.11, the default,
also `forager/base:latest`), trixie (3.13). A build picks one from the project's `requires-python`
and bootstraps it only when first needed. Where a registry answers, `from_registry=True` builds the
bookworm base from `python:3.11-slim`. Tags are hashes of the inputs, so an unchanged recipe never rebuilds.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

from forager.core import ForagerError
from forager.files import content_digest
from forager.home import forager_home
from forager.images.paths import asset
from forager.runtime.docker import image_exists

BASE_REPOSITORY = "forager/base"
DEBIAN_SUITE = "bookworm"
"""The default suite: `forager/base:latest` (the sample image's base) is its base image."""
SUITE_PYTHONS = {"bullseye": "3.9.2", "bookworm": "3.11.2", "trixie": "3.13.5"}
"""Each suite's python3, so a build can choose its base before bootstrapping it; the base's probe checks it."""
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "git", "ca-certificates", "procps", "patch", "passwd"]
# What an image needs at run time but not its size: docs, manuals, package caches.
STRIP_PATHS = ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"]
IMAGE_CHANGES = ["ENV LANG=C.UTF-8", "ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", 'CMD ["bash"]']
RECIPE_VERSION = 1  # bump when the way the base image is made changes


class BootstrapError(ForagerError):
    pass


def host_debian_mirror() -> str:
    """The Debian mirror this host's apt uses (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?\s*$|"
                                 r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+\w", text):
            return (match[1] or match[2]).rstrip("/")
    return "http://deb.debian.org/debian"


def suite_for_python(python: str) -> str:
    """The suite whose Python is `python` (`3.9` or `3.9.2`); BootstrapError naming the available ones otherwise."""
    minor = ".".join(python.split(".")[:2])
    for suite, version in SUITE_PYTHONS.items():
        if version.startswith(minor + ".") and (python == minor or version == python):
            return suite
    raise BootstrapError(f"no base image has Python {python}; available: {available_pythons()}")


def available_pythons() -> str:
    """`3.9 (bullseye), 3.11 (bookworm), 3.13 (trixie)`: for messages."""
    return ", ".join(f"{'.'.join(v.split('.')[:2])} ({suite})" for suite, v in SUITE_PYTHONS.items())


def base_alias(suite: str) -> str:
    """The moving tag of a suite's current base image (`forager/base:trixie`)."""
    return f"{BASE_REPOSITORY}:{suite}"


def base_image_tag(mirror: str | None = None, from_registry: bool = False, suite: str = DEBIAN_SUITE) -> str:
    """The content tag of a suite's base image (bookworm's is the same as before suites were added)."""
    recipe = {
        "suite": suite, "packages": BASE_PACKAGES, "strip": STRIP_PATHS, "changes": IMAGE_CHANGES,
        "version": RECIPE_VERSION,
        "source": asset("base-registry.Dockerfile").read_text() if from_registry else "debootstrap",
    }
    digest = content_digest(recipe)
    return f"{BASE_REPOSITORY}:{suite}-{'registry-' if from_registry else ''}{digest}"


def bootstrap_base_image(
    client: docker.DockerClient, *, suite: str = DEBIAN_SUITE, mirror: str | None = None,
    from_registry: bool = False, force: bool = False, log=print,
) -> str:
    """Build (or find) a suite's base image and return its tag; `forager/base:SUITE` points at it too,
    and `forager/base:latest` at bookworm's.

    One bootstrap of a suite at a time, across threads and processes: the others wait and find it built.
    """
    if suite not in SUITE_PYTHONS:
        raise BootstrapError(f"no base image recipe for the suite {suite!r}; known: {', '.join(SUITE_PYTHONS)}")
    if from_registry and suite != DEBIAN_SUITE:
        raise BootstrapError(f"--from-registry builds only the {DEBIAN_SUITE} base; {suite} needs debootstrap")
    tag = base_image_tag(from_registry=from_registry, suite=suite)
    with _suite_lock(suite):
        if not image_exists(client, tag) or force:
            _build_base(client, tag, suite, mirror, from_registry, log)
        _alias_base(client, tag, suite)
    return tag


def _alias_base(client: docker.DockerClient, tag: str, suite: str) -> None:
    image = client.images.get(tag)
    image.tag(BASE_REPOSITORY, suite)
    if suite == DEBIAN_SUITE:
        image.tag(BASE_REPOSITORY, "latest")


@contextlib.contextmanager
def _suite_lock(suite: str) -> Iterator[None]:
    path = forager_home() / "images" / "bases" / f"{suite}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_base(client: docker.DockerClient, tag: str, suite: str, mirror: str | None, from_registry: bool,
                log) -> None:
    if from_registry:
        log(f"building {tag} from python:3.11-slim")
        dockerfile = io.BytesIO(asset("base-registry.Dockerfile").read_bytes())  # it copies nothing in
        try:
            client.images.build(fileobj=dockerfile, tag=tag, rm=True)
        except docker.errors.DockerException as err:
            raise BootstrapError(f"could not build {tag} from the registry: {err}") from err
    else:
        _debootstrap_and_import(client, tag, suite, mirror or host_debian_mirror(), log)


def _debootstrap_and_import(client: docker.DockerClient, tag: str, suite: str, mirror: str, log) -> None:
    if shutil.which("debootstrap") is None:
        raise BootstrapError(
            "debootstrap is not installed. Install it (`apt-get install debootstrap`), or build the base "
            "image from a registry with `forager images bootstrap --from-registry`."
        )
    if os.geteuid() != 0:
        raise BootstrapError("debootstrap needs root: run `sudo forager images bootstrap` (or use --from-registry)")
    work = Path(tempfile.mkdtemp(prefix="forager-bootstrap-", dir=forager_home()))
    try:
        root = work / "root"
        log(f"debootstrap {suite} from {mirror} (a few minutes)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(root), mirror]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            log_file = work.with_suffix(".log")
            log_file.write_text(result.stdout + result.stderr)
            raise BootstrapError(f"debootstrap failed (exit {result.returncode}); its log: {log_file}\n"
                                 f"{(result.stdout + result.stderr)[-2000:]}")
        for rel in STRIP_PATHS:
            shutil.rmtree(root / rel, ignore_errors=True)
        (root / "var/lib/apt/lists").mkdir(parents=True, exist_ok=True)
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        log(f"importing {tag}")
        repository, _, version = tag.partition(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=version, changes=IMAGE_CHANGES)
        if not image_exists(client, tag):
            raise BootstrapError(f"docker import did not produce {tag}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
