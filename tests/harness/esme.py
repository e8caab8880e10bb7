"""The test ESMEs and what they send and read.

:class:`RawEsme` is a blocking ESME on a plain (or TLS) socket speaking through our own codec,
for tests that need exact control of the bytes (:func:`bind_pdu`, :func:`submit_sm_pdu`,
:func:`deliver_sm_pdu` build the PDUs). :class:`Esme` wraps an ``smpplib.client.Client`` — an
independent implementation — for the end-to-end tests: it sends requests and reads until the
matching response, answering (and recording) every deliver_sm and enquire_link that arrives in
between, with every read bounded by a deadline. smpplib has no cancel_sm; that one PDU is encoded
and its response decoded with our own codec, over smpplib's socket. :func:`receipt_fields` and
friends read the receipts it collects.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from bridge.smpp.pdu import CommandId, DestAddress, FrameReader, Pdu, decode, encode
from tests.harness.loop import IO_TIMEOUT

SYSTEM_ID = "demo"
PASSWORD = "demopass"


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


# --------------------------------------------------------------------------- smpplib ESME


@dataclass(frozen=True, slots=True)
class CancelResp:
    """cancel_sm_resp, decoded by our codec (smpplib does not know cancel_sm)."""

    sequence: int
    status: int


@dataclass(frozen=True, slots=True)
class OurResp:
    """A response smpplib cannot parse (submit_multi_resp), decoded by our codec."""

    pdu: Pdu

    @property
    def sequence(self) -> int:
        return self.pdu.sequence_number


class Esme:
    """smpplib's client with bounded reads; deliver_sm are answered ESME_ROK and collected.

    ``deliver_status`` decides the deliver_sm_resp status (default ESME_ROK; None leaves the
    deliver_sm unanswered).
    """

    def __init__(self, port: int, *, timeout: float = IO_TIMEOUT) -> None:
        self.client = smpplib.client.Client(
            "127.0.0.1", port, timeout=timeout, allow_unknown_opt_params=True
        )
        self.timeout = timeout
        self.client.connect()
        self.delivered: list[Any] = []
        self.deliver_status: Callable[[Any], int | None] = lambda pdu: 0
        self._responses: dict[int, Any] = {}

    def __enter__(self) -> Esme:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()

    # ----------------------------------------------------------------- binding

    def bind(self, how: str = "transceiver") -> Any:
        resp = getattr(self.client, f"bind_{how}")(system_id=SYSTEM_ID, password=PASSWORD)
        assert resp.status == 0
        return resp

    def unbind(self) -> None:
        seq = self._send(smpplib.smpp.make_pdu("unbind", client=self.client))
        resp = self.wait_response(seq)
        assert resp.command == "unbind_resp"

    # ----------------------------------------------------------------- reading

    def _read(self, timeout: float) -> Any:
        """One PDU within ``timeout`` (TimeoutError otherwise)."""
        sock: socket.socket = self.client._socket
        sock.settimeout(max(timeout, 0.001))
        try:
            head = self.client._recv_exact(4)
            (length,) = struct.unpack(">L", head)
            raw = head + self.client._recv_exact(length - 4)
        except TimeoutError:
            raise TimeoutError(f"no PDU within {timeout:.2f}s") from None
        finally:
            sock.settimeout(self.timeout)
        (command_id,) = struct.unpack(">L", raw[4:8])
        if command_id == CommandId.cancel_sm_resp:
            ours = decode(raw)
            return CancelResp(ours.sequence_number, ours.command_status)
        if command_id == CommandId.submit_multi_resp:
            return OurResp(decode(raw))
        pdu = smpplib.smpp.parse_pdu(raw, client=self.client, allow_unknown_opt_params=True)
        if not pdu.is_error() and pdu.command in smpplib.consts.STATE_SETTERS:
            self.client.state = smpplib.consts.STATE_SETTERS[pdu.command]
        return pdu

    def _dispatch(self, pdu: Any) -> None:
        """Answer what the SMSC asks of us; keep responses by sequence number."""
        if isinstance(pdu, CancelResp | OurResp):
            self._responses[pdu.sequence] = pdu
        elif pdu.command == "deliver_sm":
            self.delivered.append(pdu)
            status = self.deliver_status(pdu)
            if status is None:
                return  # leave it unanswered
            resp = smpplib.smpp.make_pdu("deliver_sm_resp", client=self.client, status=status)
            resp.sequence = pdu.sequence
            self.client.send_pdu(resp)
        elif pdu.command == "enquire_link":
            resp = smpplib.smpp.make_pdu("enquire_link_resp", client=self.client)
            resp.sequence = pdu.sequence
            self.client.send_pdu(resp)
        else:
            self._responses[pdu.sequence] = pdu

    def pump(self, timeout: float) -> None:
        """Read and handle PDUs for ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                self._dispatch(self._read(remaining))
            except TimeoutError:
                return

    def wait_response(self, sequence: int, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        while sequence not in self._responses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no response to sequence {sequence}")
            self._dispatch(self._read(remaining))
        return self._responses.pop(sequence)

    def receipts(self, count: int, timeout: float = IO_TIMEOUT) -> list[Any]:
        """Wait until ``count`` deliver_sm have arrived in total; returns all of them."""
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.delivered)} of {count} deliver_sm arrived")
            with contextlib.suppress(TimeoutError):
                self._dispatch(self._read(remaining))
        return list(self.delivered)

    # ----------------------------------------------------------------- requests

    def _send(self, pdu: Any) -> int:
        self.client.send_pdu(pdu)
        return int(pdu.sequence)

    def send_submit(self, **fields: Any) -> int:
        """Put a submit_sm on the wire (defaults: alphanumeric sender, German mobile)."""
        values: dict[str, Any] = {
            "source_addr_ton": smpplib.consts.SMPP_TON_ALNUM,
            "source_addr_npi": 0,
            "source_addr": "Bridge",
            "dest_addr_ton": smpplib.consts.SMPP_TON_INTL,
            "dest_addr_npi": smpplib.consts.SMPP_NPI_ISDN,
            "destination_addr": "4915112345678",
            "short_message": b"hello",
            "registered_delivery": 1,
        }
        if "message_payload" in fields:
            values["short_message"] = None  # sm_length 0: the text travels in the TLV
        values.update(fields)
        return self._send(smpplib.smpp.make_pdu("submit_sm", client=self.client, **values))

    def submit(self, **fields: Any) -> Any:
        """submit_sm and its response (any status)."""
        resp = self.wait_response(self.send_submit(**fields))
        assert resp.command == "submit_sm_resp"
        return resp

    def submit_ok(self, **fields: Any) -> str:
        """submit_sm that must be accepted; returns the message id."""
        resp = self.submit(**fields)
        assert resp.status == 0, f"submit_sm_resp status {resp.status:#x}"
        mid = str(resp.message_id.decode())
        assert mid
        return mid

    def query(self, message_id: str, **fields: Any) -> Any:
        values: dict[str, Any] = {
            "message_id": message_id,
            "source_addr_ton": smpplib.consts.SMPP_TON_ALNUM,
            "source_addr_npi": 0,
            "source_addr": "Bridge",
        }
        values.update(fields)
        pdu = smpplib.smpp.make_pdu("query_sm", client=self.client, **values)
        # smpplib allows query_sm only on RX/TRX binds; SMPP 3.4 (4.8.1) allows TX and TRX.
        self.client._socket.sendall(pdu.generate())
        resp = self.wait_response(int(pdu.sequence))
        assert resp.command == "query_sm_resp"
        return resp

    def submit_multi(self, destinations: list[str], short_message: bytes, **fields: Any) -> Pdu:
        """A submit_multi to ``destinations`` (international numbers); the submit_multi_resp
        (our codec's Pdu: message_id, unsuccess_smes)."""
        seq = self.client.next_sequence()
        values: dict[str, Any] = {
            "source_addr_ton": 5,
            "source_addr_npi": 0,
            "source_addr": "Bridge",
            "dest_addresses": [DestAddress(1, 1, d) for d in destinations],
            "registered_delivery": 1,
            "short_message": short_message,
            **fields,
        }
        self.client._socket.sendall(encode(Pdu(CommandId.submit_multi, seq, fields=values)))
        resp = self.wait_response(seq)
        assert isinstance(resp, OurResp)
        return resp.pdu

    def cancel(self, message_id: str, destination: str = "4915112345678") -> CancelResp:
        seq = self.client.next_sequence()
        pdu = Pdu(
            CommandId.cancel_sm,
            seq,
            fields={
                "service_type": "",
                "message_id": message_id,
                "source_addr_ton": 5,
                "source_addr_npi": 0,
                "source_addr": "Bridge",
                "dest_addr_ton": 1,
                "dest_addr_npi": 1,
                "destination_addr": destination,
            },
        )
        self.client._socket.sendall(encode(pdu))
        resp = self.wait_response(seq)
        assert isinstance(resp, CancelResp)
        return resp


# --------------------------------------------------------------------------- receipts


def receipt_fields(pdu: Any) -> dict[str, str]:
    """The Appendix B fields of a receipt's text (``text`` runs to the end)."""
    text = pdu.short_message.decode("ascii")
    head, _, rest = text.partition(" text:")
    fields = {"text": rest}
    for key in ("id", "sub", "dlvrd", "stat", "err"):
        marker = f"{key}:"
        start = head.index(marker) + len(marker) if marker in head else -1
        if start >= 0:
            fields[key] = head[start:].split(" ", 1)[0]
    for key in ("submit date", "done date"):
        marker = f"{key}:"
        if marker in head:
            fields[key] = head[head.index(marker) + len(marker) :].split(" ", 1)[0]
    return fields


def receipt_id(pdu: Any) -> str:
    """receipted_message_id of a receipt deliver_sm."""
    rid = pdu.receipted_message_id
    return rid.decode() if isinstance(rid, bytes) else str(rid)


def receipts_by_id(receipts: list[Any]) -> dict[str, Any]:
    """Receipts by receipted id; asserts that no id came twice."""
    out = {receipt_id(r): r for r in receipts}
    assert len(out) == len(receipts), "duplicate receipts"
    return out


def receipt_fields_by_id(receipts: list[Any]) -> dict[str, dict[str, str]]:
    """Each receipt's text fields by its receipted id (no id twice)."""
    return {mid: receipt_fields(r) for mid, r in receipts_by_id(receipts).items()}
