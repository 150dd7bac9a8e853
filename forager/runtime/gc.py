"""`forager gc`: remove what Forager processes left behind when they died without closing."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker.errors

from forager.runtime.base import LABEL, owner_alive
from forager.runtime.docker import describe_host, docker_client
from forager.runtime.local import OWNER_FILE, SCRATCH_PREFIX
from forager.core import RuntimeUnavailable


@dataclass
class GcReport:
    containers: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)
    kept: int = 0
    docker_error: str | None = None
    """What kept containers from being removed: one line per engine that did not answer or failed."""


def collect_garbage(everything: bool = False, docker_hosts: list[str] | None = None) -> GcReport:
    """Remove Forager containers and scratch directories whose owning process is gone (all with `everything`).

    Containers on the engines `docker_hosts` names (`tcp://`, `ssh://`, `unix://`), or on the default one
    (DOCKER_HOST or the local socket) when none are named; scratch directories on this machine.
    """
    report = GcReport()
    errors: list[str] = []
    for host in docker_hosts or [None]:
        try:
            _remove_containers(docker_client(host), everything, report)
        except RuntimeUnavailable as err:
            errors.append(str(err))
        except docker.errors.DockerException as err:  # the engine failed in the middle: say which
            errors.append(f"{describe_host(host)}: {err}")
    report.docker_error = "\n".join(errors) or None
    for scratch in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            labels = json.loads((scratch / OWNER_FILE).read_text())
        except (OSError, ValueError):
            labels = {}
        # A runtime writes its owner file right after making the directory: one without it for a minute
        # is the remains of a removal that raced with a clone, owned by nobody.
        ownerless = not labels and _age_s(scratch) > 60
        if everything or ownerless or not owner_alive(labels):
            shutil.rmtree(scratch, ignore_errors=True)
            report.directories.append(str(scratch))
        else:
            report.kept += 1
    return report


def _remove_containers(client: docker.DockerClient, everything: bool, report: GcReport) -> None:
    """Remove the engine's Forager containers whose owner is gone (every one with `everything`); close the client."""
    try:
        # ignore_removed: another process may remove a container between the listing and its inspection
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True):
            if everything or not owner_alive(container.labels):
                try:
                    container.remove(force=True, v=True)  # v: a read-only container's workdir volume
                    report.containers.append(container.name)
                except docker.errors.NotFound:
                    pass
            else:
                report.kept += 1
    finally:
        client.close()


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
