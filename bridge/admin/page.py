"""The status page: one server-rendered HTML page, no JavaScript.

It shows what ``smpp-bridge status`` prints (binds, queues, providers, throughput) and a trace
search form that reloads the page with ``?trace=ID``. Every value is HTML-escaped; the page is
served with a Content-Security-Policy that allows no script at all (bridge.admin.web).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

__all__ = ["render_status_page"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.2em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00;font-weight:600}.ok{color:#070}.muted{color:#777}
form{margin:.4em 0}input[type=text]{width:22em;padding:.2em}
.error{color:#b00;border:1px solid #b00;padding:.4em;display:inline-block}
"""


def _cell(value: object, *, numeric: bool = False, css: str = "") -> str:
    text = "–" if value is None or value == "" else str(value)
    classes = " ".join(c for c in ("n" if numeric else "", css) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(text)}</td>"


def _table(
    table_id: str, headers: Sequence[str], rows: Iterable[str], empty: str = "none"
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    none = f'<tr><td colspan="{len(headers)}" class="muted">{escape(empty)}</td></tr>'
    body = "".join(rows) or none
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _binds(accounts: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for a in accounts:
        binds = a["binds"]
        if not binds:
            rows.append(
                "<tr>" + _cell(a["system_id"]) + _cell("not bound", css="muted") + _cell(None)
                + _cell(None) + _cell(None) + "</tr>"
            )
        for bind in binds:
            rows.append(
                "<tr>" + _cell(a["system_id"]) + _cell(bind["bind_type"]) + _cell(bind["peer"])
                + _cell("yes" if bind["tls"] else "no") + _cell(bind.get("session")) + "</tr>"
            )
    return _table(
        "binds", ["account", "bind type", "peer", "TLS", "session"], rows, "no accounts"
    )


def _queues(status: Mapping[str, Any]) -> str:
    q = status["queues"]
    rows = [
        "<tr>" + _cell(label) + _cell(q[key], numeric=True) + "</tr>"
        for label, key in (
            ("accepted, not yet handed to a provider", "pending_dispatch"),
            ("held by the dispatcher (waiting, queued, sending)", "held_by_dispatcher"),
            ("concatenated messages being reassembled", "reassembly_pending"),
            ("receipts and MO waiting for ESMEs", "deliveries"),
        )
    ]
    per_account = []
    for a in status["accounts"]:
        receiver = any(b["bind_type"] != "transmitter" for b in a["binds"])
        stuck = a["delivery_queue"] > 0 and not receiver
        per_account.append(
            "<tr>" + _cell(a["system_id"]) + _cell(a["delivery_queue"], numeric=True)
            + _cell(a["delivery_in_flight"], numeric=True)
            + _cell("yes" if receiver else "no", css="bad" if stuck else "")
            + "</tr>"
        )
    return (
        _table("queues", ["queue", "messages"], rows)
        + "<h2>Delivery queues</h2>"
        + _table(
            "delivery-queues", ["account", "waiting", "in flight", "receiver bound"], per_account
        )
    )


def _providers(providers: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for p in providers:
        healthy = p["healthy"]
        health = "unknown" if healthy is None else ("healthy" if healthy else "unhealthy")
        rows.append(
            "<tr>" + _cell(p["name"]) + _cell(p["type"])
            + _cell(health, css="ok" if healthy else "bad" if healthy is False else "")
            + _cell(p["circuit"], css="" if p["circuit"] == "closed" else "bad")
            + _cell("paused" if p["paused"] else "sending", css="bad" if p["paused"] else "")
            + _cell(p["queued"], numeric=True)
            + _cell(p["oldest_queued_seconds"], numeric=True)
            + _cell(p["balance"], numeric=True)
            + "</tr>"
        )
    return _table(
        "providers",
        ["provider", "type", "health", "circuit", "state", "queued", "oldest (s)", "balance"],
        rows,
        "no providers",
    )


def _throughput(throughput: Mapping[str, Mapping[str, float]]) -> str:
    totals, rates = throughput["totals"], throughput["per_second"]
    rows = [
        "<tr>" + _cell(key.replace("_", " ")) + _cell(int(value), numeric=True)
        + _cell(rates.get(key, 0.0), numeric=True) + "</tr>"
        for key, value in totals.items()
    ]
    return _table("throughput", ["counter", "total", "per second (last minute)"], rows)


def _trace(trace: Mapping[str, Any] | None, error: str | None) -> str:
    if error is not None:
        return f'<p class="error" id="trace-error">{escape(error)}</p>'
    if trace is None:
        return ""
    fields = [
        ("message id", trace["id"]),
        ("found by", trace["matched_by"]),
        ("account", trace["account"]),
        ("from → to", f"{trace['source']} → {trace['destination']}"),
        ("state", f"{trace['state']} ({trace['stat']})"),
        ("error code", trace["error_code"]),
        ("created", trace["created_at"]),
        ("done", trace["done_at"]),
        ("route", ", ".join(trace["route"])),
        ("provider", trace["provider"]),
        ("provider's id", trace["provider_message_id"]),
        ("attempts", trace["attempts"]),
        ("parts", ", ".join(trace["part_ids"])),
    ]
    rows = "".join(f"<tr><th>{escape(k)}</th>{_cell(v)}</tr>" for k, v in fields)
    history = [
        "<tr>" + _cell(h["at"]) + _cell(h["state"]) + _cell(h["stat"]) + _cell(h["detail"])
        + "</tr>"
        for h in trace["history"]
    ]
    return (
        f'<table id="trace">{rows}</table><h3>History</h3>'
        + _table("history", ["time", "state", "stat", "detail"], history, "no history")
    )


def render_status_page(
    status: Mapping[str, Any],
    *,
    trace_query: str = "",
    trace: Mapping[str, Any] | None = None,
    trace_error: str | None = None,
) -> str:
    """The whole page for a :meth:`bridge.admin.service.AdminService.status` answer."""
    listeners = ", ".join(f"{k} {v}" for k, v in status["listeners"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>smpp-bridge status – {escape(status["node"])}</title>
<style>{_STYLE}</style></head>
<body>
<h1>smpp-bridge status</h1>
<p class="muted">node {escape(status["node"])} · version {escape(status["version"])} ·
up since {escape(str(status["started_at"]))} ({escape(str(status["uptime_seconds"]))} s) ·
log level {escape(status["log_level"])} · {escape(listeners)} ·
<a href="status">refresh</a></p>
<h2>Trace a message</h2>
<form method="get" action="status" id="trace-form">
<label>Message id, part id or provider's id:
<input type="text" name="trace" value="{escape(trace_query)}" required></label>
<button type="submit">Trace</button>
</form>
{_trace(trace, trace_error)}
<h2>Binds</h2>
{_binds(status["accounts"])}
<h2>Queues</h2>
{_queues(status)}
<h2>Providers</h2>
{_providers(status["providers"])}
<h2>Throughput</h2>
{_throughput(status["throughput"])}
</body></html>
"""
