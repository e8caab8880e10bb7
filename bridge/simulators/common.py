"""What the HTTP simulators share: serving one until cancelled, reading its ``--option``s,
reading a call's parameters, and the :class:`Outbox` of report timers and callback pushes.

Each simulator had its own copy of these (a task set, a timer set that removes fired timers, an
HTTP client for pushes, a close that cancels them; a ``serve`` that turned options into
constructor arguments one by one); the API-specific parts stay in each simulator's module.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import structlog
from starlette.applications import Starlette
from starlette.requests import Request

from bridge.providers.http import HttpClient, HttpRequest, HttpResponse, create_client, decode_pairs
from bridge.web.server import HttpServer

__all__ = [
    "Outbox",
    "Simulator",
    "option_bool",
    "option_float",
    "read_options",
    "request_params",
    "serve_app",
    "serve_simulator",
]

log = structlog.get_logger("bridge.simulators")


async def serve_app(app: Starlette, host: str, port: int, name: str) -> None:
    """Serve ``app`` on ``host:port`` (uvicorn in this loop) until the task is cancelled."""
    server = HttpServer(host, port, app)
    await server.start()
    print(f"{name} simulator listening on http://{server.address}/", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


class Simulator(Protocol):
    """What ``serve_simulator`` runs: a Starlette app and a close for what it left running."""

    @property
    def app(self) -> Starlette: ...

    async def close(self) -> None: ...


async def serve_simulator(sim: Simulator, host: str, port: int, name: str) -> None:
    """Serve ``sim`` until the task is cancelled, then close it."""
    try:
        await serve_app(sim.app, host, port, name)
    finally:
        await sim.close()


def read_options(
    options: Mapping[str, str],
    factory: Callable[..., Any],
    *,
    extra: Mapping[str, str] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """``--option key=value`` texts → keyword arguments for ``factory`` (a simulator class).

    Every keyword parameter of ``factory`` whose default is a number, a boolean, a text or None
    is an option, read as the type of that default (:func:`option_float`, :func:`option_bool`,
    a text; with a None default an empty text is None); absent, it keeps the default. ``extra``:
    more text options with their defaults (not parameters of ``factory``). ``strict``: an option
    that is neither is a ValueError. The simulators' defaults are thus written once, in their
    constructors."""
    defaults: dict[str, Any] = {
        name: p.default
        for name, p in inspect.signature(factory).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and (p.default is None or isinstance(p.default, float | bool | str))
    }
    defaults.update(extra or {})
    if strict:
        unknown = set(options) - set(defaults)
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, default in defaults.items():
        if isinstance(default, bool):
            values[key] = option_bool(options, key, default)
        elif isinstance(default, float):
            values[key] = option_float(options, key, default)
        elif default is None:
            values[key] = options.get(key) or None
        else:
            values[key] = options.get(key, default)
    return values


def option_float(options: Mapping[str, str], key: str, default: float) -> float:
    value = options.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--option {key}=: not a number: {value!r}") from None


def option_bool(options: Mapping[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"--option {key}=: not a boolean: {value!r}")


async def request_params(request: Request, charset: str = "utf-8") -> dict[str, str]:
    """The query parameters, plus an application/x-www-form-urlencoded POST body's (the body
    wins), each name's first value; percent-escapes decoded in ``charset``. Parsed here rather
    than with Starlette's ``request.form()``, which needs python-multipart even for urlencoded
    bodies."""
    params = dict(request.query_params)
    if request.method == "POST" and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        params.update(decode_pairs(await request.body(), charset))
    return params


class Outbox:
    """What a simulator runs beside its replies: report timers, pushes in flight, and the one
    pooled HTTP client the pushes go out on (created at the first push, in the serving loop).

    :meth:`close` cancels the timers and (unless ``finish_pushes``) the tasks, waits for the
    tasks, and closes the client; call it from the loop that served the app (the HTTP server
    runs without lifespan events).
    """

    def __init__(
        self, *, timeout: float = 5.0, connect_timeout: float = 2.0, pool_size: int = 8
    ) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self._client: HttpClient | None = None
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._pool_size = pool_size

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background until it ends or :meth:`close`."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` after ``delay`` seconds (at once for a negative delay) unless closed."""
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self.timers.discard(handle)
            fn()

        handle = asyncio.get_running_loop().call_later(max(0.0, delay), fire)
        self.timers.add(handle)

    async def request(self, request: HttpRequest) -> HttpResponse:
        """One push (raises :class:`~bridge.providers.http.HttpError` when it got no answer)."""
        if self._client is None:
            self._client = create_client(
                "aiohttp",
                timeout=self._timeout,
                connect_timeout=self._connect_timeout,
                pool_size=self._pool_size,
            )
        return await self._client.request(request)

    async def close(self, *, finish_pushes: bool = False) -> None:
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()
        if not finish_pushes:
            for task in list(self.tasks):
                task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
