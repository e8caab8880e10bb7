"""The 1601SMS adapter, read against 1601SMS's own "SMS Gateway API" page.

Pure functions first (request building, every documented reply code, report words, the push and
the status page, credits), each test quoting the page where it has an example; then the adapter
against the simulator over real loopback HTTP (send, codes, HTTP 500, a timeout, health and
balance, polling, pushes through the bridge's callback route); and the example config.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr, ValidationError

from bridge.config import load_config
from bridge.core.model import Address, DeliveryReport, InboundMessage, Message, MessageState
from bridge.core.model import OutcomeKind as K
from bridge.core.provider import CallbackRequest, ProviderContext
from bridge.observability import Metrics
from bridge.providers import sms1601 as p
from bridge.providers.http import HttpResponse
from bridge.providers.http_provider import HttpProvider, Unsendable
from bridge.providers.sms1601 import reports as p_reports
from bridge.providers.sms1601 import send as p_send
from bridge.providers.sms1601 import settings as p_settings
from bridge.simulators.sms1601 import DEFAULT_PASSWORD, DEFAULT_USERNAME, Sms1601Simulator
from bridge.web.server import CallbackEndpoint, HealthReport, HttpServer, build_app

pytestmark = pytest.mark.timeout(30)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DOC_URL = "http://217.19.227.48/module/gateway.php"
BELGIAN_MOBILE = "32478123456"  # the page's example number
EXAMPLE_CONFIG = Path(__file__).parent.parent / "config" / "examples" / "sms1601.toml"

#: The page's error list, code by code (written out here, not taken from the adapter).
DOCUMENTED_CODES = [*range(100, 127), 150]
#: Codes that go away without a change on our side: gateway trouble, maintenance, credits,
#: payment, a schedule that became past in flight.
TRANSIENT_CODES = {108, 115, 120, 121, 150}


def account(**overrides: Any) -> p_settings.Account:
    values: dict[str, Any] = {
        "url": DOC_URL,
        "username": "USERNAME",
        "password": SecretStr("PASSWORD"),
    }
    values.update(overrides)
    return p_settings.Account(**values)


def message(text: str | None = "this is a test", **overrides: Any) -> Message:
    values: dict[str, Any] = {
        "id": "0a1b2c3d4e5f",
        "account": "demo",
        "source": Address("Bridge", 5, 0),
        "destination": Address(BELGIAN_MOBILE, 1, 1),
        "text": text,
        "registered_delivery": 1,
    }
    values.update(overrides)
    return Message(**values)


def query(request: Any) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(request.full_url()).query, keep_blank_values=True))


def reply(body: str, status: int = 200) -> HttpResponse:
    return HttpResponse(status, body.encode(), {"content-type": "text/html"})


# --------------------------------------------------------------------------- the send request


def test_the_five_required_parameters_with_their_dutch_names() -> None:
    request = p_send.build_send_request(message(), account(), now=0.0)
    assert request.method == "GET"
    assert request.url == DOC_URL
    q = query(request)
    assert q["klantuser"] == "USERNAME"
    assert q["klantpwd"] == "PASSWORD"
    assert q["bericht"] == "this is a test"
    assert q["naar"] == BELGIAN_MOBILE  # "starting with the correct country code: eg 32478123456"
    assert q["afzender"] == "Bridge"


def test_the_message_is_urlencoded_before_it_is_sent() -> None:
    # "message=This is a test , this has to be: message=this%20is%20a%20test"
    url = p_send.build_send_request(message("This is a test"), account(), now=0.0).full_url()
    assert "bericht=This+is+a+test&" in url  # form encoding: PHP decodes + and %20 alike
    assert " " not in url


def test_the_sender_name_is_encoded_too() -> None:
    # "You also have to encode the sender name."
    request = p_send.build_send_request(message(source=Address("My Shop", 5, 0)), account(), 0.0)
    url = request.full_url()
    assert "afzender=My+Shop" in url


def test_delivery_ja_only_when_the_esme_asked_for_a_receipt() -> None:
    # "If you add delivery=ja you get a reply with OK + a smsID."
    for registered, wanted in [(0, False), (1, True), (2, True), (0x10, True), (0x11, True)]:
        q = query(
            p_send.build_send_request(message(registered_delivery=registered), account(), 0.0)
        )
        assert (q.get("delivery") == "ja") is wanted, registered
        assert "delivery" in q or not wanted


def test_our_message_id_is_the_reference() -> None:
    # "referentie=12345678: You can pass on an unique ID which our system will post back"
    assert query(p_send.build_send_request(message(id="abc123"), account(), 0.0))["referentie"] == (
        "abc123"
    )


def test_up_to_160_characters_is_one_sms_without_type_long() -> None:
    q = query(p_send.build_send_request(message("x" * 160), account(), 0.0))
    assert "type" not in q


def test_above_160_characters_type_long_is_sent() -> None:
    # "When you use type=long, you can send messages larger than 160 characters."
    q = query(p_send.build_send_request(message("x" * 161), account(), 0.0))
    assert q["type"] == "long"


def test_459_characters_is_the_longest_message() -> None:
    # "You can use a max. of 459 characters (seperated to a maximum of 3 messages)."
    p_send.build_send_request(message("x" * 459), account(), 0.0)
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message("x" * 460), account(), 0.0)
    assert exc.value.error_code == 118


def test_extension_characters_count_two_toward_the_limits() -> None:
    assert p_send.gsm_septets("€" * 80) == 160
    assert "type" not in query(p_send.build_send_request(message("€" * 80), account(), 0.0))
    q = query(p_send.build_send_request(message("x" * 159 + "€"), account(), 0.0))
    assert q["type"] == "long"
    with pytest.raises(Unsendable):
        p_send.build_send_request(message("x" * 458 + "€"), account(), 0.0)


def test_parts_are_153_characters_of_a_long_message() -> None:
    # "you can only use 153 characters per text message when using long SMS"
    assert [p_send.text_parts(n) for n in (1, 160, 161, 306, 307, 459)] == [1, 1, 2, 2, 3, 3]


def test_gsm_text_goes_out_in_utf8_by_default() -> None:
    text = "Grüße aus Köln für 5€ ΔΩ"
    url = p_send.build_send_request(message(text), account(), 0.0).full_url()
    assert "%E2%82%AC" in url  # € in UTF-8
    assert query(p_send.build_send_request(message(text), account(), 0.0))["bericht"] == text


def test_iso_8859_1_charset_refuses_the_gsm_characters_it_cannot_encode() -> None:
    latin = p_send.build_send_request(message("Grüße"), account(charset="iso-8859-1"), 0.0)
    assert "Gr%FC%DFe" in latin.full_url()
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message("5 €"), account(charset="iso-8859-1"), 0.0)
    assert exc.value.error_code == 1


@pytest.mark.parametrize("text", ["Привет", "Hi 😀", "ç is not GSM (Ç is)"])
def test_text_outside_gsm_03_38_is_unsendable_because_the_api_has_no_unicode(text: str) -> None:
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message(text, data_coding=8), account(), 0.0)
    assert exc.value.error_code == 1
    assert "GSM" in exc.value.detail


def test_ucs2_text_of_gsm_characters_is_sent_as_gsm() -> None:
    q = query(p_send.build_send_request(message("Grüße", data_coding=8), account(), 0.0))
    assert q["bericht"] == "Grüße"


def test_binary_flash_and_udh_content_cannot_be_expressed() -> None:
    for msg in (
        message(None, binary=b"\x01\x02"),
        message(flash=True),
        message(udh=b"\x05\x04\x0b\x84\x23\xf0"),
    ):
        with pytest.raises(Unsendable) as exc:
            p_send.build_send_request(msg, account(), 0.0)
        assert exc.value.error_code == 1


def test_an_empty_message_is_refused_with_the_gateways_code_102() -> None:
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message(""), account(), 0.0)
    assert exc.value.error_code == 102


def test_test_mode_adds_test_ja() -> None:
    # "test=ja: The system will conduct all the checks ... but effectively won't send an sms."
    assert query(p_send.build_send_request(message(), account(test=True), 0.0))["test"] == "ja"
    assert "test" not in query(p_send.build_send_request(message(), account(), 0.0))


def test_logging_ja_or_nee_only_when_configured() -> None:
    assert "logging" not in query(p_send.build_send_request(message(), account(), 0.0))
    assert (
        query(p_send.build_send_request(message(), account(logging=True), 0.0))["logging"] == "ja"
    )
    assert (
        query(p_send.build_send_request(message(), account(logging=False), 0.0))["logging"] == "nee"
    )


# --------------------------------------------------------------------------- password


def test_the_password_can_be_sent_as_its_sha1() -> None:
    # "(you can encode this password with SHA-1 for extra security)"
    assert p_settings.password_param("abc", sha1=True) == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert p_settings.password_param("abc", sha1=False) == "abc"
    q = query(p_send.build_send_request(message(), account(password_sha1=True), 0.0))
    assert q["klantpwd"] == hashlib.sha1(b"PASSWORD").hexdigest()


def test_the_password_never_shows_in_the_account_repr() -> None:
    assert "PASSWORD" not in repr(account())


# --------------------------------------------------------------------------- sender


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (Address("Bridge", 5, 0), "Bridge"),
        (Address("My Shop 24", 5, 0), "My Shop 24"),
        (Address("ABCDEFGHIJKL", 5, 0), "ABCDEFGHIJKL"),  # 12 characters
        (Address("4915112345678", 1, 1), "+4915112345678"),  # error 110: "start with the + sign"
        (Address("4915112345678", 0, 1), "+4915112345678"),
    ],
)
def test_sender_formatting(source: Address, expected: str) -> None:
    assert p_send.format_sender(source) == expected


@pytest.mark.parametrize(
    ("source", "code"),
    [
        (Address("ABCDEFGHIJKLM", 5, 0), 111),  # "This can be up to 12 characters."
        (Address("Shop-24", 5, 0), 113),  # "special characters not allowed on all networks"
        (Address("Café", 5, 0), 113),
        (Address("12345", 5, 0), 110),  # digits only: a number without +
        (Address("0301234567", 2, 1), 110),  # national: no country code to add
        (Address("1234", 3, 0), 110),
        (Address("1234567890123456", 1, 1), 110),  # longer than E.164
        (Address(" ", 5, 0), 109),
    ],
)
def test_senders_the_gateway_would_refuse_are_refused_with_its_code(
    source: Address, code: int
) -> None:
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message(source=source), account(), 0.0)
    assert exc.value.error_code == code


# --------------------------------------------------------------------------- scheduling


def test_datum_in_the_pages_format_with_no_confirmation_email() -> None:
    # "datum=201510261215&outboxid=ja"; "emailen=nee ... you can disable the email confirmation"
    at = datetime(2015, 10, 26, 12, 15, tzinfo=AMSTERDAM).timestamp()
    q = query(p_send.build_send_request(message(schedule_at=at), account(), now=at - 3600))
    assert q["datum"] == "201510261215"
    assert q["emailen"] == "nee"
    assert "outboxid" not in q


def test_datum_rounds_up_to_the_next_minute_because_smpp_means_not_before() -> None:
    at = datetime(2015, 10, 26, 12, 14, 30, tzinfo=AMSTERDAM).timestamp()
    assert p_send.format_datum(at, AMSTERDAM) == "201510261215"
    exact = datetime(2015, 10, 26, 12, 15, tzinfo=AMSTERDAM).timestamp()
    assert p_send.format_datum(exact, AMSTERDAM) == "201510261215"


def test_datum_is_in_the_configured_zone() -> None:
    at = datetime(2015, 7, 1, 10, 0, tzinfo=UTC).timestamp()
    assert p_send.format_datum(at, AMSTERDAM) == "201507011200"  # CEST
    assert p_send.format_datum(at, ZoneInfo("Europe/London")) == "201507011100"


def test_no_datum_for_a_due_time_already_past_or_with_native_scheduling_off() -> None:
    now = 1_700_000_000.0
    assert "datum" not in query(
        p_send.build_send_request(message(schedule_at=now - 1), account(), now)
    )
    off = account(native_scheduling=False)
    assert "datum" not in query(p_send.build_send_request(message(schedule_at=now + 600), off, now))


# --------------------------------------------------------------------------- the send reply


def test_ok_with_an_sms_id_is_accepted_and_awaits_its_report() -> None:
    # "If you add delivery=ja you get a reply with OK + a smsID. Eg : OK 1234567"
    outcome = p_send.parse_send_reply("OK 1234567")
    assert outcome.kind is K.ACCEPTED
    assert outcome.provider_message_id == "1234567"
    assert outcome.state is None


def test_ok_with_trailing_newline_and_parts() -> None:
    outcome = p_send.parse_send_reply("OK 1234567\n", parts=3)
    assert (outcome.provider_message_id, outcome.parts) == ("1234567", 3)


def test_a_bare_ok_is_accepted_and_final_at_once_since_no_report_can_follow() -> None:
    outcome = p_send.parse_send_reply("OK")
    assert outcome.kind is K.ACCEPTED
    assert outcome.provider_message_id is None
    assert outcome.state is MessageState.ACCEPTED


def test_test_mode_ok_is_final_accepted_because_nothing_was_sent() -> None:
    outcome = p_send.parse_send_reply("OK 1234567", test=True)
    assert outcome.kind is K.ACCEPTED
    assert outcome.state is MessageState.ACCEPTED


@pytest.mark.parametrize("code", DOCUMENTED_CODES)
def test_every_documented_error_code_has_its_outcome_and_err(code: int) -> None:
    outcome = p_send.parse_send_reply(f"ERROR {code}")
    expected = K.TRANSIENT if code in TRANSIENT_CODES else K.PERMANENT
    assert outcome.kind is expected
    assert outcome.error_code == code
    assert outcome.detail.startswith(f"1601SMS error {code}: ")
    assert "undocumented" not in outcome.detail


def test_reply_code_104_is_a_permanent_failure_with_err_104() -> None:
    outcome = p_send.parse_send_reply("ERROR 104")
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 104)
    assert "username/password" in outcome.detail


def test_reply_code_108_no_credits_is_transient_with_err_108() -> None:
    outcome = p_send.parse_send_reply("ERROR 108")
    assert (outcome.kind, outcome.error_code) == (K.TRANSIENT, 108)


def test_error_spellings_with_text_or_a_colon_are_read() -> None:
    for body in ("ERROR 106 No valid mobile number", "error: 106", "ERR106", "ERROR 106\n"):
        assert p_send.parse_send_reply(body).error_code == 106, body


def test_an_undocumented_error_code_is_permanent_with_that_err() -> None:
    outcome = p_send.parse_send_reply("ERROR 199")
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 199)
    assert "undocumented" in outcome.detail


def test_an_ok_followed_by_words_is_a_success_without_an_id() -> None:
    # Re-sending what the gateway took would send it twice: a leading OK is a success.
    for body in ("OK - message sent", "OK sent", "ok"):
        outcome = p_send.parse_send_reply(body)
        assert (outcome.kind, outcome.provider_message_id) == (K.ACCEPTED, None), body
        assert outcome.state is MessageState.ACCEPTED
    assert p_send.parse_send_reply("ok: 42").provider_message_id == "42"


@pytest.mark.parametrize("body", ["", "<html>Bad Gateway</html>", "OKAY", "ERROR", "476"])
def test_an_unreadable_reply_is_transient(body: str) -> None:
    outcome = p_send.parse_send_reply(body)
    assert outcome.kind is K.TRANSIENT
    assert outcome.error_code == 0


# --------------------------------------------------------------------------- report words


@pytest.mark.parametrize(
    ("word", "state", "err"),
    [
        ("DELIVERED", MessageState.DELIVERED, 0),
        ("NOT DELIVERED", MessageState.UNDELIVERABLE, 2),
        ("BUFFERED", MessageState.ENROUTE, 0),
        ("SUBMITTED", MessageState.ENROUTE, 0),
        ("REJECTED", MessageState.REJECTED, 3),
        ("NONE", MessageState.UNKNOWN, 4),
        ("not_delivered", MessageState.UNDELIVERABLE, 2),
        (" Delivered ", MessageState.DELIVERED, 0),
    ],
)
def test_report_words_map_to_states_and_err(word: str, state: MessageState, err: int) -> None:
    assert p_reports.status_word(word) == (state, err)


def test_buffered_and_submitted_are_intermediate_the_rest_final() -> None:
    # BUFFERED: "This is a temporary status."; SUBMITTED: "no status available (yet)"
    finals = {w for w, (s, _) in p_reports.STATUSES.items() if s.is_final}
    assert finals == {"DELIVERED", "NOT DELIVERED", "REJECTED", "NONE"}


def test_an_unknown_report_word_maps_to_nothing() -> None:
    assert p_reports.status_word("EXPIRED") is None
    assert p_reports.status_word("") is None


# --------------------------------------------------------------------------- the status page


def test_status_url_is_the_pages_gatewayrapport_address() -> None:
    # "http://217.19.227.48/module/gatewayrapport.php?smsid=1234567"
    report_url = p_reports.report_url_for(DOC_URL)
    assert report_url == "http://217.19.227.48/module/gatewayrapport.php"
    request = p_reports.build_status_request(report_url, "1234567")
    assert request.full_url() == f"{report_url}?smsid=1234567&datum=ja"
    assert "klant" not in request.full_url()  # the page's example carries no credentials


def test_status_reply_with_date_as_in_the_page() -> None:
    # "Example : DELIVERED 01/02/2012 10:23:10"
    state, err, done_at = p_reports.parse_status_reply(
        "DELIVERED 01/02/2012 10:23:10", AMSTERDAM
    ) or (
        None,
        None,
        None,
    )
    assert (state, err) == (MessageState.DELIVERED, 0)
    assert done_at == datetime(2012, 2, 1, 9, 23, 10, tzinfo=UTC).timestamp()  # CET = UTC+1


def test_not_delivered_is_not_read_as_delivered() -> None:
    parsed = p_reports.parse_status_reply("NOT DELIVERED 01/02/2012 10:23:10\n", AMSTERDAM)
    assert parsed is not None and parsed[:2] == (MessageState.UNDELIVERABLE, 2)


def test_status_reply_without_a_date() -> None:
    assert p_reports.parse_status_reply("SUBMITTED", AMSTERDAM) == (MessageState.ENROUTE, 0, None)


@pytest.mark.parametrize("body", ["ERROR 124", "", "DELIVERED yesterday", "UNKNOWN"])
def test_a_status_reply_without_a_status_word_gives_no_report(body: str) -> None:
    assert p_reports.parse_status_reply(body, AMSTERDAM) is None


# --------------------------------------------------------------------------- the push


def push(**params: str) -> CallbackRequest:
    return CallbackRequest("GET", query=params)


def test_the_delivery_notification_push() -> None:
    # "Our system will send a GET request with following parameters: smsid, datum (date)
    # (yyyymmdduummss), status, referentie (reference)."
    report = p_reports.parse_report_callback(
        push(smsid="1234567", datum="20120201102310", status="DELIVERED", referentie="abc"),
        AMSTERDAM,
    )
    assert report == p_reports.PushedReport(
        "1234567",
        MessageState.DELIVERED,
        0,
        datetime(2012, 2, 1, 9, 23, 10, tzinfo=UTC).timestamp(),
        "abc",
    )


def test_a_push_without_datum_has_no_done_date() -> None:
    report = p_reports.parse_report_callback(push(smsid="1", status="NOT DELIVERED"), AMSTERDAM)
    assert (report.state, report.error_code, report.done_at) == (
        MessageState.UNDELIVERABLE,
        2,
        None,
    )


@pytest.mark.parametrize(
    "params",
    [
        {"status": "DELIVERED"},
        {"smsid": "", "status": "DELIVERED"},
        {"smsid": "12 34", "status": "DELIVERED"},
        {"smsid": "1234567"},
        {"smsid": "1234567", "status": "GONE"},
        {"smsid": "1234567", "status": "DELIVERED", "datum": "01/02/2012"},
        {"smsid": "1234567", "status": "DELIVERED", "datum": "20121399102310"},
    ],
)
def test_a_malformed_push_is_refused(params: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        p_reports.parse_report_callback(push(**params), AMSTERDAM)


# --------------------------------------------------------------------------- credits


def test_credits_request_is_the_pages_example() -> None:
    # "http://217.19.227.48/module/gateway.php?klantuser=USERNAME&klantpwd=PASSWORD&action=credits"
    assert p_send.build_credits_request(account()).full_url() == (
        "http://217.19.227.48/module/gateway.php"
        "?klantuser=USERNAME&klantpwd=PASSWORD&action=credits"
    )


def test_credits_reply_is_a_number() -> None:
    # "This will return a certain number : example 476"
    assert p_send.parse_credits_reply("476") == 476.0
    assert p_send.parse_credits_reply(" 12.5\n") == 12.5
    assert p_send.parse_credits_reply("12,5") == 12.5
    assert p_send.parse_credits_reply("ERROR 104") is None


# --------------------------------------------------------------------------- settings, create


def settings(**overrides: Any) -> p_settings.Settings:
    values: dict[str, Any] = {"type": "sms1601", "username": "u", "password": "pw"}
    values.update(overrides)
    return p_settings.Settings.model_validate(values)


def test_settings_defaults_follow_the_page() -> None:
    s = settings()
    assert s.base_url == DOC_URL
    assert (s.reports, s.native_scheduling, s.timezone, s.charset) == (
        "push",
        True,
        "Europe/Amsterdam",
        "utf-8",
    )
    assert "pw" not in repr(s)


def test_an_unknown_time_zone_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        settings(timezone="Europe/Atlantis")


def test_capabilities_follow_the_settings() -> None:
    provider = p.create("one", settings(), ProviderContext("one"))
    caps = provider.capabilities
    assert (caps.reports, caps.scheduling, caps.unicode, caps.flash) == ("push", True, False, False)
    assert (caps.max_gsm7_chars, caps.max_sender_chars) == (459, 12)
    polled = p.create(
        "two", settings(reports="poll", native_scheduling=False), ProviderContext("two")
    )
    assert (polled.capabilities.reports, polled.capabilities.scheduling) == ("poll", False)



def test_the_configured_rate_paces_polls_and_credit_checks_too() -> None:
    # The limiter polls and credits calls wait on is the one the dispatcher's sends take: it
    # must come from the table's requests_per_second (it stayed unlimited: a bug).
    table = settings(requests_per_second=2.0, concurrency=3)
    provider = p.create("one", table, ProviderContext("one"))
    caps = provider.capabilities
    assert (caps.requests_per_second, caps.concurrency) == (2.0, 3)
    assert isinstance(provider, HttpProvider) and provider.limiter is not None


def test_the_example_config_loads(tmp_path: Path) -> None:
    env = {
        "SMPP_DEMO_PASSWORD": "demopass",
        "SMS1601_USERNAME": "demo1601",
        "SMS1601_PASSWORD": "secret1601",
        "SMS1601_CALLBACK_TOKEN": "0123456789abcdef0123456789abcdef",
    }
    cfg = load_config(EXAMPLE_CONFIG, env=env)
    provider = cfg.providers["sms1601"]
    assert isinstance(provider, p_settings.Settings)
    assert provider.password.get_secret_value() == "secret1601"
    assert any("sms1601" in route.providers for route in cfg.routes)


# --------------------------------------------------------------------------- against the simulator


@dataclass
class Sinks:
    reports: list[DeliveryReport] = field(default_factory=list)
    balances: list[float] = field(default_factory=list)

    async def report(self, report: DeliveryReport) -> bool:
        self.reports.append(report)
        return True

    async def inbound(self, message: InboundMessage) -> bool:
        raise AssertionError("1601SMS has no inbound SMS")


@dataclass
class Rig:
    sim: Sms1601Simulator
    sim_url: str
    sinks: Sinks
    providers: list[p.Sms1601Provider] = field(default_factory=list)

    async def provider(self, **overrides: Any) -> p.Sms1601Provider:
        values: dict[str, Any] = {
            "base_url": f"{self.sim_url}/module/gateway.php",
            "username": DEFAULT_USERNAME,
            "password": DEFAULT_PASSWORD,
            "timeout": 2.0,
        }
        values.update(overrides)
        ctx = ProviderContext("sms1601", set_balance=self.sinks.balances.append)
        provider = p.create("sms1601", settings(**values), ctx)
        assert isinstance(provider, p.Sms1601Provider)
        await provider.start(self.sinks.report, self.sinks.inbound)
        self.providers.append(provider)
        return provider


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    sim = Sms1601Simulator(delay=0.05, slow=1.0)
    server = HttpServer("127.0.0.1", 0, sim.app, shutdown_timeout=0.5)
    await server.start()
    rig = Rig(sim, f"http://127.0.0.1:{server.port}", Sinks())
    try:
        yield rig
    finally:
        for provider in rig.providers:
            await provider.stop()
        await sim.close()
        await server.stop()


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def to(number: str, **overrides: Any) -> Message:
    return message(destination=Address(number, 1, 1), **overrides)


async def test_sim_send_is_accepted_with_the_gateways_sms_id_and_charged(rig: Rig) -> None:
    provider = await rig.provider()
    before = rig.sim.credits
    outcome = await provider.send(to("32478123456", text="x" * 200))
    assert outcome.kind is K.ACCEPTED
    assert outcome.provider_message_id in rig.sim.messages
    assert outcome.parts == 2
    assert rig.sim.credits == before - 2
    sent = rig.sim.requests[-1]
    assert (sent["type"], sent["delivery"], sent["referentie"]) == ("long", "ja", "0a1b2c3d4e5f")


async def test_sim_sha1_password_is_accepted(rig: Rig) -> None:
    provider = await rig.provider(password_sha1=True)
    outcome = await provider.send(to("32478123456"))
    assert outcome.kind is K.ACCEPTED
    assert rig.sim.requests[-1]["klantpwd"] == hashlib.sha1(DEFAULT_PASSWORD.encode()).hexdigest()


async def test_sim_wrong_password_is_error_104(rig: Rig) -> None:
    provider = await rig.provider(password="wrong")
    outcome = await provider.send(to("32478123456"))
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 104)
    assert "wrong" not in outcome.detail


async def test_sim_every_documented_error_reaches_the_adapter(rig: Rig) -> None:
    provider = await rig.provider()
    for code in DOCUMENTED_CODES:
        outcome = await provider.send(to(f"324781{99}{code}"))
        expected = K.TRANSIENT if code in TRANSIENT_CODES else K.PERMANENT
        assert (outcome.kind, outcome.error_code) == (expected, code)


async def test_sim_without_a_receipt_request_the_message_is_final_accepted(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(to("32478123456", registered_delivery=0))
    assert outcome.kind is K.ACCEPTED
    assert (outcome.provider_message_id, outcome.state) == (None, MessageState.ACCEPTED)
    assert "delivery" not in rig.sim.requests[-1]


async def test_sim_test_mode_charges_nothing_and_sends_nothing(rig: Rig) -> None:
    provider = await rig.provider(test=True)
    before = rig.sim.credits
    outcome = await provider.send(to("32478123456"))
    assert (outcome.kind, outcome.state) == (K.ACCEPTED, MessageState.ACCEPTED)
    assert rig.sim.credits == before
    await asyncio.sleep(0.1)
    assert rig.sim.messages[str(outcome.provider_message_id)].status == "NONE"


async def test_sim_no_credits_is_error_108(rig: Rig) -> None:
    provider = await rig.provider()
    rig.sim.credits = 1
    outcome = await provider.send(to("32478123456", text="x" * 200))  # 2 parts
    assert (outcome.kind, outcome.error_code) == (K.TRANSIENT, 108)


async def test_sim_http_500_is_transient(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(to("32478123495"))
    assert outcome.kind is K.TRANSIENT
    assert outcome.detail == "HTTP 500"


async def test_sim_a_timeout_is_transient(rig: Rig) -> None:
    provider = await rig.provider(timeout=0.2)
    outcome = await provider.send(to("32478123498"))
    assert outcome.kind is K.TRANSIENT
    assert "timeout" in outcome.detail


async def test_a_404_page_is_transient_not_a_refusal(rig: Rig) -> None:
    provider = await rig.provider(base_url=f"{rig.sim_url}/wrong/gateway.php")
    outcome = await provider.send(to("32478123456"))
    assert (outcome.kind, outcome.detail) == (K.TRANSIENT, "HTTP 404")


async def test_sim_scheduled_message_waits_in_the_outbox(rig: Rig) -> None:
    provider = await rig.provider()
    at = datetime.now(UTC).timestamp() + 3 * 3600
    outcome = await provider.send(to("32478123456", schedule_at=at))
    assert outcome.kind is K.ACCEPTED
    held = rig.sim.messages[str(outcome.provider_message_id)]
    assert held.in_outbox
    assert rig.sim.requests[-1]["datum"] == p_send.format_datum(at, AMSTERDAM)


async def test_sim_health_reports_the_balance(rig: Rig) -> None:
    provider = await rig.provider()
    rig.sim.credits = 476
    assert await provider.healthy() is True
    assert rig.sinks.balances == [476.0]
    wrong = await rig.provider(password="wrong")
    assert await wrong.healthy() is False


async def test_sim_polling_gives_intermediate_then_final_reports(rig: Rig) -> None:
    # The fixture's 50 ms report delay can pass between two sends on a loaded machine: this
    # test needs the "before the report" window to be wide, and then waits for the report.
    rig.sim.delay = 0.5
    provider = await rig.provider(reports="poll")
    delivered = await provider.send(to("32478123456"))
    refused = await provider.send(to("32478123482"))
    msgs = [
        to("32478123456", provider_message_id=delivered.provider_message_id),
        to("32478123482", provider_message_id=refused.provider_message_id),
        to("32478123456", provider_message_id="999"),  # unknown to the gateway: ERROR 124
        to("32478123456", provider_message_id=""),  # taken without an id: not polled
    ]
    early = await provider.poll(msgs)
    assert {(r.provider_message_id, r.state) for r in early} == {
        (delivered.provider_message_id, MessageState.ENROUTE),
        (refused.provider_message_id, MessageState.ENROUTE),
    }
    await asyncio.sleep(0.6)
    late = {r.provider_message_id: r for r in await provider.poll(msgs)}
    assert late.keys() == {delivered.provider_message_id, refused.provider_message_id}
    assert late[str(delivered.provider_message_id)].state is MessageState.DELIVERED
    assert (
        late[str(refused.provider_message_id)].state,
        late[str(refused.provider_message_id)].error_code,
    ) == (
        MessageState.REJECTED,
        3,
    )
    assert all(r.done_at is not None for r in late.values())
    assert len(rig.sim.status_requests) == 6


async def test_sim_poll_survives_an_unreachable_status_page(rig: Rig) -> None:
    provider = await rig.provider(report_url="http://127.0.0.1:9/module/gatewayrapport.php")
    assert await provider.poll([to("32478123456", provider_message_id="1234567")]) == []


# --------------------------------------------------------------------------- pushes

TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def pushed(rig: Rig) -> AsyncIterator[tuple[p.Sms1601Provider, str]]:
    """The provider behind the bridge's real callback route; the simulator pushes to it."""
    provider = await rig.provider()

    async def health() -> HealthReport:
        return HealthReport(True, True)

    app = build_app(
        metrics=lambda: b"",
        health=health,
        callbacks={"sms1601": CallbackEndpoint(TOKEN, provider)},
        metrics_sink=Metrics(),
    )
    web = HttpServer("127.0.0.1", 0, app, shutdown_timeout=0.5)
    await web.start()
    base = f"http://127.0.0.1:{web.port}/callbacks/sms1601"
    rig.sim.push_url = f"{base}/{TOKEN}/report"
    try:
        yield provider, base
    finally:
        await web.stop()


async def test_pushes_reach_the_report_sink(
    rig: Rig, pushed: tuple[p.Sms1601Provider, str]
) -> None:
    provider, _ = pushed
    ok = await provider.send(to("32478123456"))
    buffered = await provider.send(to("32478123484"))
    lost = await provider.send(to("32478123481"))
    await wait_for(lambda: len(rig.sinks.reports) == 4)
    by_id: dict[str, list[MessageState]] = {}
    for report in rig.sinks.reports:
        by_id.setdefault(report.provider_message_id, []).append(report.state)
    assert by_id == {
        ok.provider_message_id: [MessageState.DELIVERED],
        buffered.provider_message_id: [MessageState.ENROUTE, MessageState.DELIVERED],
        lost.provider_message_id: [MessageState.UNDELIVERABLE],
    }
    assert all(status == 200 for _, status in rig.sim.pushes)
    assert {params["referentie"] for params, _ in rig.sim.pushes} == {"0a1b2c3d4e5f"}


def _get(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_forged_and_malformed_pushes_change_nothing(
    rig: Rig, pushed: tuple[p.Sms1601Provider, str]
) -> None:
    _, base = pushed
    good = "smsid=1234567&status=DELIVERED&datum=20120201102310&referentie=x"
    forged = await asyncio.to_thread(_get, f"{base}/{'f' * 32}/report?{good}")
    malformed = await asyncio.to_thread(_get, f"{base}/{TOKEN}/report?smsid=1234567&status=GONE")
    no_id = await asyncio.to_thread(_get, f"{base}/{TOKEN}/report?status=DELIVERED")
    inbound = await asyncio.to_thread(_get, f"{base}/{TOKEN}/inbound?{good}")
    assert (forged, malformed, no_id, inbound) == (404, 400, 400, 404)
    assert rig.sinks.reports == []
    assert await asyncio.to_thread(_get, f"{base}/{TOKEN}/report?{good}") == 200
    assert [r.provider_message_id for r in rig.sinks.reports] == ["1234567"]


# --------------------------------------------------------------------------- the simulator itself


def sim_params(**overrides: str) -> dict[str, str]:
    values = {
        "klantuser": DEFAULT_USERNAME,
        "klantpwd": DEFAULT_PASSWORD,
        "bericht": "this is a test",
        "naar": BELGIAN_MOBILE,
        "afzender": "Bridge",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v != "<absent>"}


@pytest.mark.parametrize(
    ("overrides", "answer"),
    [
        ({"klantuser": ""}, "ERROR 100"),
        ({"klantpwd": "<absent>"}, "ERROR 101"),
        ({"klantpwd": "nope"}, "ERROR 104"),
        ({"bericht": ""}, "ERROR 102"),
        ({"naar": ""}, "ERROR 103"),
        ({"afzender": ""}, "ERROR 109"),
        ({"afzender": "31612345678"}, "ERROR 110"),
        ({"afzender": "ABCDEFGHIJKLM"}, "ERROR 111"),
        ({"afzender": "Shop-24"}, "ERROR 113"),
        ({"afzender": "Blocked"}, "ERROR 117"),
        ({"naar": "groep", "groep": "klanten"}, "ERROR 125"),
        ({"naar": "0612345678"}, "ERROR 106"),
        ({"bericht": "x" * 161}, "ERROR 105"),
        ({"bericht": "x" * 460, "type": "long"}, "ERROR 118"),
        ({"datum": "201510261215"}, "ERROR 121"),  # in the past
        ({"datum": "2015102612"}, "ERROR 121"),
        ({"naar": "32478199119"}, "ERROR 119"),
        ({"afzender": "+31612345678", "delivery": "ja"}, "OK 1234567"),
        ({}, "OK"),
    ],
)
async def test_simulator_checks_what_the_page_lists(overrides: dict[str, str], answer: str) -> None:
    sim = Sms1601Simulator(delay=0.01)
    try:
        assert sim.handle(sim_params(**overrides)) == answer
    finally:
        await sim.close()


async def test_simulator_outbox_and_report_calls() -> None:
    sim = Sms1601Simulator()
    try:
        later = datetime.now(UTC).timestamp() + 7200
        datum = p_send.format_datum(later, AMSTERDAM)
        assert sim.handle(sim_params(datum=datum, outboxid="ja")) == "OK 1234567"
        assert sim.messages["1234567"].in_outbox
        creds = {"klantuser": DEFAULT_USERNAME, "klantpwd": DEFAULT_PASSWORD}
        assert sim.handle({**creds, "action": "verwijderbericht", "id": "1234567"}) == "OK"
        assert sim.handle({**creds, "action": "verwijderoutbox"}) == "ERROR 122"
        assert sim.handle({**creds, "action": "rapport"}) == "ERROR 123"
        assert sim.handle({**creds, "action": "rapport", "aantal": "veel"}) == "ERROR 124"
        assert sim.status_reply({}) == "ERROR 123"
        assert sim.status_reply({"smsid": "1234567"}) == "ERROR 124"  # removed
    finally:
        await sim.close()


# --------------------------------------------------------------------------- several numbers


def test_the_pages_multiple_numbers_example_is_one_naar_with_commas() -> None:
    # "You can also use multiple numbers by separating them with a comma
    #  (&to=32478123456,31600123456)"
    msgs = [
        message(id="a", destination=Address("32478123456", 1, 1), registered_delivery=0),
        message(id="b", destination=Address("31600123456", 1, 1), registered_delivery=0),
    ]
    request = p_send.build_bulk_request(msgs, account(), 0.0)
    params = dict(request.params)
    assert params["naar"] == "32478123456,31600123456"
    assert "delivery" not in params and "referentie" not in params
    keys = {p_send.bulk_key(m, account(), 0.0, "unreported") for m in msgs}
    assert len(keys) == 1 and None not in keys


def test_a_message_that_asks_for_a_receipt_goes_alone_unless_bulk_is_all() -> None:
    asks = message(registered_delivery=1)
    assert p_send.bulk_key(asks, account(), 0.0, "unreported") is None
    assert p_send.bulk_key(asks, account(), 0.0, "all") is not None
    assert p_send.bulk_key(message(registered_delivery=0), account(), 0.0, "off") is None
    assert p_send.bulk_key(message("Ω≈ unicode ☃"), account(), 0.0, "all") is None  # unsendable
