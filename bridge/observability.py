"""Logging setup (structlog): JSON lines in production, readable lines on a terminal.

The filtering bound logger (:class:`LevelFilteringLogger`) drops calls below the current level
before any formatting work (one comparison with a module global; about 0.35 µs a call), which is
what keeps DEBUG-level per-message events affordable on the hot path. The level is that global,
not a property of the cached logger classes, so :func:`set_log_level` changes it at run time
(the admin API's ``log-level``) for every logger, including those already cached. Secrets
never reach a log call in the first place; as a second line of defence, a :class:`Redactor`
blanks any event key that names one, and message text too (``[logging] redact``). Stdlib
``logging`` (uvicorn, asyncio, httpx, aiohttp) is rendered the same way, after
:class:`ThirdPartyScrubber` took URL credentials, query strings, callback tokens and known
secrets out of it (README, "Reliability").

Metrics (Prometheus, ``bridge_`` prefix): :class:`Metrics` holds every counter and histogram of
one bridge on its own :class:`~prometheus_client.CollectorRegistry` (not the global default, so
several bridges in one process do not collide), and :class:`BridgeCollector` turns a
:class:`Snapshot` of the bridge's state (sessions, queues, provider health …) into gauges at
scrape time. Hot paths keep their labelled children in dicts (a cached child costs ~0.6 µs a
call, ``labels()`` each time ~1.4 µs). The per-PDU metrics of the SMPP layer are cheaper still:
plain counts and :class:`LoopHistogram` buckets kept on the event loop and turned into
samples at scrape time (~0.2 µs an event; the SMPP layer handles a submit_sm in ~10 µs, so
children there would cost it a quarter of its throughput). Label values are bounded sets
only: configured account and provider names, command and status names, fixed reasons — never a
number or a message id.
This module is a leaf: it imports nothing of ``bridge.smpp``, ``bridge.web`` or
``bridge.providers``, so ``core/`` may use it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bridge import __version__

#: Event keys whose values never reach a log line (they become ``"***"``): secrets, and message
#: content — what a subscriber wrote is not the operator's business, and a log is copied to
#: more places than the store. ``[logging] redact`` replaces this list.
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "key",
    "authorization",
    "text",
    "short_message",
    "message_payload",
)
REDACTED = "***"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
#: The root handler :func:`configure_logging` installs, found by this name when it runs again.
_STDLIB_HANDLER = "bridge.observability"


class Redactor:
    """structlog processor: the value of every key named in ``keys`` becomes ``"***"``.

    Keys match case-insensitively, at the top level of the event and inside nested dicts
    (``headers={"Authorization": …}``); nested dicts are copied, never changed in place, as
    they may belong to the caller. It runs only for lines that are emitted (the filtering
    bound logger drops the rest first), so its cost is beside that of rendering the line.
    """

    __slots__ = ("keys",)

    def __init__(self, keys: Iterable[str] = DEFAULT_REDACT_KEYS) -> None:
        self.keys = frozenset(k.lower() for k in keys)

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return self._redact(event)

    def _redact(self, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        keys = self.keys
        for key, value in event.items():
            if isinstance(key, str) and key.lower() in keys:
                event[key] = REDACTED
            elif isinstance(value, dict):
                event[key] = self._redact(dict(value))
        return event


#: The default redaction, as a plain processor (for code that builds its own chain).
redact_secrets = Redactor()


# --------------------------------------------------------------------------- third-party records

#: Literal secrets (provider credentials, callback tokens, the admin token) that must never
#: appear in a line from a library; registered by the wiring (:func:`register_secret`).
_known_secrets: set[str] = set()
#: An absolute URL: scheme, optional user:password@, host[:port], path, query, fragment.
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/?#@'\"<>]*@)?(?P<host>[^\s/?#'\"<>]*)"
    r"(?P<path>[^\s?#'\"<>]*)(?P<query>\?[^\s#'\"<>]*)?(?:#[^\s'\"<>]*)?"
)
#: A query string outside a full URL (a request line "GET /cb?to=…&text=… HTTP/1.1").
_QUERY = re.compile(r"\?[^\s'\"<>]*=[^\s'\"<>]*")
#: The secret path element of a callback URL (/callbacks/<provider>/<token>/<kind>).
_CALLBACK_TOKEN = re.compile(r"(/callbacks/[^/\s?#'\"<>]+/)[^/\s?#'\"<>]+")
#: httpcore's DEBUG trace lines carry request and response headers: only the event stays.
_EVENT_ONLY_LOGGERS = ("httpcore", "hpack")
#: Libraries whose per-request INFO line ("HTTP Request: GET …") is a DEBUG line for us: the
#: bridge writes nothing per message at INFO.
_PER_REQUEST_LOGGERS = ("httpx",)


def register_secret(value: str | None) -> None:
    """A value (password, key, token) that a library's log line must never show."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def _scrub_url(match: re.Match[str]) -> str:
    path = _CALLBACK_TOKEN.sub(r"\1" + REDACTED, match["path"])
    return f"{match['scheme']}{match['host']}{path}{'?' + REDACTED if match['query'] else ''}"


def scrub_text(text: str) -> str:
    """``text`` without URL credentials, query strings, callback tokens or known secrets."""
    text = _URL.sub(_scrub_url, text)
    text = _QUERY.sub("?" + REDACTED, text)
    text = _CALLBACK_TOKEN.sub(r"\1" + REDACTED, text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class ThirdPartyScrubber(logging.Filter):
    """The stdlib handler's filter: every record from a library (httpx, httpcore, aiohttp.*,
    uvicorn.*, asyncio …) is rendered and scrubbed before it is formatted — URLs keep scheme,
    host and path (callback tokens blanked), never credentials or a query string (which carry
    provider passwords, numbers and message text); tracebacks are scrubbed the same way;
    httpcore's header traces keep only their event name; httpx's per-request INFO line counts
    as DEBUG. The bridge's own events never come this way (they have their own redaction)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name.startswith(_PER_REQUEST_LOGGERS) and record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            if _min_level > logging.DEBUG:
                return False
        try:
            message = record.getMessage()
        except Exception:  # a library's broken format string: keep the template only
            message = str(record.msg)
        if name.startswith(_EVENT_ONLY_LOGGERS):
            message = message.split(" ", 1)[0]
        if record.exc_info or record.stack_info:
            trace = ""
            if record.exc_info:
                trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            if record.stack_info:
                trace = f"{trace}\n{record.stack_info}".strip()
            # Rendered by _scrubbed_exception as the line's "exception" key.
            record.scrubbed_exception = scrub_text(trace)
            record.exc_info = record.exc_text = record.stack_info = None
        record.msg = scrub_text(message)
        record.args = None
        return True


def _scrubbed_exception(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    trace = getattr(record, "scrubbed_exception", None)
    if trace:
        event["exception"] = trace
    return event


#: The current minimum level of the bridge's own events (see :class:`LevelFilteringLogger`).
_min_level = logging.INFO


def _filtered(level: int) -> Callable[..., Any]:
    name = logging.getLevelName(level).lower()

    def method(
        self: structlog.BoundLoggerBase, event: str | None = None, *args: Any, **kw: Any
    ) -> Any:
        if level < _min_level:
            return None
        if args:
            event = event % args if event is not None else event
        return self._proxy_to_logger(name, event, **kw)

    method.__name__ = name
    return method


class LevelFilteringLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, with the threshold read at each call from the module
    global ``_min_level`` instead of baked into a class, so it can change at run time."""

    debug = _filtered(logging.DEBUG)
    info = msg = _filtered(logging.INFO)
    warning = warn = _filtered(logging.WARNING)
    error = _filtered(logging.ERROR)
    critical = fatal = _filtered(logging.CRITICAL)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _min_level > logging.ERROR:
            return None
        kw.setdefault("exc_info", True)
        if args:
            event = event % args if event is not None else event
        return self._proxy_to_logger("error", event, **kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if level < _min_level:
            return None
        if args:
            event = event % args if event is not None else event
        return self._proxy_to_logger(logging.getLevelName(level).lower(), event, **kw)

    def is_enabled_for(self, level: int) -> bool:
        return level >= _min_level

    def get_effective_level(self) -> int:
        return _min_level


LOG_LEVELS = tuple(_LEVELS)


def get_log_level() -> str:
    """The current level's name ("debug", "info", "warning", "error")."""
    return next((name for name, n in _LEVELS.items() if n == _min_level), "info")


def set_log_level(level: str) -> str:
    """Change the level of every logger (structlog and stdlib) at once; returns the previous
    level. Raises ValueError for a name not in :data:`LOG_LEVELS`."""
    global _min_level
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; one of: {', '.join(LOG_LEVELS)}")
    previous = get_log_level()
    _min_level = numeric
    logging.getLogger().setLevel(numeric)
    return previous


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    redact: Iterable[str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog, and the stdlib ``logging`` root, once for the process.

    ``fmt``: "json", "console", or "auto" (console when ``stream`` is a TTY, JSON otherwise).
    ``redact``: event keys to blank (default :data:`DEFAULT_REDACT_KEYS`). ``stream``: where
    lines go (default stderr).

    Libraries that log through the stdlib (uvicorn, asyncio's "exception was never
    retrieved") get a root handler that renders their records with the same renderer, level
    and redaction, so the output stays one format — a JSON reader does not choke on a plain
    traceback. The bridge's own events keep the faster path: the filtering bound logger and a
    print logger, without the stdlib's record machinery.

    Loggers are cached on first use, so call this before the bridge logs anything.
    """
    global _min_level
    out = sys.stderr if stream is None else stream
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    _min_level = numeric
    tty = out.isatty()
    use_console = fmt == "console" or (fmt == "auto" and tty)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=tty)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    redactor = Redactor(DEFAULT_REDACT_KEYS if redact is None else redact)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            redactor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=LevelFilteringLogger,
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_STDLIB_HANDLER)
    handler.addFilter(ThirdPartyScrubber())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
                _scrubbed_exception,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redactor,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _STDLIB_HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


# --------------------------------------------------------------------------- metrics

#: submit_sm → submit_sm_resp: a durable accept is one group commit (~0.3–5 ms) away.
SUBMIT_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: One HTTP (or upstream SMPP) call to a provider.
PROVIDER_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: Accept → receipt acknowledged: seconds for the sandbox, minutes to days for real handsets.
RECEIPT_LATENCY_BUCKETS = (
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0,
    3 * 86400.0,
)
#: Ops (write calls) per SQLite transaction; the writer caps it at max_batch (2000).
COMMIT_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
#: One group commit: BEGIN … COMMIT including the fsync (≈ 0.3 ms on this machine).
COMMIT_DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)

PROVIDER_OUTCOMES = ("accepted", "permanent", "transient", "error")
REPORT_RESULTS = ("matched", "unknown", "duplicate", "early", "mismatch")
DELIVER_RESULTS = ("acked", "refused", "unsent")
REASSEMBLY_REASONS = ("timeout", "evicted", "superseded")
THROTTLE_REASONS = ("tps", "outstanding")
REFUSE_REASONS = ("not_allowed", "per_address", "unbound_budget", "max_connections", "evicted")
SMPP_EVENTS = (
    "protocol_violation",
    "throttled",
    "disconnect_bound",
    "disconnect_unbound",
    "bind_rejected",
    "bind_locked",
    "revoked",
    "stalled_receiver",
    "accept_failed",
)
INBOUND_RESULTS = ("queued", "unowned")
#: bridge_provider_events_total event names (a fixed set: they are label values).
PROVIDER_EVENTS = ("inbound_poll_failed", "inbound_duplicate", "bulk_request", "bulk_destination")


#: Rows of bridge_smpp_pdus_total: (direction, command, status, count).
PduSource = Callable[[], Iterable[tuple[str, str, str, float]]]


class LoopHistogram:
    """A histogram child for one event loop's hot path: bucket counts in a list, no lock.

    Observe only from one thread (the loop); a scrape from another thread reads a consistent
    enough copy (the list is copied in one step; ``sum`` may lag by an observation).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bucket le=b holds the values <= b: the first bound >= value
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_n(self, value: float, n: int) -> None:
        """``n`` observations of the same value."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, ending with +Inf."""
        counts = list(self.counts)
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            total += n
            out.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        return out


class _LoopCollector(Collector):
    """bridge_smpp_pdus_total and bridge_smpp_submit_latency_seconds from loop-local state."""

    _PDU_DOC = (
        "SMPP PDUs received (in) and sent (out) by command (\"unknown\" outside SMPP 3.4) and "
        "command_status name (\"other\" outside SMPP 3.4's status set)."
    )
    _LATENCY_DOC = (
        "submit_sm, data_sm and submit_multi: arrival of the request until its response is "
        "queued for writing (written at the end of that event-loop iteration)."
    )

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "bridge_smpp_pdus_total", self._PDU_DOC, labels=["direction", "command", "status"]
            ),
            HistogramMetricFamily(
                "bridge_smpp_submit_latency_seconds", self._LATENCY_DOC, labels=["command"]
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        pdus, latency = self._families()
        rows: dict[tuple[str, str, str], float] = {}
        for source in list(self._metrics._pdu_sources):
            for direction, command, status, n in source():
                key = (direction, command, status)
                rows[key] = rows.get(key, 0) + n
        for key, n in sorted(rows.items()):
            pdus.add_metric(list(key), n)
        for command, hist in sorted(self._metrics._submit_latency.items()):
            latency.add_metric([command], hist.buckets(), hist.sum)
        yield pdus
        yield latency


class SampledLog:
    """At most one log line per key every ``interval`` seconds; the rest are counted.

    For per-message failures that come in floods during an outage (a provider down, every
    message failing over): the first occurrence is logged at once, later ones at most once per
    interval with ``suppressed`` = how many were not logged since the previous line. The
    metrics still count every one; the log says that it is happening and to what.
    """

    def __init__(
        self,
        logger: Any,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1000,
    ) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, level: str, event: str, key: str, **fields: Any) -> bool:
        """Log ``event`` at ``level`` unless one for (event, key) was logged within the
        interval. Returns True when a line was written."""
        now = self._clock()
        k = (event, key)
        last = self._last.get(k)
        if last is not None and now - last[0] < self.interval:
            self._last[k] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._last) >= self._max_keys:
            self._last.clear()  # bounded: keys are provider names in practice
        self._last[k] = (now, 0)
        getattr(self._log, level)(event, suppressed=last[1] if last else 0, **fields)
        return True


class ProviderMetrics:
    """The labelled children of one provider, resolved once (the dispatcher keeps one each)."""

    __slots__ = ("duration", "failovers", "requests", "retries")

    def __init__(self, metrics: Metrics, provider: str) -> None:
        self.requests = {
            outcome: metrics.provider_requests.labels(provider, outcome)
            for outcome in PROVIDER_OUTCOMES
        }
        self.duration = metrics.provider_request_duration.labels(provider)
        self.retries = metrics.provider_retries.labels(provider)
        self.failovers = metrics.provider_failovers.labels(provider)

    def request(self, outcome: str, seconds: float) -> None:
        self.requests[outcome].inc()
        self.duration.observe(seconds)


class Metrics:
    """Every counter and histogram of one bridge, on one registry.

    Components take ``metrics: Metrics | None = None``; without one they make their own on a
    private registry, so code that builds them directly (unit tests, benchmarks) still works
    and pays the same costs as production. The helper methods cache labelled children in dicts;
    call them from the event loop (the store's writer thread only calls :meth:`store_commit`,
    whose histograms have no labels; prometheus-client values are thread-safe).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # -- SMPP server
        self.smpp_binds = Counter(
            "bridge_smpp_binds_total",
            "Bind attempts by account (\"unknown\" for an unknown system_id), bind type and "
            "result (ok, refused).",
            ["account", "bind_type", "result"],
            registry=r,
        )
        # bridge_smpp_pdus_total and bridge_smpp_submit_latency_seconds: loop-local, exported
        # by _LoopCollector (see add_pdu_source and submit_latency).
        self._pdu_sources: list[PduSource] = []
        self._submit_latency: dict[str, LoopHistogram] = {}
        r.register(_LoopCollector(self))
        self.smpp_throttled = Counter(
            "bridge_smpp_throttled_total",
            "Requests answered ESME_RTHROTTLED, by account and reason (tps: the account's rate "
            "limit; outstanding: too many requests awaiting their response).",
            ["account", "reason"],
            registry=r,
        )
        # -- SMPP hardening (issue 14; README "Reliability", block SMPP)
        self.smpp_refused = Counter(
            "bridge_smpp_connections_refused_total",
            "SMPP connections refused (answered with an SMPP PDU, then closed) by reason: "
            "not_allowed (outside every allowed_ips), per_address "
            "(max_unbound_per_address), unbound_budget (max_connections - bind_reserve), "
            "max_connections, evicted (an unbound connection gave its place to another "
            "address's).",
            ["reason"],
            registry=r,
        )
        self.smpp_events = Counter(
            "bridge_smpp_events_total",
            "SMPP session events whose log lines are sampled, by event: protocol_violation, "
            "throttled, disconnect_bound, disconnect_unbound, bind_rejected, bind_locked, "
            "revoked, stalled_receiver, accept_failed (out of file descriptors: accepting pauses "
            "0.1 s).",
            ["event"],
            registry=r,
        )
        # -- pipeline
        self.messages_accepted = Counter(
            "bridge_messages_accepted_total",
            "Messages accepted (stored durably, answered ESME_ROK); each part of a "
            "concatenated message and each submit_multi destination counts once.",
            ["account"],
            registry=r,
        )
        self.messages_rejected = Counter(
            "bridge_messages_rejected_total",
            "Messages refused in the submit response, by account and reason (the pipeline's "
            "reason in lower case, or the SMPP status name for a refusal while decoding).",
            ["account", "reason"],
            registry=r,
        )
        self.reassembly_timeouts = Counter(
            "bridge_reassembly_timeouts_total",
            "Concatenated messages given up incomplete, by reason (timeout, evicted, "
            "superseded); each received part gets a failure receipt.",
            ["reason"],
            registry=r,
        )
        # -- providers
        self.provider_requests = Counter(
            "bridge_provider_requests_total",
            "Send calls to providers by outcome (accepted, permanent, transient; error: the "
            "adapter raised).",
            ["provider", "outcome"],
            registry=r,
        )
        self.provider_request_duration = Histogram(
            "bridge_provider_request_duration_seconds",
            "Duration of one send call to a provider.",
            ["provider"],
            buckets=PROVIDER_LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_retries = Counter(
            "bridge_provider_retries_total",
            "Transient failures scheduled for another try on the same provider.",
            ["provider"],
            registry=r,
        )
        self.provider_failovers = Counter(
            "bridge_provider_failovers_total",
            "Messages moved on to the next provider of their route, by the provider failed "
            "away from.",
            ["provider"],
            registry=r,
        )
        self.provider_balance = Gauge(
            "bridge_provider_balance",
            "Account balance reported by a provider, in the provider's unit (only providers "
            "that report one).",
            ["provider"],
            registry=r,
        )
        # -- reports and receipts
        self.reports = Counter(
            "bridge_reports_total",
            "Delivery reports from providers by result: matched (applied to a message), "
            "unknown (no message for the provider's id), duplicate (nothing new), early "
            "(parked until the send's correlation is stored; counted again as matched or "
            "unknown once resolved), mismatch (the report names another number than the "
            "message's: a forged push, not applied).",
            ["provider", "result"],
            registry=r,
        )
        self.callbacks = Counter(
            "bridge_callbacks_total",
            "Provider pushes to /callbacks by provider, kind (report, inbound) and HTTP status "
            "answered (4xx: forged or malformed, changed nothing). Requests for unknown "
            "providers or with a wrong token count under provider \"-\".",
            ["provider", "kind", "status"],
            registry=r,
        )
        self.inbound_messages = Counter(
            "bridge_inbound_messages_total",
            "Inbound SMS (MO) from providers by result: queued (for the owning account's "
            "deliver_sm), unowned (no account owns the receiving number; dropped and logged).",
            ["provider", "result"],
            registry=r,
        )
        self.provider_events = Counter(
            "bridge_provider_events_total",
            "Provider events by kind: inbound_poll_failed (a getIncomingSms poll got no usable "
            "answer; retried at the next interval), inbound_duplicate (an MO seen by both push "
            "and poll, delivered once), bulk_request (one request carrying several "
            "destinations), bulk_destination (a destination sent in such a request).",
            ["provider", "event"],
            registry=r,
        )
        self.receipts = Counter(
            "bridge_receipts_total",
            "Receipts queued for ESMEs, by Appendix B stat word (DELIVRD, UNDELIV, ...).",
            ["state"],
            registry=r,
        )
        self.receipt_delivery = Histogram(
            "bridge_receipt_delivery_seconds",
            "Message accepted until its final receipt deliver_sm was acknowledged by the ESME.",
            buckets=RECEIPT_LATENCY_BUCKETS,
            registry=r,
        )
        self.deliver_sm = Counter(
            "bridge_deliver_sm_total",
            "deliver_sm attempts (receipts and MO) by result: acked (deliver_sm_resp "
            "ESME_ROK), refused (an error status), unsent (no receiver, timeout, connection "
            "lost).",
            ["result"],
            registry=r,
        )
        self.deliveries_expired = Counter(
            "bridge_deliveries_expired_total",
            "Queued receipts and MO messages dropped unacknowledged after receipt_max_age.",
            registry=r,
        )
        # -- admin listener
        self.admin_refused = Counter(
            "bridge_admin_requests_refused_total",
            "Admin API, status page and /metrics requests refused for a missing or wrong token "
            "(a steady rate is someone guessing, or a scraper with an old token).",
            registry=r,
        )
        # -- HTTP listeners (bridge.web.guard)
        self.http_guard = Counter(
            "bridge_http_guard_total",
            "HTTP connections the listeners closed or refused by listener (http, admin) and "
            "reason: per_address_cap (one client address already holds max_connections_per_ip; "
            "answered 503), header_timeout, body_timeout (a slow or stalled request: slowloris).",
            ["listener", "reason"],
            registry=r,
        )
        for listener in ("http", "admin"):
            for reason in ("per_address_cap", "header_timeout", "body_timeout"):
                self.http_guard.labels(listener, reason)
        # -- store
        self.store_commit_batch_size = Histogram(
            "bridge_store_commit_batch_size",
            "Records made durable per journal write + fdatasync (group commit).",
            buckets=COMMIT_BATCH_BUCKETS,
            registry=r,
        )
        self.store_commit_duration = Histogram(
            "bridge_store_commit_duration_seconds",
            "Duration of one journal batch write including its fdatasync.",
            buckets=COMMIT_DURATION_BUCKETS,
            registry=r,
        )
        self.store_free_bytes = Gauge(
            "bridge_store_free_bytes",
            "Free bytes on the filesystem of [storage] data_dir, read every second; below"
            " [storage] min_free_mb new submits are refused (ESME_RMSGQFUL, reason disk_full).",
            registry=r,
        )
        self.store_write_errors = Counter(
            "bridge_store_write_errors_total",
            "Journal records that could not be written (disk full, I/O error); see the log's"
            " store.* lines.",
            registry=r,
        )
        self.build_info = Gauge(
            "bridge_build_info", "Always 1; the bridge's version as a label.", ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)

        self._accepted: dict[str, Any] = {}
        self._rejected: dict[tuple[str, str], Any] = {}
        self._throttled: dict[tuple[str, str], Any] = {}
        self._reports: dict[tuple[str, str], Any] = {}
        self._receipts: dict[str, Any] = {}
        self._deliver = {result: self.deliver_sm.labels(result) for result in DELIVER_RESULTS}
        self._reassembly = {
            reason: self.reassembly_timeouts.labels(reason) for reason in REASSEMBLY_REASONS
        }
        self._providers: dict[str, ProviderMetrics] = {}
        self._refused = {reason: self.smpp_refused.labels(reason) for reason in REFUSE_REASONS}
        self._events = {event: self.smpp_events.labels(event) for event in SMPP_EVENTS}

    def prime(
        self,
        *,
        accounts: Mapping[str, Iterable[str]],
        providers: Iterable[str],
        reject_reasons: Iterable[str],
        receipt_states: Iterable[str],
    ) -> None:
        """Create the labelled series for every label value known from the config, at zero.

        A counter child exists only once it is first used; until then a dashboard panel over
        it reads "No data" rather than 0, and ``rate()``/``increase()`` miss the first event.
        ``accounts`` maps each system_id to its allowed bind types. Idempotent (SIGHUP may
        add accounts).
        """
        reasons = tuple(reject_reasons)
        for account, bind_types in accounts.items():
            self.messages_accepted.labels(account)
            for bind_type in bind_types:
                for result in ("ok", "refused"):
                    self.smpp_binds.labels(account, bind_type, result)
            for reason in THROTTLE_REASONS:
                self.smpp_throttled.labels(account, reason)
            for reason in reasons:
                self.messages_rejected.labels(account, reason)
        for name in providers:
            self.provider(name)
            for result in REPORT_RESULTS:
                self.reports.labels(name, result)
            for result in INBOUND_RESULTS:
                self.inbound_messages.labels(name, result)
            for event in PROVIDER_EVENTS:
                self.provider_events.labels(name, event)
        for state in receipt_states:
            self.receipts.labels(state)

    # ------------------------------------------------------------------ SMPP

    def bind(self, account: str, bind_type: str, ok: bool) -> None:
        """One bind answered; ``account`` must already be "unknown" for an unknown system_id."""
        self.smpp_binds.labels(account, bind_type, "ok" if ok else "refused").inc()

    def connection_refused(self, reason: str) -> None:
        self._refused[reason].inc()

    def smpp_event(self, event: str) -> None:
        self._events[event].inc()

    def add_pdu_source(self, source: PduSource) -> None:
        """Register the PDU counts of an SMPP server: ``source()`` yields (direction, command,
        status, count) rows at scrape time; rows of every source with equal labels add up."""
        self._pdu_sources.append(source)

    def submit_latency(self, command: str) -> LoopHistogram:
        """The bridge_smpp_submit_latency_seconds child for ``command`` (shared, made once)."""
        hist = self._submit_latency.get(command)
        if hist is None:
            hist = self._submit_latency[command] = LoopHistogram(SUBMIT_LATENCY_BUCKETS)
        return hist

    def throttled(self, account: str, reason: str) -> None:
        key = (account, reason)
        child = self._throttled.get(key)
        if child is None:
            child = self._throttled[key] = self.smpp_throttled.labels(account, reason)
        child.inc()

    # ------------------------------------------------------------------ messages

    def accepted(self, account: str) -> None:
        child = self._accepted.get(account)
        if child is None:
            child = self._accepted[account] = self.messages_accepted.labels(account)
        child.inc()

    def rejected(self, account: str, reason: str) -> None:
        key = (account, reason)
        child = self._rejected.get(key)
        if child is None:
            child = self._rejected[key] = self.messages_rejected.labels(account, reason)
        child.inc()

    def reassembly_timeout(self, reason: str) -> None:
        child = self._reassembly.get(reason)
        if child is None:
            child = self._reassembly[reason] = self.reassembly_timeouts.labels(reason)
        child.inc()

    # ------------------------------------------------------------------ providers

    def provider(self, name: str) -> ProviderMetrics:
        """The children of one provider (made on first use; callers keep the object)."""
        pm = self._providers.get(name)
        if pm is None:
            pm = self._providers[name] = ProviderMetrics(self, name)
        return pm

    # ------------------------------------------------------------------ reports, receipts

    def report(self, provider: str, result: str) -> None:
        key = (provider, result)
        child = self._reports.get(key)
        if child is None:
            child = self._reports[key] = self.reports.labels(provider, result)
        child.inc()

    def callback(self, provider: str, kind: str, status: int) -> None:
        self.callbacks.labels(provider, kind, str(status)).inc()

    def inbound(self, provider: str, result: str) -> None:
        self.inbound_messages.labels(provider, result).inc()

    def provider_event(self, provider: str, event: str) -> None:
        self.provider_events.labels(provider, event).inc()

    def receipts_queued(self, state: str, count: int = 1) -> None:
        child = self._receipts.get(state)
        if child is None:
            child = self._receipts[state] = self.receipts.labels(state)
        child.inc(count)

    def delivered(self, result: str) -> None:
        """One deliver_sm attempt: ``result`` in :data:`DELIVER_RESULTS`."""
        self._deliver[result].inc()

    # ------------------------------------------------------------------ store

    def store_commit(self, ops: int, seconds: float) -> None:
        """One durable journal batch (called on the event loop)."""
        self.store_commit_batch_size.observe(ops)
        self.store_commit_duration.observe(seconds)

    def store_error(self) -> None:
        """One journal record that could not be written."""
        self.store_write_errors.inc()


@dataclass(slots=True)
class Snapshot:
    """The bridge's state as gauges read it at scrape time (see :class:`BridgeCollector`)."""

    connections: int = 0
    #: bound sessions by (account, bind type)
    sessions: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: per provider: (messages ready to send, seconds the oldest of them has waited)
    queues: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    #: per provider: the last health check's answer (absent until the first check)
    providers_up: Mapping[str, bool] = field(default_factory=dict)
    #: per provider: circuit breaker open or probing
    circuit_open: Mapping[str, bool] = field(default_factory=dict)
    #: per provider: paused by the operator (admin API)
    paused: Mapping[str, bool] = field(default_factory=dict)
    #: receipts and MO messages queued per account (waiting for a bound receiver or an ack)
    deliveries_waiting: Mapping[str, int] = field(default_factory=dict)
    reassembly_pending: int = 0
    reassembly_parts: int = 0
    #: per connection-oriented provider (SMPP upstream): (binds up, requests in flight)
    upstream: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    #: per (provider, event): monotonic counts (reconnects, throttling, …)
    upstream_events: Mapping[tuple[str, str], int] = field(default_factory=dict)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels)) if labels else GaugeMetricFamily(
        name, doc
    )


_SCRAPE_GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("bridge_upstream_binds", "Sessions of an SMPP upstream provider that are bound and take "
     "submits.", ("provider",)),
    ("bridge_upstream_in_flight", "Requests sent to an SMPP upstream awaiting their response.",
     ("provider",)),
    ("bridge_smpp_connections", "Open SMPP connections (bound or not).", ()),
    ("bridge_smpp_sessions", "Bound SMPP sessions by account and bind type.",
     ("account", "bind_type")),
    ("bridge_queue_depth", "Messages ready to be sent to a provider (not waiting for a retry "
     "or schedule, not in flight).", ("provider",)),
    ("bridge_queue_oldest_age_seconds", "How long the oldest message ready for a provider "
     "has waited (0 when none).", ("provider",)),
    ("bridge_provider_up", "1 if the provider's last health check passed, else 0.",
     ("provider",)),
    ("bridge_provider_circuit_open", "1 while the provider's circuit breaker is open or "
     "probing (no sends after repeated transient failures).", ("provider",)),
    ("bridge_provider_paused", "1 while an operator has paused the provider (admin API: "
     "no sends; its messages fail over or wait until it is resumed).", ("provider",)),
    ("bridge_deliveries_waiting", "Receipts and MO messages queued for an account, not yet "
     "acknowledged (an account with no receiver bound keeps them here).", ("account",)),
    ("bridge_reassembly_pending", "Concatenated messages waiting for more parts.", ()),
    ("bridge_reassembly_parts", "Parts held in the reassembly buffer.", ()),
)


def _upstream_events() -> CounterMetricFamily:
    return CounterMetricFamily(
        "bridge_upstream_events",
        "Events of connection-oriented providers (the SMPP upstream) by kind: disconnect "
        "(a bound session lost), bind_refused, connect_failed, throttled (ESME_RTHROTTLED or "
        "MSGQFUL: sending paused), receipt_unreadable, mo_incomplete (MO parts given up).",
        labels=["provider", "event"],
    )


class BridgeCollector(Collector):
    """Scrape-time gauges from one :class:`Snapshot` per scrape.

    ``snapshot`` runs in the scraping thread: serve /metrics from the bridge's event loop (an
    ``async`` endpoint), since the snapshot reads the loop's state and the store's read
    connection. A snapshot that fails yields no samples for this scrape (logged), never an
    error page: counters and histograms are still served.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        for name, doc, labels in _SCRAPE_GAUGES:
            yield _gauge(name, doc, labels)
        yield _upstream_events()

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._snapshot()
        except Exception:
            structlog.get_logger("bridge.metrics").exception("metrics.snapshot_failed")
            return
        families = {name: _gauge(name, doc, labels) for name, doc, labels in _SCRAPE_GAUGES}
        families["bridge_smpp_connections"].add_metric([], snap.connections)
        sessions = families["bridge_smpp_sessions"]
        for (account, bind_type), n in sorted(snap.sessions.items()):
            sessions.add_metric([account, bind_type], n)
        depth = families["bridge_queue_depth"]
        age = families["bridge_queue_oldest_age_seconds"]
        for provider, (n, oldest) in sorted(snap.queues.items()):
            depth.add_metric([provider], n)
            age.add_metric([provider], oldest)
        up = families["bridge_provider_up"]
        for provider, ok in sorted(snap.providers_up.items()):
            up.add_metric([provider], 1.0 if ok else 0.0)
        circuit = families["bridge_provider_circuit_open"]
        for provider, is_open in sorted(snap.circuit_open.items()):
            circuit.add_metric([provider], 1.0 if is_open else 0.0)
        paused = families["bridge_provider_paused"]
        for provider, is_paused in sorted(snap.paused.items()):
            paused.add_metric([provider], 1.0 if is_paused else 0.0)
        waiting = families["bridge_deliveries_waiting"]
        for account, n in sorted(snap.deliveries_waiting.items()):
            waiting.add_metric([account], n)
        families["bridge_reassembly_pending"].add_metric([], snap.reassembly_pending)
        families["bridge_reassembly_parts"].add_metric([], snap.reassembly_parts)
        binds = families["bridge_upstream_binds"]
        in_flight = families["bridge_upstream_in_flight"]
        for provider, (n_binds, n_flight) in sorted(snap.upstream.items()):
            binds.add_metric([provider], n_binds)
            in_flight.add_metric([provider], n_flight)
        yield from families.values()
        events = _upstream_events()
        for (provider, event), n in sorted(snap.upstream_events.items()):
            events.add_metric([provider, event], n)
        yield events
