"""Issue 14, the SMPP side: what a hostile or broken peer must not be able to do.

Real loopback sockets against a real SmppServer; every read has a timeout, every wait a deadline.
"""

from __future__ import annotations

import struct
from typing import Any

from conftest import (
    AcceptingHandler,
    RawEsme,
    StartServer,
    submit_sm_pdu,
    wait_until,
)

from bridge.smpp.pdu import CommandId, Status, encode


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
