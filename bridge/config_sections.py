"""The sections of the config file as typed models: ``[smpp]``, ``[http]``, ``[admin]``,
``[storage]``, ``[cluster]``, ``[logging]``, ``[pipeline]``, ``[[accounts]]``, ``[[routes]]``.

Why a module of its own: these are what a key *means* — its type, default, range and the
checks that go with it — while :mod:`bridge.config` is how a file becomes a :class:`Config`
(reading, ``--set``, every problem with its line, see :mod:`bridge.config_toml`). The
``[providers.NAME]`` tables are declared beside each adapter (``bridge/providers``) and joined
in :data:`bridge.providers.registry.ProviderConfig`.

The rules every section follows:

* ``extra="forbid"``, so a typo (``prot = 2775``) is an error instead of a silently ignored key
  and a default that surprises someone in production.
* Strict types: ``port = "2775"`` is an error, not a coercion; TOML has real types, use them.
* Secrets never appear in messages: password problems say what is wrong without the value.
  Passwords are held as ``SecretStr``; ``env:VAR`` is resolved at load time, so a missing
  variable fails ``check-config`` and startup, not the first bind at 3 a.m.
* Relative paths resolve against the config file's directory, so the daemon behaves the same
  whatever directory it is started from.

The conversion to domain objects lives here (:meth:`AccountConfig.to_account`) so that
``bridge.core`` never imports configuration code.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.core.accounts import Account, BindType, IPNetwork
from bridge.logs import DEFAULT_REDACT_KEYS
from bridge.passwords import MAX_SMPP_PASSWORD_LENGTH, is_hashed, parse_hash
from bridge.providers.settings import NonNegFloat, PosFloat, Secret, resolve_env

__all__ = [
    "AccountConfig",
    "AdminConfig",
    "ClusterConfig",
    "HttpConfig",
    "LoggingConfig",
    "PipelineConfig",
    "RouteConfig",
    "Section",
    "SmppConfig",
    "StorageConfig",
    "TlsConfig",
    "check_node_id",
    "check_store_url",
]

DEFAULT_SMPP_HOST = "127.0.0.1"
MAX_SYSTEM_ID_LENGTH = 15  # SMPP 3.4: C-Octet String, max 16 octets including the NUL


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
# NonNegFloat, PosFloat (bridge.providers.settings): finite only, "inf" or "nan" for a timeout
# or a limit is refused (a timeout of inf never times out, which is what timeouts prevent).
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


class Section(BaseModel):
    """What every table of the file is: unknown keys refused, types strict, values frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------------------------
# Sections


class TlsConfig(Section):
    """``[smpp.tls]``: a second, TLS-wrapped SMPP listener; present means enabled."""

    host: str = DEFAULT_SMPP_HOST  # defaulted to smpp.host by SmppConfig
    port: Port = 2776
    cert: PathField
    key: PathField

    @field_validator("cert", "key")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


class SmppConfig(Section):
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


class _ListenerLimits(Section):
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


class StorageConfig(Section):
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
        return check_store_url(value)

    @field_validator("data_dir")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_store_url(value: str | None) -> str | None:
    # The value is never echoed: it may hold a password.
    if value is None:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix") or not rest:
        raise ValueError(
            "must be a Redis URL: redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH"
        )
    return value


def check_node_id(value: str) -> str:
    if not _NODE_ID_RE.fullmatch(value):
        raise ValueError(
            "must be 1..63 characters: letters, digits, '_', '.', '-', starting with a letter "
            "or digit"
        )
    return value


def _optional_node_id(value: str | None) -> str | None:
    return None if value is None else check_node_id(value)


class ClusterConfig(Section):
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


class LoggingConfig(Section):
    """``[logging]``."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["auto", "json", "console"], BeforeValidator(_lower)] = "auto"
    # Event keys logged as "***": secrets and message content. Replaces the default list, so
    # keep the secret names when adding to it; drop "text" only to debug text handling.
    redact: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: list(DEFAULT_REDACT_KEYS)
    )


_ALL_BIND_TYPES = [BindType.TRANSMITTER, BindType.RECEIVER, BindType.TRANSCEIVER]


class AccountConfig(Section):
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
        origin = f" (from environment variable {value[4:]})" if value.startswith("env:") else ""
        value = resolve_env(value, info)
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


class PipelineConfig(Section):
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


class RouteConfig(Section):
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
