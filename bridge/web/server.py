"""The bridge's HTTP side: provider callbacks on the public ``[http]`` listener, and the
``/metrics``, ``/healthz``, ``/readyz`` routes the ``[admin]`` listener serves (Starlette on
uvicorn; the admin API itself is :mod:`bridge.admin.web`).

Why it looks like this:

* uvicorn runs **in the bridge's own event loop** (docs/architecture.md): the health endpoints
  then see the loop the SMPP sessions run in, so ``/healthz`` answering at all proves that loop is
  responsive, and ``/readyz`` can ask the live store and providers without any locking.
* uvicorn must not own the process: ``Server.serve()`` would replace the SIGINT/SIGTERM
  handlers with its own (``signal.signal``) and re-raise the signal when it returns, which
  would race the bridge's graceful shutdown. :class:`_EmbeddedServer` turns that off, so
  signals (SIGTERM, SIGHUP for reload) stay with :func:`bridge.app.run`.
* The listening socket is bound here, before uvicorn starts: uvicorn reports a bind failure
  with ``sys.exit()``, and a ``SystemExit`` raised inside a task escapes the event loop and
  kills every other part of the bridge. Binding ourselves turns "port taken" into an ordinary
  ``OSError`` from :meth:`HttpServer.start`, and gives the real port when port 0 was asked for.
* The routes take plain callables (``metrics() -> bytes``, ``health() -> HealthReport``) and
  know nothing of the bridge's parts, so this module stays a leaf that tests can drive alone.
* Responses carry states and names only (booleans per check, provider names); no
  configuration values, addresses or error texts, so nothing secret can leak through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from bridge.core.provider import CallbackProvider, CallbackReply, CallbackRequest
from bridge.observability import Metrics, SampledLog
from bridge.providers.http import content_type_charset, decode_pairs
from bridge.web.guard import HttpGuard

__all__ = [
    "METRICS_CONTENT_TYPE",
    "CallbackEndpoint",
    "HealthReport",
    "HttpServer",
    "build_app",
    "ops_routes",
]

log = structlog.get_logger("bridge.web")

#: What ``prometheus_client.generate_latest()`` writes (its default, underscore-escaped names)
#: is the classic text format 0.0.4. prometheus-client >= 0.22 names ``CONTENT_TYPE_LATEST``
#: version 1.0.0 (UTF-8 metric names); its own exporters still answer a scrape without an
#: Accept header with 0.0.4, and so do we: every Prometheus version parses it.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: /readyz gives up on a health check that takes longer than this and answers 503.
READY_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The readiness checks of one bridge, as /readyz reports them.

    ``providers`` maps every configured provider to whether its last health check passed;
    ``routed`` names the providers some route can send to (None: all of them). A provider no
    route uses cannot carry traffic, so only a routed one counts toward readiness.
    """

    store: bool
    smpp_listener: bool
    providers: Mapping[str, bool] = field(default_factory=dict)
    routed: frozenset[str] | None = None
    disk_space: bool = True  # free space on the store's disk above [storage] min_free_mb
    #: More to show under "checks" (cluster mode: "redis" and "node").
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Store writable, listeners up, and at least one routed provider healthy."""
        usable = any(
            ok for name, ok in self.providers.items() if self.routed is None or name in self.routed
        )
        return self.store and self.disk_space and self.smpp_listener and usable

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "checks": {
                "store": self.store,
                "disk_space": self.disk_space,
                "smpp_listener": self.smpp_listener,
                "providers": dict(sorted(self.providers.items())),
                **self.extra,
            },
        }


@dataclass(frozen=True, slots=True)
class CallbackEndpoint:
    """A provider's callback routes: its secret path token and the provider that parses them."""

    token: str
    provider: CallbackProvider


#: Largest callback body read (a report or an MO is a few hundred bytes; JSON batches a few KB).
MAX_CALLBACK_BODY = 1 << 20


def ops_routes(
    *,
    metrics: Callable[[], bytes] | None,
    health: Callable[[], Awaitable[HealthReport]] | None,
    ready_timeout: float = READY_TIMEOUT,
) -> list[Route]:
    """``GET /metrics`` (when ``metrics`` is given), ``GET /healthz`` and ``GET /readyz`` (when
    ``health`` is given): the routes the admin listener serves (bridge.admin.web)."""

    async def metrics_endpoint(request: Request) -> Response:
        assert metrics is not None
        return Response(metrics(), headers={"content-type": METRICS_CONTENT_TYPE})

    async def healthz(request: Request) -> Response:
        # Liveness only: this handler runs in the bridge's loop, so answering proves the
        # process is alive and the loop is not blocked. Dependencies are /readyz's business;
        # failing liveness for a provider outage would only get the process restarted.
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        assert health is not None
        try:
            report = await asyncio.wait_for(health(), ready_timeout)
        except Exception as exc:  # a failing or hanging check means "not ready", not a 500
            log.warning("http.readyz_failed", error=type(exc).__name__)
            return JSONResponse({"ready": False, "checks": {}}, status_code=503)
        return JSONResponse(report.to_json(), status_code=200 if report.ready else 503)

    routes: list[Route] = []
    if metrics is not None:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    if health is not None:
        routes.append(Route("/healthz", healthz, methods=["GET"]))
        routes.append(Route("/readyz", readyz, methods=["GET"]))
    return routes


def build_app(
    *,
    metrics: Callable[[], bytes] | None = None,
    health: Callable[[], Awaitable[HealthReport]] | None = None,
    callbacks: Mapping[str, CallbackEndpoint] | None = None,
    metrics_sink: Metrics | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> ASGIApp:
    """The ASGI app: ``GET|POST /callbacks/{provider}/{token}/{kind}`` for provider pushes,
    plus :func:`ops_routes` for what is given of ``metrics`` and ``health``.

    The bridge's public ``[http]`` listener gives neither: it faces the providers (the
    internet, for push providers), so it serves callbacks only and answers 404 for
    ``/metrics``, ``/healthz``, the admin API and everything else; those live on the
    ``[admin]`` listener. Tests that need one server for everything pass both.

    A callback with an unknown provider, a wrong token or a kind the provider does not take
    gets the same bare 404 (the token is compared in constant time), so the path cannot be
    probed for valid provider names or tokens.

    Starlette answers unknown paths with 404 and other methods on these paths with 405 (HEAD
    is allowed wherever GET is). Debug mode stays off: an exception gives a bare 500, never a
    traceback.
    """
    endpoints = dict(callbacks or {})

    def count(provider: str, kind: str, status: int) -> None:
        if metrics_sink is not None:
            metrics_sink.callback(provider, kind, status)

    callbacks_app = _CallbackApp(endpoints, count)
    starlette = Starlette(
        routes=ops_routes(metrics=metrics, health=health, ready_timeout=ready_timeout)
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(CALLBACK_PREFIX):
            await callbacks_app(scope, receive, send)
        else:
            await starlette(scope, receive, send)

    return app


CALLBACK_PREFIX = "/callbacks/"


def _text_response(status: int, body: str, content_type: str) -> tuple[int, bytes, bytes]:
    return status, body.encode("utf-8"), content_type.encode("latin-1")


_NOT_FOUND = _text_response(404, "Not Found", "text/plain")
_TOO_LARGE = _text_response(413, "Payload Too Large", "text/plain")
_SERVER_ERROR = _text_response(500, "Internal Server Error", "text/plain")
_NOT_ALLOWED = _text_response(405, "Method Not Allowed", "text/plain")


class _CallbackApp:
    """``GET|POST /callbacks/{provider}/{token}/{kind}`` as a bare ASGI app.

    It is on every report's path (one push per message from most providers), so it skips the
    Starlette middleware stack, router and Request objects (they were about half the CPU of a
    push in ``smpp-bridge bench provider``) and does the little it needs itself: split the path,
    check the token in constant time, read a bounded body, parse the query and a urlencoded
    form, and hand a :class:`CallbackRequest` to the provider.
    """

    def __init__(
        self, endpoints: Mapping[str, CallbackEndpoint], count: Callable[[str, str, int], None]
    ) -> None:
        self.endpoints = endpoints
        self.count = count
        # Wrong tokens come in floods from a scanner: one WARNING per 10 s (with the number not
        # logged); bridge_callbacks_total{provider="-"} counts every one.
        self._sampled = SampledLog(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body, content_type = await self._handle(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        parts = scope["path"][len(CALLBACK_PREFIX) :].split("/")
        if len(parts) != 3:
            self.count("-", "-", 404)
            return _NOT_FOUND
        name, token, kind = parts
        endpoint = self.endpoints.get(name)
        valid = endpoint is not None and hmac.compare_digest(
            token.encode(), endpoint.token.encode()
        )
        if endpoint is None or not valid or kind not in endpoint.provider.callback_kinds:
            self._sampled(
                "warning",
                "callback_refused",
                "refused",
                provider=name if endpoint else "-",
                kind=kind[:32] if endpoint else "-",
            )
            self.count("-", "-", 404)
            return _NOT_FOUND
        method = scope["method"]
        if method not in ("GET", "POST"):
            self.count(name, kind, 405)
            return _NOT_ALLOWED
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type", "")
        body = b""
        form: dict[str, str] = {}
        if method == "POST":
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_CALLBACK_BODY:
                self.count(name, kind, 413)
                return _TOO_LARGE
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return _SERVER_ERROR  # the client went away: nobody reads the answer
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_CALLBACK_BODY:
                    self.count(name, kind, 413)
                    return _TOO_LARGE
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            if content_type.startswith("application/x-www-form-urlencoded"):
                form = decode_pairs(body, content_type_charset(content_type) or "utf-8")
        query = decode_pairs(scope.get("query_string", b""))
        client = scope.get("client")
        request = CallbackRequest(
            method=method,
            query=query,
            form=form,
            body=body,
            content_type=content_type,
            remote=client[0] if client else "",
        )
        try:
            reply: CallbackReply = await endpoint.provider.handle_callback(kind, request)
        except Exception:
            log.exception("callback_failed", provider=name, kind=kind)
            self.count(name, kind, 500)
            return _SERVER_ERROR
        self.count(name, kind, reply.status)
        return _text_response(reply.status, reply.body, reply.content_type)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the bridge owns SIGINT/SIGTERM/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on the first address ``host`` resolves to (IPv4 or IPv6)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _canon, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As asyncio's create_server does on POSIX: a restart can rebind while old
        # connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn serving ``app`` on ``host:port`` as a task of the running event loop.

    :meth:`start` returns once the socket accepts connections (``port`` is then the bound
    port, also for port 0); :meth:`stop` closes the listener, lets requests in progress finish
    for up to ``shutdown_timeout`` seconds, then cancels what is left.
    """

    def __init__(
        self,
        host: str,
        port: int,
        app: ASGIApp,
        *,
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
        name: str = "http",
        guard: HttpGuard | None = None,
    ) -> None:
        self.name = name
        #: Header/body timeouts and the per-address cap (bridge.web.guard); None: uvicorn's own.
        self.guard = guard  # which listener, in its log lines: "http" (callbacks) or "admin"
        self.host = host
        self.port = port
        self.app = app
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """``host:port`` as clients reach it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def serving(self) -> bool:
        """True while the listener is up (started and neither stopping nor crashed)."""
        server = self._server
        return (
            server is not None
            and server.started
            and not server.should_exit
            and self._task is not None
            and not self._task.done()
        )

    async def start(self) -> None:
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,  # logging is configured once, by bridge.logs
            # Its start/stop lines ("Started server process") would only repeat
            # http.listening / http.stopped; errors in a request still come through.
            log_level="warning",
            access_log=False,  # a scrape every few seconds is not worth a log line
            lifespan="off",  # the bridge starts and stops its own parts
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=max(1, int(self.shutdown_timeout)),
            http=self.guard.protocol(AutoHTTPProtocol) if self.guard else AutoHTTPProtocol,
        )
        server = _EmbeddedServer(config)
        self._server = server
        # uvicorn closes the socket on shutdown; on a failed start it is closed below.
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name=f"{self.name}-server")
        try:
            async with asyncio.timeout(self.startup_timeout):
                while not server.started:
                    if self._task.done():
                        self._task.result()  # raises what made it fail
                        raise RuntimeError("the HTTP server stopped while starting")
                    await asyncio.sleep(0.01)
        except BaseException:
            await self._cancel()
            sock.close()
            raise
        log.info("http.listening", listener=self.name, address=self.address)

    async def stop(self) -> None:
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            # uvicorn notices should_exit within 0.1 s, then waits up to
            # timeout_graceful_shutdown for open requests; give it a little more than that.
            await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout + 1.0)
        except TimeoutError:
            server.force_exit = True
            await self._cancel()
        except Exception:
            log.exception("http.stop_failed")
        self._server = None
        self._task = None
        log.info("http.stopped", listener=self.name)

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
