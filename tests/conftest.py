"""Shared fixtures: a real SMPP server on a loopback port, run in its own thread and event loop,
so that blocking ESME libraries (smpplib) can talk to it from the test thread.

Also here: a raw-socket ESME on our own codec (:class:`RawEsme`), test handlers that implement
the :class:`~bridge.smpp.server.SmppHandler` seam, and a throw-away TLS certificate."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from loop_thread import LoopThread

from bridge.core.accounts import LOOPBACK_NETWORKS, Account, AccountRegistry, BindType
from bridge.smpp.pdu import CommandId, FrameReader, Pdu, decode, encode
from bridge.smpp.server import ServerConfig, SessionInfo, SmppHandler, SmppServer
from bridge.smpp.session import SessionConfig

T = TypeVar("T")

# Every blocking socket operation in the tests gives up after this long.
IO_TIMEOUT = 5.0


def pytest_configure(config: pytest.Config) -> None:
    """Send structlog through stdlib logging (unless a test setup configured it), so that
    pytest captures server logs per test and shows them only for failures."""
    if not structlog.is_configured():
        structlog.configure(
            processors=[
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
        )


def make_account(**overrides: Any) -> Account:
    """The demo account of config/bridge.toml, with overrides."""
    values: dict[str, Any] = {
        "system_id": "demo",
        "password": "demopass",
        "allowed_bind_types": frozenset(BindType),
        "allowed_networks": LOOPBACK_NETWORKS,
        "max_binds": 10,
        "tps": 0.0,
        "max_outstanding": 1000,
        "default_region": None,
    }
    values.update(overrides)
    return Account(**values)


class ServerThread(LoopThread):
    """A SmppServer on 127.0.0.1:<free port> in a background event loop.

    ``server_kw`` overrides :class:`ServerConfig` fields; the bind-failure delay is off unless
    a test asks for it.
    """

    def __init__(
        self,
        accounts: list[Account],
        handler: SmppHandler | None = None,
        session: SessionConfig | None = None,
        **server_kw: Any,
    ) -> None:
        super().__init__()
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "session": session or SessionConfig(),
            "bind_failure_delay": 0.0,
            "bind_failure_delay_max": 0.0,
        }
        values.update(server_kw)
        cfg = ServerConfig(**values)
        self.registry = AccountRegistry(accounts)
        self.server: SmppServer = self.call(self._make(cfg, handler))
        self.port: int = self.server.ports["smpp"]
        self.tls_port: int | None = self.server.ports.get("smpp_tls")

    async def _make(self, cfg: ServerConfig, handler: SmppHandler | None) -> SmppServer:
        server = SmppServer(cfg, self.registry, handler)
        await server.start()
        return server

    def connection_count(self) -> int:
        return self.run(lambda: self.server.connection_count)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.call(self.server.stop(timeout=2.0))
        finally:
            self.close_loop()


StartServer = Callable[..., ServerThread]
"""The type of the ``smpp_server`` fixture."""


@pytest.fixture
def smpp_server() -> Iterator[StartServer]:
    """Factory: smpp_server(accounts=[...], handler=..., session=SessionConfig(...), **config)."""
    started: list[ServerThread] = []

    def start(
        accounts: list[Account] | None = None,
        handler: SmppHandler | None = None,
        session: SessionConfig | None = None,
        **kw: Any,
    ) -> ServerThread:
        st = ServerThread(accounts or [make_account()], handler, session, **kw)
        started.append(st)
        return st

    yield start
    for st in started:
        st.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = IO_TIMEOUT) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


# --------------------------------------------------------------------------- PDUs


def bind_pdu(
    command_id: int = CommandId.bind_transceiver,
    system_id: str = "demo",
    password: str = "demopass",
) -> Pdu:
    return Pdu(
        command_id,
        fields={
            "system_id": system_id,
            "password": password,
            "system_type": "",
            "interface_version": 0x34,
            "addr_ton": 0,
            "addr_npi": 0,
            "address_range": "",
        },
    )


def submit_sm_pdu(
    text: bytes = b"hello", destination: str = "4915112345678", sequence: int = 0
) -> Pdu:
    return Pdu(
        CommandId.submit_sm,
        sequence,
        fields={
            "source_addr_ton": 5,
            "source_addr_npi": 0,
            "source_addr": "Bridge",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": destination,
            "short_message": text,
        },
    )


def deliver_sm_pdu(text: bytes = b"inbound", source: str = "4915112345678") -> Pdu:
    return Pdu(
        CommandId.deliver_sm,
        fields={
            "source_addr_ton": 1,
            "source_addr_npi": 1,
            "source_addr": source,
            "dest_addr_ton": 0,
            "dest_addr_npi": 0,
            "destination_addr": "12345",
            "short_message": text,
        },
    )


# --------------------------------------------------------------------------- raw ESME


class PeerClosed(Exception):
    """The server closed the connection."""


class RawEsme:
    """A blocking ESME on a plain (or TLS-wrapped) socket, speaking through our own codec.

    Every read is bounded by a socket timeout, so a test that waits for a PDU that never comes
    fails with ``TimeoutError`` instead of hanging.
    """

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        timeout: float = IO_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        rcvbuf: int | None = None,
        source: str | None = None,
    ) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:  # another loopback address (127.0.0.2 ...): another host
            raw.bind((source, 0))
        if rcvbuf is not None:  # before connect(), so the window is negotiated small
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(timeout)
        raw.connect((host, port))
        self.sock: socket.socket = (
            ssl_context.wrap_socket(raw, server_hostname="localhost") if ssl_context else raw
        )
        self._reader = FrameReader(1 << 20)
        self._frames: deque[bytes] = deque()
        self._seq = itertools.count(1)

    def __enter__(self) -> RawEsme:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a crashed peer does."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def next_sequence(self) -> int:
        return next(self._seq)

    def send(self, pdu: Pdu) -> int:
        """Send one PDU (numbered here when its sequence_number is 0); returns the sequence."""
        if not pdu.sequence_number:
            pdu.sequence_number = self.next_sequence()
        self.sock.sendall(encode(pdu))
        return pdu.sequence_number

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise PeerClosed
        self._reader.feed(data)
        self._frames.extend(self._reader.frames())

    def recv(self, timeout: float | None = None) -> Pdu:
        """The next PDU from the server; PeerClosed on EOF, TimeoutError when none comes."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            while not self._frames:
                self._fill()
        finally:
            if timeout is not None:
                self.sock.settimeout(IO_TIMEOUT)
        return decode(self._frames.popleft())

    def recv_until_closed(self, timeout: float = IO_TIMEOUT) -> list[Pdu]:
        """Every PDU until the server closes the connection (TimeoutError if it does not)."""
        deadline = time.monotonic() + timeout
        pdus: list[Pdu] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"connection still open after {timeout}s; got {pdus}")
            try:
                pdus.append(self.recv(remaining))
            except (PeerClosed, ConnectionResetError):
                return pdus

    def bind(
        self,
        command_id: int = CommandId.bind_transceiver,
        system_id: str = "demo",
        password: str = "demopass",
    ) -> Pdu:
        seq = self.send(bind_pdu(command_id, system_id, password))
        resp = self.recv()
        assert resp.sequence_number == seq
        assert resp.command_id == command_id | 0x80000000
        return resp

    def submit(self, text: bytes = b"hello", destination: str = "4915112345678") -> int:
        return self.send(submit_sm_pdu(text, destination))


# --------------------------------------------------------------------------- handlers


class AcceptingHandler:
    """A pipeline that accepts every message: submit_sm_resp ESME_ROK with ``msg-<seq>``.

    ``delay(pdu)`` may slow a request down (seconds); every request is recorded.
    """

    def __init__(
        self,
        delay: Callable[[Pdu], float] | None = None,
        message_id: Callable[[Pdu], str] | None = None,
    ) -> None:
        self.delay = delay
        self.message_id = message_id or (lambda pdu: f"msg-{pdu.sequence_number}")
        self.requests: list[Pdu] = []
        self.answered = 0
        self.bound: list[SessionInfo] = []
        self.closed: list[SessionInfo] = []

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Any, token: Any) -> bool:
        return False  # every request through handle_request (its delay may await)

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        self.requests.append(pdu)
        if self.delay is not None:
            await asyncio.sleep(self.delay(pdu))
        self.answered += 1
        return pdu.response(message_id=self.message_id(pdu))

    def session_bound(self, session: SessionInfo) -> None:
        self.bound.append(session)

    def session_closed(self, session: SessionInfo) -> None:
        self.closed.append(session)


class GatedHandler(AcceptingHandler):
    """Holds every request until :meth:`release` is called (from any thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        self.requests.append(pdu)
        self.waiting += 1
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.005)
        finally:
            self.waiting -= 1
        self.answered += 1
        return pdu.response(message_id=self.message_id(pdu))

    def release(self) -> None:
        self.gate.set()


# --------------------------------------------------------------------------- TLS


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for CN=localhost / IP 127.0.0.1; returns (cert, key) paths.

    Uses the ``cryptography`` package when installed, else the ``openssl`` command line.
    """
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("a TLS test needs the cryptography package or openssl") from None
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(key_path), "-out", str(cert_path)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return cert_path, key_path
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


__all__ = [
    "IO_TIMEOUT",
    "AcceptingHandler",
    "GatedHandler",
    "PeerClosed",
    "RawEsme",
    "ServerThread",
    "StartServer",
    "bind_pdu",
    "deliver_sm_pdu",
    "make_account",
    "make_self_signed_cert",
    "replace",
    "submit_sm_pdu",
    "wait_until",
]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("1m")``: a real filesystem of that size, so ENOSPC comes from the kernel, not from
    a mock; unmounted after the test. Skips the test where mounting is not allowed."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"tmpfs-{len(mounts)}"
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)
