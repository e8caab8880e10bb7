"""The whole daemon for end-to-end tests, and smpplib as the ESME that talks to it.

:class:`BridgeThread` runs a real :class:`bridge.app.Bridge` (SQLite store in a temporary
directory, sandbox provider with a short delay, SMPP on a free loopback port) in an event loop
of its own thread, like ``conftest.ServerThread``, so the blocking smpplib client can drive it
from the test thread. :func:`bridge_config` writes the TOML it is built from, which the crash
test also hands to a ``smpp-bridge run`` subprocess.

:class:`Esme` wraps an ``smpplib.client.Client``: it sends requests and reads until the matching
response, answering (and recording) every deliver_sm and enquire_link that arrives in between,
with every read bounded by a deadline. smpplib has no cancel_sm; that one PDU is encoded and its
response decoded with our own codec, over smpplib's socket.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp
from loop_thread import LoopThread

from bridge.app import Bridge
from bridge.config import load_config_text
from bridge.smpp.pdu import CommandId, DestAddress, Pdu, decode, encode

T = TypeVar("T")

#: Every blocking read in these tests gives up after this long.
IO_TIMEOUT = 5.0

SYSTEM_ID = "demo"
PASSWORD = "demopass"

# --------------------------------------------------------------------------- config


def toml_value(value: object) -> str:
    """A Python value as a TOML value (strings escaped; lists and inline tables too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _table(header: str, values: Mapping[str, object]) -> str:
    lines = [header]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Rule:
    """A sandbox rule: destinations ending in ``suffix`` get ``outcome``."""

    suffix: str
    outcome: str
    error_code: int = 0


def bridge_config(
    data_dir: Path,
    *,
    port: int = 0,
    http_port: int = 0,
    delay: float = 0.05,
    rules: Iterable[Rule] = (),
    account: Mapping[str, object] | None = None,
    pipeline: Mapping[str, object] | None = None,
    provider: Mapping[str, object] | None = None,
    admin: Mapping[str, object] | None = None,
    storage: Mapping[str, object] | None = None,
    http: Mapping[str, object] | None = None,
    extra: str = "",
) -> str:
    """TOML for one sandbox provider and the ``demo`` account (loopback, all bind types).

    ``account``, ``pipeline``, ``provider``, ``http`` and ``admin`` add or override keys of those
    tables; ``extra`` is appended as is (``[[routes]]`` tables, more providers).
    """
    smpp = {
        "host": "127.0.0.1",
        "port": port,
        "bind_failure_delay": 0.0,
        "bind_failure_delay_max": 0.0,
        "shutdown_timeout": 2.0,
    }
    acct: dict[str, object] = {"system_id": SYSTEM_ID, "password": PASSWORD, "max_binds": 10}
    acct.update(account or {})
    pipe: dict[str, object] = {"delivery_retry": 0.5, "retry_base": 0.05, "retry_max": 0.2}
    pipe.update(pipeline or {})
    prov: dict[str, object] = {"delay": delay}
    prov.update(provider or {})
    text = _table("[smpp]", smpp)
    text += _table("[http]", {"host": "127.0.0.1", "port": http_port, **(http or {})})
    text += _table("[admin]", {"host": "127.0.0.1", "port": 0, **(admin or {})})
    text += _table("[storage]", {"data_dir": str(data_dir), **(storage or {})})
    text += _table("[logging]", {"level": "warning", "format": "console"})
    text += _table("[pipeline]", pipe)
    text += _table("[[accounts]]", acct)
    text += _table("[providers.sandbox]", prov)
    for rule in rules:
        text += _table(
            "[[providers.sandbox.rules]]",
            {"suffix": rule.suffix, "outcome": rule.outcome, "error_code": rule.error_code},
        )
    return text + extra


# --------------------------------------------------------------------------- the daemon


class BridgeThread(LoopThread):
    """A :class:`Bridge` built from :func:`bridge_config` text, running in a background loop.

    ``Bridge.start()`` runs inside that loop (it creates tasks and the listener there).
    """

    def __init__(self, data_dir: Path, **config: Any) -> None:
        self.data_dir = data_dir
        self.config_text = bridge_config(data_dir, **config)
        super().__init__()
        self._stopped = False
        try:
            self.bridge: Bridge = self.call(self._start(), timeout=15.0)
        except BaseException:
            self.close_loop()
            raise
        self.port: int = self.bridge.smpp.ports["smpp"]

    async def _start(self) -> Bridge:
        bridge = Bridge(load_config_text(self.config_text))
        await bridge.start()
        return bridge

    def has_receiver(self, system_id: str = SYSTEM_ID) -> bool:
        return self.run(lambda: self.bridge.smpp.has_receiver(system_id))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.bridge.stop(), timeout=15.0)
        finally:
            self.close_loop()


StartBridge = Callable[..., BridgeThread]


@pytest.fixture
def start_bridge(tmp_path: Path) -> Iterator[StartBridge]:
    """Factory: ``start_bridge(data_dir=None, **bridge_config options)``; each bridge gets a
    fresh data directory unless one is given (to restart on the same store); every bridge is
    stopped afterwards."""
    started: list[BridgeThread] = []

    def start(data_dir: Path | None = None, **config: Any) -> BridgeThread:
        bt = BridgeThread(data_dir or tmp_path / f"data{len(started)}", **config)
        started.append(bt)
        return bt

    yield start
    for bt in reversed(started):
        bt.stop()


# --------------------------------------------------------------------------- the ESME


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


def wait_until(predicate: Callable[[], bool], timeout: float = IO_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


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

    def submit_multi(
        self, destinations: list[str], short_message: bytes, **fields: Any
    ) -> Pdu:
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


__all__ = [
    "IO_TIMEOUT",
    "PASSWORD",
    "SYSTEM_ID",
    "BridgeThread",
    "CancelResp",
    "Esme",
    "Rule",
    "StartBridge",
    "bridge_config",
    "receipt_fields",
    "receipt_id",
    "receipts_by_id",
    "start_bridge",
    "toml_value",
    "wait_until",
]
