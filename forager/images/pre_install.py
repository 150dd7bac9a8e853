"""The repository as its install sees it: a copy with the recipe's `pre_install` commands run on it.

A recipe's `pre_install` runs in the repo layer just before the install, and the layer puts the
committed files back after it. swebench's specs use it to pin old dependencies in place (sphinx 3.x:
`sed -i 's/sphinxcontrib-applehelp/sphinxcontrib-applehelp<=1.0.7/' setup.py`), so the lock, resolved
on the host before any layer exists, must see the same edits or the install gets packages the project
cannot import. The commands are the recipe's shell, meant for root in the image: they run in a
container of the base image (network off) on the commit's files, never on the host, and the edited
files come back into a copy of the repository that resolution reads. A command that fails there (one
that needs the environment's packages) leaves resolution to the commit's files, as before, and says so.
Copies are cached by the commit, the repository's contents, the commands and the base.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from forager.files import content_digest
from forager.git import FIXED_IDENTITY, git_command
from forager.home import forager_home
from forager.images.source import FetchedSource
from forager.runtime.base import owner_labels

TIMEOUT = 600.0
WORKDIR = "/repo"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def pre_installed_tree(client: docker.DockerClient, base: str, fetched: FetchedSource, commands: list[str],
                       log: Callable[[str], None]) -> Path:
    """A copy of `fetched`'s repository with `commands` run on its files in `base`; `fetched.root` itself when
    there are no commands or they fail."""
    if not commands:
        return fetched.root
    base_id = client.images.get(base).id
    key = content_digest({"commit": fetched.commit, "git": fetched.git_digest, "commands": commands,
                          "base": base_id}, length=16)
    target = forager_home() / "sources" / "pre-install" / f"{fetched.root.name}-{key}"
    with _lock(key):
        if (target / ".git").is_dir():
            log(f"pre_install edits from the cache: {target}")
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pre-install-", dir=target.parent) as tmp:
            edited = _edited_files(client, base, fetched.root, commands, Path(tmp), log)
            if edited is None:
                return fetched.root
            clone = Path(tmp) / "clone"
            result = git_command(None, "clone", "--quiet", "--no-checkout", str(fetched.root), str(clone),
                                 env=FIXED_IDENTITY)
            if result.returncode != 0:
                log(f"note: cannot copy {fetched.root} ({result.stderr.strip()}): resolving from the commit's files")
                return fetched.root
            (clone / ".git").rename(edited / ".git")
            git_command(edited, "reset", "--quiet", env=FIXED_IDENTITY)  # the index of HEAD, the edited files kept
            changed = git_command(edited, "status", "--porcelain", env=FIXED_IDENTITY).stdout.strip()
            log("pre_install changed, for resolution: " + (" ".join(changed.split()) or "nothing"))
            try:
                edited.rename(target)
            except OSError:  # made by another process meanwhile
                pass
    return target


def _edited_files(client: docker.DockerClient, base: str, root: Path, commands: list[str], tmp: Path,
                  log: Callable[[str], None]) -> Path | None:
    """The work tree of `root` after `commands` ran on it as root in `base` (in `tmp`), or None if they failed."""
    script = "\n".join(["set -eux", f"cd {WORKDIR}", *commands])
    log(f"$ bash -c (in {base}, network off, to resolve from what the install sees):\n{script}")
    container = client.containers.create(base, ["bash", "-c", script], user="0", working_dir="/", entrypoint=[],
                                         network_mode="none", labels={"forager": "1", **owner_labels()})
    try:
        container.put_archive("/", _work_tree_tar(root))
        container.start()
        timer = threading.Timer(TIMEOUT, _kill, (container,))
        timer.start()
        try:
            code = container.wait().get("StatusCode")
        finally:
            timer.cancel()
        log(container.logs().decode("utf-8", "replace"))
        if code != 0:
            log(f"note: pre_install exited with {code} in the base image (it may need the environment's packages): "
                "resolving from the commit's files")
            return None
        stream, _ = container.get_archive(WORKDIR)
        try:
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                tar.extractall(tmp / "out", filter="data")
        except (tarfile.TarError, OSError) as err:
            log(f"note: the edited files cannot be read back ({err}): resolving from the commit's files")
            return None
        return tmp / "out" / Path(WORKDIR).name
    finally:
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass


def _work_tree_tar(root: Path) -> bytes:
    """A tar of `root`'s files as `repo/...`, its `.git` left out (the commands edit files, not history)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def outside_git(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            parts = Path(info.name).parts
            return None if len(parts) > 1 and parts[1] == ".git" else info
        tar.add(root, arcname=Path(WORKDIR).name, filter=outside_git)
    return buffer.getvalue()


def _kill(container) -> None:
    try:
        container.kill()
    except docker.errors.DockerException:
        pass


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())
