"""The SMPP listener's accept loop: many connections per loop pass, and a pause when out of fds.

Why not ``loop.create_server``: libuv (under uvloop) accepts one connection per event-loop
iteration since libuv 1.45 ("unix: don't accept() connections in a loop"). While other sessions
keep every iteration busy (an ESME pipelining thousands of PDUs), a reconnect storm from one
host then fills the kernel's accept queue with hundreds of connections, and a well-behaved
ESME's connection waits seconds behind them before the bridge even sees its bind (issue 14,
finding 3; ``benchmarks/storm.py`` measured 4–5 s). Here each readiness of the listening socket
accepts up to :data:`ACCEPT_BATCH` connections, and admission (``bridge/smpp/admission.py``)
turns the storm's away at once.

Out of file descriptors (EMFILE/ENFILE), accepting pauses for :data:`EMFILE_PAUSE` seconds
(the connections wait in the kernel's queue) instead of spinning on the error; the event is
logged sampled and counted (``bridge_smpp_events_total{event="accept_failed"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import ssl
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["ACCEPT_BATCH", "Listener", "open_listeners"]

log = structlog.get_logger("bridge.smpp")

ACCEPT_BATCH = 256
EMFILE_PAUSE = 0.1
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Listener:
    """One listening socket whose connections become ``factory()`` protocols."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        on_accept_error: Callable[[OSError], None],
    ) -> None:
        self.sock = sock
        self.factory = factory
        self.ssl_context = ssl_context
        self.on_accept_error = on_accept_error
        self.loop = asyncio.get_running_loop()
        self._serving = False
        self._closed = False
        self._pending: set[Any] = set()  # connect_accepted_socket coroutines not yet done

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def is_serving(self) -> bool:
        return self._serving

    def start(self) -> None:
        if not self._closed and not self._serving:
            self.loop.add_reader(self.sock.fileno(), self._accept_ready)
            self._serving = True

    def _pause(self, seconds: float) -> None:
        if self._serving:
            self.loop.remove_reader(self.sock.fileno())
            self._serving = False
        self.loop.call_later(seconds, self.start)

    def _accept_ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                self.on_accept_error(e)
                if e.errno in _RESOURCE_ERRORS:
                    self._pause(EMFILE_PAUSE)
                return
            self._connected(conn)

    def _connected(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # connect_accepted_socket driven by hand instead of in a task: its first step makes the
        # transport now (one loop pass sooner, ~10 µs less a connection); the rest only awaits
        # the protocol's start (or the TLS handshake) and runs from that future's callback.
        coro = self.loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl_context)
        self._step(coro)

    def _step(self, coro: Any, _: object = None) -> None:
        try:
            awaited = coro.send(None)
        except StopIteration:
            self._pending.discard(coro)
            return
        except Exception as e:  # a failed TLS handshake, a peer gone: closed already
            self._pending.discard(coro)
            log.debug("smpp.accept_setup_failed", error=str(e))
            return
        # Keep the coroutine alive until it ends: dropping it would close its transport.
        self._pending.add(coro)
        if awaited is None:  # a bare yield (asyncio.sleep(0)): go on at the next pass
            self.loop.call_soon(self._step, coro)
        else:
            awaited.add_done_callback(functools.partial(self._step, coro))

    def close(self) -> None:
        if self._closed:
            return
        if self._serving:
            self.loop.remove_reader(self.sock.fileno())
            self._serving = False
        self._closed = True
        self.sock.close()
        for coro in list(self._pending):
            coro.close()  # closes the transport of a connection still being set up
        self._pending.clear()


def open_listeners(
    host: str,
    port: int,
    backlog: int,
    factory: Callable[[], asyncio.Protocol],
    ssl_context: ssl.SSLContext | None,
    on_accept_error: Callable[[OSError], None],
) -> list[Listener]:
    """Bind ``host:port`` (every address ``host`` resolves to, as ``create_server`` does) and
    start accepting."""
    infos = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[Listener] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _name, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(backlog)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            listener = Listener(sock, factory, ssl_context, on_accept_error)
            listener.start()
            listeners.append(listener)
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners
