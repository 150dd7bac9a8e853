"""A second endpoint to the same Docker engine: TCP on 127.0.0.1 forwarded byte for byte to its unix socket.

Tests and benchmarks of the env fleet on several engines (`CollectConfig.docker_hosts`) need a
`tcp://` engine that is not the default one; this machine has one engine, so the proxy gives it a
second address. It forwards raw bytes both ways, so HTTP keep-alive and the hijacked streams of
`docker exec`/attach (an HTTP upgrade, then a raw stream) pass unchanged; a side that shuts its
writing half (EOF) is passed on as a shutdown of the other side's writing half, and the pair is
closed once both halves are done. One thread serves every connection with a selector.

    with DockerSocketProxy() as proxy:
        client = docker_client(proxy.url)   # tcp://127.0.0.1:PORT
        ...
        proxy.count("/containers/create")   # requests that went through it

Closing it (or leaving the `with`) closes the listener and every forwarded connection: to clients
it is an engine that went away.
"""

from __future__ import annotations

import errno
import re
import selectors
import socket
import threading
from dataclasses import dataclass, field

DEFAULT_SOCKET = "/var/run/docker.sock"
CHUNK = 1 << 16
HIGH_WATER = 1 << 20
"""Bytes buffered for a slow reader before the proxy stops reading from its peer (back-pressure)."""
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE) (/\S*) HTTP/1\.[01]\r\n")


@dataclass(eq=False)
class _Pair:
    """One forwarded connection: the client's TCP socket and the engine's unix socket."""

    client: socket.socket
    engine: socket.socket
    pending: dict[socket.socket, bytearray] = field(default_factory=dict)
    """Bytes waiting to be written to each socket."""
    ended: set[socket.socket] = field(default_factory=set)
    """Sockets that sent EOF (their peer's writing half is shut once its pending bytes are out)."""
    shut: set[socket.socket] = field(default_factory=set)
    """Sockets whose writing half is shut."""

    def __post_init__(self) -> None:
        self.pending = {self.client: bytearray(), self.engine: bytearray()}

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.engine if sock is self.client else self.client

    def done(self) -> bool:
        return self.shut == {self.client, self.engine}


class DockerSocketProxy:
    """`tcp://127.0.0.1:PORT` (`url`) forwarding to the engine's unix socket; a context manager."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, host: str = "127.0.0.1", port: int = 0) -> None:
        self.socket_path = socket_path
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self.url = f"tcp://{host}:{self._listener.getsockname()[1]}"
        self.connections = 0
        """Client connections accepted so far."""
        self.bytes_forwarded = 0
        self._requests: list[str] = []
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._pairs: set[_Pair] = set()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> DockerSocketProxy:
        if self._thread is None:
            self._selector.register(self._listener, selectors.EVENT_READ, "listener")
            self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
            self._thread = threading.Thread(target=self._serve, name="docker-socket-proxy", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, close every forwarded connection and the thread; safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._thread is not None:
            self._wake_write.send(b"x")
            self._thread.join()
        else:
            self._close_all()

    def __enter__(self) -> DockerSocketProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what went through -------------------------------------------------------------------------------
    def requests(self) -> list[str]:
        """`METHOD /path` of every HTTP request line seen going to the engine (a hijacked stream's bytes are
        scanned too, and a line split across two reads is missed: good for counting in tests)."""
        with self._lock:
            return list(self._requests)

    def count(self, fragment: str) -> int:
        """Requests whose `METHOD /path` contains `fragment` (say "/containers/create" or "DELETE ")."""
        return sum(fragment in request for request in self.requests())

    # -- the loop ----------------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select():
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_read.recv(64)
                    else:
                        self._handle(key.data, key.fileobj, events)  # type: ignore[arg-type]
        finally:
            self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(self.socket_path)
            except OSError:
                engine.close()
                client.close()  # the engine is not there: the client sees its connection closed
                continue
            self.connections += 1
            for sock in (client, engine):
                sock.setblocking(False)
            pair = _Pair(client, engine)
            self._pairs.add(pair)
            self._update(pair)

    def _handle(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                self._write(pair, sock)
            if events & selectors.EVENT_READ and pair in self._pairs:
                self._read(pair, sock)
        except OSError:  # reset by either side: nothing more can pass
            self._drop(pair)
            return
        if pair.done():
            self._drop(pair)
        elif pair in self._pairs:
            self._update(pair)

    def _read(self, pair: _Pair, sock: socket.socket) -> None:
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        peer = pair.peer(sock)
        if not data:
            pair.ended.add(sock)
            if not pair.pending[peer]:
                self._shut(pair, peer)
            return
        self.bytes_forwarded += len(data)
        if sock is pair.client:
            self._note_requests(data)
        pair.pending[peer] += data

    def _write(self, pair: _Pair, sock: socket.socket) -> None:
        buffer = pair.pending[sock]
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        del buffer[:sent]
        if not buffer and pair.peer(sock) in pair.ended:
            self._shut(pair, sock)

    @staticmethod
    def _shut(pair: _Pair, sock: socket.socket) -> None:
        """Pass an EOF on: shut `sock`'s writing half (it may already be gone)."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as err:
            if err.errno not in (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET):
                raise
        pair.shut.add(sock)

    def _update(self, pair: _Pair) -> None:
        """Watch each socket for what it can do now: read unless it ended or its peer's buffer is full,
        write while bytes wait for it."""
        for sock in (pair.client, pair.engine):
            peer = pair.peer(sock)
            events = 0
            if sock not in pair.ended and len(pair.pending[peer]) < HIGH_WATER:
                events |= selectors.EVENT_READ
            if pair.pending[sock]:
                events |= selectors.EVENT_WRITE
            registered = sock in self._selector.get_map()
            if events and registered:
                self._selector.modify(sock, events, pair)
            elif events:
                self._selector.register(sock, events, pair)
            elif registered:
                self._selector.unregister(sock)

    def _note_requests(self, data: bytes) -> None:
        found = [f"{m.group(1).decode()} {m.group(2).decode(errors='replace')}" for m in _REQUEST_LINE.finditer(data)]
        if found:
            with self._lock:
                self._requests.extend(found)

    def _drop(self, pair: _Pair) -> None:
        self._pairs.discard(pair)
        for sock in (pair.client, pair.engine):
            if sock in self._selector.get_map():
                self._selector.unregister(sock)
            sock.close()

    def _close_all(self) -> None:
        for pair in list(self._pairs):
            self._drop(pair)
        self._selector.close()
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()


__all__ = ["DockerSocketProxy"]
