"""Provider callbacks: the ``/callbacks/{provider}/{token}/{kind}`` routes, their tokens, and the
inbound-message sink that finds the account owning a receiving number.

The routes are driven over real loopback HTTP with a small provider that records what it is
given; the tokens and the owner mapping on a whole :class:`~bridge.app.Bridge`.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.config import load_config_text
from bridge.core.model import Address, InboundMessage
from bridge.core.provider import CallbackKind, CallbackProvider, CallbackReply, CallbackRequest
from bridge.observability import Metrics
from bridge.web.server import CallbackEndpoint, HealthReport, HttpServer, build_app
from tests.harness.daemon import StartBridge, bridge_config

pytestmark = pytest.mark.timeout(30)

TOKEN = "0123456789abcdef0123456789abcdef"


class Recording:
    """A callback provider that records requests and answers what it is told."""

    callback_kinds: tuple[CallbackKind, ...] = ("report",)

    def __init__(self) -> None:
        self.seen: list[tuple[str, CallbackRequest]] = []
        self.fail = False

    async def handle_callback(self, kind: CallbackKind, request: CallbackRequest) -> CallbackReply:
        if self.fail:
            raise RuntimeError("adapter bug")
        self.seen.append((kind, request))
        if request.param("smsid") is None:
            return CallbackReply(400, "missing smsid")
        return CallbackReply(200, "OK")


async def _health() -> HealthReport:
    return HealthReport(True, True)


def _request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Recording, Metrics, int]]:
    provider = Recording()
    assert isinstance(provider, CallbackProvider)
    metrics = Metrics()
    app = build_app(
        metrics=lambda: b"",
        health=_health,
        callbacks={"p1": CallbackEndpoint(TOKEN, provider)},
        metrics_sink=metrics,
    )
    server = HttpServer("127.0.0.1", 0, app, shutdown_timeout=0.5)
    await server.start()
    try:
        yield provider, metrics, server.port
    finally:
        await server.stop()


async def _call(port: int, method: str, path: str, **kw: object) -> tuple[int, bytes]:
    return await asyncio.to_thread(_request, port, method, path, **kw)  # type: ignore[arg-type]


def _count(metrics: Metrics, provider: str, kind: str, status: str) -> float:
    return metrics.callbacks.labels(provider, kind, status)._value.get()


async def test_get_callback_with_the_right_token_reaches_the_provider(
    served: tuple[Recording, Metrics, int],
) -> None:
    provider, metrics, port = served
    status, body = await _call(port, "GET", f"/callbacks/p1/{TOKEN}/report?smsid=42&status=OK")
    assert (status, body) == (200, b"OK")
    kind, request = provider.seen[-1]
    assert kind == "report"
    assert request.method == "GET"
    assert request.query == {"smsid": "42", "status": "OK"}
    assert _count(metrics, "p1", "report", "200") == 1


async def test_post_form_and_json_bodies_reach_the_provider(
    served: tuple[Recording, Metrics, int],
) -> None:
    provider, _, port = served
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _ = await _call(
        port, "POST", f"/callbacks/p1/{TOKEN}/report", body=b"smsid=7&x=%C3%A9", headers=form
    )
    assert status == 200
    assert provider.seen[-1][1].form == {"smsid": "7", "x": "é"}
    js = {"Content-Type": "application/json"}
    status, _ = await _call(
        port, "POST", f"/callbacks/p1/{TOKEN}/report?smsid=1", body=b'{"a":1}', headers=js
    )
    assert status == 200
    assert provider.seen[-1][1].body == b'{"a":1}'
    assert provider.seen[-1][1].content_type == "application/json"


@pytest.mark.parametrize(
    "path",
    [
        f"/callbacks/p1/{TOKEN[:-1]}x/report",  # wrong token
        f"/callbacks/p1/{TOKEN}0/report",  # longer token
        f"/callbacks/p2/{TOKEN}/report",  # unknown provider
        f"/callbacks/p1/{TOKEN}/inbound",  # a kind the provider does not take
    ],
)
async def test_forged_callbacks_get_a_bare_404_and_change_nothing(
    served: tuple[Recording, Metrics, int], path: str
) -> None:
    provider, metrics, port = served
    status, body = await _call(port, "GET", path + "?smsid=1")
    assert (status, body) == (404, b"Not Found")
    assert provider.seen == []
    assert _count(metrics, "-", "-", "404") == 1


async def test_malformed_callback_gets_the_providers_4xx(
    served: tuple[Recording, Metrics, int],
) -> None:
    _, metrics, port = served
    status, body = await _call(port, "GET", f"/callbacks/p1/{TOKEN}/report")
    assert (status, body) == (400, b"missing smsid")
    assert _count(metrics, "p1", "report", "400") == 1


async def test_oversized_callback_body_is_refused(served: tuple[Recording, Metrics, int]) -> None:
    provider, _, port = served
    status, _ = await _call(
        port,
        "POST",
        f"/callbacks/p1/{TOKEN}/report",
        body=b"x" * (2 << 20),
        headers={"Content-Type": "application/json"},
    )
    assert status == 413
    assert provider.seen == []


async def test_an_adapter_exception_is_a_bare_500(served: tuple[Recording, Metrics, int]) -> None:
    provider, _, port = served
    provider.fail = True
    status, body = await _call(port, "GET", f"/callbacks/p1/{TOKEN}/report?smsid=1")
    assert (status, body) == (500, b"Internal Server Error")


# --------------------------------------------------------------------------- on a bridge


def _bridge(tmp_path: Path, extra: str = "", account: dict[str, object] | None = None) -> Bridge:
    return Bridge(load_config_text(bridge_config(tmp_path / "data", extra=extra, account=account)))


def test_callback_secret_is_created_once_private_and_reused(tmp_path: Path) -> None:
    first = _bridge(tmp_path)
    secret_file = tmp_path / "data" / "callback.secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    token = first.callback_tokens["sandbox"]
    assert len(token) >= 32
    second = _bridge(tmp_path)  # a restart: the URLs handed to providers stay valid
    assert second.callback_tokens["sandbox"] == token


def test_tokens_differ_per_provider_and_follow_the_configured_secret(tmp_path: Path) -> None:
    extra = '[providers.other]\ntype = "sandbox"\n'
    b = _bridge(tmp_path, extra=extra)
    assert b.callback_tokens["sandbox"] != b.callback_tokens["other"]
    text = bridge_config(tmp_path / "d2", extra=extra).replace(
        "[http]\n", '[http]\ncallback_secret = "s3cret-s3cret"\n'
    )
    c = Bridge(load_config_text(text))
    assert not (tmp_path / "d2" / "callback.secret").exists()
    assert c.callback_tokens["sandbox"] != b.callback_tokens["sandbox"]


def test_callback_url_uses_public_url_when_set(tmp_path: Path) -> None:
    text = bridge_config(tmp_path / "data").replace(
        "[http]\n", '[http]\npublic_url = "https://bridge.example.com/sms/"\n'
    )
    b = Bridge(load_config_text(text))
    token = b.callback_tokens["sandbox"]
    assert b.callback_url("sandbox", "report") == (
        f"https://bridge.example.com/sms/callbacks/sandbox/{token}/report"
    )
    assert b.callback_url("nope", "report") is None


def test_inbound_owner_is_the_exact_number_else_the_longest_prefix(tmp_path: Path) -> None:
    extra = (
        '[[accounts]]\nsystem_id = "other"\npassword = "pw"\n'
        'inbound_numbers = ["4917*", "491701234567"]\n'
    )
    b = _bridge(tmp_path, extra=extra, account={"inbound_numbers": ["+49170*", "4915199999999"]})
    assert b.inbound.owner_of("491701234567") == "other"  # exact beats any prefix
    assert b.inbound.owner_of("491709999999") == "demo"  # 49170* is longer than 4917*
    assert b.inbound.owner_of("491719999999") == "other"
    assert b.inbound.owner_of("4915199999999") == "demo"
    assert b.inbound.owner_of("4930123456") is None


def test_inbound_message_for_an_owned_number_is_delivered(start_bridge: StartBridge) -> None:
    from tests.harness.esme import Esme

    bt = start_bridge(account={"inbound_numbers": ["4915100000001"]})
    with Esme(bt.port) as esme:
        esme.bind("receiver")
        mo = InboundMessage(
            account="",
            source=Address("4917612345678"),
            destination=Address("4915100000001"),
            text="hello bridge",
            provider="sandbox",
        )
        assert bt.call(bt.bridge.inbound.deliver(mo)) is True
        (pdu,) = esme.receipts(1)
        assert pdu.short_message == b"hello bridge"
        unowned = InboundMessage(
            account="",
            source=Address("4917612345678"),
            destination=Address("4930000000"),
            text="nobody's",
            provider="sandbox",
        )
        assert bt.call(bt.bridge.inbound.deliver(unowned)) is False
    metrics = bt.bridge.metrics
    assert metrics.inbound_messages.labels("sandbox", "queued")._value.get() == 1
    assert metrics.inbound_messages.labels("sandbox", "unowned")._value.get() == 1


def test_callback_urls_command_prints_what_the_running_bridge_hands_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import main

    extra = (
        '[providers.mcs]\ntype = "mycoolsms"\nusername = "u"\npassword = "p"\n'
        'base_url = "http://127.0.0.1:9/api-socket.php"\n'
    )
    text = bridge_config(tmp_path / "data", extra=extra).replace(
        "[http]\nhost = \"127.0.0.1\"\nport = 0\n",
        '[http]\nhost = "127.0.0.1"\nport = 8099\n',
    )
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    assert main(["callback-urls", str(path)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    bridge = Bridge(load_config_text(text))
    bridge.http.port = 8099
    assert [name for name, _, _ in lines] == ["mcs"] * len(lines)  # the sandbox takes no pushes
    assert {kind for _, kind, _ in lines} == {"report", "inbound"}
    for name, kind, url in lines:
        assert url == bridge.callback_url(name, kind)  # type: ignore[arg-type]


async def test_other_methods_and_malformed_paths_are_refused(
    served: tuple[Recording, Metrics, int],
) -> None:
    provider, _, port = served
    assert (await _call(port, "PUT", f"/callbacks/p1/{TOKEN}/report?smsid=1"))[0] == 405
    assert (await _call(port, "GET", f"/callbacks/p1/{TOKEN}/report/x?smsid=1"))[0] == 404
    assert (await _call(port, "GET", "/callbacks/p1?smsid=1"))[0] == 404
    assert provider.seen == []
    # Everything else still goes to the ordinary routes.
    assert (await _call(port, "GET", "/healthz"))[0] == 200
