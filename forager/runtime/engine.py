"""Clients of the Docker engine: one connection pool for every request, and a clear error when none answers."""

from __future__ import annotations

from typing import Any

import docker
import docker.errors
from docker.transport.unixconn import UnixHTTPAdapter

from forager.core import RuntimeUnavailable


class _OnePoolUnixAdapter(UnixHTTPAdapter):
    """docker-py's unix-socket adapter keeps one connection pool per URL path, at most 25, and closes
    the least recently used when a 26th path comes: with dozens of containers on one client, a pool is
    closed while another thread is inside it (urllib3: "'NoneType' object has no attribute 'qsize'").
    Every path goes to the same socket, so one pool serves them all."""

    def get_connection(self, url: str, proxies: Any = None) -> Any:
        return super().get_connection("http+docker://localhost", proxies)


CONNECTIONS = 64
"""Connections a client keeps open to the engine: enough for as many threads as episodes at once."""


def docker_client() -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (or the local socket), or a clear error."""
    try:
        client = docker.from_env(timeout=120, max_pool_size=CONNECTIONS)
        adapter = getattr(client.api, "_custom_adapter", None)
        if type(adapter) is UnixHTTPAdapter:
            shared = _OnePoolUnixAdapter(f"http+unix://{adapter.socket_path}", timeout=adapter.timeout,
                                         max_pool_size=CONNECTIONS)
            client.api.mount("http+docker://", shared)
            client.api._custom_adapter = shared
            adapter.close()
        client.ping()
        return client
    except docker.errors.DockerException as err:
        raise RuntimeUnavailable(
            f"no Docker engine answers ({err}). Start Docker, or set DOCKER_HOST, "
            "or use the local runtime (`--runtime local`, no isolation)."
        ) from err


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    """Whether the engine holds an image by this tag (or id)."""
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as err:
        if err.is_client_error():  # an invalid reference ("Bad:Name") names no image either
            return False
        raise


def docker_available() -> bool:
    try:
        docker_client().close()
        return True
    except RuntimeUnavailable:
        return False


__all__ = ["CONNECTIONS", "docker_available", "docker_client", "image_exists"]
