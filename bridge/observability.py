"""Metrics (Prometheus, ``bridge_`` prefix) and the sampled log: what the code paths use to be
observed, each event at the smallest cost that still counts it.

:class:`Metrics` holds every counter and histogram of one bridge on its own
:class:`~prometheus_client.CollectorRegistry` (not the global default, so several bridges in one
process do not collide); the gauges made at scrape time are :mod:`bridge.collectors`. Hot paths
keep their labelled children in dicts (a cached child costs ~0.6 µs a call, ``labels()`` each
time ~1.4 µs). The per-PDU metrics of the SMPP layer are cheaper still: plain counts and
:class:`LoopHistogram` buckets kept on the event loop and turned into samples at scrape time
(~0.2 µs an event; the SMPP layer handles a submit_sm in ~10 µs, so children there would cost
it a quarter of its throughput). Label values are bounded sets only: configured account and
provider names, command and status names, fixed reasons — never a number or a message id.
:class:`SampledLog` is the log's side of the same bargain: every failure is counted, a flood of
them is logged once per interval. Logging itself is set up by :mod:`bridge.logs`.

This module is a leaf: it imports nothing of ``bridge.smpp``, ``bridge.web`` or
``bridge.providers``, so ``core/`` may use it.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

from bridge import __version__
from bridge.collectors import LoopCollector, PduSource

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


class _Children(dict[Any, Any]):
    """The labelled children of one metric family by label value(s), made on first use:
    ``children[key].inc()`` is one dict lookup once the child exists (dict's own, as for a
    plain dict); only the first use of a key runs :meth:`__missing__`."""

    __slots__ = ("_family",)

    def __init__(self, family: Any) -> None:
        super().__init__()
        self._family = family

    def __missing__(self, key: Any) -> Any:
        labels = key if isinstance(key, tuple) else (key,)
        child = self[key] = self._family.labels(*labels)
        return child


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
        # by LoopCollector (see add_pdu_source and submit_latency).
        self._pdu_sources: list[PduSource] = []
        self._submit_latency: dict[str, LoopHistogram] = {}
        r.register(LoopCollector(self._pdu_sources, self._submit_latency))
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

        self._accepted = _Children(self.messages_accepted)
        self._rejected = _Children(self.messages_rejected)
        self._throttled = _Children(self.smpp_throttled)
        self._reports = _Children(self.reports)
        self._receipts = _Children(self.receipts)
        self._deliver = {result: self.deliver_sm.labels(result) for result in DELIVER_RESULTS}
        self._reassembly = _Children(self.reassembly_timeouts)
        for reason in REASSEMBLY_REASONS:
            self._reassembly[reason] = self.reassembly_timeouts.labels(reason)
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
        self._throttled[account, reason].inc()

    # ------------------------------------------------------------------ messages

    def accepted(self, account: str) -> None:
        self._accepted[account].inc()

    def rejected(self, account: str, reason: str) -> None:
        self._rejected[account, reason].inc()

    def reassembly_timeout(self, reason: str) -> None:
        self._reassembly[reason].inc()

    # ------------------------------------------------------------------ providers

    def provider(self, name: str) -> ProviderMetrics:
        """The children of one provider (made on first use; callers keep the object)."""
        pm = self._providers.get(name)
        if pm is None:
            pm = self._providers[name] = ProviderMetrics(self, name)
        return pm

    # ------------------------------------------------------------------ reports, receipts

    def report(self, provider: str, result: str) -> None:
        self._reports[provider, result].inc()

    def callback(self, provider: str, kind: str, status: int) -> None:
        self.callbacks.labels(provider, kind, str(status)).inc()

    def inbound(self, provider: str, result: str) -> None:
        self.inbound_messages.labels(provider, result).inc()

    def provider_event(self, provider: str, event: str) -> None:
        self.provider_events.labels(provider, event).inc()

    def receipts_queued(self, state: str, count: int = 1) -> None:
        self._receipts[state].inc(count)

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
