"""The ESME-side SMPP session without a network: bytes in, events and bytes out, time passed in."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bridge.smpp.client_session import (
    AUTH_FAILURES,
    ClientSession,
    ClientSessionConfig,
    ClientState,
    Event,
    NotReady,
    backoff_delay,
)
from bridge.smpp.events import (
    BindFailed,
    BindType,
    Bound,
    ConnectionClosed,
    DeliverRequested,
    ProtocolViolation,
    ResponseReceived,
    ResponseTimedOut,
    Unbound,
)
from bridge.smpp.pdu import RESPONSE_BIT, CommandId, FrameReader, Pdu, Status, decode, encode
from bridge.smpp.session_core import WindowFull


def make_session(now: float = 0.0, **overrides: Any) -> ClientSession:
    values: dict[str, Any] = {
        "system_id": "bridge",
        "password": "s3cret",
        "enquire_link_interval": 30.0,
        "response_timeout": 10.0,
        "window": 10,
    }
    values.update(overrides)
    return ClientSession(ClientSessionConfig(**values), now)


def sent(session: ClientSession) -> list[Pdu]:
    """Every PDU the session wants written since the last call."""
    reader = FrameReader()
    reader.feed(session.take_output())
    return [decode(f) for f in reader.frames()]


def feed(session: ClientSession, pdu: Pdu, now: float = 0.0) -> list[Event]:
    return session.receive_data(encode(pdu), now)


def submit_sm(text: bytes = b"hello") -> Pdu:
    return Pdu(
        CommandId.submit_sm,
        fields={
            "source_addr": "Bridge",
            "destination_addr": "4915112345678",
            "short_message": text,
        },
    )


def bound_session(bind_type: BindType = BindType.TRANSCEIVER, **overrides: Any) -> ClientSession:
    s = make_session(bind_type=bind_type, **overrides)
    s.bind(0.0)
    (bind,) = sent(s)
    feed(s, bind.response(0, system_id="SMSC"))
    assert s.is_bound
    return s


def deliver_sm(seq: int = 77) -> Pdu:
    return Pdu(
        CommandId.deliver_sm,
        seq,
        fields={
            "source_addr": "4915112345678",
            "destination_addr": "12345",
            "short_message": b"hi",
        },
    )


# --------------------------------------------------------------------------- bind


def test_bind_sends_the_configured_bind_with_credentials_and_interface_version_3_4() -> None:
    s = make_session(system_type="VMA", addr_ton=1, addr_npi=1, address_range="^49")
    s.bind(0.0)
    (bind,) = sent(s)
    assert bind.command_id == CommandId.bind_transceiver
    assert bind.fields == {
        "system_id": "bridge",
        "password": "s3cret",
        "system_type": "VMA",
        "interface_version": 0x34,
        "addr_ton": 1,
        "addr_npi": 1,
        "address_range": "^49",
    }
    assert s.state is ClientState.BINDING
    assert not s.can_submit


@pytest.mark.parametrize(
    ("bind_type", "command_id", "state", "can_submit", "can_receive"),
    [
        (BindType.TRANSMITTER, CommandId.bind_transmitter, ClientState.BOUND_TX, True, False),
        (BindType.RECEIVER, CommandId.bind_receiver, ClientState.BOUND_RX, False, True),
        (BindType.TRANSCEIVER, CommandId.bind_transceiver, ClientState.BOUND_TRX, True, True),
    ],
)
def test_bind_resp_ok_binds_the_session_as_asked(
    bind_type: BindType, command_id: int, state: ClientState, can_submit: bool, can_receive: bool
) -> None:
    s = make_session(bind_type=bind_type)
    s.bind(0.0)
    (bind,) = sent(s)
    assert bind.command_id == command_id
    events = feed(s, bind.response(0, system_id="iSMS"))
    assert events == [Bound(bind_type, "iSMS")]
    assert s.state is state
    assert (s.can_submit, s.can_receive) == (can_submit, can_receive)
    assert s.smsc_system_id == "iSMS"


def test_a_refused_bind_reports_its_status_and_the_session_may_bind_again() -> None:
    s = make_session()
    s.bind(0.0)
    (bind,) = sent(s)
    events = feed(s, Pdu(bind.command_id | RESPONSE_BIT, bind.sequence_number, 0x0E))
    assert events == [BindFailed(Status.ESME_RINVPASWD)]
    assert Status.ESME_RINVPASWD in AUTH_FAILURES
    assert s.state is ClientState.OPEN
    s.bind(1.0)
    assert sent(s)[0].command_id == CommandId.bind_transceiver


def test_a_generic_nack_to_the_bind_is_a_refusal() -> None:
    s = make_session()
    s.bind(0.0)
    (bind,) = sent(s)
    events = feed(s, Pdu(CommandId.generic_nack, bind.sequence_number, Status.ESME_RINVCMDID))
    assert events == [BindFailed(Status.ESME_RINVCMDID)]


def test_an_unanswered_bind_closes_the_connection_after_response_timeout() -> None:
    s = make_session(response_timeout=5.0)
    s.bind(0.0)
    assert s.handle_timers(4.9) == []
    assert s.handle_timers(5.0) == [ConnectionClosed("bind not answered within response_timeout")]
    assert s.state is ClientState.CLOSED


def test_the_password_never_appears_in_the_config_repr() -> None:
    assert "s3cret" not in repr(make_session().config)


# --------------------------------------------------------------------------- submit, window


def test_submits_are_refused_before_the_bind_and_on_a_receiver_bind() -> None:
    s = make_session()
    with pytest.raises(NotReady):
        s.send_request(submit_sm(), 0.0)
    rx = bound_session(BindType.RECEIVER)
    with pytest.raises(NotReady):
        rx.send_request(submit_sm(), 0.0)
    assert sent(rx) == []


def test_a_submit_gets_the_next_sequence_number_and_its_response_carries_the_context() -> None:
    s = bound_session()
    pdu = submit_sm()
    seq = s.send_request(pdu, 1.0, context="ctx-1")
    assert pdu.sequence_number == seq
    (out,) = sent(s)
    assert (out.command_id, out.sequence_number, out["short_message"]) == (
        CommandId.submit_sm,
        seq,
        b"hello",
    )
    assert s.in_flight == 1
    resp = out.response(0, message_id="abc")
    assert feed(s, resp, 1.5) == [ResponseReceived(resp, "ctx-1")]
    assert s.in_flight == 0
    assert s.send_request(submit_sm(), 2.0) == seq + 1


def test_no_more_than_window_requests_are_in_flight() -> None:
    s = bound_session(window=2)
    first = submit_sm()
    s.send_request(first, 0.0)
    s.send_request(submit_sm(), 0.0)
    assert s.window_free == 0
    with pytest.raises(WindowFull):
        s.send_request(submit_sm(), 0.0)
    assert len(sent(s)) == 2  # the refused one was not queued
    feed(s, first.response(0, message_id="1"))
    assert s.window_free == 1
    s.send_request(submit_sm(), 0.0)


def test_a_generic_nack_answers_the_submit_it_names() -> None:
    s = bound_session()
    seq = s.send_request(submit_sm(), 0.0, context="c")
    nack = Pdu(CommandId.generic_nack, seq, Status.ESME_RINVCMDLEN)
    assert feed(s, nack) == [ResponseReceived(nack, "c")]
    assert s.in_flight == 0


def test_a_pdu_the_codec_cannot_encode_is_refused_and_takes_no_window_slot() -> None:
    s = bound_session()
    with pytest.raises(ValueError):
        s.send_request(submit_sm(b"x" * 300), 0.0)
    with pytest.raises(ValueError):
        s.send_request(Pdu(CommandId.deliver_sm), 0.0)  # an SMSC's request
    assert s.in_flight == 0
    assert sent(s) == []


def test_an_unanswered_submit_times_out_and_frees_its_slot() -> None:
    s = bound_session(response_timeout=10.0, enquire_link_interval=0)
    pdu = submit_sm()
    s.send_request(pdu, 0.0, context="late")
    sent(s)
    assert s.handle_timers(9.9) == []
    assert s.handle_timers(10.0) == [ResponseTimedOut(pdu, "late")]
    assert s.in_flight == 0
    (late,) = feed(s, pdu.response(0, message_id="x"), 11.0)
    assert isinstance(late, ProtocolViolation)  # a response to no request: ignored
    assert s.is_bound


def test_closing_fails_every_submit_in_flight() -> None:
    s = bound_session()
    a, b = submit_sm(b"a"), submit_sm(b"b")
    s.send_request(a, 0.0, "A")
    s.send_request(b, 0.0, "B")
    assert s.close() == [ResponseTimedOut(a, "A"), ResponseTimedOut(b, "B")]
    assert s.state is ClientState.CLOSED
    assert s.in_flight == 0


def test_sequence_numbers_wrap_and_skip_those_still_in_flight() -> None:
    s = bound_session()
    s._next_seq = 0x7FFFFFFF
    assert s.send_request(submit_sm(), 0.0) == 0x7FFFFFFF
    assert s.send_request(submit_sm(), 0.0) == 1
    s._next_seq = 1
    assert s.send_request(submit_sm(), 0.0) == 2


# --------------------------------------------------------------------------- enquire_link


def test_enquire_link_goes_out_on_an_idle_link_and_its_answer_keeps_the_session() -> None:
    s = bound_session(enquire_link_interval=30.0, response_timeout=10.0)
    assert s.next_deadline() == 30.0
    s.handle_timers(29.9)
    assert sent(s) == []
    s.handle_timers(30.0)
    (enquire,) = sent(s)
    assert enquire.command_id == CommandId.enquire_link
    s.handle_timers(31.0)
    assert sent(s) == []  # one at a time
    assert feed(s, enquire.response(), 32.0) == []
    assert s.is_bound
    assert s.next_deadline() == 62.0


def test_traffic_postpones_enquire_link() -> None:
    s = bound_session(enquire_link_interval=30.0)
    feed(s, Pdu(CommandId.enquire_link, 5), 20.0)  # the SMSC's own probe counts as traffic
    sent(s)
    s.handle_timers(30.0)
    assert sent(s) == []
    s.note_sent(45.0)
    s.handle_timers(60.0)
    assert sent(s) == []
    s.handle_timers(75.0)
    assert [p.command_id for p in sent(s)] == [CommandId.enquire_link]


def test_enquire_link_goes_out_even_when_the_window_is_full() -> None:
    s = bound_session(window=1, enquire_link_interval=30.0, response_timeout=60.0)
    s.send_request(submit_sm(), 0.0)
    sent(s)
    s.handle_timers(30.0)
    assert [p.command_id for p in sent(s)] == [CommandId.enquire_link]


def test_an_unanswered_enquire_link_closes_the_connection() -> None:
    s = bound_session(enquire_link_interval=30.0, response_timeout=10.0)
    s.handle_timers(30.0)
    assert s.handle_timers(40.0) == [
        ConnectionClosed("enquire_link not answered within response_timeout")
    ]


def test_the_smscs_enquire_link_is_answered_in_any_state() -> None:
    s = make_session()
    assert feed(s, Pdu(CommandId.enquire_link, 9)) == []
    (resp,) = sent(s)
    assert (resp.command_id, resp.sequence_number, resp.command_status) == (
        CommandId.enquire_link_resp,
        9,
        0,
    )


# --------------------------------------------------------------------------- unbind


def test_the_smscs_unbind_is_answered_and_in_flight_responses_still_arrive() -> None:
    s = bound_session()
    pdu = submit_sm()
    s.send_request(pdu, 0.0, "c")
    sent(s)
    assert feed(s, Pdu(CommandId.unbind, 50)) == [Unbound(initiated_by_peer=True)]
    (resp,) = sent(s)
    assert (resp.command_id, resp.sequence_number) == (CommandId.unbind_resp, 50)
    assert not s.can_submit
    with pytest.raises(NotReady):
        s.send_request(submit_sm(), 0.0)
    answer = pdu.response(0, message_id="m")
    assert feed(s, answer) == [ResponseReceived(answer, "c")]


def test_our_unbind_stops_submits_and_ends_with_its_response() -> None:
    s = bound_session()
    s.unbind(1.0)
    (unbind,) = sent(s)
    assert unbind.command_id == CommandId.unbind
    assert s.state is ClientState.UNBINDING
    with pytest.raises(NotReady):
        s.send_request(submit_sm(), 1.0)
    assert feed(s, unbind.response()) == [Unbound(initiated_by_peer=False)]
    assert s.state is ClientState.UNBOUND


def test_both_sides_unbinding_at_once_agree() -> None:
    s = bound_session()
    s.unbind(1.0)
    sent(s)
    assert feed(s, Pdu(CommandId.unbind, 3)) == [Unbound(initiated_by_peer=True)]
    assert [p.command_id for p in sent(s)] == [CommandId.unbind_resp]
    assert s.handle_timers(100.0) == []  # our unbind no longer awaits an answer


def test_an_unanswered_unbind_closes_the_connection() -> None:
    s = bound_session(response_timeout=10.0, enquire_link_interval=0)
    s.unbind(0.0)
    assert s.handle_timers(10.0) == [
        ConnectionClosed("unbind not answered within response_timeout")
    ]


# --------------------------------------------------------------------------- deliver_sm


def test_deliver_sm_is_handed_up_and_answered_only_through_respond() -> None:
    s = bound_session()
    events = feed(s, deliver_sm(77))
    assert [type(e) for e in events] == [DeliverRequested]
    assert sent(s) == []  # nothing acknowledged before the handler stored it
    s.respond(events[0].pdu, Status.ESME_RX_T_APPN)  # type: ignore[union-attr]
    (resp,) = sent(s)
    assert (resp.command_id, resp.sequence_number, resp.command_status) == (
        CommandId.deliver_sm_resp,
        77,
        Status.ESME_RX_T_APPN,
    )
    assert resp.fields == {"message_id": ""}


def test_data_sm_from_the_smsc_is_handed_up_and_answered_with_data_sm_resp() -> None:
    s = bound_session(BindType.RECEIVER)
    data_sm = Pdu(CommandId.data_sm, 5, fields={"source_addr": "49151", "destination_addr": "1"})
    (ev,) = feed(s, data_sm)
    assert isinstance(ev, DeliverRequested)
    s.respond(ev.pdu, 0)
    (resp,) = sent(s)
    assert (resp.command_id, resp.sequence_number, resp.command_status) == (
        CommandId.data_sm_resp,
        5,
        0,
    )


def test_deliver_sm_on_a_transmitter_bind_is_refused_with_rinvbndsts() -> None:
    s = bound_session(BindType.TRANSMITTER)
    (ev,) = feed(s, deliver_sm(8))
    assert isinstance(ev, ProtocolViolation)
    (resp,) = sent(s)
    assert (resp.command_id, resp.command_status) == (
        CommandId.deliver_sm_resp,
        Status.ESME_RINVBNDSTS,
    )


def test_deliver_sm_beyond_max_outstanding_is_throttled() -> None:
    s = bound_session(max_outstanding=1)
    (first,) = feed(s, deliver_sm(1))
    feed(s, deliver_sm(2))
    (resp,) = sent(s)
    assert (resp.sequence_number, resp.command_status) == (2, Status.ESME_RTHROTTLED)
    s.respond(first.pdu, 0)  # type: ignore[union-attr]
    sent(s)
    assert [type(e) for e in feed(s, deliver_sm(3))] == [DeliverRequested]


def test_a_response_after_the_connection_closed_is_dropped() -> None:
    s = bound_session()
    (ev,) = feed(s, deliver_sm(1))
    s.close()
    s.respond(ev.pdu, 0)  # type: ignore[union-attr]
    assert sent(s) == []


# --------------------------------------------------------------------------- misbehaving SMSC


@pytest.mark.parametrize("command_id", [CommandId.submit_sm, CommandId.bind_transmitter, 0x1234])
def test_requests_an_smsc_may_not_send_get_generic_nack_rinvcmdid(command_id: int) -> None:
    s = bound_session()
    raw = bytearray(encode(Pdu(CommandId.enquire_link, 4)))
    raw[4:8] = command_id.to_bytes(4, "big")
    if command_id == CommandId.submit_sm:
        raw = bytearray(encode(Pdu(CommandId.submit_sm, 4)))
    (ev,) = s.receive_data(bytes(raw), 0.0)
    assert isinstance(ev, ProtocolViolation)
    (nack,) = sent(s)
    assert (nack.command_id, nack.sequence_number, nack.command_status) == (
        CommandId.generic_nack,
        4,
        Status.ESME_RINVCMDID,
    )


def test_an_impossible_command_length_closes_the_connection() -> None:
    s = bound_session()
    events = s.receive_data(b"\x00\x00\x00\x05" + b"\x00" * 12, 0.0)
    assert isinstance(events[-1], ConnectionClosed)
    assert [p.command_id for p in sent(s)] == [CommandId.generic_nack]
    assert s.receive_data(encode(Pdu(CommandId.enquire_link, 1)), 0.0) == []


def test_alert_notification_needs_no_answer() -> None:
    s = bound_session()
    alert = Pdu(CommandId.alert_notification, 3, fields={"source_addr": "1", "esme_addr": "2"})
    assert feed(s, alert) == []
    assert sent(s) == []


# --------------------------------------------------------------------------- backoff


def test_reconnect_backoff_doubles_from_min_up_to_max() -> None:
    delays = [backoff_delay(n, 1.0, 60.0, jitter=1.0) for n in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff_delay(10_000, 1.0, 60.0, jitter=1.0) == 60.0


def test_reconnect_backoff_jitter_stays_between_half_and_the_whole_delay() -> None:
    assert backoff_delay(3, 1.0, 60.0, jitter=0.0) == 4.0
    assert 4.0 <= backoff_delay(3, 1.0, 60.0, jitter=0.5) <= 8.0
    assert backoff_delay(0, 1.0, 60.0, jitter=0.0) == 0.5


def test_next_deadline_covers_the_bind_the_requests_in_flight_and_the_keepalive() -> None:
    s = make_session(enquire_link_interval=30.0, response_timeout=10.0)
    assert s.next_deadline() == math.inf  # nothing sent yet
    s.bind(2.0)
    assert s.next_deadline() == 12.0  # the bind's response timeout
    s = bound_session(enquire_link_interval=30.0, response_timeout=10.0)
    assert s.next_deadline() == 30.0  # keep-alive of the idle link
    s.send_request(submit_sm(), 5.0, "a")
    s.send_request(submit_sm(), 6.0, "b")
    s.note_sent(6.0)
    assert s.next_deadline() == 15.0  # the oldest submit's response timeout
    assert s.handle_timers(14.9) == []
    (timed_out,) = s.handle_timers(15.0)
    assert isinstance(timed_out, ResponseTimedOut) and timed_out.context == "a"
    assert s.next_deadline() == 16.0
