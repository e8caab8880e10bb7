"""The My-Cool-SMS adapter, read against its API document (German edition).

First the pure translators, with the document's own examples quoted: the sendSms request (JSON
and form), its replies and every error code, the UCS2 notation, senders and numbers, the
status words, the pushes (pushDeliveryReport, pushIncomingSms), getDeliveryReports and
getBalance. Then the adapter against the simulator over real loopback HTTP, pushes coming back
through the bridge's own callback routes; and the example config.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

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
from bridge.core.provider import CallbackKind, CallbackReply, CallbackRequest, ProviderContext
from bridge.providers import mycoolsms as mcs
from bridge.providers.http import HttpResponse
from bridge.providers.http_provider import Unsendable
from bridge.providers.mycoolsms import api as mcs_api
from bridge.providers.mycoolsms import inbound as mcs_inbound
from bridge.providers.mycoolsms import reports as mcs_reports
from bridge.providers.mycoolsms import send as mcs_send
from bridge.providers.mycoolsms import settings as mcs_settings
from bridge.simulators.mycoolsms import API_PATH, MyCoolSmsSimulator
from bridge.web.server import CallbackEndpoint, HealthReport, HttpServer, build_app

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "bridge", "s3cr3t-pw"
CALLBACK_DOC = "http://www.my-server.com/callback.php"
NUMERIC_SENDER = Address("449876543210", 1, 1)


def settings(**values: Any) -> mcs_settings.Settings:
    data: dict[str, Any] = {"type": "mycoolsms", "username": USER, "password": PASSWORD}
    data.update(values)
    return mcs_settings.Settings.model_validate(data)


def message(
    text: str | None = "Have a nice day!",
    *,
    to: str = "491234567890",
    sender: Address = NUMERIC_SENDER,
    **fields: Any,
) -> Message:
    return Message("m-1", "demo", sender, Address(to, 1, 1), text, part_ids=["m-1"], **fields)


def reply(body: Any, status: int = 200, content_type: str = "application/json") -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, raw, {"content-type": content_type})


def fields_for(msg: Message, callback: str | None = None, now: float = 0.0) -> dict[str, Any]:
    return mcs_send.send_fields(msg, username="xxx", password="yyy", callback_url=callback, now=now)


# =========================================================================== sendSms request


def test_the_documents_json_example_is_what_a_plain_message_becomes() -> None:
    # JSON Beispiel: {"username":"xxx","password":"yyy","function":"sendSms",
    #   "number":"+491234567890","message":"Have a nice day!","senderid":"+449876543210",
    #   "callbackurl":"http://www.my-server.com/callback.php"}
    assert fields_for(message(), CALLBACK_DOC) == {
        "username": "xxx",
        "password": "yyy",
        "function": "sendSms",
        "number": "+491234567890",
        "message": "Have a nice day!",
        "unicode": False,  # always explicit: the bridge decides the coding, as it counted it
        "senderid": "+449876543210",
        "callbackurl": CALLBACK_DOC,
    }


def test_the_documents_post_example_is_what_the_form_format_sends() -> None:
    # POST/GET Beispiel: username=xxx&password=yyyy&function=sendSms&number=+491234567890
    #   &message=Have%20a%20nice%20day!&senderid=+44987654321&callbackurl=http://www.my-…
    msg = message(sender=Address("44987654321", 1, 1))
    request = mcs_api.encode_request("https://x.test/api", fields_for(msg, CALLBACK_DOC), "form")
    body, headers = request.body()
    assert request.method == "POST" and request.json is None
    assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert body is not None
    assert dict(parse_qsl(body.decode())) == {
        "username": "xxx",
        "password": "yyy",
        "function": "sendSms",
        "number": "+491234567890",
        "message": "Have a nice day!",
        "unicode": "false",
        "senderid": "+44987654321",
        "callbackurl": CALLBACK_DOC,
    }


def test_json_format_posts_a_json_body_and_the_credentials_never_go_in_the_url() -> None:
    provider = mcs.MyCoolSmsProvider("mcs", settings(), ProviderContext("mcs"))
    request = provider.build_send(message())
    body, headers = request.body()
    assert request.method == "POST"
    assert request.full_url() == mcs_settings.DEFAULT_URL
    assert headers["Content-Type"].startswith("application/json")
    assert body is not None and json.loads(body)["password"] == PASSWORD
    assert PASSWORD not in request.full_url()


def test_the_default_endpoint_is_the_skeletons_url_since_the_document_prints_none() -> None:
    assert settings().base_url == "https://www.my-cool-sms.com/api-socket.php"


def test_form_encoding_refuses_arrays_which_only_json_can_carry() -> None:
    with pytest.raises(ValueError, match="arrays"):
        mcs_api.encode_request("https://x.test/api", {"ids": ["a"]}, "form")


# --------------------------------------------------------------------------- charset


def test_the_documents_to_ucs2_example() -> None:
    # toUCS2: "str":"繁体中文" -> "ucs2":"7E414F534E2D6587"
    assert mcs_api.to_ucs2_hex("繁体中文") == "7E414F534E2D6587"
    assert mcs_api.from_ucs2_hex("7E414F534E2D6587") == "繁体中文"


def test_the_documents_from_ucs2_example_decodes_either_case() -> None:
    # fromUCS2: str=0048006100760065002000610020006E00690063006500200064
    assert mcs_api.from_ucs2_hex("0048006100760065002000610020006E00690063006500200064") == (
        "Have a nice d"  # the document's example is cut short; the decoding is what counts
    )
    upper = mcs_api.from_ucs2_hex("0048006100760065")
    assert upper == mcs_api.from_ucs2_hex("0048006100760065".lower())


@pytest.mark.parametrize("bad", ["004", "00G1", "D800"])
def test_from_ucs2_refuses_what_is_not_ucs2_notation(bad: str) -> None:
    with pytest.raises(ValueError):
        mcs_api.from_ucs2_hex(bad)


def test_unicode_text_goes_in_ucs2_notation_with_unicode_true() -> None:
    fields = fields_for(message("Привет 繁体"))
    assert fields["unicode"] is True
    assert fields["message"] == "Привет 繁体".encode("utf-16-be").hex().upper()


def test_characters_beyond_the_bmp_become_surrogate_pairs_as_the_router_counts_them() -> None:
    assert mcs_api.to_ucs2_hex("😀") == "D83DDE00"


def test_gsm_text_goes_as_plain_text_with_unicode_false_even_with_german_and_euro() -> None:
    fields = fields_for(message("Grüße für 5 € {ok}"))
    assert fields["unicode"] is False
    assert fields["message"] == "Grüße für 5 € {ok}"


def test_data_coding_ucs2_with_gsm_only_text_goes_as_gsm_like_the_router_counted_it() -> None:
    assert fields_for(message("plain", data_coding=0x08))["unicode"] is False


def test_765_gsm_characters_fit_and_766_are_refused_with_err_212() -> None:
    assert fields_for(message("a" * 765))["message"] == "a" * 765
    with pytest.raises(Unsendable) as exc:
        fields_for(message("a" * 766))
    assert exc.value.error_code == 212


def test_gsm_extension_characters_count_two_towards_765() -> None:
    with pytest.raises(Unsendable):
        fields_for(message("€" * 383))  # 766 septets
    assert fields_for(message("€" * 382))["unicode"] is False


def test_335_unicode_characters_fit_and_336_are_refused_with_err_212() -> None:
    assert fields_for(message("ж" * 335))["unicode"] is True
    with pytest.raises(Unsendable) as exc:
        fields_for(message("ж" * 336))
    assert exc.value.error_code == 212


def test_binary_content_is_unsendable() -> None:
    with pytest.raises(Unsendable):
        fields_for(message(None, binary=b"\x01\x02"))


# --------------------------------------------------------------------------- numbers, senders


def test_destination_goes_in_international_form_with_plus() -> None:
    assert mcs_send.format_number("4915112345678") == "+4915112345678"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (Address("449876543210", 1, 1), "+449876543210"),
        (Address("MyCompany", 5, 0), "MyCompany"),
        (Address("Firma-2024", 5, 0), "Firma-2024"),
        (Address("12345", 3, 0), "12345"),  # a short code, passed as is (the provider: 217)
    ],
)
def test_senderid_formats(source: Address, expected: str) -> None:
    assert mcs_send.format_sender(source) == expected


def test_an_empty_sender_leaves_senderid_out() -> None:
    assert "senderid" not in fields_for(message(sender=Address("", 5, 0)))


@pytest.mark.parametrize("sender", ["My Company", "Grüße", "ABCDEFGHIJKL"])
def test_an_alphanumeric_sender_the_provider_refuses_is_unsendable_with_err_216(
    sender: str,
) -> None:
    # 216: "You may use a phone number or an alphanumeric text with up to eleven characters
    # (A-Z, a-z, 0-9 and the dash symbol)."
    with pytest.raises(Unsendable) as exc:
        mcs_send.format_sender(Address(sender, 5, 0))
    assert exc.value.error_code == 216


# --------------------------------------------------------------------------- scheduling


def test_schedule_time_is_atom_with_time_zone_in_utc() -> None:
    when = datetime(2011, 4, 17, 9, 59, 36, tzinfo=UTC).timestamp()
    fields = fields_for(message(schedule_at=when), now=when - 3600)
    assert fields["scheduletime"] == "2011-04-17T09:59:36+00:00"
    assert datetime.fromisoformat(fields["scheduletime"]).timestamp() == when


def test_a_schedule_time_already_past_is_left_out() -> None:
    assert "scheduletime" not in fields_for(message(schedule_at=1000.0), now=2000.0)


# --------------------------------------------------------------------------- receipts wanted


@pytest.mark.parametrize(
    ("registered_delivery", "push_reports", "sent"),
    [(0, True, False), (1, True, True), (2, True, True), (0x10, True, True), (1, False, False)],
)
def test_callbackurl_only_when_the_esme_asked_for_a_receipt(
    registered_delivery: int, push_reports: bool, sent: bool
) -> None:
    url = "http://bridge.test/callbacks/mcs/tok/report"
    ctx = ProviderContext("mcs", callback_url=lambda kind: url if kind == "report" else None)
    provider = mcs.MyCoolSmsProvider("mcs", settings(push_reports=push_reports), ctx)
    body = provider.build_send(message(registered_delivery=registered_delivery)).json
    assert body.get("callbackurl") == (url if sent else None)


# =========================================================================== sendSms replies

# The document's success example (it lacks a comma after "number"; fixed here).
DOC_SUCCESS = {
    "success": True,
    "smsid": "ce184cc0a6d1714d1ac763f4fe89f521",
    "body": "Have a nice day!",
    "bodyucs2": "0048006100760065002000610020006E00690063006500200064",
    "bodygsm7": "486176652061206E6963652064617921",
    "number": "+491234567890",
    "senderid": "+449876543210",
    "senderidenabled": True,
    "unicode": False,
    "numchars": 321,
    "escapenumchars": 0,
    "smscount": 3,
    "charge": 0.112,
    "balance": 752.121,
    "countrycode": "DE",
    "prefix": "+49",
    "timestamp": "2013-04-02T22:27:22-07:00",
    "callbackurl": "http://www.my-server.com/callback.php",
}


def test_the_documents_success_reply_is_accepted_with_smsid_parts_charge_and_balance() -> None:
    outcome, balance = mcs_send.parse_send_reply(reply(DOC_SUCCESS))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id == "ce184cc0a6d1714d1ac763f4fe89f521"
    assert (outcome.parts, outcome.cost, outcome.state) == (3, 0.112, None)
    assert balance == 752.121


def test_success_without_an_smsid_is_taken_but_final_unknown_with_err_304() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply({"success": True, "balance": 1.0}))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.provider_message_id is None
    assert (outcome.state, outcome.error_code) == (MessageState.UNKNOWN, mcs_send.ERR_NO_SMSID)


def test_the_documents_error_reply_103_is_permanent_with_err_103() -> None:
    # {"success":false,"errorcode":103,"errordescription":"Ein erforderlicher Parameter
    #  fehlt: senderid"}
    outcome, _ = mcs_send.parse_send_reply(
        reply(
            {
                "success": False,
                "errorcode": 103,
                "errordescription": "Ein erforderlicher Parameter fehlt: senderid",
            }
        )
    )
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 103)
    assert "senderid" in outcome.detail


def test_errorcode_as_a_string_of_three_digits_as_the_table_types_it() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply({"success": False, "errorcode": "210"}))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 210)


TRANSIENT_CODES = {107, 109}
ALL_SEND_CODES = [*range(101, 110), *range(210, 220)]


@pytest.mark.parametrize("code", ALL_SEND_CODES, ids=[f"reply_code_{c}" for c in ALL_SEND_CODES])
def test_every_documented_send_reply_code_has_its_outcome_and_err_is_the_code(code: int) -> None:
    outcome, _ = mcs_send.parse_send_reply(reply({"success": False, "errorcode": code}))
    expected = OutcomeKind.TRANSIENT if code in TRANSIENT_CODES else OutcomeKind.PERMANENT
    assert (outcome.kind, outcome.error_code) == (expected, code)
    assert str(code) in outcome.detail


def test_the_table_covers_exactly_the_documented_send_codes() -> None:
    assert sorted(mcs_send.SEND_ERRORS) == ALL_SEND_CODES


def test_reply_code_107_general_api_error_is_transient() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply({"success": False, "errorcode": 107}))
    assert outcome.kind is OutcomeKind.TRANSIENT


def test_reply_code_109_insufficient_credit_is_transient_so_messages_wait_for_a_top_up() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply({"success": False, "errorcode": 109}))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, 109)


def test_an_undocumented_error_code_is_permanent_with_that_code() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply({"success": False, "errorcode": 199}))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 199)


def test_a_refusal_without_a_code_is_permanent_with_err_300() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply({"success": False}))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, mcs_send.ERR_BAD_REPLY)


def test_a_200_that_is_not_the_apis_json_is_transient_with_err_300() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply(b"<html>Wartung</html>", content_type="text/html"))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, mcs_send.ERR_BAD_REPLY)


def test_a_404_page_means_a_wrong_base_url_and_is_permanent() -> None:
    outcome, _ = mcs_send.parse_send_reply(reply(b"Not Found", 404, "text/plain"))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, mcs_send.ERR_BAD_REPLY)


# =========================================================================== status words


@pytest.mark.parametrize(
    ("status", "state", "err"),
    [
        ("SMS_STATUS_QUEUED", MessageState.ENROUTE, 0),
        ("SMS_STATUS_AT_CARRIER", MessageState.ENROUTE, 0),
        ("SMS_STATUS_DELIVERY_DELAYED", MessageState.ENROUTE, 0),
        ("SMS_STATUS_DELIVERED", MessageState.DELIVERED, 0),
        ("SMS_STATUS_BOUNCED", MessageState.UNDELIVERABLE, 301),
        ("SMS_STATUS_EXPIRED", MessageState.EXPIRED, 302),
        ("SMS_STATUS_ERROR", MessageState.UNDELIVERABLE, 303),
        ("UNKNOWN_ID", MessageState.UNKNOWN, 223),
    ],
)
def test_every_status_word_maps_to_a_state_and_err(
    status: str, state: MessageState, err: int
) -> None:
    report = mcs_reports.report_for("mcs", "abc", status, 5.0)
    assert report == DeliveryReport("mcs", "abc", state, err, 5.0)


def test_the_status_table_lists_every_word_the_document_names() -> None:
    # "Possible states are: SMS_STATUS_QUEUED, SMS_STATUS_AT_CARRIER,
    #  SMS_STATUS_DELIVERY_DELAYED, SMS_STATUS_DELIVERED, SMS_STATUS_BOUNCED,
    #  SMS_STATUS_EXPIRED, SMS_STATUS_ERROR or UNKNOWN_ID."
    assert set(mcs_reports.STATUS_STATES) == {
        "SMS_STATUS_QUEUED",
        "SMS_STATUS_AT_CARRIER",
        "SMS_STATUS_DELIVERY_DELAYED",
        "SMS_STATUS_DELIVERED",
        "SMS_STATUS_BOUNCED",
        "SMS_STATUS_EXPIRED",
        "SMS_STATUS_ERROR",
        "UNKNOWN_ID",
    }


def test_an_unknown_status_word_makes_no_report() -> None:
    assert mcs_reports.report_for("mcs", "abc", "SMS_STATUS_SOMETHING", None) is None


# =========================================================================== pushes (pure)


def test_the_documents_push_delivery_report_example() -> None:
    body = (
        b'{\n    "smsid":"498673a1f58df975ab95da33884d9e14",\n'
        b'    "status":"SMS_STATUS_DELIVERED"\n}'
    )
    assert mcs_reports.parse_report_push(body) == (
        "498673a1f58df975ab95da33884d9e14",
        "SMS_STATUS_DELIVERED",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"smsid=abc&status=SMS_STATUS_DELIVERED",
        b"[]",
        b'{"status":"SMS_STATUS_DELIVERED"}',
        b'{"smsid":"","status":"SMS_STATUS_DELIVERED"}',
        b'{"smsid":"abc"}',
        b'{"smsid":"abc","status":"DELIVERED"}',
        b'{"smsid":42,"status":"SMS_STATUS_DELIVERED"}',
        b"\xff\xfe",
    ],
)
def test_a_malformed_report_push_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        mcs_reports.parse_report_push(body)


DOC_INBOUND = {
    "from": "+1230987654321",
    "fromcountrycode": "US",
    "to": "+440987654321",
    "unicode": False,
    "smscount": 1,
    "body": "Have a nice day with incoming SMS!",
    "bodyucs2": "0048006100760065002000610020006e00690063006500200064",
    "bodygsm7": "5374616666206D6565746925",
    "numchars": 54,
    "escapenumchars": 0,
    "cost": "0.010",
}


def test_the_documents_push_incoming_sms_example() -> None:
    msg = mcs_inbound.parse_inbound_push(
        json.dumps(DOC_INBOUND).encode(), provider="mcs", received_at=7.0
    )
    assert msg == InboundMessage(
        account="",
        source=Address("1230987654321", 1, 1),
        destination=Address("440987654321", 1, 1),
        text="Have a nice day with incoming SMS!",
        received_at=7.0,
        provider="mcs",
    )


def test_an_alphanumeric_inbound_sender_keeps_its_text_with_ton_5() -> None:
    body = json.dumps({**DOC_INBOUND, "from": "MyBank", "fromcountrycode": None}).encode()
    msg = mcs_inbound.parse_inbound_push(body, provider="mcs", received_at=0.0)
    assert msg.source == Address("MyBank", 5, 0)


def test_without_body_the_inbound_text_comes_from_bodyucs2_then_bodygsm7() -> None:
    ucs2 = {k: v for k, v in DOC_INBOUND.items() if k != "body"}
    ucs2["bodyucs2"] = mcs_api.to_ucs2_hex("Привет")
    assert mcs_inbound.parse_inbound_push(
        json.dumps(ucs2).encode(), provider="m", received_at=0
    ).text == ("Привет")
    gsm = {k: v for k, v in DOC_INBOUND.items() if k not in ("body", "bodyucs2")}
    # the document's bodygsm7 example: "5374616666206D6565746925" = "Staff meeti%"
    assert mcs_inbound.parse_inbound_push(
        json.dumps(gsm).encode(), provider="m", received_at=0
    ).text == ("Staff meeti%")


@pytest.mark.parametrize(
    "change",
    [{"from": None}, {"to": None}, {"to": "MyBank"}, {"from": ""}, {"body": None, "bodyucs2": "0"}],
)
def test_a_malformed_inbound_push_is_refused(change: dict[str, Any]) -> None:
    data = {**DOC_INBOUND, **change}
    with pytest.raises(ValueError):
        mcs_inbound.parse_inbound_push(json.dumps(data).encode(), provider="m", received_at=0)


# =========================================================================== polling and balance


def test_the_documents_get_delivery_reports_request_and_reply() -> None:
    ids = ["ce184cc0a6d1714d1ac763f4fe89f521", "d1ac763f4fe89f521ce184cc0a6d1714"]
    assert mcs_reports.poll_fields(ids, username="xxx", password="yyy") == {
        "username": "xxx",
        "password": "yyy",
        "function": "getDeliveryReports",
        "ids": ids,
    }
    doc_reply = {
        "success": True,
        "reports": [
            {"smsid": ids[0], "status": "SMS_STATUS_DELIVERED"},
            {"smsid": ids[1], "status": "SMS_STATUS_DELIVERED"},
        ],
    }
    assert mcs_reports.parse_poll_reply(reply(doc_reply)) == [
        (ids[0], "SMS_STATUS_DELIVERED"),
        (ids[1], "SMS_STATUS_DELIVERED"),
    ]


def test_at_most_100_ids_per_get_delivery_reports() -> None:
    mcs_reports.poll_fields(["x"] * 100, username="u", password="p")
    with pytest.raises(ValueError):
        mcs_reports.poll_fields(["x"] * 101, username="u", password="p")


@pytest.mark.parametrize(
    "body",
    [{"success": False, "errorcode": 241}, {"success": True}, "nonsense", {"reports": []}],
)
def test_a_get_delivery_reports_error_or_odd_reply_raises(body: Any) -> None:
    with pytest.raises(ValueError):
        mcs_reports.parse_poll_reply(reply(body))


def test_the_documents_get_balance_reply() -> None:
    # {"success":true,"balance":752.210}
    assert mcs_send.parse_balance_reply(reply(b'{"success":true,"balance":752.210}')) == (
        True,
        752.21,
    )
    assert mcs_send.balance_fields(username="xxx", password="yyy") == {
        "username": "xxx",
        "password": "yyy",
        "function": "getBalance",
    }


def test_a_get_balance_error_is_unhealthy() -> None:
    assert mcs_send.parse_balance_reply(reply({"success": False, "errorcode": 101})) == (
        False,
        None,
    )


# =========================================================================== settings


def test_capabilities_follow_the_document() -> None:
    caps = mcs_settings.capabilities_for(settings())
    assert (caps.max_gsm7_chars, caps.max_ucs2_chars, caps.max_sender_chars) == (765, 335, 11)
    assert caps.unicode and caps.scheduling and caps.alphanumeric_sender
    assert not caps.binary and not caps.flash
    assert caps.reports == "poll"
    assert mcs_settings.capabilities_for(settings(poll_reports=False)).reports == "push"
    assert (caps.requests_per_second, caps.concurrency) == (0.0, 16)


def test_settings_refuse_having_no_way_to_get_reports() -> None:
    with pytest.raises(ValidationError, match="both false"):
        settings(push_reports=False, poll_reports=False)


def test_the_password_is_a_secret_and_env_vars_work_for_both_credentials() -> None:
    s = mcs_settings.Settings.model_validate(
        {"type": "mycoolsms", "username": "env:MCS_U", "password": "env:MCS_P"},
        context={"env": {"MCS_U": "alice", "MCS_P": "hunter2"}},
    )
    assert s.username == "alice"
    assert s.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)


def test_the_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "MYCOOLSMS_USERNAME": "user",
        "MYCOOLSMS_PASSWORD": "pw",
        "SMPP_DEMO_PASSWORD": "demopass",
        "BRIDGE_CALLBACK_SECRET": "cb-secret",
    }.items():
        monkeypatch.setitem(os.environ, var, value)
    cfg = load_config(ROOT / "config" / "examples" / "mycoolsms.toml")
    provider = cfg.providers["mycoolsms"]
    assert isinstance(provider, mcs_settings.Settings)
    assert provider.username == "user"
    assert provider.password.get_secret_value() == "pw"
    assert provider.base_url == mcs_settings.DEFAULT_URL
    assert [r.providers for r in cfg.routes] == [["mycoolsms"]]


# =========================================================================== callbacks (no network)


@dataclass
class Sinks:
    reports: list[DeliveryReport] = field(default_factory=list)
    inbound: list[InboundMessage] = field(default_factory=list)

    async def report(self, report: DeliveryReport) -> bool:
        self.reports.append(report)
        return True

    async def message(self, message: InboundMessage) -> bool:
        self.inbound.append(message)
        return True


async def started(
    s: mcs_settings.Settings, ctx: ProviderContext, sinks: Sinks
) -> mcs.MyCoolSmsProvider:
    provider = mcs.MyCoolSmsProvider("mcs", s, ctx)
    await provider.start(sinks.report, sinks.message)
    return provider


def push(body: bytes, method: str = "POST") -> CallbackRequest:
    return CallbackRequest(method=method, body=body, content_type="application/json")


async def test_a_report_push_reaches_the_report_sink_and_gets_200() -> None:
    sinks = Sinks()
    provider = await started(settings(), ProviderContext("mcs", clock=lambda: 99.0), sinks)
    answer = await provider.handle_callback(
        "report", push(b'{"smsid":"abc","status":"SMS_STATUS_BOUNCED"}')
    )
    await provider.stop()
    assert answer.status == 200
    assert sinks.reports == [DeliveryReport("mcs", "abc", MessageState.UNDELIVERABLE, 301, 99.0)]


@pytest.mark.parametrize(
    ("kind", "request_"),
    [
        ("report", push(b'{"smsid":"abc","status":"bogus"}')),
        ("report", push(b"not json")),
        ("report", push(b'{"smsid":"abc","status":"SMS_STATUS_DELIVERED"}', method="GET")),
        ("inbound", push(b'{"from":"+491701234567"}')),
        ("inbound", push(json.dumps(DOC_INBOUND).encode(), method="GET")),
    ],
)
async def test_a_malformed_push_gets_a_4xx_and_changes_nothing(
    kind: CallbackKind, request_: CallbackRequest
) -> None:
    sinks = Sinks()
    provider = await started(settings(), ProviderContext("mcs"), sinks)
    answer = await provider.handle_callback(kind, request_)
    await provider.stop()
    assert 400 <= answer.status < 500
    assert sinks.reports == [] and sinks.inbound == []


async def test_an_inbound_push_reaches_the_inbound_sink_and_gets_200() -> None:
    sinks = Sinks()
    provider = await started(settings(), ProviderContext("mcs", clock=lambda: 5.0), sinks)
    answer = await provider.handle_callback("inbound", push(json.dumps(DOC_INBOUND).encode()))
    await provider.stop()
    assert answer.status == 200
    [msg] = sinks.inbound
    assert (msg.text, msg.destination.digits, msg.received_at) == (
        "Have a nice day with incoming SMS!",
        "440987654321",
        5.0,
    )


# =========================================================================== against the simulator


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _no_health() -> HealthReport:
    return HealthReport(True, True)


class Forward:
    """The callback route's provider: hands pushes to the adapter the test made last."""

    callback_kinds: tuple[CallbackKind, ...] = ("report", "inbound")

    def __init__(self) -> None:
        self.target: mcs.MyCoolSmsProvider | None = None

    async def handle_callback(self, kind: CallbackKind, request: CallbackRequest) -> CallbackReply:
        assert self.target is not None
        return await self.target.handle_callback(kind, request)


@dataclass
class Rig:
    """The simulator and the bridge's callback routes, both on loopback; ``provider()`` makes
    a started adapter whose callback URLs point at those routes."""

    sim: MyCoolSmsSimulator
    api_url: str
    callback_base: str
    sinks: Sinks
    balances: list[float]
    forward: Forward
    providers: list[mcs.MyCoolSmsProvider] = field(default_factory=list)

    async def provider(self, **values: Any) -> mcs.MyCoolSmsProvider:
        values.setdefault("base_url", self.api_url)
        values.setdefault("password", "secret")
        s = settings(**values)
        ctx = ProviderContext(
            "mcs",
            callback_url=lambda kind: f"{self.callback_base}/{kind}",
            set_balance=self.balances.append,
        )
        p = mcs.MyCoolSmsProvider("mcs", s, ctx)
        self.forward.target = p
        await p.start(self.sinks.report, self.sinks.message)
        self.providers.append(p)
        return p


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    sim = MyCoolSmsSimulator(username=USER, password="secret", delay=0.05, slow=2.0)
    sim_server = HttpServer("127.0.0.1", 0, sim.app, shutdown_timeout=0.5)
    forward = Forward()
    app = build_app(
        metrics=lambda: b"",
        health=_no_health,
        callbacks={"mcs": CallbackEndpoint("tok", forward)},
    )
    bridge_server = HttpServer("127.0.0.1", 0, app, shutdown_timeout=0.5)
    await asyncio.gather(sim_server.start(), bridge_server.start())
    r = Rig(
        sim,
        f"http://127.0.0.1:{sim_server.port}{API_PATH}",
        f"http://127.0.0.1:{bridge_server.port}/callbacks/mcs/tok",
        Sinks(),
        [],
        forward,
    )
    try:
        yield r
    finally:
        for p in r.providers:
            await p.stop()
        await sim.close()
        await asyncio.gather(sim_server.stop(), bridge_server.stop())


def sim_message(to: str, text: str = "Hello", **fields: Any) -> Message:
    return message(text, to=to, sender=Address("Bridge", 5, 0), **fields)


async def test_send_is_accepted_charged_and_the_pushed_report_delivers(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(sim_message("4915112345678", registered_delivery=1))
    assert outcome.kind is OutcomeKind.ACCEPTED and outcome.provider_message_id
    sms = rig.sim.messages[outcome.provider_message_id]
    assert (sms.number, sms.senderid, sms.body, sms.unicode) == (
        "+4915112345678",
        "Bridge",
        "Hello",
        False,
    )
    assert rig.sim.balance == pytest.approx(100.0 - 0.05)
    assert rig.balances == [rig.sim.balance]
    await until(lambda: len(rig.sinks.reports) == 1)
    assert rig.sinks.reports[0].provider_message_id == outcome.provider_message_id
    assert rig.sinks.reports[0].state is MessageState.DELIVERED
    await until(lambda: len(rig.sim.pushes) == 1)
    assert rig.sim.pushes[0].status == 200


async def test_without_a_receipt_request_no_callbackurl_is_sent_and_nothing_is_pushed(
    rig: Rig,
) -> None:
    provider = await rig.provider()
    outcome = await provider.send(sim_message("4915112345678", registered_delivery=0))
    assert outcome.provider_message_id is not None
    await until(
        lambda: (
            rig.sim.messages[outcome.provider_message_id or ""].history[-1:]
            == ["SMS_STATUS_DELIVERED"]
        )
    )
    assert "callbackurl" not in rig.sim.requests[-1]["params"]
    assert rig.sim.pushes == []


async def test_form_format_is_understood_by_the_simulator(rig: Rig) -> None:
    provider = await rig.provider(request_format="form")
    outcome = await provider.send(sim_message("4915112345678", "Grüße 繁体"))
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert rig.sim.requests[-1]["format"] == "form"
    sms = rig.sim.messages[outcome.provider_message_id or ""]
    assert (sms.body, sms.unicode) == ("Grüße 繁体", True)


async def test_unicode_text_arrives_intact_in_ucs2_notation(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(sim_message("4915112345678", "Привет, мир! 😀"))
    sms = rig.sim.messages[outcome.provider_message_id or ""]
    assert (sms.body, sms.unicode, outcome.parts) == ("Привет, мир! 😀", True, 1)


async def test_a_long_message_is_one_request_with_the_providers_part_count(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(sim_message("4915112345678", "x" * 400))
    assert (outcome.kind, outcome.parts) == (OutcomeKind.ACCEPTED, 3)
    assert outcome.cost == pytest.approx(0.15)


async def test_a_scheduled_message_carries_its_time_to_the_provider(rig: Rig) -> None:
    provider = await rig.provider()
    when = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    outcome = await provider.send(sim_message("4915112345678", schedule_at=when))
    assert rig.sim.messages[outcome.provider_message_id or ""].scheduled == when


async def test_each_error_the_simulator_gives_becomes_the_right_outcome(rig: Rig) -> None:
    # One rig for all codes (a simulator per code would only add start-up time).
    provider = await rig.provider()
    seen = {}
    for code in ALL_SEND_CODES:
        outcome = await provider.send(sim_message(f"491511234{9000 + code}"))
        seen[code] = (outcome.kind, outcome.error_code)
    assert seen == {
        code: (OutcomeKind.TRANSIENT if code in TRANSIENT_CODES else OutcomeKind.PERMANENT, code)
        for code in ALL_SEND_CODES
    }


async def test_wrong_credentials_are_reply_code_101_permanent(rig: Rig) -> None:
    provider = await rig.provider(password="not-the-pw-xyz")
    outcome = await provider.send(sim_message("4915112345678"))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 101)
    assert "not-the-pw-xyz" not in outcome.detail


async def test_an_invalid_number_is_reply_code_210(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(sim_message("12345"))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 210)


async def test_a_short_code_sender_is_reply_code_217(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(message("Hi", to="4915112345678", sender=Address("1234", 3, 0)))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.PERMANENT, 217)


async def test_an_empty_balance_is_reply_code_109_transient(rig: Rig) -> None:
    provider = await rig.provider()
    rig.sim.balance = 0.01
    outcome = await provider.send(sim_message("4915112345678"))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, 109)
    assert rig.sim.messages == {}


async def test_reply_code_107_once_then_the_retry_is_accepted(rig: Rig) -> None:
    provider = await rig.provider()
    first = await provider.send(sim_message("4915112345607"))
    second = await provider.send(sim_message("4915112345607"))
    assert (first.kind, first.error_code) == (OutcomeKind.TRANSIENT, 107)
    assert second.kind is OutcomeKind.ACCEPTED


async def test_http_500_is_transient(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(sim_message("4915112345698"))
    assert (outcome.kind, outcome.detail) == (OutcomeKind.TRANSIENT, "HTTP 500")


async def test_a_non_json_200_is_transient_with_err_300(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(sim_message("4915112345699"))
    assert (outcome.kind, outcome.error_code) == (OutcomeKind.TRANSIENT, 300)


async def test_a_timeout_is_transient(rig: Rig) -> None:
    provider = await rig.provider(timeout=0.2)
    outcome = await provider.send(sim_message("4915112345697"))
    assert (outcome.kind, outcome.detail) == (OutcomeKind.TRANSIENT, "no answer (timeout)")


async def test_the_httpx_transport_works_too(rig: Rig) -> None:
    provider = await rig.provider(transport="httpx")
    outcome = await provider.send(sim_message("4915112345678"))
    assert outcome.kind is OutcomeKind.ACCEPTED


async def test_health_is_get_balance_and_feeds_the_gauge(rig: Rig) -> None:
    provider = await rig.provider()
    rig.sim.balance = 42.5
    assert await provider.healthy() is True
    assert rig.balances == [42.5]
    assert rig.sim.requests[-1]["params"]["function"] == "getBalance"
    bad = await rig.provider(password="wrong")
    assert await bad.healthy() is False


async def test_health_in_form_format(rig: Rig) -> None:
    provider = await rig.provider(request_format="form")
    assert await provider.healthy() is True
    assert rig.sim.requests[-1]["format"] == "form"


async def test_polling_reports_every_final_and_intermediate_state(rig: Rig) -> None:
    provider = await rig.provider()
    sent: dict[str, Message] = {}
    for suffix in ("00", "01", "02", "03", "04", "06"):
        msg = sim_message(f"49151123456{suffix}", registered_delivery=0)
        outcome = await provider.send(msg)
        msg.provider_message_id = outcome.provider_message_id
        sent[suffix] = msg
    unknown = sim_message("4915112345600")
    unknown.provider_message_id = "ffffffffffffffffffffffffffffffff"
    await until(lambda: all(len(s.history) >= 2 for s in rig.sim.messages.values()))
    reports = await provider.poll([*sent.values(), unknown])
    by_id = {r.provider_message_id: (r.state, r.error_code) for r in reports}
    assert by_id == {
        sent["00"].provider_message_id: (MessageState.DELIVERED, 0),
        sent["01"].provider_message_id: (MessageState.UNDELIVERABLE, 301),
        sent["02"].provider_message_id: (MessageState.EXPIRED, 302),
        sent["03"].provider_message_id: (MessageState.UNDELIVERABLE, 303),
        sent["04"].provider_message_id: (MessageState.ENROUTE, 0),
        sent["06"].provider_message_id: (MessageState.DELIVERED, 0),
        "ffffffffffffffffffffffffffffffff": (MessageState.UNKNOWN, 223),
    }
    assert rig.sim.pushes == []  # registered_delivery 0: nothing was pushed


async def test_polling_asks_at_most_100_ids_per_call(rig: Rig) -> None:
    provider = await rig.provider()
    messages = []
    for i in range(150):
        msg = sim_message("4915112345678")
        msg.provider_message_id = f"{i:032x}"
        messages.append(msg)
    reports = await provider.poll(messages)
    calls = [r["params"]["ids"] for r in rig.sim.requests if "ids" in r["params"]]
    assert [len(c) for c in calls] == [100, 50]
    assert len(reports) == 150
    assert {r.state for r in reports} == {MessageState.UNKNOWN}


async def test_polling_an_unreachable_provider_returns_nothing_and_does_not_raise(
    rig: Rig,
) -> None:
    provider = await rig.provider(base_url="http://127.0.0.1:9/api-socket.php", timeout=1.0)
    msg = sim_message("4915112345678")
    msg.provider_message_id = "abc"
    assert await provider.poll([msg]) == []


async def test_intermediate_then_final_pushes(rig: Rig) -> None:
    provider = await rig.provider()
    await provider.send(sim_message("4915112345605", registered_delivery=0x11))
    await until(lambda: len(rig.sinks.reports) == 2)
    assert [r.state for r in rig.sinks.reports] == [MessageState.ENROUTE, MessageState.DELIVERED]


async def test_an_inbound_sms_pushed_by_the_simulator_reaches_the_inbound_sink(rig: Rig) -> None:
    await rig.provider()
    status = await rig.sim.push_inbound(
        "Antwort: ja 繁", sender="+491701234567", url=f"{rig.callback_base}/inbound"
    )
    assert status == 200
    [msg] = rig.sinks.inbound
    assert (msg.text, msg.source, msg.destination.digits, msg.provider) == (
        "Antwort: ja 繁",
        Address("491701234567", 1, 1),
        "4915790000000",
        "mcs",
    )


async def test_a_push_with_a_wrong_token_is_404_and_reaches_nobody(rig: Rig) -> None:
    await rig.provider()
    url = rig.callback_base.replace("/tok", "/forged") + "/inbound"
    assert await rig.sim.push_inbound("hi", url=url) == 404
    assert rig.sinks.inbound == []


# =========================================================================== getIncomingSms


def test_get_incoming_sms_asks_for_what_is_newer_than_the_threshold_oldest_first() -> None:
    fields = mcs_inbound.incoming_fields(
        username="u", password="p", threshold=17, limit=100, virtual_number="+449876543201"
    )
    assert fields == {
        "username": "u",
        "password": "p",
        "function": "getIncomingSms",
        "thresholdid": 17,
        "thresholdoperator": "gt",
        "limit": 100,
        "order": "ASC",
        "virtualnumber": "+449876543201",
    }


def test_the_documents_get_incoming_sms_example_becomes_an_inbound_message() -> None:
    doc = {
        "success": True,
        "total": "17",
        "fetched": 1,
        "maxid": 201,
        "minid": 177,
        "messages": [
            {
                "id": 201,
                "virtualnumber": "+449876543201",
                "senderid": "+886983029751",
                "body": "Have a nice day!",
                "unicode": False,
                "timestamp": "2011-08-10 00:08:37.488+08",
            },
            {"id": 202, "virtualnumber": "+449876543201"},  # no sender: skipped, id passed
            {"virtualnumber": "+449876543201", "senderid": "+1", "body": "no id"},
        ],
    }
    response = HttpResponse(200, json.dumps(doc).encode(), {"content-type": "application/json"})
    entries, maxid = mcs_inbound.parse_inbound_poll(response, provider="mcs", received_at=1.0)
    assert maxid == 201
    assert [e.id for e in entries] == [201, 202]
    first = entries[0].message
    assert first is not None
    assert (first.source.digits, first.destination.digits, first.text) == (
        "886983029751",
        "449876543201",
        "Have a nice day!",
    )
    assert entries[1].message is None


async def test_a_polled_mo_that_could_not_be_queued_is_fetched_again_not_skipped(
    rig: Rig, tmp_path: Path
) -> None:
    queued: list[InboundMessage] = []
    thresholds: list[int | None] = []
    events: list[str] = []

    async def inbound(message: InboundMessage) -> bool:
        thresholds.append(poller.threshold)
        if not events:
            raise OSError("disk full")
        queued.append(message)
        return True

    s = settings(
        base_url=rig.api_url, password="secret", poll_inbound=True, inbound_poll_interval=1.0
    )
    ctx = ProviderContext("mcs", state_dir=tmp_path, count_event=events.append)
    p = mcs.MyCoolSmsProvider("mcs", s, ctx)
    poller = p.inbound_poller
    assert poller is not None
    await p.start(rig.sinks.report, inbound)
    rig.providers.append(p)
    # The first poll learns where the inbox stands.
    await until(lambda: poller.threshold is not None, timeout=15.0)
    assert poller.threshold == 0
    await rig.sim.push_inbound("Hallo", push=False)
    await until(lambda: bool(queued), timeout=15.0)
    assert events == ["inbound_poll_failed"]
    assert thresholds == [0, 0]  # not done after the failure: the same MO fetched again
    assert [m.text for m in queued] == ["Hallo"]
    state = tmp_path / "mcs.inbound.json"

    def saved_threshold() -> object:
        return json.loads(state.read_text()).get("thresholdid")

    # Written (fsync, rename) in a thread right after the MO was queued.
    await until(lambda: saved_threshold() == 1, timeout=15.0)


async def test_stopping_while_an_mo_is_being_queued_finishes_it_and_writes_its_threshold(
    rig: Rig, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def inbound(message: InboundMessage) -> bool:
        entered.set()
        await gate.wait()  # a slow store
        return True

    s = settings(
        base_url=rig.api_url, password="secret", poll_inbound=True, inbound_poll_interval=1.0
    )
    p = mcs.MyCoolSmsProvider("mcs", s, ProviderContext("mcs", state_dir=tmp_path))
    poller = p.inbound_poller
    assert poller is not None
    await p.start(rig.sinks.report, inbound)
    await until(lambda: poller.threshold is not None, timeout=15.0)
    await rig.sim.push_inbound("Beim Anhalten", push=False)
    await asyncio.wait_for(entered.wait(), 15.0)
    stopping = asyncio.create_task(p.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the MO being queued
    gate.set()
    await asyncio.wait_for(stopping, 15.0)
    saved = json.loads((tmp_path / "mcs.inbound.json").read_text())
    assert saved["thresholdid"] == 1  # a restart will not deliver it again
