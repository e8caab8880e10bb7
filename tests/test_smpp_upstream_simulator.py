"""The upstream SMSC simulator, driven by smpplib (an independent ESME): binds and credentials,
message ids, receipts (TLVs, Appendix B text, id and date variants), outcomes by destination
suffix, the TPS limit, forced statuses, MO (concatenated too), and ``smpp-bridge simulate``."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from bridge.simulators.smpp_upstream import SmppUpstreamSimulator
from bridge.smpp.pdu import Status
from tests.harness.loop import LoopThread

pytestmark = pytest.mark.timeout(30)


class Upstream(LoopThread):
    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.sim = SmppUpstreamSimulator(**options)
        self.call(self.sim.start())

    def close(self) -> None:
        try:
            self.call(self.sim.close())
        finally:
            self.close_loop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream(delay=0.02, retry=0.05, tps=0)
    yield up
    up.close()


class Client:
    """smpplib with bounded reads: requests, their responses, deliver_sm collected."""

    def __init__(self, port: int) -> None:
        self.c = smpplib.client.Client("127.0.0.1", port, timeout=5, allow_unknown_opt_params=True)
        self.c.connect()
        self.delivered: list[Any] = []

    def bind(self, password: str = "isms") -> Any:
        return self.c.bind_transceiver(system_id="isms", password=password)

    def read(self, timeout: float = 5.0) -> Any:
        sock: socket.socket = self.c._socket
        sock.settimeout(timeout)
        head = self.c._recv_exact(4)
        (length,) = struct.unpack(">L", head)
        raw = head + self.c._recv_exact(length - 4)
        return smpplib.smpp.parse_pdu(raw, client=self.c, allow_unknown_opt_params=True)

    def submit(self, dest: str = "306912345678", rd: int = 1, **kw: Any) -> Any:
        values: dict[str, Any] = {
            "source_addr_ton": 5,
            "source_addr": "Bridge",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": dest,
            "short_message": b"hello",
            "registered_delivery": rd,
        }
        values.update(kw)
        pdu = smpplib.smpp.make_pdu("submit_sm", client=self.c, **values)
        self.c.send_pdu(pdu)
        while True:
            resp = self.read()
            if resp.command == "deliver_sm":
                self.answer(resp)
            elif resp.sequence == pdu.sequence:
                return resp

    def answer(self, pdu: Any, status: int = 0) -> None:
        self.delivered.append(pdu)
        resp = smpplib.smpp.make_pdu("deliver_sm_resp", client=self.c, status=status)
        resp.sequence = pdu.sequence
        self.c.send_pdu(resp)

    def deliveries(self, n: int, timeout: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.delivered) < n:
            pdu = self.read(max(0.01, deadline - time.monotonic()))
            if pdu.command == "deliver_sm":
                self.answer(pdu)
        return self.delivered

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.c.disconnect()


@pytest.fixture
def client(upstream: Upstream) -> Iterator[Client]:
    c = Client(upstream.sim.port)
    yield c
    c.close()


RECEIPT = re.compile(
    r"id:(?P<id>\w+) sub:001 dlvrd:(?P<dlvrd>\d{3}) submit date:(?P<sd>\d+) done date:(?P<dd>\d+)"
    r" stat:(?P<stat>[A-Z]+) err:(?P<err>\d{3}) text:(?P<text>.*)"
)


def test_a_bind_with_the_wrong_password_is_refused(upstream: Upstream, client: Client) -> None:
    with pytest.raises(smpplib.exceptions.PDUError) as e:
        client.bind("nope")
    assert e.value.args[1] == Status.ESME_RINVPASWD


def test_a_submit_gets_an_8_hex_digit_id_and_a_receipt_with_tlvs_and_text(
    upstream: Upstream, client: Client
) -> None:
    client.bind()
    resp = client.submit()
    assert resp.status == 0
    mid = resp.message_id.decode()
    assert re.fullmatch(r"[0-9A-F]{8}", mid)
    [receipt] = client.deliveries(1)
    assert receipt.esm_class == 0x04
    m = RECEIPT.fullmatch(receipt.short_message.decode())
    assert m is not None
    assert (m["id"], m["stat"], m["err"], m["dlvrd"], m["text"]) == (
        mid, "DELIVRD", "000", "001", "hello"
    )
    assert len(m["dd"]) == 10
    assert receipt.receipted_message_id.decode() == mid
    assert receipt.message_state == 2
    assert receipt.source_addr.decode() == "306912345678"


def test_decimal_ids_twelve_digit_dates_and_no_tlvs_on_request(upstream: Upstream) -> None:
    upstream.sim.receipt_ids, upstream.sim.receipt_tlvs, upstream.sim.seconds = (
        "decimal", False, True
    )
    c = Client(upstream.sim.port)
    try:
        c.bind()
        mid = c.submit().message_id.decode()
        [receipt] = c.deliveries(1)
    finally:
        c.close()
    m = RECEIPT.fullmatch(receipt.short_message.decode())
    assert m is not None and m["id"] == str(int(mid, 16)) and len(m["dd"]) == 12
    assert getattr(receipt, "receipted_message_id", None) in (None, b"")


@pytest.mark.parametrize(
    ("suffix", "stat", "err"),
    [("01", "UNDELIV", "001"), ("02", "REJECTD", "002"), ("03", "EXPIRED", "003")],
)
def test_failure_receipts_by_destination_suffix(
    client: Client, suffix: str, stat: str, err: str
) -> None:
    client.bind()
    assert client.submit(dest="3069123456" + suffix).status == 0
    [receipt] = client.deliveries(1)
    m = RECEIPT.fullmatch(receipt.short_message.decode())
    assert m is not None and (m["stat"], m["err"], m["dlvrd"]) == (stat, err, "000")


@pytest.mark.parametrize(
    ("suffix", "status"),
    [
        ("90", Status.ESME_RINVDSTADR),
        ("91", Status.ESME_RSUBMITFAIL),
        ("93", Status.ESME_RSYSERR),
        ("94", Status.ESME_RX_P_APPN),
    ],
)
def test_submit_errors_by_destination_suffix(client: Client, suffix: str, status: int) -> None:
    client.bind()
    assert client.submit(dest="3069123456" + suffix).status == status


def test_queue_full_once_then_accepted(client: Client) -> None:
    client.bind()
    assert client.submit(dest="306912345692").status == Status.ESME_RMSGQFUL
    assert client.submit(dest="306912345692").status == 0


def test_receipts_follow_registered_delivery(upstream: Upstream, client: Client) -> None:
    client.bind()
    client.submit(rd=0)
    client.submit(dest="306912345678", rd=2)  # failures only: a DELIVRD is not reported
    client.submit(dest="306912345601", rd=2)
    [receipt] = client.deliveries(1)
    assert b"stat:UNDELIV" in receipt.short_message
    time_limit = time.monotonic() + 0.3
    while time.monotonic() < time_limit:
        try:
            pdu = client.read(0.05)
        except (TimeoutError, OSError):
            continue
        assert pdu.command != "deliver_sm", "an unrequested receipt"


def test_an_intermediate_receipt_when_asked_then_the_final_one(client: Client) -> None:
    client.bind()
    client.submit(dest="306912345604", rd=0x11)
    first, final = client.deliveries(2)
    assert first.esm_class == 0x20 and b"stat:BUFFRED" in first.short_message
    assert final.esm_class == 0x04 and b"stat:DELIVRD" in final.short_message


def test_forced_statuses_and_the_tps_limit(upstream: Upstream) -> None:
    upstream.run(lambda: upstream.sim.answer_next(Status.ESME_RSYSERR, 1, after=1))
    c = Client(upstream.sim.port)
    try:
        c.bind()
        assert [c.submit(rd=0).status for _ in range(3)] == [0, Status.ESME_RSYSERR, 0]
    finally:
        c.close()
    limited = Upstream(tps=2, delay=0.02)
    try:
        c = Client(limited.sim.port)
        c.bind()
        statuses = [c.submit(rd=0).status for _ in range(4)]
        c.close()
    finally:
        limited.close()
    assert statuses[:2] == [0, 0] and Status.ESME_RTHROTTLED in statuses[2:]


def test_a_concatenated_mo_is_sent_as_udh_parts(upstream: Upstream, client: Client) -> None:
    client.bind()
    text = "x" * 200
    future = upstream.submit(upstream.sim.send_mo("306900000001", "306999999999", text))
    parts = client.deliveries(2)
    assert future.result(5) == [0, 0]
    assert [p.esm_class for p in parts] == [0x40, 0x40]
    headers = [p.short_message[:6] for p in parts]
    assert headers[0][:5] == headers[1][:5] and [h[5] for h in headers] == [1, 2]
    assert b"".join(p.short_message[6:] for p in parts) == text.encode()


def test_a_receipt_waits_for_a_receiver_and_is_retried_until_acknowledged(
    upstream: Upstream,
) -> None:
    c = Client(upstream.sim.port)
    c.bind()
    c.submit()
    c.close()  # gone before the receipt is due
    time.sleep(0.1)
    c = Client(upstream.sim.port)
    try:
        c.bind()
        [receipt] = c.deliveries(1)
    finally:
        c.close()
    assert b"stat:DELIVRD" in receipt.short_message


def test_bridge_simulate_smpp_upstream_starts_and_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "simulate", "smpp-upstream", "--port", str(port),
         "--option", "system_id=demo", "--option", "password=pw", "--option", "delay=0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 15
        while "simulator listening" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert f":{port}" in line
        c = smpplib.client.Client("127.0.0.1", port, timeout=5, allow_unknown_opt_params=True)
        c.connect()
        assert c.bind_transmitter(system_id="demo", password="pw").status == 0
        c.disconnect()
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_options_are_refused() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "simulate", "smpp-upstream", "--option",
         "receipt_ids=octal"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2 and "receipt_ids" in out.stderr


def test_simulate_takes_the_provider_type_names_and_keeps_the_old_ones_as_aliases() -> None:
    from bridge.config import PROVIDER_TYPES
    from bridge.simulators import SIMULATORS

    assert set(PROVIDER_TYPES) - {"sandbox"} <= set(SIMULATORS)
    assert SIMULATORS["isms-http"] == SIMULATORS["isms_http"]
    assert SIMULATORS["smpp-upstream"] == SIMULATORS["isms_smpp"]
