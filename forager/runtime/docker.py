"""DockerRuntime: one container per episode and one persistent bash session in it."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from forager.core import DEFAULT_COMMAND_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES, ForagerError, RuntimeUnavailable, Task
from forager.core import Observation
from forager.runtime.base import LABEL, RUN_ID, Preparation, ShellRuntime, live_runtimes, owner_labels
from forager.runtime.engine import (  # noqa: F401 - also offered here
    describe_host, docker_available, docker_client, image_exists,
)
from forager.runtime.limits import (
    DockerLimits, disk_full_note, home_of, image_user, missing_image_hint, quota_refused, quota_supported,
)
from forager.runtime.session import KILL_JOBS_SCRIPT

if TYPE_CHECKING:
    from forager.runtime.pool import WarmPool  # the pool builds DockerRuntimes: a real import would be circular

log = logging.getLogger(__name__)


class ContainerGone(ForagerError):
    """The episode's container was stopped or removed from outside Forager."""


ENGINE_ERRORS = (docker.errors.DockerException, OSError)
"""What a call to the engine raises when it fails: docker-py's errors, and requests' connection errors
(OSErrors) when the engine went away (a remote host that died, a proxy that closed)."""


class ExecTransport:
    """bash in `docker exec -i`, over the engine's raw attach socket (no docker CLI in between)."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self._runtime = runtime
        self._api = runtime.client.api
        cid = runtime.container_id
        try:
            self._exec_id = self._api.exec_create(
                cid, ["bash", "--noprofile", "--norc"], stdin=True, tty=False,
                user=runtime.shell_user, workdir=runtime.workdir,
            )["Id"]
            sock = self._api.exec_start(self._exec_id, socket=True)
        except docker.errors.NotFound as err:
            raise ContainerGone(f"container {cid[:12]} is gone; reset() starts a new one") from err
        except docker.errors.APIError as err:
            if "is not running" in str(err):
                raise ContainerGone(f"container {cid[:12]} is not running; reset() starts a new one") from err
            raise
        except OSError as err:  # no answer at all: the engine is gone, not only the container
            raise RuntimeUnavailable(f"{describe_host(runtime.docker_host)} no longer answers ({err})") from err
        self._sock = getattr(sock, "_sock", sock)
        self._sock.setblocking(False)
        self._raw = bytearray()
        self._eof = False
        self._closed = False

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [self._sock], [], 30)
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                continue
            except OSError:
                return  # the shell is gone; recv() reports it
            view = view[sent:]

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            payload = self._take_frames()
            if payload:
                return payload
            if self._eof:
                return b""
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                return None
            try:
                data = self._sock.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                self._raw += data
            else:
                self._eof = True
                self._runtime.check_engine()  # a shell that ended with its engine is not the agent's doing

    def _take_frames(self) -> bytes:
        # Docker multiplexes stdout/stderr: 8-byte header (stream, 0, 0, 0, big-endian size), then payload.
        out = bytearray()
        raw = self._raw
        pos = 0
        while len(raw) - pos >= 8:
            size = int.from_bytes(raw[pos + 4 : pos + 8], "big")
            if len(raw) - pos - 8 < size:
                break
            out += raw[pos + 8 : pos + 8 + size]
            pos += 8 + size
        del raw[:pos]
        return bytes(out)

    def kill_jobs(self, shell_pid: int, since_ticks: int) -> bool:
        script = "for _ in 1 2 3; do (" + KILL_JOBS_SCRIPT.replace("exit 0", "") + "); done; exit 0"
        return self._runtime.exec_helper(["sh", "-c", script, "sh", str(shell_pid), str(since_ticks)])

    def close(self, hard: bool = False) -> int | None:
        if self._closed:
            return None
        self._closed = True
        runtime = self._runtime
        if getattr(runtime, "_closing", False) and not hard:
            try:
                self._sock.close()  # the container is removed next: nothing in it needs stopping first
            except OSError:
                pass
            return None
        if not self._eof and runtime.container is not None and not runtime.closed and runtime.session.shell_pid:
            # A shell that ignored a timeout may have left a fork bomb behind: restarting the container
            # stops every process in it and keeps its files.
            if hard or not runtime.exec_helper(["kill", "-9", str(runtime.session.shell_pid)]):
                runtime.restart_container()
        try:
            self._sock.close()
        except OSError:
            pass
        for _ in range(20):
            try:
                info = self._api.exec_inspect(self._exec_id)
            except ENGINE_ERRORS:
                return None
            if not info.get("Running"):
                return info.get("ExitCode")
            time.sleep(0.02)
        return None


class _Reaper:
    """Removes containers on background threads, so closing a runtime (say, after grading) does not
    wait the few hundred milliseconds the engine takes; at interpreter exit every removal finishes."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def remove(self, container: Any, wait: bool = False) -> None:
        if live_runtimes.stopping:  # the process is going down: a background removal would never run
            _force_remove(container)
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="forager-reaper")
            try:
                future = self._pool.submit(_force_remove, container)
            except RuntimeError:  # the interpreter is shutting down: remove it here and now
                _force_remove(container)
                return
        if wait:
            future.result()

    def drain(self) -> None:
        """Wait for every pending removal."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _force_remove(container: Any) -> None:
    try:
        container.remove(force=True, v=True)  # v: the workdir volume of a read-only container
    except docker.errors.NotFound:
        pass
    except ENGINE_ERRORS as err:  # `forager gc` will find it by its labels
        log.warning("could not remove container %s: %s", container.id[:12], err)


reaper = _Reaper()


def _sweep_own_containers() -> None:
    """Remove every container this process still owns on every engine it used (run on SIGTERM/SIGHUP and at exit).

    Closing the runtimes removes theirs; this also finds those no runtime holds yet (created on
    another thread a moment before the signal). An engine that no longer answers is left to `forager gc`.
    """
    reaper.drain()
    for host in list(_created_on):
        try:
            client = docker_client(host)
        except RuntimeUnavailable:
            continue
        try:
            labels = [f"{LABEL}.run={RUN_ID}", f"{LABEL}.owner.pid={os.getpid()}"]
            left = client.containers.list(all=True, filters={"label": labels}, sparse=True)  # no inspect: no race
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(_force_remove, left))
        except ENGINE_ERRORS as err:
            log.warning("could not sweep %s: %s", describe_host(host), err)
        finally:
            client.close()


_created_on: set[str | None] = set()
"""The engines this process started containers on (None: the default one), for the sweep."""
live_runtimes.sweepers.append(_sweep_own_containers)


class DockerRuntime(ShellRuntime):
    """A container from `image`, isolated by `limits`, labelled so that `forager gc` can find it."""

    def __init__(
        self,
        image: str,
        workdir: str = "/repo",
        *,
        limits: DockerLimits | None = None,
        user: str | None = None,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        client: docker.DockerClient | None = None,
        docker_host: str | None = None,
    ) -> None:
        """`docker_host`: the engine (`tcp://`, `ssh://`, `unix://`; None: the default one); a `client`
        given must be one of that engine (a pool shares its own)."""
        self.image = image
        self.limits = limits or DockerLimits()
        self.user = user
        self.shell_user = user or ""
        self.disk_quota: str | None = None
        self.docker_host = docker_host
        self.client = client or docker_client(docker_host)
        self.container: Any = None
        self._start_container(workdir)
        super().__init__(workdir, command_timeout, max_output_bytes)
        self._start_session()

    @classmethod
    def for_task(cls, task: Task, *, limits: DockerLimits | None = None,
                 command_timeout: float = DEFAULT_COMMAND_TIMEOUT, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                 pool: WarmPool | None = None, preparation: Preparation | None = None,
                 client: docker.DockerClient | None = None, docker_host: str | None = None) -> DockerRuntime:
        """A container of the task's image: taken from the warm `pool` when there is one (one it made
        ready with `preparation` if it has such, on the pool's engine), else started now on `docker_host`."""
        if not task.image:
            raise RuntimeUnavailable(f"task {task.instance_id} has no image for the Docker runtime")
        if pool is not None:
            if client is not None:
                client.close()
            return pool.take(task.image, task.workdir, limits=limits, command_timeout=command_timeout,
                             max_output_bytes=max_output_bytes, preparation=preparation)
        return cls(task.image, task.workdir, limits=limits, command_timeout=command_timeout,
                   max_output_bytes=max_output_bytes, client=client, docker_host=docker_host)

    @property
    def container_id(self) -> str:
        return self.container.id

    def _start_container(self, workdir: str) -> None:
        """Start the container as `INIT_USER` (out of the agent's reach), with the limits' confinement."""
        with live_runtimes.creating():  # refused once the process is going down; waited for by the signal handler
            try:
                self.shell_user = self.user or image_user(self.client, self.image)
                options = self.limits.run_options(quota=quota_supported(self.client), workdir=workdir,
                                                  home=home_of(self.shell_user))
                self.container = self._run_container(workdir, options)
                self.disk_quota = (options.get("storage_opt") or {}).get("size")
            except docker.errors.ImageNotFound as err:
                engine = self.docker_host or "this Docker engine"
                raise RuntimeUnavailable(
                    f"image {self.image!r} is not on {engine}: {missing_image_hint(self.image)}."
                ) from err

    def _run_container(self, workdir: str, options: dict[str, Any]) -> Any:
        _created_on.add(self.docker_host)
        labels = {**owner_labels(), "forager.image": self.image, "forager.workdir": workdir}
        try:
            return self.client.containers.run(self.image, ["sleep", "infinity"], detach=True, init=True,
                                              labels=labels, **options)
        except docker.errors.APIError as err:
            if "storage_opt" not in options or not quota_refused(self.client, err):
                raise
            options.pop("storage_opt")
        return self.client.containers.run(self.image, ["sleep", "infinity"], detach=True, init=True,
                                          labels=labels, **options)

    def run(self, command: str, timeout: float | None = None) -> Observation:
        obs = super().run(command, timeout)
        note = disk_full_note(self.limits, obs.output, self.disk_quota)
        if note:
            obs.notes.append(note)
        return obs

    def _open_transport(self) -> ExecTransport:
        return ExecTransport(self)

    def check_engine(self) -> None:
        """Raise RuntimeUnavailable if the engine no longer answers (asked when the shell's stream ends).

        The session would report the end as an observation, and a grading as a failed command: with the
        engine gone it is the infrastructure's failure (the episode's env_error), not the agent's.
        """
        try:
            self.client.ping()
        except ENGINE_ERRORS as err:
            raise RuntimeUnavailable(f"{describe_host(self.docker_host)} no longer answers ({err})") from err

    def exec_helper(self, cmd: list[str]) -> bool:
        """Run a short helper command next to the session, as the shell's user; False if it could not run.

        Not as root: the container has no capabilities, so root could not signal the shell's processes.
        """
        try:
            result = self.container.exec_run(cmd, user=self.shell_user)
            return result.exit_code == 0
        except ENGINE_ERRORS:
            return False

    def _trusted_diff(self, base: str) -> tuple[int, bytes, bytes]:
        """The diff by a `docker exec` of its own as root, with a clean environment (see `trusted_git`):
        the agent's user can neither replace root's git nor reach root's scratch directory."""
        from forager.runtime.trusted_git import container_diff_command

        result = self.container.exec_run(container_diff_command(self.workdir, base), user="0", workdir="/",
                                         demux=True)
        out, err = result.output
        return result.exit_code, out or b"", err or b""

    def _recover_shell(self) -> None:
        self.restart_container()

    def restart_container(self) -> None:
        """Kill every process in the container and start it again; the file system is kept."""
        try:
            self.container.kill()
        except ENGINE_ERRORS:
            pass
        try:
            self.container.start()
        except ENGINE_ERRORS as err:
            raise ContainerGone(f"container {self.container.id[:12]} could not be restarted ({err})") from err

    def reset(self) -> None:
        """A fresh container from the image: nothing the previous episode did survives."""
        self._check_open()
        self._remove_container()
        self.prepared = None
        self.session.close()
        self._start_container(self.workdir)
        self.session.start()

    def _remove_container(self, wait: bool = True) -> None:
        container, self.container = self.container, None
        if container is not None:
            reaper.remove(container, wait=wait)

    def close(self) -> None:
        """Stop the shell and remove the container (in the background: `reaper.drain()` waits)."""
        self._closing = True
        super().close()

    def _release(self) -> None:
        self._remove_container(wait=False)
