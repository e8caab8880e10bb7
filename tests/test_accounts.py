"""Accounts, bind authentication, the verification cache, passwords and the bind throttle."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

import bridge.core.accounts as accounts_module
from bridge.core.accounts import (
    ESME_RBINDFAIL,
    ESME_RINVPASWD,
    ESME_RINVSYSID,
    ESME_ROK,
    Account,
    AccountRegistry,
    BindThrottle,
    BindType,
)
from bridge.passwords import hash_password, is_hashed, parse_hash, verify_password

FAST = 1000  # pbkdf2 iterations for tests: the format is the same, the CPU cost is not


def account(**overrides: object) -> Account:
    fields: dict[str, object] = {"system_id": "demo", "password": "demopass"}
    fields.update(overrides)
    return Account(**fields)  # type: ignore[arg-type]


@pytest.fixture
def count_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every real password verification the registry performs."""
    calls: list[str] = []
    real = verify_password

    def counting(stored: str, given: str) -> bool:
        calls.append(stored)
        return real(stored, given)

    monkeypatch.setattr(accounts_module, "verify_password", counting)
    return calls


# --- passwords ------------------------------------------------------------------------------


def test_hash_has_the_documented_format_and_verifies() -> None:
    stored = hash_password("s3cret", iterations=FAST)
    scheme, iterations, _salt, _digest = stored.split("$")
    assert (scheme, iterations) == ("pbkdf2_sha256", str(FAST))
    assert is_hashed(stored)
    assert parse_hash(stored)[0] == FAST and len(parse_hash(stored)[1]) == 16
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cre")
    assert not verify_password(stored, "")


def test_hashing_is_salted() -> None:
    assert hash_password("same", iterations=FAST) != hash_password("same", iterations=FAST)


def test_default_iterations_are_100k() -> None:
    assert parse_hash(hash_password("pw"))[0] == 100_000


def test_plain_stored_password_is_compared_exactly() -> None:
    assert not is_hashed("demopass")
    assert verify_password("demopass", "demopass")
    assert not verify_password("demopass", "demopas")
    assert not verify_password("demopass", "DEMOPASS")


def test_malformed_hash_verifies_nothing() -> None:
    assert not verify_password("pbkdf2_sha256$x$y$z", "anything")
    assert not verify_password("pbkdf2_sha256$1000$$", "")


def test_unusable_smpp_passwords_cannot_be_hashed() -> None:
    with pytest.raises(ValueError, match="8 characters"):
        hash_password("ninechars")
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def test_hash_accepts_unpadded_and_padded_base64() -> None:
    stored = hash_password("pw", iterations=FAST)
    scheme, iterations, salt, digest = stored.split("$")
    padded = "$".join([scheme, iterations, salt + "=" * (-len(salt) % 4), digest + "="])
    assert verify_password(padded, "pw")


# --- accounts ---------------------------------------------------------------------------------


def test_password_is_never_in_account_repr() -> None:
    a = account(password="Zq9!x")
    assert "Zq9!x" not in repr(a)
    result = AccountRegistry([a]).authenticate("demo", "Zq9!x", BindType.TRANSMITTER, "127.0.0.1")
    assert "Zq9!x" not in repr(result)
    assert "Zq9!x" not in repr(
        AccountRegistry([a]).authenticate("demo", "wrongpw", BindType.TRANSMITTER, "127.0.0.1")
    )


def test_default_account_is_loopback_only_with_all_bind_types() -> None:
    a = account()
    assert a.allowed_bind_types == frozenset(BindType)
    assert a.ip_allowed("127.0.0.1") and a.ip_allowed("127.5.6.7") and a.ip_allowed("::1")
    assert not a.ip_allowed("10.0.0.1")


def test_ip_allow_list_handles_ipv4_ipv6_and_ipv4_mapped() -> None:
    a = account(allowed_networks=(ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")))
    assert a.ip_allowed("192.0.2.200")
    assert a.ip_allowed("::ffff:192.0.2.200")  # an IPv4 peer on a dual-stack socket
    assert a.ip_allowed("2001:db8:1::5")
    assert not a.ip_allowed("192.0.3.1")
    assert not a.ip_allowed("::ffff:192.0.3.1")
    assert not a.ip_allowed("2001:db9::1")


def test_ipv4_mapped_network_entry_also_matches() -> None:
    a = account(allowed_networks=(ip_network("::ffff:0:0/96"),))
    assert a.ip_allowed("::ffff:10.0.0.1")


def test_unparsable_peer_address_is_refused() -> None:
    a = account(allowed_networks=(ip_network("0.0.0.0/0"), ip_network("::/0")))
    assert not a.ip_allowed("")
    assert not a.ip_allowed("not-an-ip")
    assert not a.ip_allowed("unix:/tmp/sock")


def test_empty_allow_list_fails_closed() -> None:
    a = account(allowed_networks=())
    assert not a.ip_allowed("127.0.0.1")
    result = AccountRegistry([a]).authenticate(
        "demo", "demopass", BindType.TRANSCEIVER, "127.0.0.1"
    )
    assert result.status == ESME_RBINDFAIL


# --- authentication -------------------------------------------------------------------------


def test_correct_credentials_bind() -> None:
    a = account()
    result = AccountRegistry([a]).authenticate(
        "demo", "demopass", BindType.TRANSCEIVER, "127.0.0.1"
    )
    assert result.ok and result.status == ESME_ROK and result.account is a


def test_unknown_system_id_is_rejected_with_rinvsysid() -> None:
    result = AccountRegistry([account()]).authenticate(
        "nobody", "demopass", BindType.TRANSMITTER, "127.0.0.1"
    )
    assert (result.status, result.account) == (ESME_RINVSYSID, None)
    assert not result.ok


def test_wrong_password_is_rejected_with_rinvpaswd() -> None:
    result = AccountRegistry([account()]).authenticate(
        "demo", "wrong", BindType.TRANSMITTER, "127.0.0.1"
    )
    assert result.status == ESME_RINVPASWD
    assert "wrong" not in result.reason.replace("wrong password", "")


def test_disallowed_ip_is_rejected_with_rbindfail() -> None:
    result = AccountRegistry([account()]).authenticate(
        "demo", "demopass", BindType.TRANSMITTER, "192.0.2.1"
    )
    assert result.status == ESME_RBINDFAIL
    assert "192.0.2.1" in result.reason


def test_disallowed_ip_is_rejected_before_the_password_is_checked(
    count_verifications: list[str],
) -> None:
    # Hosts outside the allow-list must not be able to probe passwords or burn our CPU.
    result = AccountRegistry([account()]).authenticate(
        "demo", "wrong", BindType.TRANSMITTER, "192.0.2.1"
    )
    assert result.status == ESME_RBINDFAIL
    assert count_verifications == []


def test_disallowed_bind_type_is_rejected_with_rbindfail() -> None:
    registry = AccountRegistry([account(allowed_bind_types=frozenset({BindType.TRANSMITTER}))])
    assert registry.authenticate("demo", "demopass", BindType.RECEIVER, "::1").status == (
        ESME_RBINDFAIL
    )
    assert registry.authenticate("demo", "demopass", BindType.TRANSMITTER, "::1").ok


def test_wrong_password_takes_precedence_over_bind_type() -> None:
    registry = AccountRegistry([account(allowed_bind_types=frozenset({BindType.TRANSMITTER}))])
    result = registry.authenticate("demo", "nope", BindType.RECEIVER, "127.0.0.1")
    assert result.status == ESME_RINVPASWD


def test_hashed_password_authenticates() -> None:
    registry = AccountRegistry([account(password=hash_password("hashed", iterations=FAST))])
    assert registry.authenticate("demo", "hashed", BindType.TRANSMITTER, "127.0.0.1").ok
    wrong = registry.authenticate("demo", "hashe", BindType.TRANSMITTER, "127.0.0.1")
    assert wrong.status == ESME_RINVPASWD


def test_successful_hash_verification_is_cached(count_verifications: list[str]) -> None:
    registry = AccountRegistry([account(password=hash_password("hashed", iterations=FAST))])
    assert registry.would_block("demo", "hashed")
    for _ in range(5):
        assert registry.authenticate("demo", "hashed", BindType.TRANSMITTER, "127.0.0.1").ok
    assert len(count_verifications) == 1
    assert not registry.would_block("demo", "hashed")


def test_cache_does_not_accept_a_different_password(count_verifications: list[str]) -> None:
    registry = AccountRegistry([account(password=hash_password("hashed", iterations=FAST))])
    assert registry.authenticate("demo", "hashed", BindType.TRANSMITTER, "127.0.0.1").ok
    wrong = registry.authenticate("demo", "hashex", BindType.TRANSMITTER, "127.0.0.1")
    assert wrong.status == ESME_RINVPASWD
    # A failure is cached too (issue 14, finding 7): the same guess again costs no hashing,
    # and is still refused.
    assert not registry.would_block("demo", "hashex")
    again = registry.authenticate("demo", "hashex", BindType.TRANSMITTER, "127.0.0.1")
    assert again.status == ESME_RINVPASWD
    assert len(count_verifications) == 2
    # The right password still verifies from its own cache entry.
    assert registry.authenticate("demo", "hashed", BindType.TRANSMITTER, "127.0.0.1").ok


def test_cache_never_holds_the_plain_password() -> None:
    registry = AccountRegistry([account(password=hash_password("Zq9!x", iterations=FAST))])
    assert registry.authenticate("demo", "Zq9!x", BindType.TRANSMITTER, "127.0.0.1").ok
    cached = registry._verified["demo"]
    assert b"Zq9!x" not in cached and len(cached) == 32


def test_replace_invalidates_the_cache(count_verifications: list[str]) -> None:
    old = account(password=hash_password("oldpass", iterations=FAST))
    registry = AccountRegistry([old])
    assert registry.authenticate("demo", "oldpass", BindType.TRANSMITTER, "127.0.0.1").ok

    registry.replace([account(password=hash_password("newpass", iterations=FAST))])
    stale = registry.authenticate("demo", "oldpass", BindType.TRANSMITTER, "127.0.0.1")
    assert stale.status == ESME_RINVPASWD
    assert registry.authenticate("demo", "newpass", BindType.TRANSMITTER, "127.0.0.1").ok
    assert len(count_verifications) == 3

    registry.replace([old])  # same account again: still re-verified once
    assert registry.authenticate("demo", "oldpass", BindType.TRANSMITTER, "127.0.0.1").ok
    assert len(count_verifications) == 4


def test_replace_removes_accounts() -> None:
    registry = AccountRegistry([account(), account(system_id="other")])
    registry.replace([account(system_id="other")])
    assert registry.get("demo") is None and registry.get("other") is not None
    result = registry.authenticate("demo", "demopass", BindType.TRANSMITTER, "127.0.0.1")
    assert result.status == ESME_RINVSYSID


def test_duplicate_system_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        AccountRegistry([account(), account()])


def test_plain_passwords_are_not_cached_and_never_block() -> None:
    registry = AccountRegistry([account()])
    assert not registry.would_block("demo", "demopass")
    assert not registry.would_block("unknown", "x")
    registry.authenticate("demo", "demopass", BindType.TRANSMITTER, "127.0.0.1")
    assert registry._verified == {}


def test_bind_limit() -> None:
    registry = AccountRegistry([account(max_binds=2)])
    assert not registry.bind_limit_reached("demo", 0)
    assert not registry.bind_limit_reached("demo", 1)
    assert registry.bind_limit_reached("demo", 2)
    assert registry.bind_limit_reached("unknown", 0)


# --- bind throttle ---------------------------------------------------------------------------


def test_first_failure_waits_base_delay_then_doubles() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0)
    assert throttle.delay_for("192.0.2.1", now=0.0) == 0.0
    delays = [throttle.record_failure("192.0.2.1", now=float(i)) for i in range(5)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert throttle.delay_for("192.0.2.1", now=5.0) == 16.0


def test_delay_is_capped() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0)
    for i in range(200):
        throttle.record_failure("192.0.2.1", now=float(i))
    assert throttle.delay_for("192.0.2.1", now=200.0) == 30.0


def test_success_resets_the_delay() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0)
    for i in range(3):
        throttle.record_failure("192.0.2.1", now=float(i))
    throttle.record_success("192.0.2.1")
    assert throttle.delay_for("192.0.2.1", now=3.0) == 0.0
    assert throttle.record_failure("192.0.2.1", now=4.0) == 1.0


def test_addresses_are_throttled_independently() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0)
    throttle.record_failure("192.0.2.1", now=0.0)
    throttle.record_failure("192.0.2.1", now=0.0)
    assert throttle.record_failure("192.0.2.2", now=0.0) == 1.0


def test_ipv4_mapped_and_same_ipv6_64_share_a_counter() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0)
    throttle.record_failure("192.0.2.1", now=0.0)
    assert throttle.record_failure("::ffff:192.0.2.1", now=0.0) == 2.0
    throttle.record_failure("2001:db8::1", now=0.0)
    assert throttle.record_failure("2001:db8::ffff:2", now=0.0) == 2.0
    assert throttle.record_failure("2001:db8:0:1::1", now=0.0) == 1.0


def test_failures_are_forgotten_after_a_quiet_period() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0, forget_after=600.0)
    for i in range(4):
        throttle.record_failure("192.0.2.1", now=float(i))
    assert throttle.delay_for("192.0.2.1", now=603.0) == 0.0
    assert throttle.record_failure("192.0.2.1", now=603.0) == 1.0


def test_memory_is_bounded_by_evicting_the_oldest() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0, max_tracked=3)
    for i, ip in enumerate(["10.0.0.1", "10.0.0.2", "10.0.0.3"]):
        throttle.record_failure(ip, now=float(i))
    throttle.record_failure("10.0.0.1", now=3.0)  # refreshes .1; .2 is now the oldest
    throttle.record_failure("10.0.0.4", now=4.0)
    assert len(throttle) == 3
    assert throttle.failures("10.0.0.2", now=4.0) == 0
    assert throttle.failures("10.0.0.1", now=4.0) == 2
    assert throttle.failures("10.0.0.3", now=4.0) == 1
    assert throttle.failures("10.0.0.4", now=4.0) == 1


def test_expired_entries_are_dropped_from_memory() -> None:
    throttle = BindThrottle(base_delay=1.0, max_delay=30.0, forget_after=10.0)
    for i in range(100):
        throttle.record_failure(f"10.0.0.{i}", now=0.0)
    throttle.record_failure("10.0.1.1", now=20.0)
    assert len(throttle) == 1


def test_zero_base_delay_disables_throttling() -> None:
    throttle = BindThrottle(base_delay=0.0, max_delay=0.0)
    assert throttle.record_failure("10.0.0.1", now=0.0) == 0.0
