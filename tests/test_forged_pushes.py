"""Forged provider pushes (issue 14, finding 12, HTTP parts).

* A push with the right callback token and a real message id but **another mobile number** was
  applied. iSMS's ``dlr-url`` push names the number (``mid``, ``mobile``, ``status``): a
  report for a number that is not the message's destination changes nothing and is counted
  (``bridge_reports_total{result="mismatch"}``). The other providers' pushes carry no number
  (smsflatrate: id, status, time, uid; My-Cool-SMS: smsid, status; 1601SMS: smsid, datum,
  status, referentie): there the token and the provider's id are all there is to check.
* Every wrong-token callback logged a WARNING: a scanner made one line per request. Now one
  sampled line per interval, and the counter counts every one.
"""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from bridge.core.model import MessageState
from tests.harness.daemon import StartBridge
from tests.harness.esme import Esme, receipt_fields
from tests.harness.loop import wait_until
from tests.harness.rig import StartRig

pytestmark = pytest.mark.timeout(30)

NOT_PUSHED = "306912345604"  # the simulator takes it and never pushes its report
OTHER_NUMBER = "306999999999"


def get(url: str, params: dict[str, str]) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5.0)
    try:
        conn.request("GET", f"{parts.path}?{urlencode(params)}")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def counter(bt: Any, metric: Any, *labels: str) -> float:
    return float(bt.run(lambda: metric.labels(*labels)._value.get()))


def test_a_push_with_the_right_token_but_another_number_is_not_applied(
    provider_rig: StartRig,
) -> None:
    rig = provider_rig("isms_http")
    sim, sim_thread, bt = rig.sim, rig.sim_thread, rig.bt
    report_url = rig.callback_url("report")
    with Esme(bt.port) as esme:
        esme.bind()
        message_id = esme.submit_ok(destination_addr=NOT_PUSHED, registered_delivery=1)
        assert wait_until(lambda: sim_thread.run(lambda: len(sim.messages)) == 1)
        [mid] = sim_thread.run(lambda: list(sim.messages))
        assert wait_until(
            lambda: bt.run(lambda: bt.bridge.store.get_message_now(message_id)).state
            is MessageState.ENROUTE
        )

        forged = {"mid": mid, "mobile": OTHER_NUMBER, "status": "Failed"}
        assert get(report_url, forged)[0] == 200  # nothing to tell the forger
        esme.pump(0.5)
        assert esme.delivered == []
        stored = bt.run(lambda: bt.bridge.store.get_message_now(message_id))
        assert stored.state is MessageState.ENROUTE
        assert counter(bt, bt.bridge.metrics.reports, "isms", "mismatch") == 1

        genuine = {"mid": mid, "mobile": NOT_PUSHED, "status": "Delivered"}
        assert get(report_url, genuine)[0] == 200
        [receipt] = esme.receipts(1)
    assert (receipt_fields(receipt)["id"], receipt_fields(receipt)["stat"]) == (
        message_id,
        "DELIVRD",
    )
    assert counter(bt, bt.bridge.metrics.reports, "isms", "matched") == 1


def test_wrong_token_callbacks_are_counted_each_and_logged_once_per_interval(
    start_bridge: StartBridge, caplog: pytest.LogCaptureFixture
) -> None:
    bt = start_bridge(extra="""
[providers.sf]
type = "smsflatrate"
base_url = "http://127.0.0.1:9/schnittstelle.php"
key = "testkey"
[[routes]]
providers = ["sandbox"]
""")
    url = bt.run(lambda: bt.bridge.callback_url("sf", "report"))
    token = bt.run(lambda: bt.bridge.callback_tokens["sf"])
    wrong = url.replace(token, "not-the-token")
    for _ in range(50):
        assert get(wrong, {"id": "1", "status": "101"})[0] == 404
    assert counter(bt, bt.bridge.metrics.callbacks, "-", "-", "404") == 50
    lines = [r for r in caplog.records if "callback_refused" in r.getMessage()]
    assert len(lines) == 1
