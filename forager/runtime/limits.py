"""What confines an episode's container: `DockerLimits`, the storage-quota probe, the image's user.

Disk containment depends on the engine's storage driver. A writable-layer quota (`storage_opt
size=`) exists only on overlay2 over xfs mounted with `pquota`, devicemapper, btrfs and zfs; every
other driver (overlay2 on ext4, fuse-overlayfs, vfs) refuses it. So /tmp is always a size-limited
tmpfs (memory-backed: it counts against `memory`), the quota is asked for where the engine takes
it, and `read_only` leaves only the workdir and $HOME (volumes) and /tmp writable.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors


log = logging.getLogger(__name__)

INIT_USER = "65533:65533"
"""The container's main process (docker-init and `sleep infinity`) runs as this uid, which no image
user has: the agent's user cannot signal it, so `kill -9 -1` cannot stop the container. No
capability is needed for that: without CAP_KILL even an image whose user is root cannot signal it."""

ENOSPC = "No space left on device"


@dataclass
class DockerLimits:
    """Isolation for one episode's container. The defaults follow CWM: no network, capped CPU and memory."""

    network: bool = False
    """Give the container a network (off by default, so nothing can be fetched or leaked)."""
    memory: str = "4g"
    """Memory cap (swap included), in Docker's notation; tmpfs contents count against it."""
    cpus: float = 2.0
    pids: int = 512
    """Most processes at once: a fork bomb stops here."""
    disk: str | None = "10g"
    """Quota of the container's writable layer, where the storage driver supports one (see the module doc)."""
    tmp_size: str | None = "1g"
    """Size of the tmpfs at /tmp (every driver); None leaves /tmp in the writable layer."""
    read_only: bool = False
    """Read-only root file system: only the workdir and $HOME (volumes copied from the image) and /tmp are writable."""
    cap_drop: list[str] = field(default_factory=lambda: ["ALL"])
    cap_add: list[str] = field(default_factory=list)
    no_new_privileges: bool = True
    """setuid programs (sudo, su) cannot raise privileges."""
    init_user: str = INIT_USER
    extra: dict[str, Any] = field(default_factory=dict)
    """More `docker run` options, in docker-py's `containers.run` spelling."""

    def run_options(self, *, quota: bool, workdir: str, home: str | None) -> dict[str, Any]:
        """`containers.run` keyword arguments; `quota`: the engine takes `storage_opt size=`."""
        tmpfs: dict[str, str] = {}
        if self.tmp_size:
            tmpfs["/tmp"] = f"rw,exec,nosuid,nodev,size={self.tmp_size},mode=1777"
        options: dict[str, Any] = {
            "network_mode": None if self.network else "none",
            "mem_limit": self.memory,
            "memswap_limit": self.memory,
            "nano_cpus": int(self.cpus * 1e9),
            "pids_limit": self.pids,
            "cap_drop": list(self.cap_drop),
            "cap_add": list(self.cap_add) or None,
            "security_opt": ["no-new-privileges"] if self.no_new_privileges else None,
            "user": self.init_user,
        }
        if quota and self.disk:
            options["storage_opt"] = {"size": self.disk}
        if self.read_only:
            from docker.types import Mount

            options["read_only"] = True
            # Volumes, not tmpfs: Docker copies the image's files in (the repository; the user's
            # ~/.gitconfig and tool settings), and they go with the container (`remove(v=True)`).
            options["mounts"] = [Mount(workdir, None, type="volume")]
            if home and home != workdir:
                options["mounts"].append(Mount(home, None, type="volume"))
        if tmpfs:
            options["tmpfs"] = tmpfs
        return {**options, **self.extra}


_quota_support: dict[str, bool] = {}
_quota_lock = threading.Lock()


def quota_supported(client: docker.DockerClient) -> bool:
    """Whether this engine's storage driver takes a writable-layer quota (asked once per engine)."""
    key = client.api.base_url
    with _quota_lock:
        if key not in _quota_support:
            info = client.info()
            driver = info.get("Driver", "")
            backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "")
            # overlay2 takes it only on xfs with pquota, which `docker info` does not show: the
            # first container start finds out (`quota_refused`).
            _quota_support[key] = driver in ("devicemapper", "btrfs", "zfs") or (
                driver == "overlay2" and backing == "xfs")
        return _quota_support[key]


def quota_refused(client: docker.DockerClient, err: docker.errors.APIError) -> bool:
    """The engine refused `storage_opt`: remember it (start again without) and say so once."""
    if "storage-opt" not in str(err) and "storage_opt" not in str(err):
        return False
    with _quota_lock:
        _quota_support[client.api.base_url] = False
    log.warning("this Docker engine's storage driver has no writable-layer quota (%s); "
                "only /tmp (tmpfs) is size-limited", err.explanation or err)
    return True


_users: dict[tuple[str, str], str] = {}


def image_user(client: docker.DockerClient, image: str) -> str:
    """The image's user, as whom the agent's shell runs (the container itself runs as `INIT_USER`)."""
    key = (client.api.base_url, image)
    if key not in _users:
        _users[key] = client.images.get(image).attrs.get("Config", {}).get("User") or "0"
    return _users[key]


def home_of(user: str) -> str | None:
    """Where $HOME is by convention for `user` (a bare uid has none we can know without starting one)."""
    name = user.split(":", 1)[0]
    if name in ("0", "root"):
        return "/root"
    return None if name.isdigit() else f"/home/{name}"


def missing_image_hint(tag: str) -> str:
    """How to get an image that is not on the engine, fitting the kind of image it is."""
    name = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
    if name == "forager/sample":
        return "build it with `forager images sample`"
    if name.startswith("forager/repo-") or name.startswith("forager/env-"):
        return ("build it from its source with `forager images build SOURCE` (`forager images list` shows the "
                "sources this engine built before)")
    if "sweb.eval" in name or "swebench" in name:
        return (f"pull it where a registry answers (`docker pull {tag}`), or build the instance's environment "
                "with the SWE-bench harness (`python -m swebench.harness.prepare_images --instance_ids ID`)")
    return f"pull it (`docker pull {tag}`) or build it"


def disk_full_note(limits: DockerLimits, output: str, quota: str | None) -> str | None:
    """A note for the agent when a command ran out of disk space (the session itself goes on).

    `quota`: the writable layer's quota when the engine applied one.
    """
    if ENOSPC not in output:
        return None
    where = [f"/tmp holds at most {limits.tmp_size}"] if limits.tmp_size else []
    if quota:
        where.append(f"the other files at most {quota}")
    return (f"{ENOSPC}: a disk limit of this environment is full ({'; '.join(where) or 'see df -h'}); "
            "delete files you no longer need to free space")
