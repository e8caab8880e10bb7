"""Config loading: defaults, shipped files, and errors that point at the right key and line."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from bridge.config import (
    Config,
    ConfigError,
    ConfigProblem,
    apply_overrides,
    load_config,
    load_config_text,
)
from bridge.core.accounts import BindType
from bridge.passwords import hash_password, verify_password

REPO = Path(__file__).resolve().parent.parent
MINIMAL = """\
[[accounts]]
system_id = "demo"
password = "demopass"
"""


def problems(text: str, **kwargs: object) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, **kwargs)  # type: ignore[arg-type]
    return info.value.errors


def only_problem(text: str, **kwargs: object) -> ConfigProblem:
    found = problems(text, **kwargs)
    assert len(found) == 1, found
    return found[0]


# --- loading -------------------------------------------------------------------------------


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config_text(MINIMAL, base_dir=tmp_path)
    assert (cfg.smpp.host, cfg.smpp.port, cfg.smpp.system_id) == ("127.0.0.1", 2775, "smppbridge")
    assert cfg.smpp.session_init_timeout == 30.0
    assert cfg.smpp.enquire_link_interval == 30.0
    assert cfg.smpp.inactivity_timeout == 300.0
    assert cfg.smpp.response_timeout == 30.0
    assert cfg.smpp.window == 10
    assert cfg.smpp.max_pdu_size == 70000
    assert cfg.smpp.max_connections == 1000
    assert (cfg.smpp.bind_failure_delay, cfg.smpp.bind_failure_delay_max) == (1.0, 30.0)
    assert cfg.smpp.shutdown_timeout == 10.0
    assert cfg.smpp.tls is None
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8080)
    assert cfg.storage.data_dir == tmp_path / "data"
    assert (cfg.logging.level, cfg.logging.format) == ("info", "auto")
    assert cfg.source_path is None

    (account,) = cfg.accounts
    assert account.allowed_bind_types == list(BindType)
    assert account.allowed_ips == [ip_network("127.0.0.0/8"), ip_network("::1/128")]
    assert (account.max_binds, account.tps, account.max_outstanding) == (10, 0.0, 100)
    assert account.default_region is None


def test_shipped_bridge_toml_loads_and_runs_on_loopback() -> None:
    cfg = load_config(REPO / "config" / "bridge.toml", env={})
    assert (cfg.smpp.host, cfg.smpp.port) == ("127.0.0.1", 2775)
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8080)
    assert cfg.storage.data_dir == REPO / "data"
    assert cfg.source_path == REPO / "config" / "bridge.toml"
    (demo,) = cfg.to_accounts()
    assert demo.system_id == "demo"
    assert verify_password(demo.password, "demopass")
    assert demo.tps == 0
    assert demo.allowed_bind_types == frozenset(BindType)
    assert demo.ip_allowed("127.0.0.1") and demo.ip_allowed("::1")
    assert not demo.ip_allowed("192.0.2.1")


def test_full_example_loads_with_every_option() -> None:
    cfg = load_config(
        REPO / "config" / "examples" / "full.toml",
        env={
            "BRIDGE_BILLING_PASSWORD": "s3cret",
            "BRIDGE_CALLBACK_SECRET": "cb-secret",
            "BRIDGE_ADMIN_TOKEN": "admin-token-0123456789",
        },
    )
    assert cfg.http.public_url == "https://sms-bridge.example.com"
    assert (cfg.admin.host, cfg.admin.port, cfg.admin.metrics_auth) == ("127.0.0.1", 8081, True)
    assert cfg.admin.token is not None
    assert cfg.admin.token.get_secret_value() == "admin-token-0123456789"
    assert cfg.http.callback_secret is not None
    assert cfg.http.callback_secret.get_secret_value() == "cb-secret"
    assert cfg.pipeline.poll_interval == 60
    assert [r.name for r in cfg.routes] == ["germany", "everything else"]
    assert cfg.smpp.tls is not None
    assert cfg.smpp.tls.cert == REPO / "config" / "examples" / "tls" / "bridge.crt"
    accounts = {a.system_id: a for a in cfg.to_accounts()}
    assert verify_password(accounts["billing"].password, "s3cret")
    assert verify_password(accounts["alerts"].password, "example1")
    assert accounts["alerts"].allowed_bind_types == frozenset({BindType.TRANSMITTER})


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "bridge.toml"
    path.write_text(
        '[storage]\ndata_dir = "../var/data"\n'
        '[smpp.tls]\ncert = "tls/c.pem"\nkey = "/abs/k.pem"\n' + MINIMAL
    )
    cfg = load_config(path)
    assert cfg.storage.data_dir == tmp_path / "var" / "data"
    assert cfg.smpp.tls is not None
    assert cfg.smpp.tls.cert == tmp_path / "etc" / "tls" / "c.pem"
    assert cfg.smpp.tls.key == Path("/abs/k.pem")


def test_tls_host_defaults_to_the_smpp_host() -> None:
    cfg = load_config_text(
        '[smpp]\nhost = "0.0.0.0"\n[smpp.tls]\ncert = "c"\nkey = "k"\n' + MINIMAL
    )
    assert cfg.smpp.tls is not None
    assert (cfg.smpp.tls.host, cfg.smpp.tls.port) == ("0.0.0.0", 2776)


def test_config_is_immutable() -> None:
    cfg = load_config_text(MINIMAL)
    with pytest.raises(ValueError):
        setattr(cfg.smpp, "port", 1)  # noqa: B010 (assignment must fail: frozen)


def test_overrides_replace_ports_and_data_dir(tmp_path: Path) -> None:
    cfg = load_config_text(MINIMAL)
    new = apply_overrides(cfg, smpp_port=0, http_port=9090, data_dir=tmp_path / "d")
    assert (new.smpp.port, new.http.port, new.storage.data_dir) == (0, 9090, tmp_path / "d")
    assert cfg.smpp.port == 2775  # the original is untouched
    assert apply_overrides(cfg) == cfg


def test_override_with_invalid_port_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"smpp\.port"):
        apply_overrides(load_config_text(MINIMAL), smpp_port=70000)


# --- error reporting -----------------------------------------------------------------------


def test_unknown_key_is_reported_with_its_line_and_a_suggestion() -> None:
    p = only_problem('[smpp]\nhost = "127.0.0.1"\nprot = 2775\n' + MINIMAL)
    assert (p.path, p.line) == ("smpp.prot", 3)
    assert "unknown key" in p.message and "'port'" in p.message


def test_unknown_key_in_second_account_names_that_account() -> None:
    text = MINIMAL + '\n[[accounts]]\nsystem_id = "other"\npassword = "x"\ntsp = 5\n'
    p = only_problem(text)
    assert (p.path, p.line) == ("accounts[1].tsp", 8)


def test_unknown_section_is_reported() -> None:
    p = only_problem("[smtp]\nport = 25\n" + MINIMAL)
    assert (p.path, p.line) == ("smtp", 1)


def test_wrong_type_is_reported_with_key_and_line() -> None:
    p = only_problem('[smpp]\nport = "2775"\n' + MINIMAL, source="bridge.toml")
    assert (p.path, p.line) == ("smpp.port", 2)
    assert p.message == "must be an integer, got a string"


def test_wrong_type_in_account_is_reported_with_key_and_line() -> None:
    p = only_problem(MINIMAL + 'max_binds = "ten"\n')
    assert (p.path, p.line) == ("accounts[0].max_binds", 4)


def test_error_message_has_file_line_path_and_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text('[smpp]\nport = "x"\nwindow = 0\n' + MINIMAL, source="bridge.toml")
    assert str(info.value).splitlines() == [
        "bridge.toml:2: smpp.port: must be an integer, got a string",
        "bridge.toml:3: smpp.window: must be greater than or equal to 1",
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = '[smpp]\nport = -1\n[logging]\nlevel = "loud"\n' + MINIMAL + "tps = -5\n"
    assert [p.path for p in problems(text)] == [
        "smpp.port",
        "logging.level",
        "accounts[0].tps",
    ]


def test_missing_required_key_points_at_its_table() -> None:
    p = only_problem('[smpp]\nport = 2775\n\n[[accounts]]\nsystem_id = "demo"\n')
    assert (p.path, p.line) == ("accounts[0].password", 4)
    assert p.message == "required key is missing"


def test_no_accounts_is_an_error() -> None:
    p = only_problem("[smpp]\nport = 2775\n")
    assert p.path == "accounts"
    assert "at least one [[accounts]]" in p.message
    assert "at least one [[accounts]]" in only_problem("accounts = []\n").message


def test_toml_syntax_error_is_reported_with_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("[smpp]\nport = 2775\nhost = \n", source="bridge.toml")
    (p,) = info.value.errors
    assert p.line == 3
    assert str(info.value).startswith("bridge.toml:3: invalid TOML")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")


def test_source_path_cannot_be_set_from_the_file() -> None:
    p = only_problem('source_path = "/etc/passwd"\n' + MINIMAL)
    assert (p.path, p.line, p.message) == ("source_path", 1, "unknown key")


def test_duplicate_system_id_is_reported_on_the_second_account() -> None:
    text = MINIMAL + '\n[[accounts]]\nsystem_id = "demo"\npassword = "other"\n'
    p = only_problem(text)
    assert (p.path, p.line) == ("accounts[1].system_id", 6)
    assert "duplicate" in p.message


@pytest.mark.parametrize("system_id", ["", "sixteen-chars-xx", "has space", "ümlaut"])
def test_invalid_system_id_is_rejected(system_id: str) -> None:
    p = only_problem(f'[[accounts]]\nsystem_id = "{system_id}"\npassword = "pw"\n')
    assert (p.path, p.line) == ("accounts[0].system_id", 2)


def test_smpp_system_id_over_15_chars_is_rejected() -> None:
    p = only_problem('[smpp]\nsystem_id = "a-very-long-system-id"\n' + MINIMAL)
    assert (p.path, p.line) == ("smpp.system_id", 2)


def test_bind_failure_delay_max_below_base_is_rejected() -> None:
    p = only_problem("[smpp]\nbind_failure_delay = 5.0\nbind_failure_delay_max = 2.0\n" + MINIMAL)
    assert (p.path, p.line) == ("smpp.bind_failure_delay_max", 3)


def test_logging_level_is_case_insensitive_but_checked() -> None:
    assert load_config_text('[logging]\nlevel = "DEBUG"\n' + MINIMAL).logging.level == "debug"
    p = only_problem('[logging]\nlevel = "verbose"\n' + MINIMAL)
    assert (p.path, p.line) == ("logging.level", 2)


def test_unknown_bind_type_is_rejected() -> None:
    p = only_problem(MINIMAL + 'allowed_bind_types = ["transmitter", "sender"]\n')
    assert (p.path, p.line) == ("accounts[0].allowed_bind_types[1]", 4)


def test_default_region_is_normalised_and_checked() -> None:
    assert load_config_text(MINIMAL + 'default_region = "de"\n').accounts[0].default_region == "DE"
    p = only_problem(MINIMAL + 'default_region = "DEU"\n')
    assert (p.path, p.line) == ("accounts[0].default_region", 4)


def test_dotted_keys_and_inline_tables_still_get_lines() -> None:
    found = problems('smpp.port = "x"\nhttp = { port = "y" }\n' + MINIMAL)
    assert [(q.path, q.line) for q in found] == [("smpp.port", 1), ("http.port", 2)]


def test_multiline_strings_do_not_confuse_line_numbers() -> None:
    text = (
        '[smpp]\nsystem_id = "x"\n'
        "# a comment with [[accounts]] in it\n"
        '[http]\nhost = """\n[[accounts]]\nport = 1\n"""\n' + MINIMAL + "tps = -1\n"
    )
    p = only_problem(text)
    assert (p.path, p.line) == ("accounts[0].tps", 12)


# --- passwords ------------------------------------------------------------------------------


def test_plain_password_over_8_chars_is_rejected() -> None:
    p = only_problem('[[accounts]]\nsystem_id = "demo"\npassword = "ninechars"\n')
    assert (p.path, p.line) == ("accounts[0].password", 3)
    assert "8 characters" in p.message


def test_empty_password_is_rejected() -> None:
    p = only_problem('[[accounts]]\nsystem_id = "demo"\npassword = ""\n')
    assert p.path == "accounts[0].password"


def test_env_password_is_resolved_from_the_environment() -> None:
    text = '[[accounts]]\nsystem_id = "demo"\npassword = "env:DEMO_PW"\n'
    cfg = load_config_text(text, env={"DEMO_PW": "fromenv"})
    assert cfg.accounts[0].password.get_secret_value() == "fromenv"


def test_env_password_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TEST_PW", "osenv")
    text = '[[accounts]]\nsystem_id = "demo"\npassword = "env:BRIDGE_TEST_PW"\n'
    assert load_config_text(text).accounts[0].password.get_secret_value() == "osenv"


def test_env_password_with_missing_variable_names_key_and_variable() -> None:
    text = '[[accounts]]\nsystem_id = "demo"\npassword = "env:DEMO_PW"\n'
    p = only_problem(text, env={}, source="bridge.toml")
    assert (p.path, p.line) == ("accounts[0].password", 3)
    assert "DEMO_PW" in p.message and "not set" in p.message


def test_env_password_is_checked_after_resolution() -> None:
    text = '[[accounts]]\nsystem_id = "demo"\npassword = "env:DEMO_PW"\n'
    p = only_problem(text, env={"DEMO_PW": "waytoolongpassword"})
    assert "8 characters" in p.message and "DEMO_PW" in p.message
    assert "waytoolongpassword" not in p.message


def test_env_password_may_hold_a_hash() -> None:
    text = '[[accounts]]\nsystem_id = "demo"\npassword = "env:DEMO_PW"\n'
    cfg = load_config_text(text, env={"DEMO_PW": hash_password("hashed")})
    assert verify_password(cfg.to_accounts()[0].password, "hashed")


def test_hashed_password_loads_and_verifies() -> None:
    stored = hash_password("s3cret", iterations=1000)
    cfg = load_config_text(f'[[accounts]]\nsystem_id = "demo"\npassword = "{stored}"\n')
    account = cfg.accounts[0].to_account()
    assert account.password == stored
    assert verify_password(account.password, "s3cret")
    assert not verify_password(account.password, "s3cre")


def test_malformed_hash_is_rejected() -> None:
    text = '[[accounts]]\nsystem_id = "demo"\npassword = "pbkdf2_sha256$lots$abc$def"\n'
    p = only_problem(text)
    assert (p.path, p.line) == ("accounts[0].password", 3)
    assert "malformed password hash" in p.message


def test_password_is_never_in_repr_or_errors() -> None:
    secret = "Zq9!x"
    text = f'[[accounts]]\nsystem_id = "demo"\npassword = "{secret}"\n'
    cfg = load_config_text(text)
    assert secret not in repr(cfg) and secret not in str(cfg)
    assert secret not in repr(cfg.to_accounts())

    long_secret = "Zq9!x-too-long"
    bad = f'[[accounts]]\nsystem_id = "demo"\npassword = "{long_secret}"\ntps = "x"\n'
    with pytest.raises(ConfigError) as info:
        load_config_text(bad)
    assert long_secret not in str(info.value)
    assert all(long_secret not in repr(p) for p in info.value.errors)

    # A password of the wrong type, or under a misspelt key, is not echoed either.
    for wrong in ('password = ["Zq9!x"]', 'pasword = "Zq9!x"\npassword = "ok"'):
        with pytest.raises(ConfigError) as info:
            load_config_text(f'[[accounts]]\nsystem_id = "demo"\n{wrong}\n')
        assert secret not in str(info.value)


# --- IP allow-lists -------------------------------------------------------------------------


def test_allowed_ips_accept_ipv4_ipv6_and_bare_addresses() -> None:
    cfg = load_config_text(MINIMAL + 'allowed_ips = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]\n')
    account = cfg.accounts[0].to_account()
    assert account.ip_allowed("10.1.2.3")
    assert account.ip_allowed("2001:db8::1")
    assert account.ip_allowed("::ffff:10.9.9.9")  # IPv4-mapped
    assert account.ip_allowed("192.0.2.7") and not account.ip_allowed("192.0.2.8")
    assert not account.ip_allowed("127.0.0.1")


def test_empty_allowed_ips_is_refused_with_a_clear_error() -> None:
    # Issue 14, finding 11: [] was accepted and locked the account out without a word.
    p = only_problem(MINIMAL + "allowed_ips = []\n")
    assert (p.path, p.line) == ("accounts[0].allowed_ips", 4)
    assert "at least one network" in p.message


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_an_infinite_timeout_is_refused(value: str) -> None:
    p = only_problem(f"[smpp]\nsession_init_timeout = {value}\n" + MINIMAL)
    assert (p.path, p.line) == ("smpp.session_init_timeout", 2)
    assert "finite" in p.message


def test_a_route_regex_that_does_not_compile_is_reported_with_its_line_and_key() -> None:
    text = MINIMAL + '[[routes]]\nproviders = ["sandbox"]\nregex = "^49(1[5-7"\n'
    p = only_problem(text)
    assert (p.path, p.line) == ("routes[0].regex", 6)
    assert "not a valid regular expression" in p.message


def test_allow_all_networks() -> None:
    text = MINIMAL + 'allowed_ips = ["0.0.0.0/0", "::/0"]\n'
    account = load_config_text(text).accounts[0].to_account()
    assert account.ip_allowed("203.0.113.9") and account.ip_allowed("2001:db8::9")


def test_bad_cidr_is_reported_with_its_line() -> None:
    text = MINIMAL + 'allowed_ips = [\n    "127.0.0.0/8",\n    "10.0.0.0/33",\n]\n'
    p = only_problem(text)
    assert (p.path, p.line) == ("accounts[0].allowed_ips[1]", 6)
    assert "10.0.0.0/33" in p.message


def test_cidr_with_host_bits_suggests_the_network() -> None:
    p = only_problem(MINIMAL + 'allowed_ips = ["10.1.2.3/8"]\n')
    assert (p.path, p.line) == ("accounts[0].allowed_ips[0]", 4)
    assert "10.0.0.0/8" in p.message


def test_allowed_ips_must_be_strings() -> None:
    p = only_problem(MINIMAL + "allowed_ips = [127]\n")
    assert p.path == "accounts[0].allowed_ips[0]"


def test_config_model_can_be_built_directly() -> None:
    # Other components' tests build configs in code; defaults must be usable there too.
    cfg = Config.model_validate({"accounts": [{"system_id": "a", "password": "b"}]})
    assert cfg.smpp.port == 2775


# --------------------------------------------------------------------------- --set


def test_set_overrides_values_of_the_file_before_validation() -> None:
    cfg = load_config_text(
        MINIMAL,
        sets=[
            "smpp.port=2790",  # TOML integer
            "http.public_url=http://127.0.0.1:9000",  # not TOML: a bare string
            'logging.level="debug"',  # quoted TOML string
            "accounts.0.tps=50",  # a number indexes an array of tables
            'accounts.0.allowed_ips=["10.0.0.0/8"]',
        ],
    )
    assert cfg.smpp.port == 2790
    assert cfg.http.public_url == "http://127.0.0.1:9000"
    assert cfg.logging.level == "debug"
    assert cfg.accounts[0].tps == 50
    assert cfg.accounts[0].allowed_ips == [ip_network("10.0.0.0/8")]
    assert cfg.command_line_sets == (
        "smpp.port=2790",
        "http.public_url=http://127.0.0.1:9000",
        'logging.level="debug"',
        "accounts.0.tps=50",
        'accounts.0.allowed_ips=["10.0.0.0/8"]',
    )


def test_set_is_validated_like_the_file_and_its_errors_name_the_key_not_a_line() -> None:
    text = MINIMAL + "[smpp]\nport = 2775\n"
    found = problems(text, sets=["smpp.port=99999", "smpp.prot=1", "accounts.3.tps=1", "x"])
    messages = {(p.path, p.line): p.message for p in found}
    assert "(set by --set)" in messages[("smpp.port", None)]
    assert "unknown key" in messages[("smpp.prot", None)]
    assert messages[("accounts", None)] == "--set accounts.3.tps=1: wants an index below 1, not '3'"
    assert messages[("", None)] == "--set x: wants dotted.key=value"


def test_a_config_file_cannot_set_the_command_line_sets() -> None:
    problem = only_problem('command_line_sets = ["smpp.port=1"]\n' + MINIMAL)
    assert (problem.path, problem.message) == ("command_line_sets", "unknown key")


def test_run_check_config_and_callback_urls_take_set_and_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import main

    path = tmp_path / "b.toml"
    path.write_text(MINIMAL + f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    assert main(["check-config", "--config", str(path), "--set", "smpp.port=2790"]) == 0
    assert main(["check-config", str(path), "--set", "smpp.port=-1"]) == 2
    err = capsys.readouterr().err
    assert "smpp.port" in err and "(set by --set)" in err


# --------------------------------------------------------------------------- what was understood


def test_a_route_naming_an_unknown_provider_is_reported_with_its_line_in_the_first_pass() -> None:
    text = (
        "[smpp]\nport = 99999\n"  # another problem: both come out together
        + MINIMAL
        + '[providers.sandbox]\ndelay = 1.0\n'
        + '[[routes]]\nproviders = ["sandbox",\n             "sandbx"]\n'
    )
    found = problems(text)
    assert [(p.path, p.line) for p in found] == [("smpp.port", 2), ("routes[0].providers[1]", 10)]
    assert found[1].message == (
        "unknown provider 'sandbx' (configured: sandbox); did you mean 'sandbox'?"
    )


def test_check_config_prints_the_accounts_providers_and_routes_it_understood(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.cli import main

    env = {
        "BRIDGE_CALLBACK_SECRET": "x",
        "BRIDGE_BILLING_PASSWORD": "y",
        "BRIDGE_ADMIN_TOKEN": "admin-token-0123456789",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["check-config", str(REPO / "config" / "examples" / "full.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("full.toml: OK")
    text = "\n".join(out)
    assert "accounts (3):" in text and "providers (1):" in text and "routes (2)" in text
    assert "billing: transmitter, receiver, transceiver from 192.0.2.0/24, 2001:db8:10::/48;" in (
        text
    )
    assert "alerts: transmitter from 198.51.100.7/32; max 1 binds; tps 5/s" in text
    assert "sandbox (sandbox): built in, reports 1 s after each send" in text
    assert "1. germany: accounts billing and countries DE and prefixes 49 -> sandbox" in text
    assert "2. everything else: regex ^[0-9]+$ -> sandbox" in text
    assert "example1" not in text and "pbkdf2" not in text and "testpass" not in text


# --------------------------------------------------------------------------- cluster mode


def test_cluster_mode_settings_and_their_command_line_overrides(tmp_path: Path) -> None:
    cfg = load_config_text(
        MINIMAL
        + '[storage]\nurl = "env:REDIS_URL"\npassword = "env:REDIS_PW"\n'
        + '[cluster]\nnode_id = "node-a"\n',
        env={"REDIS_URL": "rediss://redis.example:6380/2", "REDIS_PW": "pw"},
    )
    assert cfg.storage.url == "rediss://redis.example:6380/2"
    assert cfg.storage.password is not None and cfg.storage.password.get_secret_value() == "pw"
    assert cfg.cluster.node == "node-a"
    assert load_config_text(MINIMAL).storage.url is None  # the embedded store by default
    assert load_config_text(MINIMAL).cluster.node  # the host name
    moved = apply_overrides(cfg, store_url="redis://10.0.0.1:6379/0", node_id="node-b")
    assert (moved.storage.url, moved.cluster.node) == ("redis://10.0.0.1:6379/0", "node-b")


def test_a_store_url_that_is_not_redis_is_reported_with_its_line_never_its_value() -> None:
    p = only_problem(MINIMAL + '[storage]\nurl = "http://user:s3cret@example.com/"\n')
    assert (p.path, p.line) == ("storage.url", MINIMAL.count("\n") + 2)
    assert "redis://" in p.message and "s3cret" not in p.message


def test_a_bad_node_id_and_a_missing_password_variable_are_reported() -> None:
    found = problems(
        MINIMAL + '[storage]\npassword = "env:NOPE_NOT_SET"\n[cluster]\nnode_id = "a b"\n',
        env={},
    )
    assert {p.path for p in found} == {"storage.password", "cluster.node_id"}


def test_bad_store_url_or_node_id_on_the_command_line_is_an_error() -> None:
    cfg = load_config_text(MINIMAL)
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, store_url="localhost:6379", node_id="")
    assert {p.path for p in info.value.errors} == {"--store-url", "--node-id"}
    assert str(info.value).startswith("command line: ")


def test_the_typed_provider_union_names_exactly_the_registrys_types() -> None:
    import typing

    from pydantic import Tag

    from bridge.providers.registry import PROVIDER_TYPES, ProviderConfig

    union, _discriminator = typing.get_args(ProviderConfig)
    tags = {}
    for member in typing.get_args(union):
        settings, tag = typing.get_args(member)
        assert isinstance(tag, Tag)
        tags[tag.tag] = settings
    assert tags == {name: t.settings for name, t in PROVIDER_TYPES.items()}


def test_every_provider_type_has_its_docs_page_and_simulator_module() -> None:
    import importlib
    from pathlib import Path

    from bridge.providers.registry import PROVIDER_TYPES
    from bridge.simulators import SIMULATORS

    root = Path(__file__).resolve().parent.parent
    for name, t in PROVIDER_TYPES.items():
        assert (root / t.docs).is_file(), name
        if t.simulator is not None:
            assert hasattr(importlib.import_module(t.simulator), "serve"), name
            assert SIMULATORS[name] == t.simulator
