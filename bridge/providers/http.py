"""The one HTTP call every HTTP provider adapter makes, behind a small transport interface.

Adapters build an :class:`HttpRequest` and read an :class:`HttpResponse` with pure functions; this
module moves the bytes. aiohttp is the default transport (docs/architecture.md: 3.4–4.2 k
requests/s at ~155 µs CPU each against a local server, against 0.4–1 k/s for httpx); httpx stays
selectable per provider
(``transport = "httpx"``) for sites whose proxies or TLS set-ups only it handles.

Why the query string and form bodies are encoded here rather than by the library: providers
differ in the charset their parameters are percent-encoded in (phlyMail wants ISO-8859-1,
everybody else UTF-8), and both transports must put the very same bytes on the wire, so the
encoding is ours and the libraries get a finished URL and body.

Secrets: provider credentials travel in query strings, so neither the URL nor a library's
exception text (which often quotes the URL) ever leaves this module; :class:`HttpError` carries
only a reason word and the exception's type name.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "HttpClient",
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "Transport",
    "content_type_charset",
    "create_client",
    "decode_pairs",
    "encode_pairs",
]

Transport = Literal["aiohttp", "httpx"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, as an adapter's pure ``build_*`` function describes it.

    ``params`` go in the query string and ``form`` in an application/x-www-form-urlencoded body,
    both percent-encoded in ``charset`` (characters the charset cannot hold raise
    UnicodeEncodeError when the request is encoded: the adapter must have checked them).
    ``json`` is sent as an application/json body (UTF-8). At most one of ``form`` and ``json``.
    """

    method: Literal["GET", "POST"]
    url: str
    params: Sequence[tuple[str, str]] = ()
    form: Sequence[tuple[str, str]] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    charset: str = "utf-8"

    def full_url(self) -> str:
        """``url`` with ``params`` appended (after any query the url already has)."""
        if not self.params:
            return self.url
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}{encode_pairs(self.params, self.charset)}"

    def body(self) -> tuple[bytes | None, dict[str, str]]:
        """The encoded body and the headers to send with it (content type added)."""
        headers = dict(self.headers)
        if self.form is not None:
            headers.setdefault(
                "Content-Type", f"application/x-www-form-urlencoded; charset={self.charset}"
            )
            return encode_pairs(self.form, self.charset).encode("ascii"), headers
        if self.json is not None:
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
            return jsonlib.dumps(self.json, ensure_ascii=False).encode("utf-8"), headers
        return None, headers


def encode_pairs(pairs: Sequence[tuple[str, str]], charset: str = "utf-8") -> str:
    """``a=1&b=x%20y`` with every value percent-encoded in ``charset`` (spaces as ``+``)."""
    return urlencode(list(pairs), encoding=charset, errors="strict")


def decode_pairs(data: bytes, charset: str = "utf-8") -> dict[str, str]:
    """A query string or urlencoded body, first value of each name, percent-escapes decoded in
    ``charset`` (UTF-8 for an unknown charset name); undecodable octets become U+FFFD."""
    text = data.decode("latin-1")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, encoding=charset, errors="replace")
    except LookupError:
        pairs = parse_qsl(text, keep_blank_values=True, errors="replace")
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def content_type_charset(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type header value, or None."""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip().strip('"')
    return None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What came back: status, raw body, headers (names lower-cased)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def charset(self) -> str | None:
        return content_type_charset(self.headers.get("content-type", ""))

    def text(self, default_charset: str = "utf-8") -> str:
        """The body decoded with the declared charset (else ``default_charset``); undecodable
        bytes become U+FFFD rather than an exception: a reply we cannot read is a reply the
        adapter classifies as unexpected, not a crash."""
        charset = self.charset or default_charset
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name
            return self.body.decode(default_charset, errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (ValueError when it is not)."""
        return jsonlib.loads(self.text())


class HttpError(Exception):
    """The request got no HTTP answer: a timeout, a refused or reset connection, a broken
    reply. ``reason`` is one of ``connect`` (the request never reached the provider: safe to
    send again), ``timeout`` and ``protocol`` (it may have: the provider may have taken the
    message, see ``retry_after_timeout``); the message never contains the URL (it holds
    credentials)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class HttpClient(Protocol):
    """A pooled client for one provider. :meth:`request` raises only :class:`HttpError`."""

    async def request(self, request: HttpRequest) -> HttpResponse: ...

    async def close(self) -> None: ...


class _AiohttpClient:
    """aiohttp ``ClientSession`` with an explicit connection pool and timeouts."""

    def __init__(self, *, timeout: float, connect_timeout: float, pool_size: int) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _ensure(self) -> Any:
        # Created lazily, inside the running loop (aiohttp binds the session to it).
        if self._session is None or self._session.closed:
            aiohttp = self._aiohttp
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, limit_per_host=self._pool_size, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=True,
                raise_for_status=False,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "smpp-bridge"},
            )
        return self._session

    async def request(self, request: HttpRequest) -> HttpResponse:
        import yarl

        aiohttp = self._aiohttp
        session = self._ensure()
        body, headers = request.body()
        try:
            url = yarl.URL(request.full_url(), encoded=True)
            async with session.request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                data = await resp.read()
                return HttpResponse(
                    resp.status, data, {k.lower(): v for k, v in resp.headers.items()}
                )
        except aiohttp.ConnectionTimeoutError as exc:  # a TimeoutError: before that clause
            raise HttpError("connect", type(exc).__name__) from None
        except TimeoutError as exc:
            raise HttpError("timeout", type(exc).__name__) from None
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):
                reason = "timeout"
            elif isinstance(exc, aiohttp.ServerDisconnectedError):
                reason = "protocol"  # the request went out: the provider may have taken it
            else:
                reason = "connect"
            raise HttpError(reason, type(exc).__name__) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise HttpError("protocol", type(exc).__name__) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _HttpxClient:
    """httpx ``AsyncClient`` with the same pool size and timeouts."""

    def __init__(self, *, timeout: float, connect_timeout: float, pool_size: int) -> None:
        import httpx

        self._httpx = httpx
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=pool_size, max_keepalive_connections=pool_size
            ),
            headers={"User-Agent": "smpp-bridge"},
            follow_redirects=False,
        )

    async def request(self, request: HttpRequest) -> HttpResponse:
        httpx = self._httpx
        body, headers = request.body()
        try:
            resp = await self._client.request(
                request.method, request.full_url(), content=body, headers=headers
            )
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # never reached the provider
            raise HttpError("connect", type(exc).__name__) from None
        except httpx.TimeoutException as exc:
            raise HttpError("timeout", type(exc).__name__) from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            reason = "connect" if isinstance(exc, httpx.ConnectError) else "protocol"
            raise HttpError(reason, type(exc).__name__) from None
        except (httpx.HTTPError, ValueError) as exc:
            raise HttpError("protocol", type(exc).__name__) from None
        return HttpResponse(
            resp.status_code, resp.content, {k.lower(): v for k, v in resp.headers.items()}
        )

    async def close(self) -> None:
        await self._client.aclose()


def create_client(
    transport: Transport = "aiohttp",
    *,
    timeout: float = 15.0,
    connect_timeout: float = 5.0,
    pool_size: int = 16,
) -> HttpClient:
    """A pooled client on the chosen library. ``timeout`` bounds a whole request."""
    if transport == "aiohttp":
        return _AiohttpClient(
            timeout=timeout, connect_timeout=connect_timeout, pool_size=pool_size
        )
    if transport == "httpx":
        return _HttpxClient(timeout=timeout, connect_timeout=connect_timeout, pool_size=pool_size)
    raise ValueError(f"unknown HTTP transport {transport!r}")
