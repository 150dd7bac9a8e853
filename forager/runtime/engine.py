"""Clients of Docker engines: one connection pool for every request, and a clear error when none answers.

An engine is the default one (DOCKER_HOST, or the local socket) or one named by URL as DOCKER_HOST
would name it (`tcp://HOST:PORT`, `ssh://USER@HOST`, `unix:///PATH`): the env fleet may run on other
machines' engines, one per rollout worker (`CollectConfig.docker_hosts`).
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

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
TIMEOUT_S = 120
"""Seconds a request to the engine may take (removing a big container under load takes long)."""
CONNECT_TIMEOUT_S = 10.0
"""Seconds a `tcp://` engine has to accept a connection: a host that drops packets fails here, not after
TIMEOUT_S on every call."""
HOST_SCHEMES = ("tcp", "ssh", "unix")


def describe_host(host: str | None) -> str:
    """How messages name an engine."""
    return f"the Docker engine at {host}" if host else "the default Docker engine (DOCKER_HOST or the local socket)"


def docker_client(host: str | None = None) -> docker.DockerClient:
    """A client for the engine at `host` (`tcp://`, `ssh://`, `unix://`; None: DOCKER_HOST or the local
    socket), checked with a ping, or RuntimeUnavailable saying what to check.

    Not cached: a runtime or a pool owns its client and closes it (a client holds open connections).
    DOCKER_TLS_VERIFY and DOCKER_CERT_PATH apply to a named `tcp://` host as they do to DOCKER_HOST.
    """
    environment = dict(os.environ) if host is None else {**os.environ, "DOCKER_HOST": host}
    url = environment.get("DOCKER_HOST") or None
    client = None
    try:
        _probe(url)
        client = docker.from_env(timeout=TIMEOUT_S, max_pool_size=CONNECTIONS, environment=environment,
                                 use_ssh_client=_ssh_through_cli(url))
        _share_one_unix_pool(client)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError) as err:  # OSError: requests' connection errors too
        if client is not None:
            client.close()
        raise RuntimeUnavailable(_unreachable(host, err)) from err


def _share_one_unix_pool(client: docker.DockerClient) -> None:
    """Replace docker-py's unix-socket adapter (one pool per URL path) by one whose single pool serves every path."""
    adapter = getattr(client.api, "_custom_adapter", None)
    if type(adapter) is UnixHTTPAdapter:
        shared = _OnePoolUnixAdapter(f"http+unix://{adapter.socket_path}", timeout=adapter.timeout,
                                     max_pool_size=CONNECTIONS)
        client.api.mount("http+docker://", shared)
        client.api._custom_adapter = shared
        adapter.close()


def _probe(host: str | None) -> None:
    """Connect to a `tcp://` engine within CONNECT_TIMEOUT_S (OSError if it cannot be reached); others as they are.

    docker-py has one timeout for connecting and for every request; without this a host that drops
    packets would hold each caller for TIMEOUT_S.
    """
    if not host or urlsplit(host).scheme != "tcp":
        return
    address = urlsplit(host)
    if not address.hostname:
        raise OSError(f"no host name in {host!r}")
    default_port = 2376 if os.environ.get("DOCKER_TLS_VERIFY") else 2375
    with socket.create_connection((address.hostname, address.port or default_port), timeout=CONNECT_TIMEOUT_S):
        pass


def _ssh_through_cli(host: str | None) -> bool:
    """`ssh://` through the ssh command when paramiko (docker-py's own ssh transport) is not installed."""
    if not host or not host.startswith("ssh://"):
        return False
    try:
        import paramiko  # noqa: F401
    except ImportError:
        return True
    return False


def _unreachable(host: str | None, err: BaseException) -> str:
    if host is None:
        return (f"no Docker engine answers ({err}). Start Docker, or set DOCKER_HOST, "
                "or use the local runtime (`--runtime local`, no isolation).")
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return (f"{describe_host(host)} does not answer ({reason}). Check that an engine listens there and this "
            f"machine may reach it (`docker -H {host} info`), or leave it out of the Docker hosts.")


def check_docker_hosts(hosts: list[str]) -> None:
    """Raise RuntimeUnavailable naming every host of `hosts` that does not answer a ping (all asked at once)."""
    unique = list(dict.fromkeys(hosts))
    if not unique:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(unique)), thread_name_prefix="forager-ping") as executor:
        problems = [problem for problem in executor.map(_ping_problem, unique) if problem]
    if problems:
        raise RuntimeUnavailable(
            f"{len(problems)} of {len(unique)} Docker host(s) do not answer; no episode was started:\n  "
            + "\n  ".join(problems))


def _ping_problem(host: str) -> str | None:
    try:
        docker_client(host).close()
        return None
    except RuntimeUnavailable as err:
        return str(err)


def host_answers(host: str | None) -> bool:
    """Whether the engine at `host` (None: the default one) answers a ping now."""
    try:
        docker_client(host).close()
        return True
    except RuntimeUnavailable:
        return False


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
    return host_answers(None)


__all__ = ["CONNECTIONS", "HOST_SCHEMES", "check_docker_hosts", "describe_host", "docker_available", "docker_client",
           "host_answers", "image_exists"]
