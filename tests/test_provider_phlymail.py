"""The phlyMail adapter, read against phlyMail's own "SMS-Gateway" page.

Pure functions first (request building from the page's examples, every documented reply code,
the connection test and balance call, charset and length rules, sender and number formats),
then the adapter against the simulator over real loopback HTTP (send, codes, HTTP 500, a
timeout, health and balance), the simulator's own checks, and the example config.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import SecretStr, ValidationError

from bridge.config import load_config
from bridge.core.model import Address, DeliveryReport, InboundMessage, Message, MessageState
from bridge.core.model import OutcomeKind as K
from bridge.core.provider import CallbackProvider, ProviderContext
from bridge.providers import phlymail as p
from bridge.providers.http import HttpRequest, HttpResponse
from bridge.providers.http_provider import HttpProvider, Unsendable
from bridge.providers.phlymail import send as p_send
from bridge.providers.phlymail import settings as p_settings
from bridge.simulators.phlymail import DEFAULT_PASSWORD, DEFAULT_USERNAME, PhlymailSimulator
from bridge.web.server import HttpServer

pytestmark = pytest.mark.timeout(30)

DOC_URL = "https://msggw.phlymail.de/http.php"
GERMAN_MOBILE = "4917712345678"  # the page's 004917712345678 without its 00
EXAMPLE_CONFIG = Path(__file__).parent.parent / "config" / "examples" / "phlymail.toml"

#: The page's replies to ``mode=sms`` besides 100, written out here (not taken from the adapter),
#: plus the test mode's 401, which means the same as 402.
DOCUMENTED_SEND_CODES = {
    201: K.PERMANENT,  # text longer than allowed
    202: K.PERMANENT,  # a mandatory field missing
    203: K.TRANSIENT,  # credit too low: a top-up fixes it
    401: K.PERMANENT,  # wrong user name or password (mode=test's code)
    402: K.PERMANENT,  # wrong user name or password
}


def account(**overrides: Any) -> p_settings.Account:
    values: dict[str, Any] = {
        "url": DOC_URL,
        "user": "USER",
        "password": SecretStr("secret"),
        "method": "GET",
    }
    values.update(overrides)
    return p_settings.Account(**values)


def message(text: str | None = "TEXT", **overrides: Any) -> Message:
    values: dict[str, Any] = {
        "id": "0a1b2c3d4e5f",
        "account": "demo",
        "source": Address("Bridge", 5, 0),
        "destination": Address(GERMAN_MOBILE, 1, 1),
        "text": text,
        "registered_delivery": 1,
    }
    values.update(overrides)
    return Message(**values)


def query(request: HttpRequest) -> dict[str, str]:
    """Parameters of a GET, decoded in the request's own charset."""
    raw = urlsplit(request.full_url()).query
    return dict(parse_qsl(raw, keep_blank_values=True, encoding=request.charset))


def raw_query(request: HttpRequest) -> str:
    return urlsplit(request.full_url()).query


def reply(body: str, status: int = 200) -> HttpResponse:
    return HttpResponse(status, body.encode("iso-8859-1"), {"content-type": "text/plain"})


MD5_OF_SECRET = "5ebe2294ecd0e0f08eab7690d2a6ee69"  # md5("secret"), a well-known test vector


# --------------------------------------------------------------------------- the send request


def test_the_pages_send_example() -> None:
    # msggw.phlymail.de/http.php?user=USER&encpass=SECPASS&mode=sms&from=TEL&to=TEL&text=TEXT
    request = p_send.build_send_request(message(source=Address(GERMAN_MOBILE, 1, 1)), account())
    assert (request.method, request.url) == ("GET", DOC_URL)
    assert [name for name, _ in request.params] == ["user", "encpass", "mode", "from", "to", "text"]
    assert query(request) == {
        "user": "USER",
        "encpass": MD5_OF_SECRET,
        "mode": "sms",
        "from": "004917712345678",
        "to": "004917712345678",
        "text": "TEXT",
    }


def test_post_by_default_puts_every_parameter_in_the_form_body() -> None:
    # "Das Gateway wird wahlweise per HTTP GET oder HTTP POST angesprochen."
    request = p_send.build_send_request(message(), account(method="POST"))
    assert request.method == "POST"
    assert request.full_url() == DOC_URL  # no credentials in the URL
    body, headers = request.body()
    assert body is not None
    assert dict(parse_qsl(body.decode("ascii")))["encpass"] == MD5_OF_SECRET
    assert headers["Content-Type"] == "application/x-www-form-urlencoded; charset=iso-8859-1"
    assert p_settings.Settings.model_fields["method"].default == "POST"


def test_encpass_is_the_md5_of_the_password_and_preferred_by_default() -> None:
    # "encpass: Ihr Passwort bei uns als MD5-Hash. Die Angabe dieses Feldes ist immer dem Feld
    # pass vorzuziehen"
    assert p_settings.md5_password("secret") == MD5_OF_SECRET
    q = query(p_send.build_send_request(message(), account()))
    assert "pass" not in q and q["encpass"] == MD5_OF_SECRET
    assert p_settings.Settings.model_fields["password_field"].default == "encpass"


def test_pass_sends_the_plain_password_when_chosen() -> None:
    q = query(p_send.build_send_request(message(), account(password_field="pass")))
    assert q["pass"] == "secret" and "encpass" not in q


def test_the_md5_is_over_the_iso_8859_1_bytes_of_the_password() -> None:
    latin1_md5 = hashlib.md5("Passwört".encode("latin-1")).hexdigest()
    assert p_settings.md5_password("Passwört") == latin1_md5
    # A password ISO-8859-1 cannot hold is hashed as UTF-8.
    assert p_settings.md5_password("пароль") == hashlib.md5("пароль".encode()).hexdigest()


def test_the_password_never_shows_in_the_account_or_settings_repr() -> None:
    acct = account(password=SecretStr("hunter2"))
    assert "hunter2" not in repr(acct)
    assert "hunter2" not in repr(settings(password="hunter2"))


def test_no_receipt_parameter_exists_so_registered_delivery_changes_nothing() -> None:
    requests = [
        query(p_send.build_send_request(message(registered_delivery=r), account()))
        for r in (0, 1, 2)
    ]
    assert requests[0] == requests[1] == requests[2]


# --------------------------------------------------------------------------- charset


def test_latin1_text_goes_as_mode_sms_percent_encoded_in_iso_8859_1() -> None:
    # "Der zu versendende Nachrichtentext im Zeichensatz ISO-8859-1."
    request = p_send.build_send_request(message("Grüße aus Köln"), account())
    assert request.charset == "iso-8859-1"
    assert "text=Gr%FC%DFe+aus+K%F6ln" in raw_query(request)
    assert query(request)["mode"] == "sms"


def test_ucs2_from_the_esme_with_latin1_text_still_goes_the_cheap_way() -> None:
    q = query(p_send.build_send_request(message("Ça coûte 5 £", data_coding=8), account()))
    assert (q["mode"], q["text"]) == ("sms", "Ça coûte 5 £")


@pytest.mark.parametrize("text", ["Привет", "5 €", "Καλημέρα", "ok 👍"])
def test_text_outside_iso_8859_1_goes_as_mode_utf_in_utf8(text: str) -> None:
    request = p_send.build_send_request(message(text), account())
    assert request.charset == "utf-8"
    assert query(request)["mode"] == "utf"
    assert query(request)["text"] == text


def test_the_euro_sign_is_percent_encoded_as_utf8() -> None:
    assert "text=5+%E2%82%AC" in raw_query(p_send.build_send_request(message("5 €"), account()))


def test_with_unicode_off_text_outside_iso_8859_1_is_unsendable() -> None:
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message("Привет"), account(unicode=False))
    assert exc.value.error_code == 1
    assert (
        query(p_send.build_send_request(message("Grüße"), account(unicode=False)))["mode"] == "sms"
    )


# --------------------------------------------------------------------------- length


def test_918_characters_is_the_longest_message() -> None:
    # "Standardbedingt beträgt die maximale Länge einer Nachricht 918 Zeichen (6 x 153 Zeichen)."
    assert p_settings.MAX_SMS_SEPTETS == 918
    p_send.build_send_request(message("x" * 918), account())
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message("x" * 919), account())
    assert exc.value.error_code == 201  # the gateway's own code for it


def test_gsm_extension_characters_count_two_toward_the_limit() -> None:
    assert p_send.sms_septets("[x]") == 5
    with pytest.raises(Unsendable):
        p_send.build_send_request(message("[" + "x" * 917), account())


def test_parts_are_160_alone_then_153_each() -> None:
    # "Nachrichten über 160 Zeichen Länge werden automatisch in Einzel-SMS aufgeteilt."
    assert [p_send.sms_parts(n) for n in (1, 160, 161, 306, 307, 918)] == [1, 1, 2, 2, 3, 6]


def test_unicode_limit_is_derived_as_six_parts_of_67() -> None:
    assert p_settings.MAX_UTF_UNITS == 402
    p_send.build_send_request(message("ж" * 402), account())
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message("ж" * 403), account())
    assert exc.value.error_code == 201
    assert [p_send.utf_parts(n) for n in (70, 71, 134, 135, 402)] == [1, 2, 2, 3, 6]


def test_characters_outside_the_bmp_count_two_utf16_units() -> None:
    assert p_send.utf_units("👍") == 2
    with pytest.raises(Unsendable):
        p_send.build_send_request(message("👍" * 202), account())


def test_an_empty_text_is_refused_with_the_gateways_code_202() -> None:
    with pytest.raises(Unsendable) as exc:
        p_send.build_send_request(message(""), account())
    assert exc.value.error_code == 202


def test_binary_udh_and_flash_cannot_be_expressed() -> None:
    # "udh - Versendet eine Binär-SMS. Details auf Anfrage": no parameters documented.
    for msg in (
        message(None, binary=b"\x01\x02", data_coding=4),
        message("hi", udh=b"\x05\x04\x0b\x84\x23\xf0"),
        message("hi", flash=True),
    ):
        with pytest.raises(Unsendable) as exc:
            p_send.build_send_request(msg, account())
        assert exc.value.error_code == 1


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (Address("Bridge", 5, 0), "Bridge"),
        (Address("SHOP24", 5, 0), "SHOP24"),
        (Address("ABCDEFGHIJK", 5, 0), "ABCDEFGHIJK"),  # "mit maximal 11 Zeichen Länge"
        (Address("12345", 5, 0), "12345"),  # "Zeichen 0-9 und A-Z"
        (Address(GERMAN_MOBILE, 1, 1), "004917712345678"),  # "im Format 004917712345678"
        (Address(GERMAN_MOBILE, 0, 1), "004917712345678"),
    ],
)
def test_sender_formatting(source: Address, expected: str) -> None:
    assert p_send.format_sender(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        Address("My Shop", 5, 0),  # a space
        Address("Shop-24", 5, 0),
        Address("Bäckerei", 5, 0),
        Address("ABCDEFGHIJKL", 5, 0),  # 12
        Address("01771234567", 2, 1),  # national: no region to make it international
        Address("12345", 3, 0),
    ],
)
def test_senders_outside_the_pages_rules_are_unsendable(source: Address) -> None:
    with pytest.raises(Unsendable) as exc:
        p_send.format_sender(source)
    assert exc.value.error_code == 1


def test_the_recipient_is_00_and_the_international_digits() -> None:
    assert p_send.format_number("4917712345678") == "004917712345678"
    assert p_send.format_number("+4917712345678") == "004917712345678"
    for bad in ("", "49-177", "0177123", "1234567890123456"):
        with pytest.raises(Unsendable):
            p_send.format_number(bad)


# --------------------------------------------------------------------------- replies


def test_replies_are_a_code_and_a_readable_text() -> None:
    # "<CODE> <Lesbarer englischer Text>\n"
    assert p_send.parse_reply("100 1 SMS sent\n") == p_send.Reply(100, "1 SMS sent")
    assert p_send.parse_reply("402 Authentication failed\r\n") == p_send.Reply(
        402, "Authentication failed"
    )
    assert p_send.parse_reply("100\n") == p_send.Reply(100, "")
    for body in ("", "<html>Bad Gateway</html>", "OK", "1000 x", "10 x"):
        assert p_send.parse_reply(body) is None, body


def test_reply_code_100_is_accepted_and_final_at_once_since_phlymail_has_no_reports() -> None:
    outcome = p_send.parse_send_reply("100 1 SMS sent\n", message(id="m1"))
    assert outcome.kind is K.ACCEPTED
    assert outcome.state is MessageState.ACCEPTED
    assert (outcome.error_code, outcome.parts) == (0, 1)
    assert outcome.provider_message_id == "phly-m1"  # synthetic: the gateway gives no id


def test_reply_code_100_gives_the_effective_sms_count_first() -> None:
    # "enthält am Anfang die resultierende Anzahl an effektiven SMS, also z.B. 1 für eine SMS"
    assert p_send.parse_send_reply("100 3 SMS sent", message()).parts == 3
    assert p_send.parse_send_reply("100 2", message()).parts == 2
    assert p_send.parse_send_reply("100 OK", message(), parts=4).parts == 4  # our own count


@pytest.mark.parametrize(("code", "kind"), sorted(DOCUMENTED_SEND_CODES.items()))
def test_every_documented_send_code_has_its_outcome_and_err(code: int, kind: K) -> None:
    outcome = p_send.parse_send_reply(f"{code} Some readable text\n", message())
    assert (outcome.kind, outcome.error_code) == (kind, code)
    assert outcome.provider_message_id is None
    assert outcome.detail.startswith(f"phlyMail {code}: ")


def test_reply_code_203_insufficient_credit_is_transient_with_err_203() -> None:
    outcome = p_send.parse_send_reply("203 Insufficient credit", message())
    assert (outcome.kind, outcome.error_code) == (K.TRANSIENT, 203)


def test_reply_code_402_wrong_login_is_a_permanent_failure_with_err_402() -> None:
    outcome = p_send.parse_send_reply("402 Authentication failed", message())
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 402)


def test_reply_code_201_too_long_is_a_permanent_failure_with_err_201() -> None:
    outcome = p_send.parse_send_reply("201 Message too long", message())
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 201)


def test_an_undocumented_code_is_permanent_with_that_err() -> None:
    outcome = p_send.parse_send_reply("299 Something new", message())
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 299)


@pytest.mark.parametrize("body", ["", "<html><body>502 Bad Gateway</body></html>", "OK"])
def test_an_unreadable_reply_is_transient(body: str) -> None:
    outcome = p_send.parse_send_reply(body, message())
    assert (outcome.kind, outcome.error_code) == (K.TRANSIENT, 0)


def test_the_connection_test_is_the_pages_example() -> None:
    # msggw.phlymail.de/http.php?user=USER&encpass=SECPASS&mode=test
    q = query(p_send.build_test_request(account()))
    assert q == {"user": "USER", "encpass": MD5_OF_SECRET, "mode": "test"}
    assert p_send.parse_test_reply("100 Connection OK\n") is True
    assert p_send.parse_test_reply("401 Authentication failed\n") is False
    assert p_send.parse_test_reply("<html>") is False


def test_the_balance_call_is_the_pages_example() -> None:
    # msggw.phlymail.de/http.php?user=USER&encpass=SECPASS&mode=synchro
    q = query(p_send.build_balance_request(account()))
    assert q == {"user": "USER", "encpass": MD5_OF_SECRET, "mode": "synchro"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("100 Current credit: 1000\n", (True, 1000.0)),
        ("100 96.5", (True, 96.5)),
        ("100 Guthaben 12,50 EUR", (True, 12.5)),
        ("100 OK", (True, None)),
        ("402 Authentication failed", (False, None)),
        ("Service unavailable", (False, None)),
    ],
)
def test_the_balance_is_the_first_number_of_the_readable_text(
    body: str, expected: tuple[bool, float | None]
) -> None:
    # "100 Erfolgreich. Die zurückgegebene lesbare Nachricht enthält Ihr aktuelles Guthaben"
    assert p_send.parse_balance_reply(body) == expected


# --------------------------------------------------------------------------- settings


def settings(**overrides: Any) -> p_settings.Settings:
    values: dict[str, Any] = {"type": "phlymail", "username": "USER", "password": "secret"}
    values.update(overrides)
    return p_settings.Settings.model_validate(values)


def test_settings_defaults_follow_the_page() -> None:
    s = settings()
    assert s.base_url == DOC_URL
    assert (s.password_field, s.method, s.unicode, s.health) == ("encpass", "POST", True, "synchro")
    assert (s.requests_per_second, s.concurrency) == (0.0, 16)  # the page states no limit


def test_a_user_name_outside_iso_8859_1_is_a_config_error() -> None:
    with pytest.raises(ValidationError):
        settings(username="пользователь")


def test_capabilities_follow_the_page_and_the_settings() -> None:
    caps = p.create("phly", settings(), ProviderContext("phly")).capabilities
    assert caps.reports == "none"
    assert (caps.max_gsm7_chars, caps.max_ucs2_chars, caps.max_sender_chars) == (918, 402, 11)
    assert (caps.unicode, caps.binary, caps.flash, caps.scheduling) == (True, False, False, False)
    latin1_only = p.create("phly", settings(unicode=False), ProviderContext("phly")).capabilities
    assert (latin1_only.unicode, latin1_only.max_ucs2_chars) == (False, 0)



def test_the_configured_rate_paces_balance_checks_too() -> None:
    # Balance checks wait on the limiter the dispatcher's sends take: it must come from the
    # table's requests_per_second (it stayed unlimited: a bug).
    provider = p.create("phly", settings(requests_per_second=2.0), ProviderContext("phly"))
    assert provider.capabilities.requests_per_second == 2.0
    assert isinstance(provider, HttpProvider) and provider.limiter is not None


def test_the_provider_takes_no_callbacks() -> None:
    provider = p.create("phly", settings(), ProviderContext("phly"))
    assert not isinstance(provider, CallbackProvider)


def test_the_example_config_loads() -> None:
    env = {
        "SMPP_DEMO_PASSWORD": "demopass",
        "PHLYMAIL_USER": DEFAULT_USERNAME,
        "PHLYMAIL_PASSWORD": DEFAULT_PASSWORD,
    }
    cfg = load_config(EXAMPLE_CONFIG, env=env)
    provider = cfg.providers["phlymail"]
    assert isinstance(provider, p_settings.Settings)
    assert provider.username == DEFAULT_USERNAME
    assert provider.password.get_secret_value() == DEFAULT_PASSWORD
    assert any("phlymail" in route.providers for route in cfg.routes)


# --------------------------------------------------------------------------- against the simulator


@dataclass
class Sinks:
    reports: list[DeliveryReport] = field(default_factory=list)
    balances: list[float] = field(default_factory=list)

    async def report(self, report: DeliveryReport) -> bool:
        raise AssertionError("phlyMail has no delivery reports")

    async def inbound(self, message: InboundMessage) -> bool:
        raise AssertionError("phlyMail has no inbound SMS")


@dataclass
class Rig:
    sim: PhlymailSimulator
    sim_url: str
    sinks: Sinks
    providers: list[p.PhlymailProvider] = field(default_factory=list)

    async def provider(self, **overrides: Any) -> p.PhlymailProvider:
        values: dict[str, Any] = {
            "base_url": f"{self.sim_url}/http.php",
            "username": DEFAULT_USERNAME,
            "password": DEFAULT_PASSWORD,
            "timeout": 2.0,
        }
        values.update(overrides)
        ctx = ProviderContext("phlymail", set_balance=self.sinks.balances.append)
        provider = p.create("phlymail", settings(**values), ctx)
        assert isinstance(provider, p.PhlymailProvider)
        await provider.start(self.sinks.report, self.sinks.inbound)
        self.providers.append(provider)
        return provider


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    sim = PhlymailSimulator(slow=1.0)
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


def to(number: str, **overrides: Any) -> Message:
    return message(destination=Address(number, 1, 1), **overrides)


async def test_sim_send_is_accepted_final_and_charged(rig: Rig) -> None:
    provider = await rig.provider()
    before = rig.sim.credit
    outcome = await provider.send(to(GERMAN_MOBILE, text="x" * 200))
    assert (outcome.kind, outcome.state) == (K.ACCEPTED, MessageState.ACCEPTED)
    assert outcome.provider_message_id == "phly-0a1b2c3d4e5f"
    assert outcome.parts == 2
    assert rig.sim.credit == before - 2
    sent = rig.sim.requests[-1]
    assert (sent["_method"], sent["mode"], sent["to"], sent["from"]) == (
        "POST",
        "sms",
        "004917712345678",
        "Bridge",
    )
    assert "pass" not in sent and sent["encpass"] == hashlib.md5(b"secretphly").hexdigest()


async def test_sim_get_with_the_plain_password_is_accepted_too(rig: Rig) -> None:
    provider = await rig.provider(method="GET", password_field="pass")
    outcome = await provider.send(to(GERMAN_MOBILE))
    assert outcome.kind is K.ACCEPTED
    sent = rig.sim.requests[-1]
    assert (sent["_method"], sent["pass"]) == ("GET", DEFAULT_PASSWORD)


async def test_sim_latin1_and_unicode_texts_arrive_intact(rig: Rig) -> None:
    provider = await rig.provider()
    for text in ("Grüße aus Köln, 5 £", "Привет, 5 €"):
        outcome = await provider.send(to(GERMAN_MOBILE, text=text))
        assert outcome.kind is K.ACCEPTED
    assert [(m.mode, m.text) for m in rig.sim.messages] == [
        ("sms", "Grüße aus Köln, 5 £"),
        ("utf", "Привет, 5 €"),
    ]


async def test_sim_wrong_password_is_402_and_the_password_stays_secret(rig: Rig) -> None:
    provider = await rig.provider(password="wrong-one")
    outcome = await provider.send(to(GERMAN_MOBILE))
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 402)
    assert "wrong-one" not in outcome.detail


async def test_sim_every_documented_code_reaches_the_adapter(rig: Rig) -> None:
    provider = await rig.provider()
    for code, kind in DOCUMENTED_SEND_CODES.items():
        outcome = await provider.send(to(f"49177123499{code}"))
        assert (outcome.kind, outcome.error_code) == (kind, code)


async def test_sim_no_credit_is_203(rig: Rig) -> None:
    provider = await rig.provider()
    rig.sim.credit = 1
    outcome = await provider.send(to(GERMAN_MOBILE, text="x" * 200))  # 2 SMS
    assert (outcome.kind, outcome.error_code) == (K.TRANSIENT, 203)
    assert rig.sim.messages == []


async def test_sim_http_500_is_transient(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(to("4917712345695"))
    assert (outcome.kind, outcome.detail) == (K.TRANSIENT, "HTTP 500")


async def test_sim_a_timeout_is_transient(rig: Rig) -> None:
    provider = await rig.provider(timeout=0.2)
    outcome = await provider.send(to("4917712345698"))
    assert outcome.kind is K.TRANSIENT
    assert "timeout" in outcome.detail


async def test_a_404_page_is_transient_not_a_refusal(rig: Rig) -> None:
    provider = await rig.provider(base_url=f"{rig.sim_url}/wrong/http.php")
    outcome = await provider.send(to(GERMAN_MOBILE))
    assert (outcome.kind, outcome.detail) == (K.TRANSIENT, "HTTP 404")


async def test_an_unsendable_message_makes_no_request(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(to(GERMAN_MOBILE, source=Address("My Shop", 5, 0)))
    assert (outcome.kind, outcome.error_code) == (K.PERMANENT, 1)
    assert rig.sim.requests == []


async def test_sim_health_reports_the_balance(rig: Rig) -> None:
    provider = await rig.provider()
    rig.sim.credit = 96.5
    assert await provider.healthy() is True
    assert rig.sinks.balances == [96.5]
    assert rig.sim.requests[-1]["mode"] == "synchro"


async def test_sim_health_by_connection_test(rig: Rig) -> None:
    provider = await rig.provider(health="test")
    assert await provider.healthy() is True
    assert rig.sim.requests[-1]["mode"] == "test"
    assert rig.sinks.balances == []


@pytest.mark.parametrize("health", ["synchro", "test"])
async def test_sim_wrong_credentials_are_unhealthy(rig: Rig, health: str) -> None:
    provider = await rig.provider(password="wrong", health=health)
    assert await provider.healthy() is False
    assert rig.sinks.balances == []


async def test_there_is_nothing_to_poll(rig: Rig) -> None:
    provider = await rig.provider()
    outcome = await provider.send(to(GERMAN_MOBILE))
    taken = to(GERMAN_MOBILE)
    taken.provider_message_id = outcome.provider_message_id
    assert await provider.poll([taken]) == []
    assert len(rig.sim.requests) == 1


# --------------------------------------------------------------------------- the simulator itself


def sim_params(**overrides: str) -> dict[str, str]:
    values = {
        "user": DEFAULT_USERNAME,
        "encpass": hashlib.md5(DEFAULT_PASSWORD.encode()).hexdigest(),
        "mode": "sms",
        "from": "Bridge",
        "to": "004917712345678",
        "text": "TEXT",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v != "<absent>"}


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({}, 100),
        ({"encpass": "<absent>", "pass": DEFAULT_PASSWORD}, 100),
        ({"encpass": hashlib.md5(DEFAULT_PASSWORD.encode()).hexdigest().upper()}, 100),
        ({"mode": "test"}, 100),
        ({"mode": "synchro"}, 100),
        ({"mode": "test", "encpass": "0" * 32}, 401),
        ({"mode": "synchro", "user": "someone"}, 402),
        ({"encpass": "<absent>"}, 402),
        ({"user": "<absent>"}, 402),
        ({"mode": "<absent>"}, 202),
        ({"mode": "fax"}, 202),
        ({"mode": "udh"}, 202),
        ({"text": ""}, 202),
        ({"to": "<absent>"}, 202),
        ({"to": "+4917712345678"}, 202),
        ({"from": "My Shop"}, 202),
        ({"from": "ABCDEFGHIJKL"}, 202),
        ({"text": "x" * 918}, 100),
        ({"text": "x" * 919}, 201),
        ({"mode": "utf", "text": "ж" * 402}, 100),
        ({"mode": "utf", "text": "ж" * 403}, 201),
        ({"to": "004917712399203"}, 203),
    ],
)
def test_simulator_checks_what_the_page_lists(overrides: dict[str, str], code: int) -> None:
    sim = PhlymailSimulator()
    answer = sim.handle(sim_params(**overrides))
    assert answer.endswith("\n")
    assert int(answer.split(" ", 1)[0]) == code, answer


def test_simulator_answers_the_sms_count_and_charges_it() -> None:
    sim = PhlymailSimulator(credit=10)
    assert sim.handle(sim_params(text="x" * 307)) == "100 3 SMS sent\n"
    assert sim.handle(sim_params(mode="utf", text="ж" * 71)) == "100 2 SMS sent\n"
    assert sim.credit == 5
    assert sim.handle(sim_params(mode="synchro")) == "100 Current credit: 5\n"
    sim.credit = 2
    assert sim.handle(sim_params(text="x" * 307)) == "203 Insufficient credit\n"


def test_simulator_reads_parameters_as_iso_8859_1_and_utf_mode_as_utf8() -> None:
    latin1 = PhlymailSimulator.decode([b"mode=sms&text=Gr%FC%DFe"])
    utf8 = PhlymailSimulator.decode([b"mode=utf&text=Gr%C3%BC%C3%9Fe"])
    assert latin1 is not None and latin1["text"] == "Grüße"
    assert utf8 is not None and utf8["text"] == "Grüße"
    assert PhlymailSimulator.decode([b"mode=utf&text=Gr%FC%DFe"]) is None  # not UTF-8
    # A form body wins over the query string, as PHP's $_REQUEST does.
    merged = PhlymailSimulator.decode([b"mode=test&user=a", b"user=b"])
    assert merged == {"mode": "test", "user": "b"}


async def test_simulator_refuses_invalid_utf8_in_utf_mode_over_http(rig: Rig) -> None:
    import aiohttp

    params = "user=demophly&pass=secretphly&mode=utf&from=Bridge&to=004917712345678&text=%FC"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{rig.sim_url}/http.php?{params}") as resp,
    ):
        body = await resp.read()
        assert resp.headers["content-type"] == "text/plain; charset=iso-8859-1"
    assert body.startswith(b"202 ")
    assert rig.sim.messages == []


async def test_simulator_fails_once_for_97_and_96(rig: Rig) -> None:
    provider = await rig.provider()
    first = [await provider.send(to(n)) for n in ("4917712345697", "4917712345696")]
    again = [await provider.send(to(n)) for n in ("4917712345697", "4917712345696")]
    assert [(o.kind, o.error_code) for o in first] == [(K.TRANSIENT, 0), (K.TRANSIENT, 203)]
    assert [o.kind for o in again] == [K.ACCEPTED, K.ACCEPTED]


async def test_simulator_serve_runs_until_cancelled() -> None:
    from bridge.simulators import phlymail as sim_module

    task = asyncio.create_task(sim_module.serve("127.0.0.1", 0, {"credit": "5"}))
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
