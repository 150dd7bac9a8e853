"""Base images without a registry: debootstrap a Debian root file system and `docker import` it.

Where a registry answers, `from_registry=True` builds the same image from `python:3.x-slim`.
Tags are hashes of the inputs, so an unchanged recipe never rebuilds.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
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


def base_image_tag(mirror: str | None = None, from_registry: bool = False) -> str:
    recipe = {
        "suite": DEBIAN_SUITE, "packages": BASE_PACKAGES, "strip": STRIP_PATHS, "changes": IMAGE_CHANGES,
        "version": RECIPE_VERSION,
        "source": asset("base-registry.Dockerfile").read_text() if from_registry else "debootstrap",
    }
    digest = content_digest(recipe)
    return f"{BASE_REPOSITORY}:{DEBIAN_SUITE}-{'registry-' if from_registry else ''}{digest}"


def bootstrap_base_image(
    client: docker.DockerClient, *, mirror: str | None = None, from_registry: bool = False,
    force: bool = False, log=print,
) -> str:
    """Build (or find) the base image and return its tag; `forager/base:latest` points at it too."""
    tag = base_image_tag(from_registry=from_registry)
    if image_exists(client, tag) and not force:
        client.images.get(tag).tag(BASE_REPOSITORY, "latest")
        return tag
    if from_registry:
        log(f"building {tag} from python:3.11-slim")
        dockerfile = io.BytesIO(asset("base-registry.Dockerfile").read_bytes())  # it copies nothing in
        try:
            client.images.build(fileobj=dockerfile, tag=tag, rm=True)
        except docker.errors.DockerException as err:
            raise BootstrapError(f"could not build {tag} from the registry: {err}") from err
    else:
        _debootstrap_and_import(client, tag, mirror or host_debian_mirror(), log)
    client.images.get(tag).tag(BASE_REPOSITORY, "latest")
    return tag


def _debootstrap_and_import(client: docker.DockerClient, tag: str, mirror: str, log) -> None:
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
        log(f"debootstrap {DEBIAN_SUITE} from {mirror} (about a minute)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(root), mirror]
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
