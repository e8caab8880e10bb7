"""What the HTTP simulators share: serving a Starlette app until cancelled, option parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog
from starlette.applications import Starlette
from starlette.requests import Request

from bridge.providers.http import decode_pairs
from bridge.web.server import HttpServer

__all__ = ["option_bool", "option_float", "request_params", "serve_app"]

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
