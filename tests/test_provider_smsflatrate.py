"""smsflatrate.net adapter: the pure translators against the interface document's own examples
(version 4.1; quoted where used), then the adapter against the simulator over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from bridge.config import load_config
from bridge.core.model import (
    Address,
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    OutcomeKind,
)
from bridge.core.provider import CallbackRequest, ProviderContext
from bridge.providers import smsflatrate as sf
from bridge.providers.http import HttpRequest
from bridge.providers.http_provider import Unsendable
from bridge.providers.smsflatrate import inbound as sf_inbound
from bridge.providers.smsflatrate import reports as sf_reports
from bridge.providers.smsflatrate import send as sf_send
from bridge.providers.smsflatrate import settings as sf_settings
from bridge.simulators.smsflatrate import SmsflatrateSimulator
from bridge.web.server import CallbackEndpoint, HealthReport, HttpServer, build_app

pytestmark = pytest.mark.timeout(30)

DOC_KEY = "f4eba9a923a60dc6923a6b6bad1ab"  # the key in every example of the document
BERLIN = ZoneInfo("Europe/Berlin")
EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config/examples/smsflatrate.toml"


def settings(**overrides: Any) -> sf_settings.Settings:
    values: dict[str, Any] = {"type": "smsflatrate", "key": DOC_KEY}
    values.update(overrides)
    return sf_settings.Settings.model_validate(values)


def message(**overrides: Any) -> Message:
    """The document's example message: from 00491601234567 to 00491606543210, "hello germany"."""
    values: dict[str, Any] = {
        "id": "49679",
        "account": "demo",
        "source": Address("491601234567", 1, 1),
        "destination": Address("491606543210", 1, 1),
        "text": "hello germany",
    }
    values.update(overrides)
    return Message(**values)


def url(msg: Message, s: sf_settings.Settings | None = None, now: float = 0.0) -> str:
    s = s or settings(gateway="1")
    return sf_send.build_send_request(msg, s, DOC_KEY, now).full_url()


def params(msg: Message, s: sf_settings.Settings | None = None, now: float = 0.0) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url(msg, s, now)).query, keep_blank_values=True))


BASE = "https://www.smsflatrate.net/schnittstelle.php?"


# --------------------------------------------------------------------------- the send request


def test_document_example_standard_sms_type_1() -> None:
    # "https://www.smsflatrate.net/schnittstelle.php?key=f4eba9a923a60dc6923a6b6bad1ab&
    #  from=00491601234567&to=00491606543210&text=hello+germany&type=1"
    example = f"{BASE}key={DOC_KEY}&from=00491601234567&to=00491606543210&text=hello+germany&type=1"
    # Plus our reference (uid) and cost=1 so the reply says what it cost; no status=1: the
    # ESME asked for no receipt.
    assert url(message()) == example + "&uid=49679&cost=1"


def test_document_example_auto_type() -> None:
    # "...&text=hello+germany&type=auto1or2"
    example = (
        f"{BASE}key={DOC_KEY}&from=00491601234567&to=00491606543210&text=hello+germany"
        "&type=auto1or2"
    )
    assert url(message(), settings(gateway="auto1or2")) == example + "&uid=49679&cost=1"


def test_document_example_status_report_with_user_id() -> None:
    # "...&text=hello+germany&type=1&status=1&uid=49679"
    example = (
        f"{BASE}key={DOC_KEY}&from=00491601234567&to=00491606543210&text=hello+germany"
        "&type=1&status=1&uid=49679"
    )
    assert url(message(registered_delivery=1)) == example + "&cost=1"


def test_failure_only_and_intermediate_receipt_requests_also_ask_for_status() -> None:
    assert params(message(registered_delivery=2))["status"] == "1"
    assert params(message(registered_delivery=0x10))["status"] == "1"
    assert "status" not in params(message(registered_delivery=0))


def test_document_example_delayed_sms() -> None:
    # "...&text=merry+christmas+to+germany&type=10&time=24.12.2012-13:45"
    when = datetime(2012, 12, 24, 13, 45, tzinfo=BERLIN).timestamp()
    msg = message(text="merry christmas to germany", schedule_at=when, registered_delivery=1)
    example = (
        f"{BASE}key={DOC_KEY}&from=00491601234567&to=00491606543210"
        "&text=merry+christmas+to+germany&type=10&time=24.12.2012-13:45"
    )
    # No status=1 although a receipt was asked for: "nicht möglich mit ... terminierten SMS".
    # (The colon travels percent-encoded, %3A: the same parameter once decoded.)
    actual = url(msg, settings(gateway="10"), now=when - 86400)
    assert actual == (example + "&uid=49679&cost=1").replace("13:45", "13%3A45")


def test_schedule_time_is_rounded_up_to_the_minute_in_german_time() -> None:
    winter = datetime(2012, 12, 24, 13, 45, 1, tzinfo=BERLIN).timestamp()
    assert sf_send.format_time(winter, BERLIN) == "24.12.2012-13:46"
    summer_utc = datetime(2024, 7, 1, 10, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    assert sf_send.format_time(summer_utc, BERLIN) == "01.07.2024-12:00"


def test_a_schedule_time_already_past_sends_now_with_status() -> None:
    p = params(message(schedule_at=100.0, registered_delivery=1), now=200.0)
    assert "time" not in p
    assert p["status"] == "1"


def test_without_native_scheduling_no_time_parameter_is_sent() -> None:
    s = settings(gateway="1", native_scheduling=False)
    p = params(message(schedule_at=1000.0, registered_delivery=1), s, now=0.0)
    assert "time" not in p and p["status"] == "1"
    assert sf_settings.capabilities_for(s).scheduling is False
    assert sf_settings.capabilities_for(settings()).scheduling is True


def test_document_example_flash_on_gateway_3_sends_no_sender() -> None:
    # Gateway 3: "Quality Route ohne Absender"; flash "Möglich mit den Gateways: 3 und 10".
    p = params(message(flash=True), settings(gateway="3"))
    assert p["flash"] == "1"
    assert p["type"] == "3"
    assert "from" not in p


def test_flash_on_a_gateway_without_flash_is_sent_as_a_normal_sms_by_default() -> None:
    assert "flash" not in params(message(flash=True), settings(gateway="1"))
    assert sf_settings.capabilities_for(settings(gateway="1")).flash is True


def test_flash_on_a_gateway_without_flash_is_refused_when_configured() -> None:
    s = settings(gateway="1", unsupported_flash="refuse")
    assert sf_settings.capabilities_for(s).flash is False
    with pytest.raises(Unsendable):
        url(message(flash=True), s)
    # auto10or11: flash for German numbers (gateway 10), refused for foreign ones (11).
    s = settings(gateway="auto10or11", unsupported_flash="refuse")
    assert sf_settings.capabilities_for(s).flash is True
    assert params(message(flash=True), s)["flash"] == "1"
    with pytest.raises(Unsendable):
        url(message(flash=True, destination=Address("436641234567")), s)


def test_flash_longer_than_one_sms_drops_flash_or_is_refused() -> None:
    long_text = "x" * 161  # "Die Zeichenlänge ist auf 160 Zeichen beschränkt"
    assert "flash" not in params(message(flash=True, text=long_text), settings(gateway="10"))
    assert params(message(flash=True, text="x" * 160), settings(gateway="10"))["flash"] == "1"
    with pytest.raises(Unsendable):
        url(message(flash=True, text=long_text), settings(gateway="10", unsupported_flash="refuse"))


def test_document_example_reply_variant_2_uses_the_pool_number_as_sender() -> None:
    # "...&from=00491624675000&to=00491606543210&text=hello+germany&type=10&reply=2"
    example = (
        f"{BASE}key={DOC_KEY}&from=00491624675000&to=00491606543210&text=hello+germany"
        "&type=10&reply=2"
    )
    assert url(message(), settings(gateway="10", reply=2)) == example + "&uid=49679&cost=1"
    # Not on gateways that do not take it, and never with a schedule ("nicht möglich mit ...
    # terminierten SMS").
    assert "reply" not in params(message(), settings(gateway="1", reply=2))
    # With a schedule the ESME's own sender goes out (the pool number only carries replies).
    scheduled = params(message(schedule_at=1000.0), settings(gateway="10", reply=2), now=0.0)
    assert "reply" not in scheduled
    assert scheduled["from"] == "00491601234567"


def test_reply_variant_1_on_gateway_3() -> None:
    # "...&to=00491606543210&text=hello+germany&type=3&reply=1"
    p = params(message(), settings(gateway="3", reply=1))
    assert p["reply"] == "1" and "from" not in p


def test_per_account_gateway_override() -> None:
    s = settings(gateway="1", account_gateways={"demo": "20", "other": 3})
    assert params(message(account="demo"), s)["type"] == "20"
    assert params(message(account="other"), s)["type"] == "3"
    assert params(message(account="third"), s)["type"] == "1"
    # Capabilities hold for every account: gateway 3 allows 735 characters only.
    assert sf_settings.capabilities_for(s).max_gsm7_chars == 735


def test_gateway_21_has_no_status_reports() -> None:
    s = settings(gateway="auto20or21")
    assert params(message(registered_delivery=1), s)["status"] == "1"  # German: gateway 20
    foreign = message(registered_delivery=1, destination=Address("447700900123"))
    assert "status" not in params(foreign, s)  # gateway 21


def test_auto_types_resolve_by_the_german_prefix() -> None:
    assert sf_settings.effective_gateway("auto1or2", "491606543210") == "1"
    assert sf_settings.effective_gateway("auto1or2", "436641234567") == "2"
    assert sf_settings.effective_gateway("auto10or11", "4915112345678") == "10"
    assert sf_settings.effective_gateway("11", "4915112345678") == "11"


# --------------------------------------------------------------------------- charset, numbers


def test_text_is_sent_as_utf8() -> None:
    raw = url(message(text="Grüße € ok"))
    assert "text=Gr%C3%BC%C3%9Fe+%E2%82%AC+ok" in raw


def test_numbers_are_sent_in_international_form_with_00() -> None:
    p = params(message(destination=Address("447700900123")), settings(gateway="2"))
    assert p["to"] == "00447700900123"
    assert p["from"] == "00491601234567"


def test_alphanumeric_sender_is_sent_as_is() -> None:
    p = params(message(source=Address("Firma123", 5, 0)))
    assert p["from"] == "Firma123"


@pytest.mark.parametrize("sender", ["My Shop", "Bäckerei", "Firmenname123", "a-b"])
def test_sender_with_spaces_umlauts_or_over_11_characters_is_unsendable_with_err_132(
    sender: str,
) -> None:
    with pytest.raises(Unsendable) as info:
        url(message(source=Address(sender, 5, 0)))
    assert info.value.error_code == 132


def test_national_numbers_and_short_codes_are_sent_as_the_esme_sent_them() -> None:
    assert params(message(source=Address("12345", 3, 0)))["from"] == "12345"
    assert params(message(source=Address("01601234567", 2, 1)))["from"] == "01601234567"
    with pytest.raises(Unsendable):
        url(message(source=Address("1" * 17, 0, 1)))


def test_binary_messages_are_unsendable() -> None:
    with pytest.raises(Unsendable):
        url(message(text=None, binary=b"\x01\x02"))


def test_length_limits_per_gateway() -> None:
    assert params(message(text="a" * 1071))["text"] == "a" * 1071
    with pytest.raises(Unsendable):
        url(message(text="a" * 1072))
    with pytest.raises(Unsendable):
        url(message(text="a" * 736), settings(gateway="3"))
    # Unicode: 469 (7 parts of 67) on 1071-character gateways.
    assert params(message(text="ж" * 469, data_coding=8))["text"] == "ж" * 469
    with pytest.raises(Unsendable):
        url(message(text="ж" * 470, data_coding=8))
    # GSM extension characters count twice, as the router counts them.
    with pytest.raises(Unsendable):
        url(message(text="€" * 536))


def test_capabilities_from_the_document() -> None:
    caps = sf_settings.capabilities_for(settings())
    assert caps.max_gsm7_chars == 1071
    assert caps.max_ucs2_chars == 469
    assert caps.unicode and not caps.binary
    assert caps.alphanumeric_sender and caps.max_sender_chars == 11
    assert caps.reports == "push"
    assert caps.requests_per_second == 10  # "max. 10 request per second"
    assert sf_settings.capabilities_for(settings(push_reports=False)).reports == "poll"


# --------------------------------------------------------------------------- the send reply


def test_reply_100_without_id_is_final_accepted() -> None:
    outcome = sf_send.parse_send_reply("100")
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id is None
    assert outcome.state is MessageState.ACCEPTED


def test_document_example_reply_with_sms_id() -> None:
    # "Beispiel // Example: 100,134678979411374"
    outcome = sf_send.parse_send_reply("100,134678979411374")
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id == "134678979411374"
    assert outcome.state is None  # a report follows


def test_document_example_reply_with_cost() -> None:
    # "Beispiel Rückgabewert // Example return value: 100,0.07"
    outcome = sf_send.parse_send_reply("100,0.07")
    assert outcome.cost == pytest.approx(0.07)
    assert outcome.provider_message_id is None
    assert outcome.state is MessageState.ACCEPTED


def test_document_example_reply_with_id_and_cost() -> None:
    # "100,134678979411374,0.07"
    outcome = sf_send.parse_send_reply("100,134678979411374,0.07\n")
    assert outcome.provider_message_id == "134678979411374"
    assert outcome.cost == pytest.approx(0.07)


def test_an_unreadable_cost_does_not_undo_a_taken_message() -> None:
    outcome = sf_send.parse_send_reply("100,134678979411374,(700) [0]")
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id == "134678979411374"


PERMANENT_CODES = [110, 130, 131, 132, 133, 140, 150, 170, 171, 180, 231]
TRANSIENT_CODES = [120, 404]


@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_reply_code_is_a_permanent_failure_with_err_the_code(code: int) -> None:
    outcome = sf_send.parse_send_reply(str(code))
    assert outcome.kind is OutcomeKind.PERMANENT
    assert outcome.error_code == code
    assert str(code) in outcome.detail


@pytest.mark.parametrize("code", TRANSIENT_CODES)
def test_reply_code_is_a_transient_failure_with_err_the_code(code: int) -> None:
    outcome = sf_send.parse_send_reply(str(code))
    assert outcome.kind is OutcomeKind.TRANSIENT
    assert outcome.error_code == code


def test_every_documented_send_code_is_classified() -> None:
    assert set(sf_send.SEND_CODES) == set(PERMANENT_CODES) | set(TRANSIENT_CODES)


def test_reply_code_231_is_a_permanent_failure_with_err_231() -> None:
    outcome = sf_send.parse_send_reply("231")
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 231)


def test_an_undocumented_code_is_permanent_with_that_code_and_garbage_is_transient() -> None:
    outcome = sf_send.parse_send_reply("999")
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 999)
    outcome = sf_send.parse_send_reply("<html>maintenance</html>")
    unexpected = (OutcomeKind.TRANSIENT, sf_send.ERR_UNEXPECTED_REPLY)
    assert (outcome.kind, outcome.error_code) == unexpected


# --------------------------------------------------------------------------- reports


def test_document_example_status_reply() -> None:
    # "Status, Empfangszeitpunkt als Unix Timestamp: 101,1234567890"
    report = sf_reports.parse_status_reply("p", "134678979411374", "101,1234567890", 5.0)
    assert report == DeliveryReport("p", "134678979411374", MessageState.DELIVERED, 0, 1234567890.0)


def test_document_example_status_reply_with_uid() -> None:
    # "101,1234567890,uid=49467"
    report = sf_reports.parse_status_reply("p", "1", "101,1234567890,uid=49467", 5.0)
    assert report is not None and report.state is MessageState.DELIVERED


@pytest.mark.parametrize(
    ("code", "state", "err"),
    [
        (101, MessageState.DELIVERED, 0),
        (102, MessageState.ENROUTE, 102),
        (103, MessageState.UNDELIVERABLE, 103),
        (104, MessageState.EXPIRED, 104),
        (109, MessageState.UNKNOWN, 109),
    ],
)
def test_report_codes_map_to_states(code: int, state: MessageState, err: int) -> None:
    assert sf_reports.report_state(code) == (state, err)
    report = sf_reports.parse_status_reply("p", "1", str(code), 7.0)
    assert report is not None
    assert (report.state, report.error_code, report.done_at) == (state, err, 7.0)


def test_unreadable_status_replies_give_no_report() -> None:
    assert sf_reports.parse_status_reply("p", "1", "", 1.0) is None
    assert sf_reports.parse_status_reply("p", "1", "110", 1.0) is None
    assert sf_reports.report_state(100) is None


def test_status_request_and_url() -> None:
    # "www.smsflatrate.net/status.php?id=134678979411374"
    assert sf_reports.status_url_for(settings()) == "https://www.smsflatrate.net/status.php"
    req = sf_reports.build_status_request(sf_reports.status_url_for(settings()), "134678979411374")
    assert req.full_url() == "https://www.smsflatrate.net/status.php?id=134678979411374"
    assert sf_reports.status_url_for(settings(status_url="http://x/s.php")) == "http://x/s.php"
    assert sf_reports.status_url_for(settings(base_url="http://127.0.0.1:1/schnittstelle.php")) == (
        "http://127.0.0.1:1/status.php"
    )


def test_push_url_follows_the_document_example() -> None:
    # "http://www.ihtdomain.de/push.php?id=[message_id]&status=[status]&time=[time]&uid=[uid]"
    assert sf_reports.push_url("http://www.ihtdomain.de/push.php") == (
        "http://www.ihtdomain.de/push.php?id=[message_id]&status=[status]&time=[time]&uid=[uid]"
    )


def push(**query: str) -> CallbackRequest:
    return CallbackRequest(method="GET", query=query)


def test_push_is_parsed_into_a_report() -> None:
    request = push(id="134678979411374", status="103", time="1234567890", uid="49679")
    report = sf_reports.parse_push("p", request, 5.0)
    assert report == DeliveryReport(
        "p", "134678979411374", MessageState.UNDELIVERABLE, 103, 1234567890.0
    )
    # An empty [time] (nothing received yet) is our own time.
    assert sf_reports.parse_push("p", push(id="1", status="102", time=""), 5.0).done_at == 5.0


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"status": "101"},
        {"id": "[message_id]", "status": "101"},
        {"id": "134678979411374"},
        {"id": "134678979411374", "status": "abc"},
        {"id": "134678979411374", "status": "110"},
        {"id": "134678979411374", "status": "101", "time": "yesterday"},
    ],
)
def test_malformed_pushes_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(sf_reports.BadPush):
        sf_reports.parse_push("p", push(**query), 1.0)


# --------------------------------------------------------------------------- inbound


def test_inbound_push_becomes_an_inbound_message() -> None:
    request = CallbackRequest(
        method="GET",
        query={"from": "00491606543210", "to": "00491624675000", "text": "Ja, gerne 👍"},
    )
    msg = sf_inbound.parse_inbound("p", request, 9.0, "491624675000")
    assert msg == InboundMessage(
        account="",
        source=Address("491606543210", 1, 1),
        destination=Address("491624675000", 1, 1),
        text="Ja, gerne 👍",
        received_at=9.0,
        provider="p",
    )


def test_inbound_push_without_receiver_goes_to_the_inbound_number_and_takes_aliases() -> None:
    request = CallbackRequest(
        method="POST",
        form={"sender": "+491606543210", "message": "hallo", "timestamp": "1700000000"},
    )
    msg = sf_inbound.parse_inbound("p", request, 9.0, "491624675000")
    assert msg.destination.digits == "491624675000"
    assert msg.source.digits == "491606543210"
    assert msg.received_at == 1700000000.0


@pytest.mark.parametrize(
    "query",
    [
        {"text": "no sender"},
        {"from": "00491606543210"},
        {"from": "not a number!", "text": "x"},
        {"from": "00491606543210", "to": "abc", "text": "x"},
        {"from": "00491606543210", "text": "x", "time": "now"},
    ],
)
def test_malformed_inbound_pushes_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(sf_reports.BadPush):
        sf_inbound.parse_inbound("p", CallbackRequest(method="GET", query=query), 1.0, "49162")


# --------------------------------------------------------------------------- health


def test_document_example_balance() -> None:
    # "Rückgabewert in Euro z.B. 145.1500"
    assert sf_send.parse_balance("145.1500") == (True, pytest.approx(145.15))
    assert sf_send.parse_balance("110") == (False, None)
    assert sf_send.parse_balance("nonsense") == (False, None)
    req = sf_send.build_health_request(settings(), DOC_KEY)
    # "https://www.smsflatrate.net/schnittstelle.php?key=...&request=credits"
    assert req.full_url() == f"{BASE}key={DOC_KEY}&request=credits"


# --------------------------------------------------------------------------- settings, config


def test_settings_validate_gateways_and_zones() -> None:
    assert settings(gateway=10).gateway == "10"
    with pytest.raises(ValidationError):
        settings(gateway="5")
    with pytest.raises(ValidationError):
        settings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        settings(reply_number="not a number")
    with pytest.raises(ValidationError):
        sf_settings.Settings.model_validate({"type": "smsflatrate"})  # key is required


def test_the_key_never_shows_in_the_settings_repr() -> None:
    assert DOC_KEY not in repr(settings())


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSFLATRATE_KEY", "testkey")
    monkeypatch.setenv("SMPP_DEMO_PASSWORD", "demopass")
    monkeypatch.setenv("SMSFLATRATE_CALLBACK_TOKEN", "0123456789abcdef0123456789abcdef")
    cfg = load_config(EXAMPLE_CONFIG)
    provider = cfg.providers["smsflatrate"]
    assert isinstance(provider, sf_settings.Settings)
    assert provider.key.get_secret_value() == "testkey"
    assert provider.requests_per_second == 10


# --------------------------------------------------------------------------- against the simulator


@dataclass
class Sinks:
    reports: list[DeliveryReport] = field(default_factory=list)
    inbound: list[InboundMessage] = field(default_factory=list)

    async def report(self, report: DeliveryReport) -> bool:
        self.reports.append(report)
        return True

    async def take_inbound(self, msg: InboundMessage) -> bool:
        self.inbound.append(msg)
        return True


@dataclass
class Rig:
    sim: SmsflatrateSimulator
    provider: sf.SmsflatrateProvider
    sinks: Sinks
    balances: list[float]


async def _health() -> HealthReport:
    return HealthReport(True, True)


TOKEN = "t0k3n" * 8


async def make_rig(sim: SmsflatrateSimulator, **overrides: Any) -> tuple[Rig, list[HttpServer]]:
    sim_server = HttpServer("127.0.0.1", 0, sim.app, shutdown_timeout=0.5)
    await sim_server.start()
    values: dict[str, Any] = {
        "base_url": f"http://127.0.0.1:{sim_server.port}/schnittstelle.php",
        "key": "testkey",
        "gateway": "auto1or2",
        "timeout": 2.0,
    }
    values.update(overrides)
    balances: list[float] = []
    callback_base: list[str] = []

    def callback_url(kind: Any) -> str | None:
        return f"{callback_base[0]}/callbacks/sf/{TOKEN}/{kind}" if callback_base else None

    ctx = ProviderContext(name="sf", callback_url=callback_url, set_balance=balances.append)
    provider = sf.SmsflatrateProvider("sf", settings(**values), ctx)
    sinks = Sinks()
    await provider.start(sinks.report, sinks.take_inbound)
    bridge_server = HttpServer(
        "127.0.0.1",
        0,
        build_app(
            metrics=lambda: b"",
            health=_health,
            callbacks={"sf": CallbackEndpoint(TOKEN, provider)},
        ),
        shutdown_timeout=0.5,
    )
    await bridge_server.start()
    callback_base.append(f"http://127.0.0.1:{bridge_server.port}")
    push = provider.push_url()
    assert push is not None
    sim.push_url = push
    sim.inbound_push_url = callback_url("inbound")
    return Rig(sim, provider, sinks, balances), [sim_server, bridge_server]


@contextlib.asynccontextmanager
async def running(sim: SmsflatrateSimulator, **overrides: Any) -> AsyncIterator[Rig]:
    """The simulator, the adapter pointed at it and a callback server for its pushes."""
    r, servers = await make_rig(sim, **overrides)
    try:
        yield r
    finally:
        await r.provider.stop()
        await r.sim.close()
        for server in servers:
            await server.stop()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with running(SmsflatrateSimulator(delay=0.05, rate_limit=0)) as r:
        yield r


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_send_with_receipt_gets_an_id_the_cost_and_a_pushed_delivrd(rig: Rig) -> None:
    outcome = await rig.provider.send(message(id="abc1", registered_delivery=1))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id is not None and len(outcome.provider_message_id) == 15
    assert outcome.cost == pytest.approx(0.07)
    assert rig.sim.balance == pytest.approx(100.0 - 0.07)
    taken = rig.sim.messages[outcome.provider_message_id]
    assert (taken.uid, taken.status, taken.gateway) == ("abc1", True, "1")
    await eventually(lambda: rig.sinks.reports)
    [report] = rig.sinks.reports
    assert report.provider_message_id == outcome.provider_message_id
    assert report.state is MessageState.DELIVERED


async def test_send_without_receipt_is_finished_accepted(rig: Rig) -> None:
    outcome = await rig.provider.send(message())
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.state is MessageState.ACCEPTED
    assert outcome.cost == pytest.approx(0.07)


async def test_long_unicode_text_arrives_intact(rig: Rig) -> None:
    text = "Привет, мир! " * 20  # 260 characters: 4 UCS2 parts
    outcome = await rig.provider.send(message(text=text, data_coding=8, registered_delivery=1))
    assert outcome.provider_message_id is not None
    assert rig.sim.messages[outcome.provider_message_id].text == text
    assert outcome.cost == pytest.approx(4 * 0.07)


@pytest.mark.parametrize("code", PERMANENT_CODES + TRANSIENT_CODES)
async def test_every_reply_code_from_the_simulator_reaches_the_outcome(rig: Rig, code: int) -> None:
    outcome = await rig.provider.send(message(destination=Address(f"4915112345{code}")))
    expected = OutcomeKind.TRANSIENT if code in TRANSIENT_CODES else OutcomeKind.PERMANENT
    assert (outcome.kind, outcome.error_code) == (expected, code)
    assert rig.sim.balance == 100.0  # nothing charged


async def test_real_validation_foreign_number_on_a_german_gateway_is_150() -> None:
    async with running(SmsflatrateSimulator(delay=0.05, rate_limit=0), gateway="1") as r:
        outcome = await r.provider.send(message(destination=Address("447700900123")))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 150)


async def test_http_500_is_transient(rig: Rig) -> None:
    outcome = await rig.provider.send(message(destination=Address("4915112345500")))
    assert outcome.kind is OutcomeKind.TRANSIENT
    assert outcome.detail == "HTTP 500"


async def test_a_timeout_is_transient() -> None:
    sim = SmsflatrateSimulator(delay=0.05, rate_limit=0, hang=1.0)
    async with running(sim, timeout=0.2) as r:
        outcome = await r.provider.send(message(destination=Address("4915112345408")))
    assert outcome.kind is OutcomeKind.TRANSIENT
    assert "timeout" in outcome.detail


async def test_over_the_rate_limit_the_simulator_answers_429_which_is_transient() -> None:
    # A stopped clock for the limiter's one-second window: the test does not race it.
    sim = SmsflatrateSimulator(delay=0.05, rate_limit=2, monotonic=lambda: 1000.0)
    async with running(sim) as r:
        outcomes = [await r.provider.send(message()) for _ in range(3)]
    kinds = [o.kind for o in outcomes]
    assert kinds == [OutcomeKind.ACCEPTED, OutcomeKind.ACCEPTED, OutcomeKind.TRANSIENT]
    assert outcomes[2].detail == "HTTP 429"
    assert sim.throttled == 1


async def test_wrong_key_is_110(rig: Rig) -> None:
    rig.sim.keys = {"another"}
    outcome = await rig.provider.send(message())
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 110)
    assert await rig.provider.healthy() is False


async def test_health_reports_the_balance(rig: Rig) -> None:
    rig.sim.balance = 145.15
    assert await rig.provider.healthy() is True
    assert rig.balances == [pytest.approx(145.15)]


async def test_not_enough_credits_is_transient_120(rig: Rig) -> None:
    rig.sim.balance = 0.01
    outcome = await rig.provider.send(message())
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, 120)


async def test_poll_gives_final_states_and_nothing_while_pending(rig: Rig) -> None:
    rig.sim.push_url = None
    now = [1_700_000_000.0]
    rig.sim.clock = lambda: now[0]  # the simulated reports fall due when the test says
    sent: dict[str, Message] = {}
    for suffix in ("101", "103", "104", "109"):
        msg = message(
            id=f"m{suffix}", destination=Address(f"4915112345{suffix}"), registered_delivery=1
        )
        outcome = await rig.provider.send(msg)
        assert outcome.provider_message_id is not None
        msg.provider_message_id = outcome.provider_message_id
        sent[suffix] = msg
    pending = await rig.provider.poll(list(sent.values()))
    assert [r.provider_message_id for r in pending] == [sent["109"].provider_message_id]
    now[0] += 1.0
    reports = {r.provider_message_id: r for r in await rig.provider.poll(list(sent.values()))}
    got = {
        s: (reports[m.provider_message_id].state, reports[m.provider_message_id].error_code)
        for s, m in sent.items()
        if m.provider_message_id in reports
    }
    assert got == {
        "101": (MessageState.DELIVERED, 0),
        "103": (MessageState.UNDELIVERABLE, 103),
        "104": (MessageState.EXPIRED, 104),
        "109": (MessageState.UNKNOWN, 109),
    }
    assert rig.sinks.reports == []  # nothing pushed


async def test_poll_skips_messages_without_an_sms_id(rig: Rig) -> None:
    assert await rig.provider.poll([message(provider_message_id="")]) == []
    assert rig.sim.requests == []


async def test_pushed_intermediate_then_final_report(rig: Rig) -> None:
    outcome = await rig.provider.send(
        message(destination=Address("4915112345102"), registered_delivery=1)
    )
    await eventually(lambda: len(rig.sinks.reports) == 2)
    assert [r.state for r in rig.sinks.reports] == [MessageState.ENROUTE, MessageState.DELIVERED]
    assert {r.provider_message_id for r in rig.sinks.reports} == {outcome.provider_message_id}


async def test_forged_and_malformed_pushes_get_4xx_and_change_nothing(rig: Rig) -> None:
    base = rig.provider.ctx.callback_url("report")
    assert base is not None
    wrong_token = base.replace(TOKEN, "x" * 40)
    status = await rig.sim._get(f"{wrong_token}?id=134678979411374&status=101")
    assert status == 404
    status = await rig.sim._get(f"{base}?id=134678979411374&status=999")
    assert status == 400
    status = await rig.sim._get(f"{base}?id=[message_id]&status=[status]")
    assert status == 400
    assert rig.sinks.reports == []


async def test_inbound_push_reaches_the_inbound_sink(rig: Rig) -> None:
    status = await rig.sim.push_inbound("00491606543210", "Antwort: ja ✓")
    assert status == 200
    [msg] = rig.sinks.inbound
    assert msg.source == Address("491606543210", 1, 1)
    assert msg.destination == Address("491624675000", 1, 1)
    assert msg.text == "Antwort: ja ✓"
    assert msg.account == ""
    status = await rig.sim._get(f"{rig.sim.inbound_push_url}?text=no+sender")
    assert status == 400
    assert len(rig.sinks.inbound) == 1


async def test_scheduled_message_goes_with_time_and_finishes_accepted(rig: Rig) -> None:
    when = time.time() + 3600
    outcome = await rig.provider.send(message(schedule_at=when, registered_delivery=1))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.state is MessageState.ACCEPTED
    assert "time" in rig.sim.requests[-1] and "status" not in rig.sim.requests[-1]
    [taken] = rig.sim.messages.values()
    assert when <= taken.sent_at < when + 60


async def test_schedule_beyond_360_days_is_171(rig: Rig) -> None:
    outcome = await rig.provider.send(message(schedule_at=time.time() + 400 * 86400))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 171)


# --------------------------------------------------------------------------- the simulator itself

GOOD = {
    "key": "testkey",
    "from": "00491601234567",
    "to": "00491606543210",
    "text": "hello germany",
    "type": "1",
}


@pytest.mark.parametrize(
    ("change", "answer"),
    [
        ({}, "100"),
        ({"key": "wrong"}, "110"),
        ({"type": "5"}, "130"),
        ({"from": ""}, "130"),
        ({"from": "My Shop"}, "132"),
        ({"from": "1" * 17}, "132"),
        ({"to": "0160654321"}, "131"),
        ({"text": ""}, "133"),
        ({"text": "x" * 1072}, "133"),
        ({"type": "3", "from": "", "text": "x" * 736}, "133"),
        ({"flash": "1"}, "130"),
        ({"flash": "1", "type": "10", "text": "x" * 161}, "133"),
        ({"time": "24.12.2012 13:45"}, "170"),
        ({"time": "31.12.2999-23:59"}, "171"),
        ({"to": "00447700900123"}, "150"),
        ({"togroup": "kundengruppe"}, "231"),
        ({"reply": "2", "type": "10"}, "132"),
        ({"reply": "1"}, "130"),
        ({"status": "1", "cost": "1"}, "100,<id>,0.07"),
        ({"cost": "1", "to": "00491606543210;0049151123456789", "bulk": "1"}, "100,0.14"),
    ],
)
async def test_simulator_validates_like_the_document(change: dict[str, str], answer: str) -> None:
    sim = SmsflatrateSimulator(delay=0.05)
    reply = await sim.handle({**GOOD, **change})
    assert isinstance(reply, str)
    if "<id>" in answer:
        [taken] = sim.messages
        answer = answer.replace("<id>", taken)
    assert reply == answer


async def test_simulator_balance_and_price_requests() -> None:
    sim = SmsflatrateSimulator(balance=145.15)
    assert await sim.handle({"key": "testkey", "request": "credits"}) == "145.1500"
    assert await sim.handle({"key": "testkey", "request": "price"}) == "0.0700"
    sim.balance = 0.05
    assert await sim.handle(GOOD) == "120"


async def test_simulate_command_refuses_unknown_options() -> None:
    from bridge.simulators.smsflatrate import serve

    with pytest.raises(ValueError, match="bogus"):
        await serve("127.0.0.1", 0, {"bogus": "1"})


# --------------------------------------------------------------------------- bulk (bulk=1)


def bulk_url(msgs: list[Message], s: sf_settings.Settings) -> str:
    params = sf_send.bulk_params(msgs, s, DOC_KEY, 0.0)
    return HttpRequest("GET", s.base_url, params=params, charset="utf-8").full_url()


def test_document_example_bulk_sms() -> None:
    # "...&from=00491601234567&to=00491606543210;0049151123456789;004917766655544&
    #  text=hello+germany&type=1&bulk=1"
    s = settings(gateway="1", bulk="all")
    numbers = ["491606543210", "49151123456789", "4917766655544"]
    msgs = [message(id=f"m{i}", destination=Address(n, 1, 1)) for i, n in enumerate(numbers)]
    example = (
        f"{BASE}key={DOC_KEY}&from=00491601234567"
        "&to=00491606543210%3B0049151123456789%3B004917766655544&text=hello+germany&type=1&bulk=1"
    )
    assert bulk_url(msgs, s) == example + "&cost=1"
    assert len({sf_send.bulk_key(m, s, DOC_KEY, 0.0) for m in msgs}) == 1


def test_bulk_uses_the_effective_gateway_since_auto_types_work_for_single_sms_only() -> None:
    s = settings(gateway="auto10or11", bulk="all")
    german, foreign = message(), message(destination=Address("441234567890", 1, 1))
    assert dict(sf_send.bulk_key(german, s, DOC_KEY, 0.0) or ())["type"] == "10"
    assert dict(sf_send.bulk_key(foreign, s, DOC_KEY, 0.0) or ())["type"] == "11"
    assert "type=10&bulk=1" in bulk_url([german, message(id="2")], s)


@pytest.mark.parametrize(
    ("bulk", "overrides", "alone"),
    [
        ("off", {}, True),
        ("unreported", {}, False),
        ("unreported", {"registered_delivery": 1}, True),  # it would get a status report
        ("all", {"registered_delivery": 1}, False),  # its receipt becomes ACCEPTD
        ("all", {"text": None, "binary": b"\x01"}, True),  # unsendable: refused on its own
    ],
)
def test_which_messages_may_go_in_bulk(bulk: str, overrides: dict[str, Any], alone: bool) -> None:
    s = settings(gateway="1", bulk=bulk)
    assert (sf_send.bulk_key(message(**overrides), s, DOC_KEY, 0.0) is None) is alone


def test_a_reply_message_never_goes_in_bulk() -> None:
    # reply: "nicht möglich mit Gruppen,- Massen-SMS/ terminierten SMS"
    s = settings(gateway="3", bulk="all", reply=1)
    assert sf_send.bulk_key(message(), s, DOC_KEY, 0.0) is None


def test_the_bulk_reply_is_split_per_destination() -> None:
    taken = sf_send.parse_send_reply("100,0.21")
    outcomes = sf_send.split_bulk_outcome(taken, 3)
    assert [o.state for o in outcomes] == [MessageState.ACCEPTED] * 3
    assert [o.cost for o in outcomes] == pytest.approx([0.07] * 3)
    refused = sf_send.parse_send_reply("132")
    assert [o.error_code for o in sf_send.split_bulk_outcome(refused, 2)] == [132, 132]


def test_bulk_caps_a_request_at_50_numbers() -> None:
    assert sf_settings.capabilities_for(settings(bulk="all")).max_batch == 50
    assert sf_settings.capabilities_for(settings()).max_batch == 1
