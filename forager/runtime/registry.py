"""Runtimes by name: which runtime a task runs in, and `auto` turned into Docker or local.

A runtime class plugs in by name (`docker`, `local`) or as a `module:Class` path; it is opened for
a task through its `for_task(task, *, limits, command_timeout, max_output_bytes, pool, client)`, and
with a pool also `preparation` (which a runtime may ignore: the caller runs what it did not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from forager.core import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_OUTPUT_BYTES,
    ForagerError,
    RuntimeUnavailable,
    Task,
)
from forager.loading import load_named
from forager.runtime.base import Preparation, ShellRuntime
from forager.runtime.docker import DockerLimits, docker_available, docker_client, image_exists
from forager.runtime.limits import missing_image_hint
from forager.runtime.pool import WarmPool

RuntimeKind = Literal["auto", "docker", "local"]

RUNTIMES = {
    "docker": "forager.runtime.docker:DockerRuntime",
    "local": "forager.runtime.local:LocalRuntime",
}


def runtime_class(kind: str) -> type[ShellRuntime]:
    """A runtime class by short name (`docker`, `local`) or `module:Class` dotted path."""
    cls = load_named(kind, RUNTIMES, "runtime")
    if not callable(getattr(cls, "for_task", None)):
        raise ForagerError(f"runtime {kind!r}: {cls!r} has no for_task(task, ...) classmethod")
    return cls


def open_runtime(
    task: Task, kind: RuntimeKind | str = "auto", *, limits: DockerLimits | None = None,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    pool: WarmPool | None = None, preparation: Preparation | None = None,
) -> ShellRuntime:
    """A runtime for `task`: Docker when asked, or when `auto` and an engine with the task's image answers.

    With a warm `pool`, a Docker runtime is taken from it (ready at once when one is warm, and
    already through `preparation` when the pool made one so: see `base.prepared`).
    """
    client = None
    if kind == "auto":
        client = _client_with_image(task.image) if task.image else None
        kind = "docker" if client is not None else "local"
        if kind == "local" and not task.local_repo:
            raise RuntimeUnavailable(
                f"task {task.instance_id}: no Docker engine with image {task.image!r} answers and it has no "
                f"local_repo. Start Docker, and {missing_image_hint(task.image or '')}."
            )
    extra = {"preparation": preparation} if pool is not None and preparation is not None else {}
    return runtime_class(kind).for_task(  # type: ignore[attr-defined]
        task, limits=limits, command_timeout=command_timeout, max_output_bytes=max_output_bytes, pool=pool,
        client=client, **extra,
    )


def _client_with_image(image: str) -> Any:
    """A Docker client (reused by the runtime: one connection and ping per reset) if `image` is there."""
    try:
        client = docker_client()
    except RuntimeUnavailable:
        return None
    try:
        if image_exists(client, image):
            return client
    except Exception:  # noqa: BLE001 - engine trouble means "not here" too
        pass
    client.close()
    return None


def choose_runtime(kind: str, *, log: Callable[[str], None] | None = None) -> str:
    """`auto` as `docker` when an engine answers, else `local` (said through `log`); others as they are.

    `docker` with no engine answering raises RuntimeUnavailable.
    """
    if kind not in ("auto", "docker"):
        return kind
    if docker_available():
        return "docker"
    if kind == "docker":
        raise RuntimeUnavailable("no Docker engine answers; start Docker or use --runtime local")
    if log is not None:
        log("no Docker engine answers: using the local runtime (no isolation)")
    return "local"


__all__ = ["RUNTIMES", "RuntimeKind", "choose_runtime", "open_runtime", "runtime_class"]
