"""Where commands run: DockerRuntime (isolated, one container per episode) and LocalRuntime (no isolation)."""

from forager.runtime.base import ShellRuntime
from forager.runtime.docker import ContainerGone, DockerLimits, DockerRuntime, docker_available
from forager.runtime.local import LocalRuntime

__all__ = ["ContainerGone", "DockerLimits", "DockerRuntime", "LocalRuntime", "ShellRuntime", "docker_available"]
