"""Prometheus metrics: what a scrape of a real bridge shows after real SMPP traffic.

The bridge runs whole (:class:`~tests.harness.daemon.BridgeThread`), smpplib is the ESME, and every
scrape is ``generate_latest(bridge.registry)`` run in the bridge's own loop, as the /metrics
route does. The exposition is checked three ways: the values and labels that must have moved,
prometheus-client's own parser, and ``promtool check metrics`` (Prometheus' linter) when it is
installed (``.ci/run`` installs it from Debian's ``prometheus`` package).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge import __version__
from bridge.observability import LoopHistogram, Metrics
from bridge.smpp.pdu import CommandId, Pdu, Status, encode
from tests.harness.daemon import BridgeThread, Rule, StartBridge
from tests.harness.esme import SYSTEM_ID, Esme, RawEsme
from tests.harness.loop import wait_until
from tests.harness.server import AcceptingHandler, GatedHandler, StartServer, make_account

pytestmark = pytest.mark.timeout(60)

GERMAN_MOBILE = "4915112345678"
UNKNOWN_SYSTEM_ID = "intruder4915112345678"  # a failed bind's system_id must never be a label
Labels = frozenset[tuple[str, str]]


# --------------------------------------------------------------------------- helpers


def scrape(bt: BridgeThread) -> str:
    """The exposition, generated in the bridge's loop (as the async /metrics route does)."""
    return bt.run(lambda: generate_latest(bt.bridge.registry).decode())


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of the exposition, parsed by prometheus-client's own parser."""
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def value(found: dict[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def summed(found: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def scraped_values(bt: BridgeThread) -> dict[tuple[str, Labels], float]:
    return samples(scrape(bt))


@pytest.fixture
def session(start_bridge: StartBridge) -> Iterator[tuple[BridgeThread, str, str]]:
    """A bridge after: a transceiver bind, a submit with a receipt (acknowledged), a submit
    refused for its destination, a bind refused for an unknown system_id and one for a wrong
    password. Yields (bridge, accepted message id, exposition)."""
    bt = start_bridge()
    # The provider health check runs at start; wait for it so bridge_provider_up has a sample.
    assert wait_until(lambda: bt.run(lambda: bool(bt.bridge.provider_checks.last)))
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        mid = esme.submit_ok(destination_addr=GERMAN_MOBILE, registered_delivery=1)
        bad = esme.submit(destination_addr="not-a-number")
        assert bad.status == Status.ESME_RINVDSTADR
        assert len(esme.receipts(1)) == 1
        assert wait_until(lambda: bt.run(lambda: bt.bridge.deliveries.acked) >= 1)
        for system_id, password in ((UNKNOWN_SYSTEM_ID, "secret"), (SYSTEM_ID, "wrong")):
            with Esme(bt.port) as intruder, pytest.raises(smpplib.exceptions.PDUError):
                intruder.client.bind_transmitter(system_id=system_id, password=password)
        text = scrape(bt)
    yield bt, mid, text


# --------------------------------------------------------------------------- the whole bridge


def test_a_session_moves_the_expected_samples(session: tuple[BridgeThread, str, str]) -> None:
    _, mid, text = session
    found = samples(text)
    v = lambda name, **labels: value(found, name, **labels)  # noqa: E731

    # binds: ok by account, refused as "unknown" (unknown system_id) or by account
    assert v("bridge_smpp_binds_total", account="demo", bind_type="transceiver", result="ok") == 1
    assert v("bridge_smpp_binds_total", account="unknown", bind_type="transmitter",
             result="refused") == 1
    assert v("bridge_smpp_binds_total", account="demo", bind_type="transmitter",
             result="refused") == 1
    assert v("bridge_smpp_sessions", account="demo", bind_type="transceiver") == 1
    assert v("bridge_smpp_sessions", account="demo", bind_type="receiver") == 0
    assert (v("bridge_smpp_connections") or 0) >= 1

    # PDUs by direction, command and status name
    assert v("bridge_smpp_pdus_total", direction="in", command="submit_sm", status="ESME_ROK") == 2
    assert v("bridge_smpp_pdus_total", direction="out", command="submit_sm_resp",
             status="ESME_ROK") == 1
    assert v("bridge_smpp_pdus_total", direction="out", command="submit_sm_resp",
             status="ESME_RINVDSTADR") == 1
    assert v("bridge_smpp_pdus_total", direction="in", command="bind_transceiver",
             status="ESME_ROK") == 1
    assert v("bridge_smpp_pdus_total", direction="out", command="bind_transmitter_resp",
             status="ESME_RINVPASWD") == 2  # unknown system_id too (reveal_bind_errors)
    assert v("bridge_smpp_pdus_total", direction="out", command="deliver_sm",
             status="ESME_ROK") == 1
    assert v("bridge_smpp_pdus_total", direction="in", command="deliver_sm_resp",
             status="ESME_ROK") == 1

    # submit latency: both submits answered, within the histogram's range
    assert v("bridge_smpp_submit_latency_seconds_count", command="submit_sm") == 2
    assert v("bridge_smpp_submit_latency_seconds_bucket", command="submit_sm", le="+Inf") == 2
    assert 0 < (v("bridge_smpp_submit_latency_seconds_sum", command="submit_sm") or 0) < 10
    assert v("bridge_smpp_submit_latency_seconds_count", command="data_sm") == 0

    # messages
    assert v("bridge_messages_accepted_total", account="demo") == 1
    assert v("bridge_messages_rejected_total", account="demo", reason="invalid_destination") == 1

    # provider
    assert v("bridge_provider_requests_total", provider="sandbox", outcome="accepted") == 1
    assert v("bridge_provider_requests_total", provider="sandbox", outcome="transient") == 0
    assert v("bridge_provider_request_duration_seconds_count", provider="sandbox") == 1
    assert v("bridge_provider_retries_total", provider="sandbox") == 0
    assert v("bridge_provider_failovers_total", provider="sandbox") == 0
    assert v("bridge_provider_up", provider="sandbox") == 1
    assert v("bridge_provider_circuit_open", provider="sandbox") == 0
    assert v("bridge_queue_depth", provider="sandbox") == 0
    assert v("bridge_queue_oldest_age_seconds", provider="sandbox") == 0
    assert "# TYPE bridge_provider_balance gauge" in text  # defined; no provider reports one

    # reports and receipts
    assert v("bridge_reports_total", provider="sandbox", result="matched") == 1
    assert v("bridge_receipts_total", state="DELIVRD") == 1
    assert v("bridge_deliver_sm_total", result="acked") == 1
    assert v("bridge_deliver_sm_total", result="refused") == 0
    assert v("bridge_receipt_delivery_seconds_count") == 1
    assert v("bridge_deliveries_waiting", account="demo") == 0
    assert v("bridge_deliveries_expired_total") == 0

    # reassembly, store, build
    assert v("bridge_reassembly_pending") == 0
    assert v("bridge_reassembly_parts") == 0
    assert v("bridge_reassembly_timeouts_total", reason="timeout") == 0
    commits = v("bridge_store_commit_batch_size_count") or 0
    assert commits >= 1
    assert (v("bridge_store_commit_batch_size_sum") or 0) >= commits  # >= 1 op per commit
    assert v("bridge_store_commit_duration_seconds_count") == commits
    assert v("bridge_build_info", version=__version__) == 1

    # never a number, a message id or a failed bind's system_id in the exposition
    assert mid not in text
    assert GERMAN_MOBILE not in text
    assert UNKNOWN_SYSTEM_ID not in text


def test_no_label_value_looks_like_a_number_or_an_id(
    session: tuple[BridgeThread, str, str],
) -> None:
    _, _, text = session
    long_digits = re.compile(r"\d{6,}")
    offenders = {
        (name, key, val)
        for (name, labels) in samples(text)
        for key, val in labels
        if key != "le" and long_digits.search(val)  # bucket bounds are numbers by design
    }
    assert not offenders
    # The same on the raw text, for anything the parser might have normalised.
    raw = {
        m.group(2)
        for m in re.finditer(r'(\w+)="([^"]*)"', text)
        if m.group(1) != "le" and long_digits.search(m.group(2))
    }
    assert not raw


def test_every_metric_family_has_help_and_the_bridge_prefix(
    session: tuple[BridgeThread, str, str],
) -> None:
    _, _, text = session
    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if f.name.startswith("bridge_")]
    assert len(ours) >= 30
    assert all(f.documentation for f in ours)
    # Counters end in _total, durations are in seconds (Prometheus naming conventions).
    for line in text.splitlines():
        if line.startswith("# TYPE bridge_") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
    assert "milliseconds" not in text


def test_promtool_accepts_the_exposition(session: tuple[BridgeThread, str, str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not on PATH (Debian package 'prometheus'; .ci/run installs it) - "
            "the exposition is still checked by prometheus_client's parser in the other tests"
        )
    _, _, text = session
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_bridges_in_one_process_keep_separate_registries(start_bridge: StartBridge) -> None:
    first, second = start_bridge(), start_bridge()
    assert first.bridge.registry is not second.bridge.registry
    with Esme(first.port) as esme:
        esme.bind("transmitter")
        esme.submit_ok(registered_delivery=0)
    a, b = scraped_values(first), scraped_values(second)
    assert value(a, "bridge_messages_accepted_total", account="demo") == 1
    assert value(b, "bridge_messages_accepted_total", account="demo") == 0  # primed, not shared
    assert summed(b, "bridge_smpp_pdus_total", direction="in") == 0


# --------------------------------------------------------------------------- providers


def test_retries_and_failovers_are_counted_by_provider(start_bridge: StartBridge) -> None:
    extra = (
        "[providers.spare]\ndelay = 0.05\n"
        '[[routes]]\nproviders = ["sandbox", "spare"]\n'
    )
    bt = start_bridge(
        rules=[Rule("04", "permanent", 17), Rule("05", "transient_then_delivrd")], extra=extra
    )
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        esme.submit_ok(destination_addr="4915112345604")  # refused by sandbox: to spare
        esme.submit_ok(destination_addr="4915112345605")  # one transient failure, then ok
        esme.receipts(2, timeout=10)

    def moved() -> bool:
        found = scraped_values(bt)
        return value(found, "bridge_receipts_total", state="DELIVRD") == 2

    assert wait_until(moved, 10)
    found = scraped_values(bt)
    v = lambda name, **labels: value(found, name, **labels)  # noqa: E731
    assert v("bridge_provider_requests_total", provider="sandbox", outcome="permanent") == 1
    assert v("bridge_provider_requests_total", provider="sandbox", outcome="transient") == 1
    assert v("bridge_provider_requests_total", provider="sandbox", outcome="accepted") == 1
    assert v("bridge_provider_requests_total", provider="spare", outcome="accepted") == 1
    assert v("bridge_provider_failovers_total", provider="sandbox") == 1
    assert v("bridge_provider_failovers_total", provider="spare") == 0
    assert v("bridge_provider_retries_total", provider="sandbox") == 1
    assert v("bridge_provider_request_duration_seconds_count", provider="sandbox") == 3
    assert v("bridge_reports_total", provider="spare", result="matched") == 1


def test_an_open_circuit_shows_in_the_gauge_and_closes_when_the_provider_answers(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge(
        rules=[Rule("07", "transient")],
        pipeline={"breaker_failures": 3, "breaker_cooldown": 0.3, "retry_base": 0.01},
    )
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        esme.submit_ok(destination_addr="4915112345607", validity_period="000000000005000R")

        def circuit() -> float | None:
            return value(scraped_values(bt), "bridge_provider_circuit_open", provider="sandbox")

        assert wait_until(lambda: circuit() == 1, 10)
        # Another destination succeeds: the half-open probe is answered and the circuit closes.
        esme.submit_ok(destination_addr="4915112345600")
        assert wait_until(lambda: circuit() == 0, 10)


# --------------------------------------------------------------------------- reassembly


def test_reassembly_gauges_and_timeouts(start_bridge: StartBridge) -> None:
    bt = start_bridge(pipeline={"reassembly_timeout": 0.5})
    parts, encoding, esm_class = smpplib.gsm.make_parts("A long message in parts. " * 12)
    assert len(parts) >= 2
    with Esme(bt.port) as esme:
        esme.bind("transceiver")
        esme.submit_ok(short_message=parts[0], esm_class=esm_class, data_coding=encoding)
        found = scraped_values(bt)
        assert value(found, "bridge_reassembly_pending") == 1
        assert value(found, "bridge_reassembly_parts") == 1
        receipts = esme.receipts(1, timeout=10)  # the part's failure receipt
    assert len(receipts) == 1
    found = scraped_values(bt)
    assert value(found, "bridge_reassembly_timeouts_total", reason="timeout") == 1
    assert value(found, "bridge_reassembly_pending") == 0
    assert value(found, "bridge_receipts_total", state="UNDELIV") == 1
    assert value(found, "bridge_messages_accepted_total", account="demo") == 1


# --------------------------------------------------------------------------- SMPP server alone


def test_throttling_is_counted_by_account_and_reason(smpp_server: StartServer) -> None:
    st = smpp_server([make_account(tps=2)], handler=AcceptingHandler())
    with RawEsme(st.port) as esme:
        assert esme.bind().command_status == 0
        esme.send_raw(b"".join(encode(_submit(i)) for i in range(1, 11)))
        statuses = [esme.recv(timeout=3.0).command_status for _ in range(10)]
    throttled = statuses.count(Status.ESME_RTHROTTLED)
    assert throttled >= 5
    found = samples(st.run(lambda: generate_latest(st.server.metrics.registry).decode()))
    assert value(found, "bridge_smpp_throttled_total", account="demo", reason="tps") == throttled
    assert value(found, "bridge_smpp_pdus_total", direction="out", command="submit_sm_resp",
                 status="ESME_RTHROTTLED") == throttled
    # Throttled answers never reached the handler: only the others are in the latency count.
    assert value(found, "bridge_smpp_submit_latency_seconds_count", command="submit_sm") == (
        10 - throttled
    )

    handler = GatedHandler()
    st = smpp_server([make_account(max_outstanding=1)], handler=handler)
    with RawEsme(st.port) as esme:
        assert esme.bind().command_status == 0
        esme.send(_submit(1))
        assert wait_until(lambda: handler.waiting == 1, 2.0)
        esme.send(_submit(2))
        assert esme.recv(timeout=2.0).command_status == Status.ESME_RTHROTTLED
        handler.release()
        assert esme.recv(timeout=2.0).command_status == 0
    found = samples(st.run(lambda: generate_latest(st.server.metrics.registry).decode()))
    assert value(found, "bridge_smpp_throttled_total", account="demo", reason="outstanding") == 1


def test_pdus_outside_smpp_34_fold_into_bounded_labels(smpp_server: StartServer) -> None:
    st = smpp_server(handler=AcceptingHandler())
    with RawEsme(st.port) as esme:
        assert esme.bind().command_status == 0
        for i in range(20):  # unknown command ids and statuses a peer made up
            esme.send_raw(struct.pack(">IIII", 16, 0x00000200 + i, 0x00012345 + i, 100 + i))
            assert esme.recv(timeout=2.0).command_id == CommandId.generic_nack
        for i in range(20):
            esme.send(Pdu(CommandId.enquire_link, 0, 0x00054321 + i))
            assert esme.recv(timeout=2.0).command_id == CommandId.enquire_link_resp
    found = samples(st.run(lambda: generate_latest(st.server.metrics.registry).decode()))
    assert value(found, "bridge_smpp_pdus_total", direction="in", command="unknown",
                 status="other") == 20
    assert value(found, "bridge_smpp_pdus_total", direction="in", command="enquire_link",
                 status="other") == 20
    assert value(found, "bridge_smpp_pdus_total", direction="out", command="generic_nack",
                 status="ESME_RINVCMDID") == 20
    # The loop-local counts stay bounded however many odd values arrive.
    assert st.run(lambda: len(st.server._pdus_in)) <= 4


def _submit(seq: int) -> Pdu:
    return Pdu(
        CommandId.submit_sm,
        seq,
        fields={
            "source_addr_ton": 5,
            "source_addr": "Bridge",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": GERMAN_MOBILE,
            "short_message": b"hello",
        },
    )


# --------------------------------------------------------------------------- units


def test_loop_histogram_buckets_are_cumulative_and_inclusive() -> None:
    hist = LoopHistogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 1.0, 20.0):
        hist.observe(v)
    assert hist.buckets() == [("0.1", 2), ("1.0", 4), ("10.0", 4), ("+Inf", 5)]
    assert hist.sum == pytest.approx(21.65)


def test_metrics_without_a_registry_get_a_private_one() -> None:
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    a.accepted("demo")
    found: dict[tuple[str, Labels], Any] = samples(generate_latest(a.registry).decode())
    assert value(found, "bridge_messages_accepted_total", account="demo") == 1
    assert value(samples(generate_latest(b.registry).decode()),
                 "bridge_messages_accepted_total", account="demo") is None
    assert smpplib.consts.SMPP_ESME_ROK == 0  # smpplib imported for the ESME helpers


def test_pdus_in_are_counted_however_reads_split_them() -> None:
    from bridge.core.accounts import AccountRegistry
    from bridge.smpp.server import ServerConfig, SmppServer
    from bridge.smpp.server_connection import ServerConnection

    pdus = [_submit(i) for i in range(1, 6)] + [Pdu(CommandId.enquire_link, 9)]
    pdus.append(Pdu(CommandId.deliver_sm_resp, 10, Status.ESME_RX_T_APPN, {"message_id": ""}))
    stream = b"".join(encode(p) for p in pdus)
    expected = {
        (int(CommandId.submit_sm), 0): 5,
        (int(CommandId.enquire_link), 0): 1,
        (int(CommandId.deliver_sm_resp), int(Status.ESME_RX_T_APPN)): 1,
    }
    for size in (1, 2, 7, 15, 16, 17, 33, 64, len(stream)):
        server = SmppServer(ServerConfig(), AccountRegistry([]))
        conn = ServerConnection.__new__(ServerConnection)  # no loop, no socket: only the counting
        conn.server, conn._in_next, conn._in_head = server, 0, b""
        for i in range(0, len(stream), size):
            conn._count_in(stream[i : i + size])
        assert server._pdus_in == expected, size


def test_known_label_values_are_exported_at_zero_before_any_traffic(
    start_bridge: StartBridge,
) -> None:
    """Accounts and providers from the config have their series from the start, so dashboard
    panels show 0, not "No data", and rate() sees the first event."""
    bt = start_bridge(account={"allowed_bind_types": ["transmitter", "receiver"]})
    found = scraped_values(bt)
    v = lambda name, **labels: value(found, name, **labels)  # noqa: E731
    assert v("bridge_messages_accepted_total", account="demo") == 0
    for reason in ("no_route", "unicode_unsupported", "invalid_destination", "queue_full"):
        assert v("bridge_messages_rejected_total", account="demo", reason=reason) == 0
    for result in ("ok", "refused"):
        assert v("bridge_smpp_binds_total", account="demo", bind_type="receiver",
                 result=result) == 0
    # Only the bind types the account may use.
    assert v("bridge_smpp_binds_total", account="demo", bind_type="transceiver",
             result="ok") is None
    assert v("bridge_smpp_throttled_total", account="demo", reason="tps") == 0
    assert v("bridge_provider_requests_total", provider="sandbox", outcome="accepted") == 0
    assert v("bridge_provider_failovers_total", provider="sandbox") == 0
    assert v("bridge_reports_total", provider="sandbox", result="matched") == 0
    assert v("bridge_inbound_messages_total", provider="sandbox", result="queued") == 0
    assert v("bridge_receipts_total", state="DELIVRD") == 0
    assert v("bridge_receipts_total", state="REJECTD") == 0
