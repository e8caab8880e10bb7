"""End to end with smsflatrate.net: smpplib ESME → bridge → the smsflatrate simulator (real
HTTP) → status push (or status.php polling) → receipt deliver_sm back to the ESME, and an
inbound push → deliver_sm. Outcomes are chosen by the destination's last three digits (see
``bridge.simulators.smsflatrate``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import smpplib.gsm

from bridge.core.model import MessageState
from bridge.providers.smsflatrate.reports import push_url
from bridge.simulators.smsflatrate import SmsflatrateSimulator
from tests.harness.daemon import StartBridge, bridge_config
from tests.harness.esme import Esme, receipt_fields
from tests.harness.loop import free_port, wait_until
from tests.harness.rig import ProviderRig, StartRig
from tests.harness.sims import StartSimulator

pytestmark = pytest.mark.timeout(30)

MOBILE = "4915112345"  # + three digits choosing the simulator's outcome


def receipt_id(pdu: Any) -> str:
    return receipt_fields(pdu)["id"]


class Setup(ProviderRig):
    """An smsflatrate rig (provider ``sf``), with the send calls the simulator got."""

    def sim_state(self, fn: Any) -> Any:
        return self.state(fn)

    def sends(self) -> list[dict[str, str]]:
        """The send calls the simulator got (not the bridge's request=credits checks)."""
        return self.sim_state(lambda: [r for r in self.sim.requests if "to" in r])


@pytest.fixture
def setup(provider_rig: StartRig) -> Callable[..., Setup]:
    """``setup(push=True, **provider keys)``: a simulator and a bridge routing everything to
    it; with ``push`` the simulator's account Push-URL is the bridge's report callback."""

    def make(push: bool = True, pipeline: dict[str, object] | None = None, **keys: Any) -> Setup:
        s = provider_rig(
            "smsflatrate",
            provider={"push_reports": push, **keys},
            rig_type=Setup,
            account={"inbound_numbers": ["491624675000"]},
            pipeline=pipeline,
        )
        assert isinstance(s, Setup)
        report_url, inbound_url = s.callback_url("report"), s.callback_url("inbound")

        def configure() -> None:
            s.sim.push_url = push_url(report_url) if push else None
            s.sim.inbound_push_url = inbound_url

        s.state(configure)
        return s

    return make


def test_gsm_message_is_sent_and_a_pushed_101_becomes_a_delivrd_receipt(setup: Any) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        mid = esme.submit_ok(short_message=b"Hello from the ESME", registered_delivery=1)
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (fields["id"], fields["stat"], fields["err"]) == (mid, "DELIVRD", "000")
    [request] = s.sends()
    assert request["text"] == "Hello from the ESME"
    assert request["to"] == "004915112345678"
    assert request["from"] == "Bridge"
    assert request["type"] == "auto10or11"
    assert (request["status"], request["uid"], request["cost"]) == ("1", mid, "1")
    pushes = s.sim_state(lambda: list(s.sim.pushes))
    assert [p.status for p in pushes] == [200]


def test_ucs2_text_reaches_the_provider_as_utf8(setup: Any) -> None:
    s: Setup = setup()
    text = "Grüße, Привет 😀"
    with s.esme() as esme:
        mid = esme.submit_ok(
            short_message=text.encode("utf-16-be"), data_coding=8, registered_delivery=1
        )
        [receipt] = esme.receipts(1)
    assert receipt_fields(receipt)["stat"] == "DELIVRD"
    assert receipt_id(receipt) == mid
    [taken] = s.sim_state(lambda: list(s.sim.messages.values()))
    assert taken.text == text


def test_three_udh_parts_are_one_provider_request_and_three_receipts(setup: Any) -> None:
    s: Setup = setup()
    text = ("The quick brown fox jumps over the lazy dog. " * 9)[:400]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) == 3
    with s.esme() as esme:
        ids = [
            esme.submit_ok(
                short_message=part,
                esm_class=esm_class,
                data_coding=encoding,
                registered_delivery=1,
            )
            for part in parts
        ]
        receipts = esme.receipts(3)
    assert {receipt_id(r) for r in receipts} == set(ids)
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}
    requests = s.sends()
    assert [r["text"] for r in requests] == [text]
    [taken] = s.sim_state(lambda: list(s.sim.messages.values()))
    assert taken.cost == pytest.approx(3 * 0.07)  # three 153-character parts


#: destination suffix → (stat, err) of the receipt the ESME gets.
EXPECTED = {
    # refusals at send time: no provider left to fail over to → REJECTD with the code
    **{
        str(code): ("REJECTD", f"{code:03d}")
        for code in (110, 130, 131, 132, 133, 140, 150, 170, 171, 180, 231)
    },
    # reports
    "103": ("UNDELIV", "103"),
    "104": ("EXPIRED", "104"),
    "102": ("DELIVRD", "000"),  # 102 first (not final), then 101
    # transient: 404 on the first try, taken on the retry
    "405": ("DELIVRD", "000"),
}


def test_every_documented_failure_reaches_the_esme_as_the_right_receipt(setup: Any) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        ids = {
            esme.submit_ok(destination_addr=MOBILE + suffix, registered_delivery=1): suffix
            for suffix in EXPECTED
        }
        receipts = esme.receipts(len(EXPECTED), timeout=10.0)
        esme.pump(0.2)
        assert len(esme.delivered) == len(EXPECTED)  # no duplicates (the 102 was not final)
    got = {
        ids[receipt_id(r)]: (receipt_fields(r)["stat"], receipt_fields(r)["err"]) for r in receipts
    }
    assert got == EXPECTED
    tries = [r["to"] for r in s.sends()]
    assert tries.count("00" + MOBILE + "405") == 2  # the transient 404 was retried


def test_transient_codes_are_retried_until_the_message_expires(setup: Any) -> None:
    # 120 (no credit) never clears here: retried with backoff, then EXPIRED at its validity.
    s: Setup = setup()
    with s.esme() as esme:
        mid = esme.submit_ok(
            destination_addr=MOBILE + "120",
            registered_delivery=1,
            validity_period="000000000002000R",  # 2 seconds
        )
        [receipt] = esme.receipts(1, timeout=10.0)
    fields = receipt_fields(receipt)
    assert (fields["id"], fields["stat"]) == (mid, "EXPIRED")
    tries = [r["to"] for r in s.sends()]
    assert tries.count("00" + MOBILE + "120") >= 2


def test_without_a_push_url_receipts_come_from_polling_status_php(setup: Any) -> None:
    s: Setup = setup(push=False, pipeline={"poll_interval": 0.2})
    with s.esme() as esme:
        delivered = esme.submit_ok(destination_addr=MOBILE + "678", registered_delivery=1)
        undeliv = esme.submit_ok(destination_addr=MOBILE + "103", registered_delivery=1)
        receipts = {receipt_id(r): receipt_fields(r) for r in esme.receipts(2, timeout=10.0)}
    assert receipts[delivered]["stat"] == "DELIVRD"
    assert (receipts[undeliv]["stat"], receipts[undeliv]["err"]) == ("UNDELIV", "103")
    assert s.sim_state(lambda: list(s.sim.pushes)) == []
    polled = s.sim_state(lambda: [r for r in s.sim.requests if "key" not in r])
    assert polled and all(set(r) == {"id"} for r in polled)


def test_no_receipt_requested_means_no_status_and_the_message_ends_accepted(setup: Any) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        mid = esme.submit_ok(short_message=b"fire and forget", registered_delivery=0)

        def stored() -> Any:
            return s.stored(mid)

        assert wait_until(lambda: stored() is not None and stored().state.is_final)
        esme.pump(0.2)
        assert esme.delivered == []
    assert stored().state is MessageState.ACCEPTED
    [request] = s.sends()
    assert "status" not in request


def test_a_scheduled_message_goes_with_time_and_gets_an_acceptd_receipt(setup: Any) -> None:
    s: Setup = setup()
    with s.esme() as esme:
        mid = esme.submit_ok(
            schedule_delivery_time="000000010000000R",
            registered_delivery=1,  # in one hour
        )
        [receipt] = esme.receipts(1)
    fields = receipt_fields(receipt)
    assert (fields["id"], fields["stat"], fields["err"]) == (mid, "ACCEPTD", "000")
    [request] = s.sends()
    assert "status" not in request and "time" in request


def test_inbound_push_becomes_a_deliver_sm(setup: Any) -> None:
    s: Setup = setup()
    with Esme(s.bt.port) as esme:
        esme.bind("receiver")
        status = s.sim_thread.call(s.sim.push_inbound("00491606543210", "Ja, passt ✓"))
        assert status == 200
        [pdu] = esme.receipts(1)
    assert pdu.esm_class & 0x3C == 0  # a message, not a receipt
    assert pdu.source_addr == b"491606543210"
    assert pdu.destination_addr == b"491624675000"
    payload = pdu.short_message
    text = payload.decode("utf-16-be") if pdu.data_coding == 8 else payload.decode()
    assert text == "Ja, passt ✓"


def test_the_push_url_callback_urls_prints_works_as_pasted_into_the_account(
    start_bridge: StartBridge, start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """``smpp-bridge callback-urls`` prints the report URL with smsflatrate's placeholders; the
    simulator, given exactly that line as its Push-URL, gets receipts through to the ESME."""
    sim = SmsflatrateSimulator(delay=0.05, rate_limit=0)
    sim_thread = start_simulator(sim.app)
    http_port = free_port()
    extra = (
        '[providers.sf]\ntype = "smsflatrate"\nkey = "testkey"\ngateway = "auto10or11"\n'
        f'base_url = "{sim_thread.url}/schnittstelle.php"\ncallback_token = "tok123"\n'
        '[[routes]]\nproviders = ["sf"]\n'
    )
    config = tmp_path / "bridge.toml"
    config.write_text(bridge_config(tmp_path / "data", extra=extra))
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "callback-urls",
            str(config),
            "--set",
            f"http.port={http_port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    urls = {kind: url for name, kind, url in (ln.split("\t") for ln in printed.splitlines())}
    assert urls["report"] == (
        f"http://127.0.0.1:{http_port}/callbacks/sf/tok123/report"
        "?id=[message_id]&status=[status]&time=[time]&uid=[uid]"
    )
    assert urls["inbound"] == f"http://127.0.0.1:{http_port}/callbacks/sf/tok123/inbound"

    sim_thread.run(lambda: setattr(sim, "push_url", urls["report"]))
    bt = start_bridge(extra=extra, http_port=http_port)
    try:
        with Esme(bt.port) as esme:
            esme.bind()
            mid = esme.submit_ok(registered_delivery=1)
            [receipt] = esme.receipts(1)
        assert (receipt_id(receipt), receipt_fields(receipt)["stat"]) == (mid, "DELIVRD")
        # The simulator records a push once the bridge's answer is back, which can be just
        # after the receipt the push produced has reached the ESME.
        assert wait_until(lambda: bool(sim_thread.run(lambda: list(sim.pushes))), 5.0)
        assert [p.status for p in sim_thread.run(lambda: list(sim.pushes))] == [200]
    finally:
        sim_thread.call(sim.close())


# --------------------------------------------------------------------------- bulk (bulk=1)


def bulk_numbers(count: int, start: int = 0) -> list[str]:
    """German mobile numbers ending in 7: no simulator outcome is chosen by them."""
    return [f"49151{i:05d}7" for i in range(start, start + count)]


def test_a_submit_multi_to_120_numbers_makes_3_bulk_requests_and_each_gets_its_receipt(
    setup: Any,
) -> None:
    s: Setup = setup(bulk="all")
    s.sim_state(lambda: setattr(s.sim, "rate_limit", 10.0))  # the documented limit, enforced
    numbers = bulk_numbers(120)
    with s.esme() as esme:
        resp = esme.submit_multi(numbers, b"Hallo an alle", registered_delivery=1)
        assert resp.command_status == 0 and resp["unsuccess_smes"] == []
        receipts = esme.receipts(120)
    sends = s.sends()
    assert len(sends) == 3  # 50 + 50 + 20 numbers: "Maximale Anzahl der Handynummern: 50"
    assert [len(r["to"].split(";")) for r in sends] == [50, 50, 20]
    sent_to = [n.removeprefix("00") for r in sends for n in r["to"].split(";")]
    assert sorted(sent_to) == sorted(numbers)
    for r in sends:
        # Bulk: a concrete gateway (no auto type), no status report, no per-message uid.
        assert (r["bulk"], r["type"], r["text"]) == ("1", "10", "Hallo an alle")
        assert "status" not in r and "uid" not in r
    assert s.sim_state(lambda: s.sim.throttled) == 0
    # Bulk SMS get no status report: each destination's receipt says the provider took it.
    fields = [receipt_fields(r) for r in receipts]
    assert {(f["stat"], f["err"]) for f in fields} == {("ACCEPTD", "000")}
    assert len({f["id"] for f in fields}) == 120
    assert sorted(r.destination_addr.decode() for r in receipts) == ["Bridge"] * 120
    assert sorted(r.source_addr.decode() for r in receipts) == sorted(numbers)
    events = {
        e: s.bt.run(
            lambda e=e: s.bt.bridge.registry.get_sample_value(
                "bridge_provider_events_total", {"provider": "sf", "event": e}
            )
        )
        for e in ("bulk_request", "bulk_destination")
    }
    assert events == {"bulk_request": 3.0, "bulk_destination": 120.0}


def test_a_refused_bulk_request_is_the_documented_failure_of_each_of_its_destinations(
    setup: Any,
) -> None:
    s: Setup = setup(bulk="all")
    # The simulator chooses the outcome of a request by its first number: 132 (sender).
    numbers = ["4915100000132", *bulk_numbers(59)]
    with s.esme() as esme:
        resp = esme.submit_multi(numbers, b"Teilweise", registered_delivery=1)
        assert resp.command_status == 0
        receipts = esme.receipts(60)
    assert len(s.sends()) == 2
    by_number = {r.source_addr.decode(): receipt_fields(r) for r in receipts}
    refused = {n for n, f in by_number.items() if (f["stat"], f["err"]) == ("REJECTD", "132")}
    taken = {n for n, f in by_number.items() if (f["stat"], f["err"]) == ("ACCEPTD", "000")}
    assert refused == set(numbers[:50]) and taken == set(numbers[50:])


def test_with_bulk_unreported_messages_that_want_a_report_still_go_one_by_one(
    setup: Any,
) -> None:
    s: Setup = setup(bulk="unreported")
    numbers = bulk_numbers(3)
    with s.esme() as esme:
        esme.submit_multi(numbers, b"Mit Bericht", registered_delivery=1)
        receipts = esme.receipts(3)
    assert {receipt_fields(r)["stat"] for r in receipts} == {"DELIVRD"}
    sends = s.sends()
    assert len(sends) == 3 and all("bulk" not in r and r["status"] == "1" for r in sends)


def test_a_burst_of_single_submits_queued_for_the_provider_goes_in_one_bulk_request(
    setup: Any,
) -> None:
    s: Setup = setup(bulk="unreported")
    dispatcher = s.bt.bridge.dispatcher
    s.bt.run(lambda: dispatcher.pause("sf"))  # the burst queues (as behind a rate limit)
    numbers = bulk_numbers(30)
    with s.esme() as esme:
        ids = [
            esme.submit_ok(destination_addr=n, short_message=b"Burst", registered_delivery=0)
            for n in numbers
        ]
        other = esme.submit_ok(short_message=b"Anderer Text", registered_delivery=0)
        assert wait_until(lambda: s.bt.run(lambda: dispatcher.queue_depth("sf")) == 31)
        s.bt.run(lambda: dispatcher.resume("sf"))

        def final(mid: str) -> bool:
            m = s.stored(mid)
            return m is not None and m.state is MessageState.ACCEPTED

        assert wait_until(lambda: all(final(m) for m in [*ids, other]))
    sends = s.sends()
    bulk = [r for r in sends if r.get("bulk") == "1"]
    assert len(sends) == 2 and len(bulk) == 1
    assert sorted(n.removeprefix("00") for n in bulk[0]["to"].split(";")) == sorted(numbers)


def test_a_bulk_refusal_of_one_number_sends_each_number_again_on_its_own(setup: Any) -> None:
    s: Setup = setup(bulk="all", pipeline={"retry_base": 0.05, "retry_max": 0.2})
    # 131 "Empfänger nicht korrekt" names no number: the simulator refuses the request for it.
    numbers = ["4915100000131", *bulk_numbers(9)]
    with s.esme() as esme:
        esme.submit_multi(numbers, b"Einzeln nochmal", registered_delivery=1)
        receipts = esme.receipts(10)
    by_number = {r.source_addr.decode(): receipt_fields(r) for r in receipts}
    assert (by_number[numbers[0]]["stat"], by_number[numbers[0]]["err"]) == ("REJECTD", "131")
    # The others went on their own, with status=1: real delivery reports.
    assert {by_number[n]["stat"] for n in numbers[1:]} == {"DELIVRD"}
    sends = s.sends()
    assert [r.get("bulk") for r in sends].count("1") == 1 and len(sends) == 11


def test_an_unanswered_bulk_request_is_not_sent_again_with_retry_after_timeout_false(
    setup: Any,
) -> None:
    s: Setup = setup(bulk="all", timeout=0.5, retry_after_timeout=False)
    s.sim_state(lambda: setattr(s.sim, "hang", 2.0))
    numbers = ["4915100000408", *bulk_numbers(2)]  # …408: the simulator answers too late
    with s.esme() as esme:
        esme.submit_multi(numbers, b"Vielleicht", registered_delivery=1)
        receipts = esme.receipts(3)
    # The provider may have taken them: each ends UNKNOWN, none is sent a second time.
    assert {receipt_fields(r)["stat"] for r in receipts} == {"UNKNOWN"}
    assert len(s.sends()) == 1
