"""The shared provider HTTP call (``providers/http.py``) and the adapter base (``http_provider``).

Both transports (aiohttp, the default, and httpx) against a real local Starlette server: the
same bytes on the wire (charset-encoded parameters and form bodies, JSON), no answer turned into
:class:`HttpError` without the URL (it holds credentials), and the base class's classification
of HTTP statuses and unsendable messages into outcomes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.core.model import Address, Message, Outcome, OutcomeKind
from bridge.core.provider import Capabilities, ProviderContext
from bridge.providers.http import HttpError, HttpRequest, HttpResponse, create_client, encode_pairs
from bridge.providers.http_provider import HttpProvider, Unsendable, classify_http_status
from bridge.providers.settings import HttpProviderSettings
from bridge.web.server import HttpServer

pytestmark = pytest.mark.timeout(30)

TRANSPORTS = ["aiohttp", "httpx"]


class Recorder:
    """A server that records raw requests and answers by path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def echo(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(
            {
                "method": request.method,
                "query": request.url.query,
                "body": body,
                "content_type": request.headers.get("content-type", ""),
            }
        )
        return PlainTextResponse("100 OK", headers={"X-Thing": "1"})

    async def status(self, request: Request) -> Response:
        return PlainTextResponse("nope", status_code=int(request.path_params["code"]))

    async def slow(self, request: Request) -> Response:
        await self.release.wait()
        return PlainTextResponse("late")

    async def latin1(self, request: Request) -> Response:
        return Response("Grüße".encode("latin-1"), media_type="text/plain; charset=iso-8859-1")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/echo", self.echo, methods=["GET", "POST"]),
                Route("/status/{code:int}", self.status),
                Route("/slow", self.slow),
                Route("/latin1", self.latin1),
            ]
        )


@pytest.fixture
async def server() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    http = HttpServer("127.0.0.1", 0, recorder.app(), shutdown_timeout=0.5)
    await http.start()
    try:
        yield recorder, f"http://127.0.0.1:{http.port}"
    finally:
        recorder.release.set()
        await http.stop()


def test_encode_pairs_uses_the_requested_charset() -> None:
    assert encode_pairs([("text", "Grüße & co")], "iso-8859-1") == "text=Gr%FC%DFe+%26+co"
    assert encode_pairs([("text", "Grüße")]) == "text=Gr%C3%BC%C3%9Fe"
    with pytest.raises(UnicodeEncodeError):
        encode_pairs([("text", "€")], "iso-8859-1")


def test_full_url_appends_to_an_existing_query() -> None:
    assert HttpRequest("GET", "http://x/a?k=1", params=[("b", "2")]).full_url() == (
        "http://x/a?k=1&b=2"
    )
    assert HttpRequest("GET", "http://x/a").full_url() == "http://x/a"


def test_response_text_and_charset() -> None:
    resp = HttpResponse(
        200, "Grüße".encode("latin-1"), {"content-type": "text/plain; charset=ISO-8859-1"}
    )
    assert resp.charset == "ISO-8859-1"
    assert resp.text() == "Grüße"
    assert HttpResponse(200, b"\xff", {}).text() == "\ufffd"  # unreadable, not an exception
    assert HttpResponse(200, b'{"a": 1}', {}).json() == {"a": 1}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_get_params_are_sent_in_the_given_charset(
    server: tuple[Recorder, str], transport: Any
) -> None:
    recorder, url = server
    client = create_client(transport, timeout=5)
    try:
        resp = await client.request(
            HttpRequest("GET", f"{url}/echo", params=[("text", "Grüße")], charset="iso-8859-1")
        )
    finally:
        await client.close()
    assert resp.status == 200
    assert resp.text() == "100 OK"
    assert resp.headers["x-thing"] == "1"
    assert recorder.requests[-1]["query"] == "text=Gr%FC%DFe"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_form_and_json_bodies(server: tuple[Recorder, str], transport: Any) -> None:
    recorder, url = server
    client = create_client(transport, timeout=5)
    try:
        await client.request(HttpRequest("POST", f"{url}/echo", form=[("a", "b c"), ("d", "é")]))
        await client.request(HttpRequest("POST", f"{url}/echo", json={"message": "Grüße"}))
    finally:
        await client.close()
    form, js = recorder.requests[-2:]
    assert form["body"] == b"a=b+c&d=%C3%A9"
    assert form["content_type"].startswith("application/x-www-form-urlencoded")
    assert js["body"] == '{"message": "Grüße"}'.encode()
    assert js["content_type"].startswith("application/json")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_response_body_is_decoded_with_its_declared_charset(
    server: tuple[Recorder, str], transport: Any
) -> None:
    _, url = server
    client = create_client(transport, timeout=5)
    try:
        resp = await client.request(HttpRequest("GET", f"{url}/latin1"))
    finally:
        await client.close()
    assert resp.text() == "Grüße"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_timeout_is_an_http_error_without_the_url(
    server: tuple[Recorder, str], transport: Any
) -> None:
    _, url = server
    client = create_client(transport, timeout=0.3)
    try:
        with pytest.raises(HttpError) as info:
            await client.request(HttpRequest("GET", f"{url}/slow", params=[("pass", "s3cret")]))
    finally:
        await client.close()
    assert info.value.reason == "timeout"
    assert "s3cret" not in str(info.value) and "127.0.0.1" not in str(info.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refused_connection_is_an_http_error(transport: Any) -> None:
    client = create_client(transport, timeout=2, connect_timeout=1)
    try:
        with pytest.raises(HttpError) as info:
            # Port 1 on loopback: nothing listens there.
            await client.request(HttpRequest("GET", "http://127.0.0.1:1/x", params=[("key", "k")]))
    finally:
        await client.close()
    assert info.value.reason in ("connect", "timeout")
    assert "key" not in str(info.value)


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown HTTP transport"):
        create_client("urllib")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, None),
        (400, None),
        (404, None),
        (408, OutcomeKind.TRANSIENT),
        (429, OutcomeKind.TRANSIENT),
        (500, OutcomeKind.TRANSIENT),
        (503, OutcomeKind.TRANSIENT),
    ],
)
def test_http_status_classification(status: int, kind: OutcomeKind | None) -> None:
    assert classify_http_status(status) is kind


# --------------------------------------------------------------------------- the base class


class _Settings(HttpProviderSettings):
    type: str = "test"


class _EchoProvider(HttpProvider):
    """Sends to /echo, or /status/<code> when the destination says so; '€' is unsendable."""

    def build_send(self, message: Message) -> HttpRequest:
        text = message.text or ""
        if "€" in text:
            raise Unsendable("no euro sign here", error_code=7)
        digits = message.destination.digits
        path = f"/status/{digits[-3:]}" if digits.startswith("999") else "/echo"
        return HttpRequest("GET", self.settings.base_url + path, params=[("text", text)])

    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        if response.text().startswith("100"):
            return Outcome(OutcomeKind.ACCEPTED, provider_message_id="p1")
        return Outcome(OutcomeKind.PERMANENT, detail=response.text(), error_code=response.status)

    def build_health(self) -> HttpRequest | None:
        return HttpRequest("GET", self.settings.base_url + "/echo")

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        return response.status == 200, 42.5


def _message(destination: str = "4915112345678", text: str = "hi") -> Message:
    return Message(
        id="m1",
        account="demo",
        source=Address("4915100000000"),
        destination=Address(destination),
        text=text,
    )


@pytest.fixture
async def provider(
    server: tuple[Recorder, str],
) -> AsyncIterator[tuple[_EchoProvider, list[float]]]:
    _, url = server
    balances: list[float] = []
    p = _EchoProvider(
        "echo",
        _Settings(base_url=url, timeout=0.5),
        ProviderContext(name="echo", set_balance=balances.append),
        Capabilities(),
    )

    async def report(_: object) -> bool:
        return True

    async def inbound(_: object) -> bool:
        return True

    await p.start(report, inbound)
    try:
        yield p, balances
    finally:
        await p.stop()


async def test_base_accepts_and_parses(provider: tuple[_EchoProvider, list[float]]) -> None:
    p, _ = provider
    outcome = await p.send(_message())
    assert outcome.kind is OutcomeKind.ACCEPTED and outcome.provider_message_id == "p1"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("500", OutcomeKind.TRANSIENT),
        ("503", OutcomeKind.TRANSIENT),
        ("429", OutcomeKind.TRANSIENT),
        ("403", OutcomeKind.PERMANENT),
    ],
)
async def test_base_classifies_http_statuses(
    provider: tuple[_EchoProvider, list[float]], code: str, kind: OutcomeKind
) -> None:
    p, _ = provider
    outcome = await p.send(_message(destination="999000" + code))
    assert outcome.kind is kind


async def test_base_turns_unsendable_into_a_permanent_outcome(
    provider: tuple[_EchoProvider, list[float]],
) -> None:
    p, _ = provider
    outcome = await p.send(_message(text="5 €"))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error_code == 7 and outcome.detail == "no euro sign here"


async def test_base_timeout_is_transient(provider: tuple[_EchoProvider, list[float]]) -> None:
    p, _ = provider

    class Slow(_EchoProvider):
        def build_send(self, message: Message) -> HttpRequest:
            return HttpRequest("GET", self.settings.base_url + "/slow")

    slow = Slow("slow", _Settings(base_url=p.settings.base_url, timeout=0.3), p.ctx, Capabilities())

    async def sink(_: object) -> bool:
        return True

    await slow.start(sink, sink)
    try:
        outcome = await slow.send(_message())
    finally:
        await slow.stop()
    assert outcome.kind is OutcomeKind.TRANSIENT
    assert "timeout" in outcome.detail


async def test_base_health_feeds_the_balance(provider: tuple[_EchoProvider, list[float]]) -> None:
    p, balances = provider
    assert await p.healthy() is True
    assert balances == [42.5]


async def test_base_health_fails_when_the_provider_is_down() -> None:
    p = _EchoProvider(
        "down",
        _Settings(base_url="http://127.0.0.1:1", timeout=1, connect_timeout=0.5),
        ProviderContext(name="down"),
        Capabilities(),
    )

    async def sink(_: object) -> bool:
        return True

    await p.start(sink, sink)
    try:
        assert await p.healthy() is False
        assert (await p.send(_message())).kind is OutcomeKind.TRANSIENT
    finally:
        await p.stop()


async def test_simulators_read_urlencoded_post_bodies_without_python_multipart() -> None:
    from starlette.responses import JSONResponse

    from bridge.simulators.common import request_params

    async def echo(request: Request) -> Response:
        return JSONResponse(await request_params(request))

    http = HttpServer(
        "127.0.0.1",
        0,
        Starlette(routes=[Route("/p", echo, methods=["GET", "POST"])]),
        shutdown_timeout=0.5,
    )
    await http.start()
    client = create_client(timeout=5)
    try:
        resp = await client.request(
            HttpRequest(
                "POST",
                f"http://127.0.0.1:{http.port}/p",
                params=[("a", "q"), ("b", "q")],
                form=[("b", "Grüße"), ("b", "second"), ("c", "")],
            )
        )
    finally:
        await client.close()
        await http.stop()
    assert resp.json() == {"a": "q", "b": "Grüße", "c": ""}  # the body wins, first value
