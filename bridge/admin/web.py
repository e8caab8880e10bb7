"""The ``[admin]`` listener: admin API (JSON), status page, /metrics, /healthz, /readyz.

Authentication (docs: README "Admin API"):

* ``Authorization: Bearer TOKEN`` works everywhere. The token is compared in constant time
  (:func:`hmac.compare_digest`); a missing or wrong one gets 401 and a sampled WARNING line.
* HTTP basic auth with the token as the password (any user name) is accepted for GET only:
  that is what a browser sends for the status page after its login prompt. Changes (POST:
  pause, resume, purge, log level) need the bearer header, which a browser never adds by
  itself, so a page on another site cannot make an operator's logged-in browser change
  anything (no CSRF), and the API sends no CORS headers, so such a page cannot read it either.
* ``/healthz`` and ``/readyz`` are open (probes carry no credentials and they reveal only
  booleans and provider names); ``/metrics`` needs the token unless ``[admin] metrics_auth``
  is false.
* ``[admin] allow_unauthenticated`` (loopback listeners only) turns all of this off.

Every answer is ``Cache-Control: no-store``; the page carries a Content-Security-Policy that
allows no script, frames or outside resources.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.admin.page import render_status_page
from bridge.admin.service import AdminError, AdminService
from bridge.observability import SampledLog
from bridge.web.server import HealthReport, ops_routes

__all__ = ["build_admin_app", "token_matches"]

log = structlog.get_logger("bridge.admin")

REALM = "smpp-bridge admin"
_NO_STORE = {"cache-control": "no-store"}
_PAGE_HEADERS = {
    **_NO_STORE,
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
#: Largest JSON body the API reads (a log level is a few bytes).
_MAX_BODY = 4096


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison (the time does not tell how much of a guess was right)."""
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


class _Auth:
    def __init__(self, token: str | None, on_refused: Callable[[], object]) -> None:
        self.token = token
        self.on_refused = on_refused
        self._sampled = SampledLog(log)

    def allows(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        ok = False
        if scheme == "bearer":
            ok = token_matches(credentials, self.token)
        elif scheme == "basic" and request.method in ("GET", "HEAD"):
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            _user, sep, password = decoded.partition(":")
            ok = bool(sep) and token_matches(password, self.token)
        if not ok:
            self.on_refused()
            client = request.client
            self._sampled(
                "warning",
                "admin.auth_refused",
                "auth",
                path=request.url.path,
                remote=client.host if client else "-",
                scheme=scheme or "none",
            )
        return ok


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=_NO_STORE)


def _error(status: int, message: str) -> JSONResponse:
    return _json({"error": message}, status)


def _unauthorized(basic: bool) -> Response:
    challenge = f'Basic realm="{REALM}", charset="UTF-8"' if basic else f'Bearer realm="{REALM}"'
    return JSONResponse(
        {"error": "authentication required: Authorization: Bearer <admin token>"},
        status_code=401,
        headers={**_NO_STORE, "www-authenticate": challenge},
    )


Handler = Callable[[Request], Awaitable[Response]]


def build_admin_app(
    service: AdminService,
    *,
    token: str | None,
    metrics: Callable[[], bytes],
    health: Callable[[], Awaitable[HealthReport]],
    metrics_auth: bool = True,
    on_refused: Callable[[], object] = lambda: None,
) -> ASGIApp:
    """The admin listener's ASGI app; ``token`` None means no authentication;
    ``on_refused`` counts refused requests (bridge_admin_requests_refused_total)."""
    auth = _Auth(token, on_refused)

    def guarded(handler: Handler, *, page: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not auth.allows(request):
                return _unauthorized(basic=page)
            try:
                return await handler(request)
            except AdminError as e:
                return _error(e.status, str(e))

        return endpoint

    async def status(request: Request) -> Response:
        return _json(await service.status())

    async def trace(request: Request) -> Response:
        return _json(await service.trace(request.query_params.get("id", "")))

    async def route(request: Request) -> Response:
        q = request.query_params
        number = q.get("number", "")
        if not number:
            raise AdminError(400, "give ?number=")
        unicode = q.get("unicode", "") in ("1", "true", "yes")
        return _json(await service.route(number, q.get("account") or None, unicode=unicode))

    async def queue(request: Request) -> Response:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit():
            raise AdminError(400, "limit must be a number")
        return _json(await service.queue(request.path_params["account"], int(raw)))

    async def purge(request: Request) -> Response:
        return _json(await service.purge(request.path_params["account"]))

    async def pause(request: Request) -> Response:
        return _json(service.pause(request.path_params["name"]))

    async def resume(request: Request) -> Response:
        return _json(service.resume(request.path_params["name"]))

    async def kick(request: Request) -> Response:
        return _json(service.kick(request.path_params["target"]))

    async def log_level(request: Request) -> Response:
        if request.method == "GET":
            return _json(service.log_level())
        body = await request.body()
        if len(body) > _MAX_BODY:
            raise AdminError(413, "body too large")
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise AdminError(400, 'body must be JSON: {"level": "debug"}') from None
        level = data.get("level") if isinstance(data, dict) else None
        if not isinstance(level, str):
            raise AdminError(400, 'body must be JSON: {"level": "debug"}')
        return _json(service.log_level(level))

    async def page(request: Request) -> Response:
        query = request.query_params.get("trace", "").strip()
        trace_data = trace_error = None
        if query:
            try:
                trace_data = await service.trace(query)
            except AdminError as e:
                trace_error = str(e)
        html = render_status_page(
            await service.status(), trace_query=query, trace=trace_data, trace_error=trace_error
        )
        return HTMLResponse(html, headers=_PAGE_HEADERS)

    async def root(request: Request) -> Response:
        return RedirectResponse("/status", status_code=303, headers=_NO_STORE)

    ops = ops_routes(metrics=None, health=health)
    metrics_route = ops_routes(metrics=metrics, health=None)[0]
    if metrics_auth:
        metrics_route = Route("/metrics", guarded(metrics_route.endpoint), methods=["GET"])
    routes = [
        *ops,
        metrics_route,
        Route("/", root, methods=["GET"]),
        Route("/status", guarded(page, page=True), methods=["GET"]),
        Route("/api/status", guarded(status), methods=["GET"]),
        Route("/api/trace", guarded(trace), methods=["GET"]),
        Route("/api/route", guarded(route), methods=["GET"]),
        Route("/api/queues/{account}", guarded(queue), methods=["GET"]),
        Route("/api/queues/{account}/purge", guarded(purge), methods=["POST"]),
        Route("/api/providers/{name}/pause", guarded(pause), methods=["POST"]),
        Route("/api/providers/{name}/resume", guarded(resume), methods=["POST"]),
        Route("/api/log-level", guarded(log_level), methods=["GET", "POST"]),
        Route("/api/sessions/{target}/kick", guarded(kick), methods=["POST"]),
    ]
    starlette = Starlette(routes=routes)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await starlette(scope, receive, send)

    return app
