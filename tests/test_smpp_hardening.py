"""Issue 14, the SMPP side: what a hostile or broken peer must not be able to do.

Real loopback sockets against a real SmppServer; every read has a timeout, every wait a deadline.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import resource
import socket
import struct
import threading
from typing import Any

import pytest

import bridge.core.accounts as accounts_module
from bridge.app import server_config
from bridge.config import ConfigError, load_config_text
from bridge.passwords import hash_password
from bridge.smpp.pdu import CommandId, DestAddress, Pdu, Status, decode, encode
from bridge.smpp.session import SessionConfig
from tests.harness.esme import PeerClosed, RawEsme, bind_pdu, deliver_sm_pdu, submit_sm_pdu
from tests.harness.loop import IO_TIMEOUT, wait_until
from tests.harness.server import AcceptingHandler, StartServer, make_account


def bound_esme(port: int, **kw: Any) -> RawEsme:
    esme = RawEsme(port, **kw)
    resp = esme.bind()
    assert resp.command_status == 0, resp
    return esme


# --------------------------------------------------------------------------- finding 6


def test_a_framing_error_after_50_submits_answers_all_50_then_generic_nack_then_closes(
    smpp_server: StartServer,
) -> None:
    handler = AcceptingHandler(delay=lambda pdu: 0.05)  # answers arrive after the bad header
    st = smpp_server(handler=handler)
    with bound_esme(st.port) as esme:
        batch = b""
        seqs = []
        for _ in range(50):
            pdu = submit_sm_pdu()
            pdu.sequence_number = esme.next_sequence()
            seqs.append(pdu.sequence_number)
            batch += encode(pdu)
        esme.send_raw(batch + struct.pack(">IIII", 0, 0, 0, 0))  # a length-0 header
        pdus = esme.recv_until_closed()
    assert len(handler.requests) == 50
    responses = [p for p in pdus if p.command_id == CommandId.submit_sm_resp]
    assert sorted(p.sequence_number for p in responses) == seqs
    assert all(p.command_status == Status.ESME_ROK for p in responses)
    assert pdus[-1].command_id == CommandId.generic_nack
    assert pdus[-1].command_status == Status.ESME_RINVCMDLEN
    assert len(pdus) == 51
    assert wait_until(lambda: st.connection_count() == 0, 2.0)


# --------------------------------------------------------------------------- finding 3


def open_idle(port: int, n: int, host: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=IO_TIMEOUT)
        socks.append(s)
    return socks


def test_1000_idle_connections_from_one_address_do_not_keep_a_good_esme_out(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(handler=AcceptingHandler(), max_connections=1000)
    idle = open_idle(st.port, 1000)
    try:
        # The other address binds at once and is answered.
        with RawEsme(st.port, source="127.0.0.2") as good:
            assert good.bind().command_status == Status.ESME_ROK
            seq = good.submit()
            resp = good.recv()
            assert (resp.sequence_number, resp.command_status) == (seq, Status.ESME_ROK)
        # All but max_unbound_per_address of the idle ones were refused with an SMPP answer.
        refused = 0
        for s in idle[10:]:  # the first 10 were admitted (and stay idle)
            s.settimeout(IO_TIMEOUT)
            pdu = decode(s.recv(64))
            assert (pdu.command_id, pdu.command_status) == (
                CommandId.generic_nack,
                Status.ESME_RSYSERR,
            )
            refused += 1
            assert s.recv(64) == b""  # then a graceful close, not a reset
        assert refused == 990
        refusals = st.run(
            lambda: st.server.metrics.smpp_refused.labels("per_address")._value.get()
        )
        assert refusals == 990
    finally:
        for s in idle:
            s.close()


def test_a_refused_bind_gets_bind_resp_rbindfail_not_a_reset(smpp_server: StartServer) -> None:
    st = smpp_server(handler=AcceptingHandler(), max_unbound_per_address=2)
    idle = open_idle(st.port, 2)
    try:
        with RawEsme(st.port) as third:
            resp = third.bind()
            assert resp.command_status == Status.ESME_RBINDFAIL
            assert third.recv_until_closed() == []
    finally:
        for s in idle:
            s.close()


def test_a_peer_outside_every_accounts_allowed_ips_is_refused_at_accept(
    smpp_server: StartServer,
) -> None:
    only_one = (ipaddress.ip_network("127.0.0.1/32"),)
    st = smpp_server(accounts=[make_account(allowed_networks=only_one)])
    with RawEsme(st.port, source="127.0.0.3") as outsider:
        assert outsider.bind().command_status == Status.ESME_RBINDFAIL
        assert outsider.recv_until_closed() == []
    assert wait_until(
        lambda: st.run(lambda: st.server.metrics.smpp_refused.labels("not_allowed")._value.get())
        == 1
    )
    with RawEsme(st.port) as insider:
        assert insider.bind().command_status == Status.ESME_ROK


def test_idle_connections_from_many_addresses_give_way_to_a_newcomer(
    smpp_server: StartServer,
) -> None:
    # budget for unbound connections: 20 - 10 = 10, all taken by 127.0.0.1
    st = smpp_server(max_connections=20, bind_reserve=10, max_unbound_per_address=10)
    idle = open_idle(st.port, 10)
    try:
        with RawEsme(st.port, source="127.0.0.2") as good:
            assert good.bind().command_status == Status.ESME_ROK
        # the oldest idle connection made room, with an SMPP answer
        idle[0].settimeout(IO_TIMEOUT)
        pdu = decode(idle[0].recv(64))
        assert pdu.command_id == CommandId.generic_nack
    finally:
        for s in idle:
            s.close()


def test_unbound_connections_are_closed_after_session_init_timeout(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(session=SessionConfig(session_init_timeout=0.3))
    idle = open_idle(st.port, 5)
    try:
        assert wait_until(lambda: st.connection_count() == 5, 2.0)
        assert wait_until(lambda: st.connection_count() == 0, 3.0)
        assert st.run(lambda: st.server.admission.unbound_count) == 0
        for s in idle:  # closed by the server
            s.settimeout(IO_TIMEOUT)
            assert s.recv(64) == b""
    finally:
        for s in idle:
            s.close()


# --------------------------------------------------------------------------- finding 4


def test_a_session_flooding_past_max_outstanding_neither_delays_others_nor_floods_the_log(
    smpp_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.smpp")
    slow = AcceptingHandler(delay=lambda pdu: 0.2)  # the flooder's requests stay outstanding
    accounts = [
        make_account(system_id="flood", max_outstanding=5),
        make_account(system_id="good"),
    ]
    st = smpp_server(accounts=accounts, handler=slow)
    flood = RawEsme(st.port)
    assert flood.bind(system_id="flood").command_status == 0
    good = RawEsme(st.port, source="127.0.0.2")
    assert good.bind(system_id="good").command_status == 0
    n = 20_000
    blob = b"".join(encode(submit_sm_pdu(b"x", sequence=i)) for i in range(1, n + 1))
    answers: list[int] = []

    def drain() -> None:
        with contextlib.suppress(OSError, PeerClosed):
            while len(answers) < n:
                answers.append(flood.recv(2.0).command_status)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        flood.send_raw(blob)
        for _ in range(20):  # the well-behaved ESME, meanwhile: every submit answered
            seq = good.submit()
            resp = good.recv()
            assert (resp.sequence_number, resp.command_id) == (seq, CommandId.submit_sm_resp)
    finally:
        reader.join(IO_TIMEOUT)
        flood.close()
        good.close()
    assert len(answers) == n  # the flooder got an answer to each, mostly ESME_RTHROTTLED
    throttled = answers.count(Status.ESME_RTHROTTLED)
    assert throttled > n // 2
    counted = st.run(
        lambda: st.server.metrics.smpp_throttled.labels("flood", "outstanding")._value.get()
    )
    assert counted == throttled
    lines = [r for r in caplog.records if "smpp.protocol_violation" in r.getMessage()]
    assert 1 <= len(lines) <= 3, len(lines)  # one per account and status per interval


# --------------------------------------------------------------------------- finding 7


def bind_status(port: int, source: str = "127.0.0.1", **kw: Any) -> int:
    with RawEsme(port, source=source) as esme:
        return esme.bind(**kw).command_status


def test_wrong_passwords_lock_the_account_but_not_its_known_addresses(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(bind_lockout_failures=3, bind_lockout_duration=600.0)
    assert bind_status(st.port, "127.0.0.5") == Status.ESME_ROK  # the ESME's own address
    for _ in range(3):
        assert bind_status(st.port, "127.0.0.9", password="guess") == Status.ESME_RINVPASWD
    # Locked: even the right password from an address that never bound is refused ...
    assert bind_status(st.port, "127.0.0.9") == Status.ESME_RINVPASWD
    assert bind_status(st.port, "127.0.0.10") == Status.ESME_RINVPASWD
    # ... but the account's own ESME still binds.
    assert bind_status(st.port, "127.0.0.5") == Status.ESME_ROK
    locked = st.run(lambda: st.server.metrics.smpp_events.labels("bind_locked")._value.get())
    assert locked == 2  # each attempt refused for the lock


def test_another_accounts_success_does_not_forgive_an_addresses_failures(
    smpp_server: StartServer,
) -> None:
    accounts = [make_account(), make_account(system_id="other", password="otherpw")]
    st = smpp_server(accounts=accounts, bind_lockout_failures=0)
    for _ in range(3):
        assert bind_status(st.port, password="guess") == Status.ESME_RINVPASWD
    assert bind_status(st.port, system_id="other", password="otherpw") == Status.ESME_ROK
    failures = st.run(lambda: st.server.throttle.failures("127.0.0.1", st.server.clock()))
    assert failures == 3
    assert bind_status(st.port) == Status.ESME_ROK  # demo's own success forgives demo's
    assert st.run(lambda: st.server.throttle.failures("127.0.0.1", st.server.clock())) == 0


def test_a_repeated_wrong_password_is_hashed_once(
    smpp_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = accounts_module.verify_password

    def counting(stored: str, given: str) -> bool:
        calls.append(given)
        return real(stored, given)

    monkeypatch.setattr(accounts_module, "verify_password", counting)
    hashed = hash_password("demopass", iterations=1000)
    st = smpp_server(accounts=[make_account(password=hashed)], bind_lockout_failures=0)
    for _ in range(5):
        assert bind_status(st.port, password="guess") == Status.ESME_RINVPASWD
    assert calls == ["guess"]
    assert bind_status(st.port) == Status.ESME_ROK


def test_a_flood_of_pbkdf2_guesses_from_one_address_does_not_starve_another_addresses_bind(
    smpp_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = accounts_module.verify_password

    def counting(stored: str, given: str) -> bool:
        calls.append(given)
        return real(stored, given)

    monkeypatch.setattr(accounts_module, "verify_password", counting)
    hashed = hash_password("demopass", iterations=200_000)
    st = smpp_server(accounts=[make_account(password=hashed)], bind_lockout_failures=0)
    flood = [RawEsme(st.port) for _ in range(50)]
    try:
        for i, esme in enumerate(flood):
            esme.send(bind_pdu(password=f"g{i}"))
        assert bind_status(st.port, "127.0.0.2") == Status.ESME_ROK
        statuses = [esme.recv().command_status for esme in flood]
    finally:
        for esme in flood:
            esme.close()
    assert set(statuses) <= {Status.ESME_RINVPASWD, Status.ESME_RBINDFAIL}
    busy = statuses.count(Status.ESME_RBINDFAIL)
    assert busy >= 40  # refused at once instead of queueing ahead of the real bind
    assert len(calls) == 50 - busy + 1  # hashed: the few admitted guesses, and the real bind


@pytest.mark.parametrize(
    ("reveal", "unknown", "outside"),
    [
        (False, Status.ESME_RINVPASWD, Status.ESME_RINVPASWD),
        (True, Status.ESME_RINVSYSID, Status.ESME_RBINDFAIL),
    ],
)
def test_reveal_bind_errors_decides_whether_unknown_system_ids_are_told_apart(
    smpp_server: StartServer, reveal: bool, unknown: int, outside: int
) -> None:
    accounts = [
        make_account(),
        make_account(system_id="far", allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),)),
    ]
    st = smpp_server(accounts=accounts, reveal_bind_errors=reveal)
    assert bind_status(st.port, system_id="nobody") == unknown
    assert bind_status(st.port, system_id="far") == outside
    assert bind_status(st.port, password="wrong") == Status.ESME_RINVPASWD


# --------------------------------------------------------------------------- finding 12


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"sm_length": 255}, Status.ESME_RINVMSGLEN),  # §5.2.21: 0..254
        ({"source_addr_ton": 7}, Status.ESME_RINVSRCTON),
        ({"source_addr_npi": 2}, Status.ESME_RINVSRCNPI),
        ({"dest_addr_ton": 200}, Status.ESME_RINVDSTTON),
        ({"dest_addr_npi": 19}, Status.ESME_RINVDSTNPI),
        ({"esm_class": 0x04}, Status.ESME_RINVESMCLASS),  # a receipt is not an ESME's to send
        ({"priority_flag": 4}, Status.ESME_RINVPRTFLG),
        ({"registered_delivery": 0x03}, Status.ESME_RINVREGDLVFLG),
        ({"registered_delivery": 0x21}, Status.ESME_RINVREGDLVFLG),
        ({"replace_if_present_flag": 2}, Status.ESME_RINVREPFLAG),
        ({"sm_default_msg_id": 255}, Status.ESME_RINVDFTMSGID),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else next(iter(v)),
)
def test_submit_sm_fields_outside_their_smpp_5_2_range_get_the_precise_status(
    smpp_server: StartServer, fields: dict[str, Any], status: int
) -> None:
    handler = AcceptingHandler()
    st = smpp_server(handler=handler)
    with bound_esme(st.port) as esme:
        if "sm_length" in fields:  # our encoder refuses it: write the octets by hand
            pdu = submit_sm_pdu(b"x" * 254, sequence=esme.next_sequence())
            data = bytearray(encode(pdu))
            assert data[-255] == 254
            data[-255] = 255
            data += b"x"
            data[0:4] = struct.pack(">I", len(data))
            esme.send_raw(bytes(data))
            seq = pdu.sequence_number
        else:
            pdu = submit_sm_pdu()
            pdu.fields.update(fields)
            seq = esme.send(pdu)
        resp = esme.recv()
        assert (resp.command_id, resp.sequence_number) == (CommandId.submit_sm_resp, seq)
        assert resp.command_status == status
        # the session goes on, and the edge of each range is accepted
        ok = submit_sm_pdu(b"x" * 254)
        ok.fields.update(
            esm_class=0x43, priority_flag=3, registered_delivery=0x11, sm_default_msg_id=254
        )
        seq = esme.send(ok)
        assert esme.recv().command_status == Status.ESME_ROK
    assert len(handler.requests) == 1  # the bad one never reached the pipeline


def test_submit_multi_with_a_destination_ton_out_of_range_is_refused_with_rinvdstton(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(handler=AcceptingHandler())
    with bound_esme(st.port) as esme:
        pdu = Pdu(
            CommandId.submit_multi,
            fields={
                "source_addr": "Bridge",
                "dest_addresses": [DestAddress(1, 1, "4915112345678"), DestAddress(9, 1, "49")],
                "short_message": b"hi",
            },
        )
        esme.send(pdu)
        assert esme.recv().command_status == Status.ESME_RINVDSTTON


def test_a_receiver_that_never_answers_is_closed_and_its_deliveries_go_to_another_session(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(
        session=SessionConfig(response_timeout=0.3, enquire_link_interval=0),
        stalled_receiver_timeout=1.0,
    )
    stuck = RawEsme(st.port, rcvbuf=4096)
    assert stuck.bind(CommandId.bind_receiver).command_status == 0
    results: list[int | None] = []

    def done(_: object, resp: Pdu | None) -> None:
        results.append(None if resp is None else resp.command_status)

    def send_one() -> bool:
        return st.server.deliver_nowait("demo", deliver_sm_pdu(), done, None)

    assert st.run(send_one)
    assert wait_until(lambda: results == [None], 2.0)  # unanswered: the queue would retry
    assert st.run(send_one)  # still the only receiver: it gets the retry, and owes it too
    # noticed and closed within stalled_receiver_timeout (plus a tick), not ~330 s
    assert wait_until(lambda: st.connection_count() == 0, 5.0)
    assert st.run(lambda: st.server.metrics.smpp_events.labels("stalled_receiver")._value.get())
    stuck.close()
    # a receiver that answers gets what comes next
    with RawEsme(st.port) as good:
        assert good.bind(CommandId.bind_receiver).command_status == 0
        assert st.run(send_one)
        pdu = good.recv()
        assert pdu.command_id == CommandId.deliver_sm
        good.send(pdu.response())
        assert wait_until(lambda: results[-1] == Status.ESME_ROK, 2.0)


def test_out_of_file_descriptors_pauses_accepting_and_recovers(smpp_server: StartServer) -> None:
    st = smpp_server(max_unbound_per_address=1000)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    socks: list[socket.socket] = []

    def failures() -> float:
        return st.run(
            lambda: st.server.metrics.smpp_events.labels("accept_failed")._value.get()
        )

    used = len(os.listdir("/proc/self/fd"))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 40, hard))
        with contextlib.suppress(OSError):  # the client side runs out too
            for _ in range(200):
                socks.append(socket.create_connection(("127.0.0.1", st.port), timeout=2.0))
        assert wait_until(lambda: failures() >= 1, 5.0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for s in socks:
            s.close()
    # accepting resumed by itself: the connections that waited in the kernel's queue, and new ones
    with RawEsme(st.port, source="127.0.0.2") as esme:
        assert esme.bind().command_status == Status.ESME_ROK


def test_the_listeners_own_allowed_ips_narrows_who_may_connect(smpp_server: StartServer) -> None:
    st = smpp_server(allowed_ips=(ipaddress.ip_network("127.0.0.1/32"),))
    with RawEsme(st.port, source="127.0.0.2") as outsider:
        assert outsider.bind().command_status == Status.ESME_RBINDFAIL
    with RawEsme(st.port) as insider:
        assert insider.bind().command_status == Status.ESME_ROK


def test_the_hardening_settings_are_read_from_the_smpp_section_and_validated() -> None:
    base = '[[accounts]]\nsystem_id = "demo"\npassword = "demopass"\n'
    cfg = load_config_text(
        "[smpp]\nmax_unbound_per_address = 3\nbind_reserve = 5\n"
        'allowed_ips = ["10.0.0.0/8"]\nlog_sample_interval = 2.5\n'
        "stalled_receiver_timeout = 15\nreveal_bind_errors = true\n"
        "bind_lockout_failures = 4\nbind_lockout_duration = 60\n"
        "hash_workers = 2\nhash_max_pending = 8\n" + base
    )
    sc = server_config(cfg)
    assert (sc.max_unbound_per_address, sc.bind_reserve, sc.log_sample_interval) == (3, 5, 2.5)
    assert sc.allowed_ips == (ipaddress.ip_network("10.0.0.0/8"),)
    assert (sc.stalled_receiver_timeout, sc.reveal_bind_errors) == (15, True)
    assert (sc.bind_lockout_failures, sc.bind_lockout_duration) == (4, 60)
    assert (sc.hash_workers, sc.hash_max_pending) == (2, 8)
    defaults = server_config(load_config_text(base))
    assert defaults.reveal_bind_errors is False and defaults.allowed_ips is None
    for bad in ("allowed_ips = []", "max_unbound_per_address = 0", "log_sample_interval = 0"):
        with pytest.raises(ConfigError):
            load_config_text(f"[smpp]\n{bad}\n" + base)
