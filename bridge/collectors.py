"""Prometheus collectors that make their samples at scrape time, from state the bridge keeps
anyway: the SMPP layer's loop-local PDU counts and latency buckets, and the gauges read from a
:class:`Snapshot` of the running bridge (sessions, queues, provider health …).

Why a module of its own: :mod:`bridge.observability` is what the per-message paths touch
(counters, :class:`~bridge.observability.LoopHistogram`, the sampled log) and must stay cheap;
what runs here runs once per scrape, on the scraping side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bridge.observability import LoopHistogram

__all__ = ["BridgeCollector", "LoopCollector", "PduSource", "Snapshot"]

#: Rows of bridge_smpp_pdus_total: (direction, command, status, count).
PduSource = Callable[[], Iterable[tuple[str, str, str, float]]]


class LoopCollector(Collector):
    """bridge_smpp_pdus_total and bridge_smpp_submit_latency_seconds from loop-local state."""

    _PDU_DOC = (
        "SMPP PDUs received (in) and sent (out) by command (\"unknown\" outside SMPP 3.4) and "
        "command_status name (\"other\" outside SMPP 3.4's status set)."
    )
    _LATENCY_DOC = (
        "submit_sm, data_sm and submit_multi: arrival of the request until its response is "
        "queued for writing (written at the end of that event-loop iteration)."
    )

    def __init__(
        self, pdu_sources: list[PduSource], submit_latency: Mapping[str, LoopHistogram]
    ) -> None:
        # Metrics' own containers, read (never changed) at scrape time.
        self._pdu_sources = pdu_sources
        self._submit_latency = submit_latency

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
        for source in list(self._pdu_sources):
            for direction, command, status, n in source():
                key = (direction, command, status)
                rows[key] = rows.get(key, 0) + n
        for key, n in sorted(rows.items()):
            pdus.add_metric(list(key), n)
        for command, hist in sorted(self._submit_latency.items()):
            latency.add_metric([command], hist.buckets(), hist.sum)
        yield pdus
        yield latency


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
