"""Slowloris on the HTTP listeners (issue 14, finding 5).

Connections that never finish their request headers stayed open for ever: 1,001 of 1,100 after
42 s, and at the usual 1,024 descriptor limit SMPP binds then failed. Real sockets against a
real bridge: partial headers and stalled bodies are closed after the configured timeouts (on
the callback and the admin listener), and while one address holds 1,000 idle connections a
provider's callback from another address is answered as usual.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.harness.daemon import BridgeThread, StartBridge

pytestmark = pytest.mark.timeout(90)

#: Linux routes all of 127.0.0.0/8 to the loopback: the attacker is another address.
ATTACKER = "127.0.0.2"

PROVIDER = """
[providers.sf]
type = "smsflatrate"
base_url = "http://127.0.0.1:9/schnittstelle.php"
key = "testkey"
[[routes]]
providers = ["sandbox"]
"""


def http_port(bt: BridgeThread, listener: str = "http") -> int:
    server = bt.bridge.http if listener == "http" else bt.bridge.admin_http
    return int(bt.run(lambda: server.port))


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Reads until the server closes (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def is_open(sock: socket.socket) -> bool:
    """Without waiting: the server has neither closed it nor answered on it."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) is None  # pragma: no cover - data means answered
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def guard_count(bt: BridgeThread, listener: str, reason: str) -> float:
    counter = bt.bridge.metrics.http_guard.labels(listener, reason)
    return float(bt.run(lambda: counter._value.get()))


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        with contextlib.suppress(OSError):
            sock.close()


@pytest.mark.parametrize("listener", ["http", "admin"])
def test_partial_headers_are_closed_after_the_header_timeout(
    listener: str, start_bridge: StartBridge, sockets: list[socket.socket]
) -> None:
    limits = {"header_timeout": 0.5, "body_timeout": 0.5}
    bt = start_bridge(extra=PROVIDER, http=limits, admin=limits)
    sock = connect(http_port(bt, listener))
    sockets.append(sock)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
    assert closed_by_server(sock, within=10.0)
    assert guard_count(bt, listener, "header_timeout") == 1


def test_a_stalled_body_is_closed_after_the_body_timeout(
    start_bridge: StartBridge, sockets: list[socket.socket]
) -> None:
    limits = {"header_timeout": 5.0, "body_timeout": 0.5}
    bt = start_bridge(extra=PROVIDER, http=limits)
    path = urlsplit(bt.run(lambda: bt.bridge.callback_url("sf", "report"))).path
    sock = connect(http_port(bt))
    sockets.append(sock)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        "\r\nContent-Length: 100\r\n\r\nid=1".encode()
    )
    assert closed_by_server(sock, within=10.0)
    assert guard_count(bt, "http", "body_timeout") == 1
    assert guard_count(bt, "http", "header_timeout") == 0


def test_a_slow_but_complete_request_is_answered_and_keep_alive_still_works(
    start_bridge: StartBridge,
) -> None:
    limits = {"header_timeout": 2.0, "body_timeout": 2.0}
    bt = start_bridge(extra=PROVIDER, http=limits)
    conn = http.client.HTTPConnection("127.0.0.1", http_port(bt), timeout=5.0)
    for _ in range(3):  # three requests on one connection, each answered
        conn.request("GET", "/callbacks/sf/wrong-token/report?id=1&status=101")
        response = conn.getresponse()
        response.read()
        assert response.status == 404
    conn.close()


def test_a_callback_is_answered_while_one_address_holds_1000_idle_connections(
    start_bridge: StartBridge, sockets: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    cap = 16
    limits = {"header_timeout": 60.0, "max_connections_per_ip": cap}
    bt = start_bridge(extra=PROVIDER, http=limits, account={"inbound_numbers": ["491624675000"]})
    port = http_port(bt)
    for _ in range(1000):
        try:
            sockets.append(connect(port, ATTACKER))
        except OSError:  # the accept queue is full for a moment: the storm is refused
            continue
    # The bridge keeps at most `cap` of them; the rest got a 503 and were closed.
    deadline = time.monotonic() + 20.0
    while sum(is_open(s) for s in sockets) > cap and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(is_open(s) for s in sockets) <= cap
    assert guard_count(bt, "http", "per_address_cap") >= 1000 - cap - 200
    # One sampled WARNING for the storm (every 10 s at most), not one per connection.
    refused_lines = [r for r in caplog.records if "http.connection_refused" in r.getMessage()]
    assert 1 <= len(refused_lines) <= 3

    # A provider's inbound push from another address is taken as ever.
    url = urlsplit(bt.run(lambda: bt.bridge.callback_url("sf", "inbound")))
    conn = http.client.HTTPConnection("127.0.0.1", url.port, timeout=5.0)
    conn.request("GET", f"{url.path}?from=4917012345678&to=491624675000&text=hi&time=1")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"OK")
    conn.close()

