"""Typed configuration: TOML (stdlib ``tomllib``) validated by pydantic v2.

Why this shape:

* ``extra="forbid"`` everywhere, so a typo (``prot = 2775``) is an error instead of a silently
  ignored key and a default that surprises someone in production.
* Strict types: ``port = "2775"`` is an error, not a coercion; TOML has real types, use them.
* Every problem is reported at once, each as ``FILE:LINE: key.path: message``. tomllib gives no
  positions for valid TOML, so :class:`_LineIndex` scans the text to map a key path such as
  ``("accounts", 1, "tps")`` to the line of ``tps`` inside the second ``[[accounts]]`` table.
* Secrets never appear in messages: pydantic error inputs are never echoed, and password
  problems say what is wrong without the value. Passwords are held as ``SecretStr``.
* ``env:VAR`` passwords are resolved at load time so a missing variable fails ``check-config``
  and startup, not the first bind at 3 a.m.
* Relative paths resolve against the config file's directory, so the daemon behaves the same
  whatever directory it is started from.

The conversion to domain objects lives here (:meth:`AccountConfig.to_account`) so that
``bridge.core`` never imports configuration code.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.core.accounts import Account, BindType, IPNetwork
from bridge.observability import DEFAULT_REDACT_KEYS
from bridge.passwords import MAX_SMPP_PASSWORD_LENGTH, is_hashed, parse_hash
from bridge.providers import (
    isms_http,
    isms_smpp,
    mycoolsms,
    phlymail,
    sandbox,
    sms1601,
    smsflatrate,
)
from bridge.providers.registry import PROVIDER_TYPES as _REGISTRY
from bridge.providers.settings import Secret, resolve_env

__all__ = [
    "AccountConfig",
    "AdminConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "HttpConfig",
    "LoggingConfig",
    "ProviderConfig",
    "SandboxConfig",
    "SmppConfig",
    "StorageConfig",
    "TlsConfig",
    "apply_overrides",
    "load_config",
    "load_config_text",
]

DEFAULT_SMPP_HOST = "127.0.0.1"
#: The ``type`` values of ``[providers.NAME]``, from the one registry (bridge.providers.registry).
PROVIDER_TYPES = tuple(_REGISTRY)
MAX_SYSTEM_ID_LENGTH = 15  # SMPP 3.4: C-Octet String, max 16 octets including the NUL


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file. ``path`` is like ``accounts[1].tps`` ("" for syntax
    errors); ``line`` is 1-based, or None when the key does not appear in the text."""

    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used. ``str(e)`` lists every problem, one per line."""

    def __init__(self, errors: list[ConfigProblem], source: str = "<string>") -> None:
        self.errors = errors
        self.source = source
        super().__init__("\n".join(p.format(source) for p in errors))


# --------------------------------------------------------------------------------------------
# Field types


def _check_system_id(value: str) -> str:
    if not 1 <= len(value) <= MAX_SYSTEM_ID_LENGTH or not all("\x21" <= c <= "\x7e" for c in value):
        raise ValueError(
            f"must be 1..{MAX_SYSTEM_ID_LENGTH} printable ASCII characters without spaces"
        )
    return value


def _parse_network(value: object) -> object:
    """Accept ``"10.0.0.0/8"``, ``"::1/128"`` or a bare address (a /32 or /128)."""
    if not isinstance(value, str):
        raise ValueError('must be a string such as "10.0.0.0/8"')
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        try:
            # Host bits set: almost certainly a typo for the containing network; say which.
            suggestion = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"not a valid IP network: {exc}") from None
        raise ValueError(
            f"{value!r} has host bits set; did you mean {str(suggestion)!r}?"
        ) from None


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


Port = Annotated[int, Field(ge=0, le=65535)]  # 0 = any free port (tests)
# Finite only: "inf" or "nan" for a timeout or a limit is refused (a timeout of inf never
# times out, which is what the timeouts are there to prevent).
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SystemId = Annotated[
    str, BeforeValidator(lambda v: _check_system_id(v) if isinstance(v, str) else v)
]
Network = Annotated[IPNetwork, BeforeValidator(_parse_network)]
# Paths come from TOML strings; strict mode would only accept Path objects.
PathField = Annotated[Path, Field(strict=False)]
BindTypeField = Annotated[BindType, Field(strict=False)]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if not value.is_absolute():
        value = (Path(base) if base is not None else Path.cwd()) / value
    # Lexical clean-up only ("config/../data" -> "data"); symlinks are the operator's business.
    return Path(os.path.normpath(value))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------------------------
# Sections


class TlsConfig(_Section):
    """``[smpp.tls]``: a second, TLS-wrapped SMPP listener; present means enabled."""

    host: str = DEFAULT_SMPP_HOST  # defaulted to smpp.host by SmppConfig
    port: Port = 2776
    cert: PathField
    key: PathField

    @field_validator("cert", "key")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


class SmppConfig(_Section):
    """``[smpp]``: the SMSC side that ESMEs bind to."""

    host: str = DEFAULT_SMPP_HOST
    port: Port = 2775
    system_id: SystemId = "smppbridge"
    session_init_timeout: PosFloat = 30.0
    enquire_link_interval: NonNegFloat = 30.0
    inactivity_timeout: NonNegFloat = 300.0
    response_timeout: PosFloat = 30.0
    window: Annotated[int, Field(ge=1)] = 10
    max_pdu_size: Annotated[int, Field(ge=512, le=16 * 1024 * 1024)] = 70000
    max_connections: Annotated[int, Field(ge=1)] = 1000
    bind_failure_delay: NonNegFloat = 1.0
    bind_failure_delay_max: NonNegFloat = 30.0
    shutdown_timeout: NonNegFloat = 10.0
    # connection admission and log sampling (README "Connection admission")
    max_unbound_per_address: Annotated[int, Field(ge=1)] = 10
    bind_reserve: Annotated[int, Field(ge=0)] = 100
    allowed_ips: Annotated[list[Network], Field(min_length=1)] | None = None
    log_sample_interval: PosFloat = 10.0
    stalled_receiver_timeout: NonNegFloat = 60.0
    # brute force (README "Binds")
    reveal_bind_errors: bool = False
    bind_lockout_failures: Annotated[int, Field(ge=0)] = 10
    bind_lockout_duration: PosFloat = 300.0
    hash_workers: Annotated[int, Field(ge=1, le=64)] = 1
    hash_max_pending: Annotated[int, Field(ge=1)] = 16
    tls: TlsConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _tls_host_defaults_to_smpp_host(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("tls"), dict):
            tls = data["tls"]
            if "host" not in tls:
                host = data.get("host", DEFAULT_SMPP_HOST)
                data = {**data, "tls": {**tls, "host": host}}
        return data

    @field_validator("bind_failure_delay_max")
    @classmethod
    def _max_not_below_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("bind_failure_delay")
        if base is not None and value < base:
            raise ValueError("must be >= smpp.bind_failure_delay")
        return value


class _ListenerLimits(_Section):
    """Slowloris protection of an HTTP listener (bridge.web.guard): a request's headers must
    arrive within ``header_timeout`` seconds of the connection opening (or of the previous
    response), its body within ``body_timeout`` seconds after that; one client address may
    hold at most ``max_connections_per_ip`` connections (0 = no cap), the next get 503."""

    header_timeout: PosFloat = 10.0
    body_timeout: PosFloat = 30.0
    max_connections_per_ip: Annotated[int, Field(ge=0)] = 64


class HttpConfig(_ListenerLimits):
    """``[http]``: provider callbacks, /metrics, /healthz."""

    host: str = "127.0.0.1"
    port: Port = 8080
    # How providers reach this server, for the callback URLs given to them (dlr-url,
    # callbackurl …): "https://bridge.example.com" behind a proxy. Default: http://host:port.
    public_url: str | None = None
    # Secret the per-provider callback tokens are derived from (env:VAR allowed). Default: a
    # random one created in the data directory at first start (callback.secret).
    callback_secret: Secret | None = None

    @field_validator("public_url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        if value is not None:
            if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value):
                raise ValueError('must be an absolute http(s) URL such as "https://bridge.example.com"')
            value = value.rstrip("/")
        return value


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address or "localhost") reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminConfig(_ListenerLimits):
    """``[admin]``: the operator's listener: admin API, status page, /metrics, /healthz,
    /readyz. Kept off the ``[http]`` port, which faces the providers (and so the internet).

    Every API call and the status page need the token (``Authorization: Bearer TOKEN``, or
    HTTP basic auth with the token as password for the page). Without ``token`` the bridge
    creates a random one once in the data directory (``admin.token``, mode 0600), where
    the CLI finds it.
    """

    host: str = "127.0.0.1"
    port: Port = 8081
    token: Secret | None = None
    # /metrics needs the token too unless this is false (a scraper on a private network that
    # cannot send one; account names and balances are in the metrics).
    metrics_auth: bool = True
    # No authentication at all: accepted only for a loopback-only listener, for a developer's
    # machine. Anyone with a shell on the host can then pause providers and purge queues.
    allow_unauthenticated: bool = False

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (use a random string)")
        return value

    @field_validator("allow_unauthenticated")
    @classmethod
    def _only_on_loopback(cls, value: bool, info: ValidationInfo) -> bool:
        host = info.data.get("host", "127.0.0.1")
        if value and not _is_loopback(host):
            raise ValueError(
                f"only allowed when admin.host is a loopback address (it is {host!r}); "
                "set a token instead"
            )
        return value


class StorageConfig(_Section):
    """``[storage]``: where the durable queue lives."""

    data_dir: Annotated[PathField, Field(validate_default=True)] = Path("data")
    # Messages in a final state are kept this long (for query_sm and history), then purged;
    # 0 keeps them for ever.
    retention: NonNegFloat = 7 * 86400.0
    # Below this much free space (MiB) on data_dir's filesystem, new submits are refused with
    # ESME_RMSGQFUL and /readyz says not ready, before the store itself runs out: what is
    # accepted keeps room for its provider, report and receipt records. 0 turns the check off.
    min_free_mb: Annotated[int, Field(ge=0)] = 256
    # Seconds a finished message stays in memory (a late duplicate report is recognised
    # there, query_sm answers without the disk) before it moves to the archive on disk
    # (store/finals.db), where query_sm, trace and history still find it until `retention`.
    archive_after: NonNegFloat = 3600.0
    # Cluster mode (README, "Running several nodes"): a Redis URL (redis://HOST:PORT/DB,
    # rediss:// for TLS, unix:///path.sock) or "env:VAR"; absent = the embedded store.
    url: Annotated[str | None, BeforeValidator(resolve_env)] = None
    # Redis AUTH password (or in the URL); plain or "env:VAR".
    password: Secret | None = None
    # Every key the bridge writes in Redis starts with this (several bridges on one Redis).
    prefix: Annotated[str, Field(min_length=1, max_length=64)] = "sb:"
    # Seconds a Redis command may take before it counts as failed (submits get ESME_RSYSERR).
    timeout: PosFloat = 5.0

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return _check_store_url(value)

    @field_validator("data_dir")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _check_store_url(value: str | None) -> str | None:
    # The value is never echoed: it may hold a password.
    if value is None:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix") or not rest:
        raise ValueError(
            "must be a Redis URL: redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH"
        )
    return value


def _check_node_id(value: str) -> str:
    if not _NODE_ID_RE.fullmatch(value):
        raise ValueError(
            "must be 1..63 characters: letters, digits, '_', '.', '-', starting with a letter "
            "or digit"
        )
    return value


def _optional_node_id(value: str | None) -> str | None:
    return None if value is None else _check_node_id(value)


class ClusterConfig(_Section):
    """``[cluster]``: this node's place among several on one Redis (``storage.url``)."""

    # The node's name in Redis (its consumer name, heartbeats) and in the metrics; absent = the
    # host name. Every node of a cluster needs its own.
    node_id: Annotated[str | None, AfterValidator(_optional_node_id)] = None
    # Seconds between heartbeats (and lease renewals, and looks at other nodes' receipts).
    heartbeat_interval: PosFloat = 0.5
    # A node silent this long is dead: its unfinished work moves to a live node, its delivery
    # leases to whoever has a receiver bound. Must be well above heartbeat_interval.
    dead_after: PosFloat = 10.0

    @model_validator(mode="after")
    def _dead_after_exceeds_interval(self) -> ClusterConfig:
        if self.dead_after < 3 * self.heartbeat_interval:
            raise ValueError("dead_after must be at least 3 × heartbeat_interval")
        return self

    @property
    def node(self) -> str:
        return self.node_id or _default_node_id()


def _default_node_id() -> str:
    name = socket.gethostname().split(".")[0] or "node"
    return name if _NODE_ID_RE.fullmatch(name) else "node"


class LoggingConfig(_Section):
    """``[logging]``."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["auto", "json", "console"], BeforeValidator(_lower)] = "auto"
    # Event keys logged as "***": secrets and message content. Replaces the default list, so
    # keep the secret names when adding to it; drop "text" only to debug text handling.
    redact: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: list(DEFAULT_REDACT_KEYS)
    )


_ALL_BIND_TYPES = [BindType.TRANSMITTER, BindType.RECEIVER, BindType.TRANSCEIVER]


class AccountConfig(_Section):
    """One ``[[accounts]]`` table: an ESME allowed to bind."""

    system_id: SystemId
    password: SecretStr
    allowed_bind_types: list[BindTypeField] = Field(default_factory=lambda: list(_ALL_BIND_TYPES))
    # Default loopback only. [] is refused: it would admit nobody (to lock an account out,
    # remove it).
    allowed_ips: list[Network] = Field(
        default_factory=lambda: [
            ipaddress.ip_network("127.0.0.0/8"),
            ipaddress.ip_network("::1/128"),
        ]
    )
    max_binds: Annotated[int, Field(ge=1)] = 10
    tps: NonNegFloat = 0.0  # 0 = unlimited
    max_outstanding: Annotated[int, Field(ge=1)] = 100
    default_region: str | None = None
    # How message ids look in submit_sm_resp and receipts; some ESMEs store them as numbers.
    message_id_format: Literal["hex", "decimal"] = "hex"
    # What data_coding 0 and 1 mean: real ESMEs send Latin-1 under 0, or GSM 03.38 under 1.
    data_coding_0: Literal["gsm7", "latin1", "ascii"] = "gsm7"
    data_coding_1: Literal["ascii", "gsm7", "latin1"] = "ascii"
    # Also check numbers against the numbering-plan metadata (which lags new ranges): opt-in.
    strict_numbers: bool = False
    default_validity: PosFloat = 48 * 3600.0  # seconds, when the ESME gives no validity_period
    # Receiving numbers whose inbound SMS (MO) this account gets as deliver_sm: E.164 digits
    # ("491701234567"), or a prefix ending in "*" ("4917012345*"). The longest match wins.
    inbound_numbers: list[Annotated[str, Field(pattern=r"^\+?[0-9]{1,15}\*?$")]] = Field(
        default_factory=list
    )

    @field_validator("password", mode="before")
    @classmethod
    def _resolve_password(cls, value: Any, info: ValidationInfo) -> Any:
        """Resolve ``env:VAR`` and check the result; messages never contain the value."""
        if not isinstance(value, str):
            return value  # pydantic reports the type error
        origin = ""
        if value.startswith("env:"):
            var = value[4:]
            if not var:
                raise ValueError('"env:" must be followed by an environment variable name')
            env: Mapping[str, str] = (info.context or {}).get("env", os.environ)
            if var not in env:
                raise ValueError(f"environment variable {var} is not set")
            value = env[var]
            origin = f" (from environment variable {var})"
        if is_hashed(value):
            try:
                parse_hash(value)
            except ValueError as exc:
                raise ValueError(f"{exc}{origin}") from None
            return value
        if not value:
            raise ValueError(f"must not be empty{origin}")
        if len(value) > MAX_SMPP_PASSWORD_LENGTH:
            raise ValueError(
                f"plain password is longer than {MAX_SMPP_PASSWORD_LENGTH} characters, "
                f"the SMPP 3.4 limit{origin}"
            )
        if not all(" " <= c <= "~" for c in value):
            raise ValueError(f"must contain only printable ASCII characters{origin}")
        return value

    @field_validator("allowed_ips")
    @classmethod
    def _someone_allowed(cls, value: list[IPNetwork]) -> list[IPNetwork]:
        if not value:
            raise ValueError(
                "must list at least one network: [] would let nobody bind (remove the account "
                'to lock it out; "0.0.0.0/0" and "::/0" admit everyone)'
            )
        return value

    @field_validator("default_region", mode="before")
    @classmethod
    def _region_code(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not re.fullmatch(r"[A-Za-z]{2}", value):
                raise ValueError('must be an ISO 3166 alpha-2 country code such as "DE"')
            return value.upper()
        return value

    def to_account(self) -> Account:
        """The domain view of this account, for :class:`bridge.core.accounts.AccountRegistry`."""
        return Account(
            system_id=self.system_id,
            password=self.password.get_secret_value(),
            allowed_bind_types=frozenset(self.allowed_bind_types),
            allowed_networks=tuple(self.allowed_ips),
            max_binds=self.max_binds,
            tps=self.tps,
            max_outstanding=self.max_outstanding,
            default_region=self.default_region,
        )


class PipelineConfig(_Section):
    """``[pipeline]``: queue limits, reassembly and receipt delivery."""

    max_queue: Annotated[int, Field(ge=1)] = 1_000_000  # beyond: ESME_RMSGQFUL
    reassembly_timeout: PosFloat = 60.0  # seconds for all parts of a concatenated message
    receipt_max_age: PosFloat = 3 * 86400.0  # queued receipts/MO for an unbound account expire
    delivery_window: Annotated[int, Field(ge=1)] = 64  # deliver_sm in flight per account
    delivery_retry: PosFloat = 5.0  # seconds before a refused or unanswered deliver_sm is retried
    retry_base: PosFloat = 1.0  # provider retry backoff: base * 2**attempt, with jitter
    retry_max: PosFloat = 300.0
    # Providers without push (or messages whose push never came) are polled: first after
    # poll_interval seconds, then at doubling intervals up to poll_backoff_max.
    poll_interval: PosFloat = 60.0
    poll_backoff_max: PosFloat = 1800.0
    # Providers that push reports are asked too when a message's report has not come this many
    # seconds after its send (a push lost on the way, or sent while the bridge was down). 0: never.
    push_poll_after: NonNegFloat = 900.0
    # Circuit breaker per provider: this many transient failures in a row (no answer, 5xx,
    # throttled) stop sends to it for breaker_cooldown seconds (doubling while its probes fail,
    # up to breaker_cooldown_max); messages with another provider on their route fail over at
    # once. 0 disables it. While a circuit is open, the provider's health check (balance or
    # connection test) is asked every breaker_health_interval seconds (0: never); a healthy
    # answer closes the circuit at once and polls its messages awaiting a report.
    breaker_failures: Annotated[int, Field(ge=0)] = 10
    breaker_cooldown: PosFloat = 5.0
    breaker_cooldown_max: PosFloat = 30.0
    breaker_health_interval: NonNegFloat = 5.0


# The sandbox's table lives beside its adapter, like every provider's (bridge.providers.sandbox).
SandboxRuleConfig = sandbox.RuleSettings
SandboxConfig = sandbox.Settings


def _provider_type(value: Any) -> str:
    """The union's tag: ``type``, "sandbox" when the table has none."""
    if isinstance(value, dict):
        tag = value.get("type", "sandbox")
        return tag if isinstance(tag, str) else ""
    return str(getattr(value, "type", ""))


#: One ``[providers.NAME]`` table; its ``type`` says which adapter and which keys. Spelled out
#: for the type checker; tests/test_config.py checks it names exactly the registry's types.
ProviderConfig = Annotated[
    Annotated[SandboxConfig, Tag("sandbox")]
    | Annotated[phlymail.Settings, Tag("phlymail")]
    | Annotated[smsflatrate.Settings, Tag("smsflatrate")]
    | Annotated[mycoolsms.Settings, Tag("mycoolsms")]
    | Annotated[sms1601.Settings, Tag("sms1601")]
    | Annotated[isms_http.Settings, Tag("isms_http")]
    | Annotated[isms_smpp.Settings, Tag("isms_smpp")],
    Discriminator(
        _provider_type,
        custom_error_type="provider_type",
        custom_error_message="unknown provider type; one of: "
        + ", ".join(PROVIDER_TYPES),
    ),
]


class RouteConfig(_Section):
    """``[[routes]]``: the first rule that matches a message gives its providers, in failover
    order. No routes: everything goes to the first provider."""

    name: str = ""
    providers: Annotated[list[str], Field(min_length=1)]
    accounts: list[str] | None = None
    countries: list[str] | None = None  # ISO 3166 alpha-2 of the destination
    prefixes: list[str] | None = None  # E.164 digit prefixes of the destination
    regex: str | None = None  # on the E.164 destination digits

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        # Here, not when the router is built: check-config reports it with its line, `run`
        # refuses the file without a traceback, and a SIGHUP with it applies nothing.
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


def _default_providers() -> dict[str, ProviderConfig]:
    return {"sandbox": SandboxConfig()}


_SECTIONS = ("smpp", "http", "admin", "storage", "logging", "pipeline", "cluster")


class Config(_Section):
    """The whole configuration. ``source_path`` is the file it came from (None for text)."""

    smpp: SmppConfig
    http: HttpConfig
    admin: AdminConfig
    storage: StorageConfig
    cluster: ClusterConfig
    logging: LoggingConfig
    pipeline: PipelineConfig
    accounts: Annotated[list[AccountConfig], Field(min_length=1)]
    providers: dict[str, ProviderConfig] = Field(
        default_factory=lambda: _default_providers()
    )
    routes: list[RouteConfig] = Field(default_factory=list)
    source_path: PathField | None = None
    # ``--set KEY=VALUE`` overrides it was loaded with, so that SIGHUP re-applies them.
    command_line_sets: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _sections_default_to_empty_tables(cls, data: Any) -> Any:
        # Validate absent sections as {} (not via a default instance) so validators that need
        # the context, such as path resolution, still run for their defaults.
        if isinstance(data, dict):
            data = {**{name: {} for name in _SECTIONS}, **data}
        return data

    def to_accounts(self) -> list[Account]:
        return [a.to_account() for a in self.accounts]

    @model_validator(mode="after")
    def _routes_name_known_providers(self) -> Config:
        for i, route in enumerate(self.routes):
            for name in route.providers:
                if name not in self.providers:
                    raise ValueError(
                        f"routes[{i}].providers: unknown provider {name!r} "
                        f"(configured: {', '.join(sorted(self.providers)) or 'none'})"
                    )
        return self


# Which model describes the table at a key path (list indices dropped): for "did you mean".
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): Config,
    ("smpp",): SmppConfig,
    ("smpp", "tls"): TlsConfig,
    ("http",): HttpConfig,
    ("admin",): AdminConfig,
    ("storage",): StorageConfig,
    ("cluster",): ClusterConfig,
    ("logging",): LoggingConfig,
    ("accounts",): AccountConfig,
    ("pipeline",): PipelineConfig,
    ("routes",): RouteConfig,
}
# Keys that exist on the models but must not be set from the file.
_INTERNAL_KEYS: dict[tuple[str, ...], set[str]] = {(): {"source_path", "command_line_sets"}}


# --------------------------------------------------------------------------------------------
# Line numbers


_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_TABLE_RE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
_ARRAY_RE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]\s*(?:#.*)?$")
_KEYVAL_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_KEY_PART_RE = re.compile(_KEY)

Loc = tuple[str | int, ...]


def _split_dotted(dotted: str) -> list[str]:
    parts = []
    for raw in _KEY_PART_RE.findall(dotted):
        if raw[:1] in "\"'":
            raw = raw[1:-1]
        parts.append(raw)
    return parts


class _LineIndex:
    """Maps key paths to 1-based line numbers by scanning TOML text (which must have parsed).

    Handles ``[table]``, ``[[array.of.tables]]`` (counting elements so ``accounts[1]`` is the
    second ``[[accounts]]``), dotted keys, and skips multi-line strings. Keys inside inline
    tables map to the inline table's key, which is close enough to find the problem.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.where: dict[Loc, int] = {}
        self._key_lines: list[int] = []  # lines that start a key or header, for range ends
        arrays: dict[Loc, int] = {}
        table: Loc = ()
        in_multiline: str | None = None

        def resolve(parts: list[str]) -> Loc:
            out: list[str | int] = []
            for part in parts:
                out.append(part)
                count = arrays.get(tuple(out))
                if count:
                    out.append(count - 1)
            return tuple(out)

        for number, line in enumerate(self.lines, start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if m := _ARRAY_RE.match(line):
                parts = _split_dotted(m.group(1))
                array = (*resolve(parts[:-1]), parts[-1])
                arrays[array] = arrays.get(array, 0) + 1
                table = (*array, arrays[array] - 1)
                self.where.setdefault(table, number)
                self.where.setdefault(array, number)
                self._key_lines.append(number)
            elif m := _TABLE_RE.match(line):
                table = resolve(_split_dotted(m.group(1)))
                self.where.setdefault(table, number)
                self._key_lines.append(number)
            elif m := _KEYVAL_RE.match(line):
                parts = _split_dotted(m.group(1))
                for i in range(1, len(parts) + 1):
                    self.where.setdefault((*table, *parts[:i]), number)
                self._key_lines.append(number)
                rest = line[m.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break

    def line_of(self, loc: Loc, value: object = None) -> int | None:
        """Line of the deepest known prefix of ``loc``; for an array element whose string
        value is known, the line inside a multi-line array that holds it."""
        for end in range(len(loc), 0, -1):
            prefix = loc[:end]
            line = self.where.get(prefix)
            if line is None:
                continue
            if end == len(loc) - 1 and isinstance(loc[-1], int) and isinstance(value, str):
                return self._element_line(line, value) or line
            return line
        return None

    def _element_line(self, key_line: int, value: str) -> int | None:
        stop = next((n for n in self._key_lines if n > key_line), len(self.lines) + 1)
        needles = (f'"{value}"', f"'{value}'")
        for number in range(key_line, stop):
            if any(n in self.lines[number - 1] for n in needles):
                return number
        return None


# --------------------------------------------------------------------------------------------
# Turning pydantic errors into problems

_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be an array",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "path_type": "must be a string (a file path)",
}


def _toml_type(value: object) -> str:
    # Only the type is shown, never the value: the value might be a password.
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def format_loc(loc: Loc) -> str:
    """``("accounts", 1, "tps")`` -> ``accounts[1].tps``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _message(error: Mapping[str, Any]) -> str:
    kind: str = error["type"]
    loc: Loc = tuple(error["loc"])
    if loc == ("accounts",) and kind in ("missing", "too_short"):
        return "at least one [[accounts]] table is required"
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent = tuple(p for p in loc[:-1] if isinstance(p, str))
        model = _MODEL_AT.get(parent)
        hint = ""
        if model is not None and isinstance(loc[-1], str):
            known = set(model.model_fields) - _INTERNAL_KEYS.get(parent, set())
            close = difflib.get_close_matches(loc[-1], sorted(known), n=1)
            if close:
                hint = f"; did you mean {close[0]!r}?"
        return f"unknown key{hint}"
    if kind in _TYPE_WORDS:
        return f"{_TYPE_WORDS[kind]}, got {_toml_type(error.get('input'))}"
    msg: str = error["msg"]
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        msg = "must be " + msg.removeprefix("Input should be ")
    return msg


def _duplicate_system_ids(raw: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    accounts = raw.get("accounts")
    if not isinstance(accounts, list):
        return []
    first: dict[str, int] = {}
    found: list[tuple[Loc, str]] = []
    for i, table in enumerate(accounts):
        if not isinstance(table, dict):
            continue
        sid = table.get("system_id")
        if not isinstance(sid, str):
            continue
        if sid in first:
            found.append(
                (
                    ("accounts", i, "system_id"),
                    f"duplicate system_id, already used by accounts[{first[sid]}]",
                )
            )
        else:
            first[sid] = i
    return found


def _unknown_route_providers(raw: Mapping[str, Any]) -> list[tuple[Loc, str, object]]:
    """Routes naming a provider that is not configured, found in the same pass as every other
    problem (a model validator would only run once everything else is valid, and could not
    point at the line)."""
    providers = raw.get("providers", {"sandbox": {}})
    routes = raw.get("routes", [])
    if not isinstance(providers, dict) or not isinstance(routes, list):
        return []  # the type error is reported by validation
    known = sorted(providers)
    found: list[tuple[Loc, str, object]] = []
    for i, route in enumerate(routes):
        names = route.get("providers") if isinstance(route, dict) else None
        if not isinstance(names, list):
            continue
        for j, name in enumerate(names):
            if not isinstance(name, str) or name in providers:
                continue
            msg = f"unknown provider {name!r} (configured: {', '.join(known) or 'none'})"
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            found.append((("routes", i, "providers", j), msg, name))
    return found


# --------------------------------------------------------------------------------------------
# Loading


class _SetError(ValueError):
    """A ``--set`` that cannot be applied; ``loc`` is as far as its key got."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _apply_set(raw: dict[str, Any], item: str) -> Loc:
    """Apply one ``dotted.key=value`` to the parsed file; returns the key's location."""
    key, sep, text = item.partition("=")
    if not sep or not re.fullmatch(_DOTTED, key.strip()):
        raise _SetError((), "wants dotted.key=value")
    parts = _split_dotted(key.strip())
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # not a TOML value: a bare string, such as a URL
    node: Any = raw
    loc: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise _SetError(tuple(loc), f"wants an index below {len(node)}, not {part!r}")
            loc.append(int(part))
            if last:
                raise _SetError(tuple(loc), "cannot replace a whole table")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise _SetError(tuple(loc), "is not a table")
        loc.append(part)
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
    return tuple(loc)


def _load(
    text: str,
    *,
    source: str,
    base_dir: Path | None,
    env: Mapping[str, str] | None,
    source_path: Path | None,
    sets: Sequence[str] = (),
) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        line = None
        if m := re.search(r"\(at line (\d+), column (\d+)\)", msg):
            line = int(m.group(1))
            msg = msg.replace(m.group(0), f"(column {m.group(2)})")
        elif m := re.search(r"\(at end of document\)", msg):
            line = max(1, len(text.splitlines()))
        raise ConfigError([ConfigProblem("", f"invalid TOML: {msg}", line)], source) from None

    index = _LineIndex(text)
    found: list[tuple[Loc, str, object]] = []

    for internal in _INTERNAL_KEYS[()]:
        if internal in raw:
            found.append(((internal,), "unknown key", None))
            del raw[internal]
    overridden: list[Loc] = []
    set_problems: list[ConfigProblem] = []
    for item in sets:
        try:
            overridden.append(_apply_set(raw, item))
        except _SetError as e:
            set_problems.append(ConfigProblem(format_loc(e.loc), f"--set {item}: {e}"))
    found.extend((loc, msg, None) for loc, msg in _duplicate_system_ids(raw))
    found.extend(_unknown_route_providers(raw))

    context = {
        "base_dir": base_dir if base_dir is not None else Path.cwd(),
        "env": env if env is not None else os.environ,
    }
    config: Config | None = None
    try:
        config = Config.model_validate(
            {**raw, "source_path": source_path, "command_line_sets": tuple(sets)},
            context=context,
        )
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_context=False):
            loc = tuple(error["loc"])
            if len(loc) > 3 and loc[0] == "providers" and loc[2] in PROVIDER_TYPES:
                loc = loc[:2] + loc[3:]  # the union's tag is not a key of the file
            found.append((loc, _message(error), error.get("input")))

    if found or set_problems or config is None:
        problems = list(set_problems)
        for loc, msg, value in found:
            if any(loc[: len(key)] == key for key in overridden):
                problems.append(ConfigProblem(format_loc(loc), f"{msg} (set by --set)"))
            else:
                problems.append(ConfigProblem(format_loc(loc), msg, index.line_of(loc, value)))
        problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(problems, source)
    return config


def load_config_text(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    sets: Sequence[str] = (),
) -> Config:
    """Parse and validate config text. Relative paths resolve against ``base_dir`` (default: the
    current directory); ``env:`` passwords are looked up in ``env`` (default: ``os.environ``).
    ``sets`` are ``dotted.key=value`` overrides (see :func:`load_config`).
    Raises :class:`ConfigError` listing every problem."""
    return _load(text, source=source, base_dir=base_dir, env=env, source_path=None, sets=sets)


def load_config(
    path: str | Path, *, env: Mapping[str, str] | None = None, sets: Sequence[str] = ()
) -> Config:
    """Load a config file; relative paths inside it resolve against its directory.

    ``sets``: ``dotted.key=value`` overrides from the command line (``--set``), applied to the
    parsed file before validation, so they are checked exactly like the file's own values (and
    a relative path in one resolves against the file's directory too). The value is read as a
    TOML value when it is one (``2790``, ``true``, ``["a", "b"]``, ``"quoted"``), else as a
    string (``http://127.0.0.1:9500/``). A number in the key indexes an array of tables
    (``accounts.0.password``). Problems in an overridden key name the key, not a line.
    """
    path = Path(path).absolute()
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem("", f"cannot read config file: {exc.strerror or exc}")], str(path)
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            [ConfigProblem("", "config file is not valid UTF-8")], str(path)
        ) from None
    return _load(
        text, source=str(path), base_dir=path.parent, env=env, source_path=path, sets=sets
    )


def apply_overrides(
    cfg: Config,
    *,
    smpp_port: int | None = None,
    http_port: int | None = None,
    admin_port: int | None = None,
    data_dir: str | Path | None = None,
    store_url: str | None = None,
    node_id: str | None = None,
) -> Config:
    """Apply command-line overrides. A relative ``data_dir`` here resolves against the current
    directory, as command-line paths do."""
    problems = [
        ConfigProblem(name, "must be 0..65535")
        for name, port in (
            ("smpp.port", smpp_port),
            ("http.port", http_port),
            ("admin.port", admin_port),
        )
        if port is not None and not 0 <= port <= 65535
    ]
    for name, check, value in (
        ("--store-url", _check_store_url, store_url),
        ("--node-id", _check_node_id, node_id),
    ):
        if value is not None:
            try:
                check(value)
            except ValueError as exc:
                problems.append(ConfigProblem(name, str(exc)))
    if problems:
        raise ConfigError(problems, "command line")
    update: dict[str, Any] = {}
    if smpp_port is not None:
        update["smpp"] = cfg.smpp.model_copy(update={"port": smpp_port})
    if http_port is not None:
        update["http"] = cfg.http.model_copy(update={"port": http_port})
    if admin_port is not None:
        update["admin"] = cfg.admin.model_copy(update={"port": admin_port})
    storage: dict[str, Any] = {}
    if data_dir is not None:
        storage["data_dir"] = Path(os.path.normpath(Path(data_dir).absolute()))
    if store_url is not None:
        storage["url"] = store_url
    if storage:
        update["storage"] = cfg.storage.model_copy(update=storage)
    if node_id is not None:
        update["cluster"] = cfg.cluster.model_copy(update={"node_id": node_id})
    return cfg.model_copy(update=update)
