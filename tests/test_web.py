"""The HTTP side: /metrics, /healthz, /readyz over real loopback HTTP, on the admin listener.

Against a whole :class:`~bridge.app.Bridge` (``BridgeThread``, HTTP on port 0) with the stdlib
``http.client`` as the client; :class:`~bridge.web.server.HttpServer` alone with a hand-written
HTTP/1.1 request over ``asyncio.open_connection`` where a test needs a health check that fails
or hangs; and ``smpp-bridge run --http-port 0`` as a subprocess, to show that uvicorn leaves SIGTERM
to the bridge.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.providers.sandbox import SandboxProvider
from bridge.web.server import HealthReport, HttpServer, build_app
from tests.harness.daemon import BridgeThread, StartBridge, bridge_config
from tests.harness.esme import PASSWORD, Esme

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent


def get(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with the stdlib client: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


async def aget(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    """One hand-written HTTP/1.1 request over asyncio streams: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def http_port(bt: BridgeThread) -> int:
    """The admin listener, where /metrics, /healthz and /readyz live."""
    return bt.bridge.admin_http.port


def auth(bt: BridgeThread) -> dict[str, str]:
    return {"Authorization": f"Bearer {bt.bridge.admin_token}"}


# --------------------------------------------------------------------------- whole bridge


def test_healthz_ok(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    assert http_port(bt) != 0  # port 0 in the config: the bound port is reported
    status, headers, body = get(http_port(bt), "/healthz")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"status": "ok"}


def test_readyz_ready_with_every_check(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    status, _, body = get(http_port(bt), "/readyz")
    assert status == 200, body
    assert json.loads(body) == {
        "ready": True,
        "checks": {
            "store": True,
            "disk_space": True,
            "smpp_listener": True,
            "providers": {"sandbox": True},
        },
    }


def test_readyz_503_when_the_store_is_closed(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    bt.call(bt.bridge.store.close())
    status, _, body = get(http_port(bt), "/readyz")
    assert status == 503
    report = json.loads(body)
    assert report["ready"] is False
    assert report["checks"]["store"] is False
    assert report["checks"]["smpp_listener"] is True


def test_readyz_503_when_no_provider_is_healthy(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Patched before the start: the bridge checks its providers at once and caches the answer.
    async def unhealthy(self: SandboxProvider) -> bool:
        return False

    monkeypatch.setattr(SandboxProvider, "healthy", unhealthy)
    bt = start_bridge()
    status, _, body = get(http_port(bt), "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["providers"] == {"sandbox": False}


def test_readyz_503_when_a_provider_check_raises(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: SandboxProvider) -> bool:
        raise ConnectionError("token=abc123 refused")  # must not reach the response

    monkeypatch.setattr(SandboxProvider, "healthy", broken)
    bt = start_bridge()
    status, _, body = get(http_port(bt), "/readyz")
    assert status == 503
    assert b"abc123" not in body
    assert json.loads(body)["checks"]["providers"] == {"sandbox": False}


def test_readyz_503_when_the_smpp_listener_is_down(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    bt.call(bt.bridge.smpp.stop(timeout=1.0))
    status, _, body = get(http_port(bt), "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["smpp_listener"] is False


def test_readyz_counts_only_providers_some_route_uses(
    start_bridge: StartBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "spare" is healthy but no route names it: it cannot carry a message.
    async def only_spare(self: SandboxProvider) -> bool:
        return self.name == "spare"

    monkeypatch.setattr(SandboxProvider, "healthy", only_spare)
    extra = '[providers.spare]\ndelay = 0.05\n[[routes]]\nproviders = ["sandbox"]\n'
    bt = start_bridge(extra=extra)
    status, _, body = get(http_port(bt), "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["providers"] == {"sandbox": False, "spare": True}


def test_metrics_exposition(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    with Esme(bt.port) as esme:  # some traffic, so per-message metrics have samples
        esme.bind()
        esme.submit_ok()
    status, headers, body = get(http_port(bt), "/metrics", headers=auth(bt))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE " in text
    if getattr(bt.bridge, "registry", None) is not None:
        assert "bridge_" in text  # the bridge's own registry
    else:
        assert "python_gc_objects_collected_total" in text  # the default registry


def test_unknown_path_and_wrong_method(start_bridge: StartBridge) -> None:
    port = http_port(start_bridge())
    assert get(port, "/nope")[0] == 404
    assert get(port, "/healthz", "POST")[0] == 405
    assert get(port, "/readyz", "DELETE")[0] == 405
    status, _, body = get(port, "/healthz", "HEAD")
    assert status == 200
    assert body == b""


def test_no_secrets_in_any_response(start_bridge: StartBridge) -> None:
    bt = start_bridge()
    for path in ("/metrics", "/healthz", "/readyz", "/nope", "/api/status", "/status"):
        _, headers, body = get(http_port(bt), path, headers=auth(bt))
        assert PASSWORD.encode() not in body
        assert "server" not in headers  # no software banner either


def test_stop_closes_the_http_and_admin_ports(tmp_path: Path) -> None:
    bt = BridgeThread(tmp_path / "data")
    ports = (http_port(bt), bt.bridge.http.port)
    assert get(ports[0], "/healthz")[0] == 200
    bt.stop()
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()


@pytest.mark.parametrize(
    "path",
    ["/metrics", "/healthz", "/readyz", "/status", "/api/status", "/api/trace?id=1",
     "/api/log-level", "/api/providers/sandbox/pause", "/"],
)  # fmt: skip
def test_public_callback_port_answers_404_for_metrics_and_admin_paths(
    start_bridge: StartBridge, path: str
) -> None:
    bt = start_bridge()
    public = bt.bridge.http.port
    for method in ("GET", "POST"):
        status, _, body = get(public, path, method, headers=auth(bt))
        assert status == 404, (method, path, status)
        assert b"bridge_" not in body
    # ... and the admin listener does serve them.
    assert get(http_port(bt), path.split("?")[0] if path != "/" else "/healthz",
               headers=auth(bt))[0] != 404  # fmt: skip


# --------------------------------------------------------------------------- HttpServer alone


def _report(**kw: Any) -> HealthReport:
    values: dict[str, Any] = {"store": True, "smpp_listener": True, "providers": {"p": True}}
    values.update(kw)
    return HealthReport(**values)


def test_health_report_ready_rules() -> None:
    assert _report().ready
    assert not _report(store=False).ready
    assert not _report(smpp_listener=False).ready
    assert not _report(providers={}).ready
    assert _report(providers={"a": False, "b": True}).ready
    assert not _report(providers={"a": False, "b": True}, routed=frozenset({"a"})).ready


async def test_readyz_503_when_the_check_fails_or_hangs() -> None:
    async def failing() -> HealthReport:
        raise RuntimeError("password=hunter2")

    async def hanging() -> HealthReport:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    for health in (failing, hanging):
        app = build_app(metrics=lambda: b"", health=health, ready_timeout=0.2)
        server = HttpServer("127.0.0.1", 0, app)
        await server.start()
        try:
            status, body = await aget(server.port, "/readyz")
        finally:
            await server.stop()
        assert status == 503
        assert json.loads(body) == {"ready": False, "checks": {}}
        assert b"hunter2" not in body


async def test_http_server_leaves_signal_handlers_alone() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def health() -> HealthReport:
        return _report()

    server = HttpServer("127.0.0.1", 0, build_app(metrics=lambda: b"x 1\n", health=health))
    await server.start()
    try:
        assert server.serving
        assert {sig: signal.getsignal(sig) for sig in before} == before
        assert await aget(server.port, "/metrics") == (200, b"x 1\n")
    finally:
        await server.stop()
    assert not server.serving
    assert {sig: signal.getsignal(sig) for sig in before} == before


async def test_port_taken_is_an_os_error() -> None:
    async def health() -> HealthReport:
        return _report()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = HttpServer(
            "127.0.0.1", taken.getsockname()[1], build_app(metrics=bytes, health=health)
        )
        with pytest.raises(OSError):
            await server.start()
    await server.stop()  # a no-op after a failed start


# --------------------------------------------------------------------------- smpp-bridge run


def test_bridge_run_http_port_and_sigterm(tmp_path: Path) -> None:
    """``smpp-bridge run --http-port 0``: /healthz answers, SIGTERM stops the bridge cleanly."""
    text = bridge_config(tmp_path / "data").replace(
        'level = "warning"\nformat = "console"', 'level = "info"\nformat = "json"'
    )
    config = tmp_path / "bridge.toml"
    config.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(config), "--http-port", "0",
         "--no-uvloop"],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        started: dict[str, Any] | None = None
        deadline = time.monotonic() + 20.0
        while started is None and time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            if not line:
                break
            lines.append(line)
            with_event = json.loads(line) if line.startswith("{") else {}
            if with_event.get("event") == "bridge.started":
                started = with_event
        assert started is not None, "".join(lines)
        host, _, port = started["admin"].rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert get(int(port), "/healthz")[0] == 200
        assert get(int(started["http"].rpartition(":")[2]), "/healthz")[0] == 404
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20.0)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, "".join(lines) + rest
    assert '"bridge.stopping"' in rest
    # The start-up log names what this instance sends where.
    events = [json.loads(ln) for ln in rest.splitlines() if ln.startswith("{")]
    (provider,) = [e for e in events if e["event"] == "bridge.provider"]
    assert (provider["provider"], provider["type"]) == ("sandbox", "sandbox")
    (route,) = [e for e in events if e["event"] == "bridge.route"]
    assert route["route"] == "(no [[routes]]) everything -> sandbox"
