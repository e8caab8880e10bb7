"""The CLI's admin commands: ``status``, ``trace``, ``route``, ``queue ls|purge``,
``provider pause|resume``, ``log-level`` — HTTP calls to a running bridge's admin listener.

The address and token come from the same config file the bridge runs with (``--config``):
``[admin] host/port``, and ``[admin] token`` or the data directory's ``admin.token``. Every
failure is one line on stderr and exit status 1 (2 for a bad config), never a traceback.
Output is a readable table; ``--json`` prints the API's answer as is, for scripts.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["AdminClient", "ClientError", "run_command"]

TIMEOUT = 10.0


class ClientError(Exception):
    """A one-line explanation for the operator; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class AdminClient:
    url: str  # http://host:port, no trailing slash
    token: str | None
    config: str = ""

    @classmethod
    def from_config(cls, path: str, url: str | None = None) -> AdminClient:
        from bridge.admin.token import admin_token, admin_token_path
        from bridge.config import ConfigError, load_config

        try:
            cfg = load_config(path)
        except ConfigError as e:
            raise ClientError(str(e), 2) from None
        if url is None:
            host = cfg.admin.host
            host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            if cfg.admin.port == 0:
                raise ClientError(
                    f"{path}: admin.port is 0 (any free port): give --admin-url http://HOST:PORT"
                )
            url = f"http://{f'[{host}]' if ':' in host else host}:{cfg.admin.port}"
        try:
            token = admin_token(cfg, create=False)
        except PermissionError:
            raise ClientError(
                f"cannot read {admin_token_path(cfg)}: permission denied "
                "(run this as the user the bridge runs as)"
            ) from None
        except OSError as e:
            raise ClientError(f"cannot read {admin_token_path(cfg)}: {e.strerror}") from None
        if token is None and not cfg.admin.allow_unauthenticated:
            raise ClientError(
                f"no admin token: {admin_token_path(cfg)} does not exist and [admin] token is "
                f"not set in {path} (the bridge creates the file at its first start; is it "
                "running with this config?)"
            )
        return cls(url.rstrip("/"), token, path)

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise ClientError(
                    f"the bridge at {self.url} refused the admin token (it comes from [admin] "
                    "token or the data directory's admin.token: is that bridge running with "
                    f"{self.config or 'this config'}?)"
                ) from None
            try:
                message = json.loads(e.read()).get("error") or e.reason
            except (ValueError, AttributeError):
                message = e.reason
            raise ClientError(f"{message} (HTTP {e.code})") from None
        except urllib.error.URLError as e:
            reason = e.reason
            why = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            raise ClientError(
                f"cannot reach the bridge's admin listener at {self.url} ({why}): is the bridge "
                "running, with [admin] host/port as in "
                f"{self.config or 'its config'}?"
            ) from None
        except (TimeoutError, OSError) as e:
            raise ClientError(f"no answer from {self.url}: {e}") from None


# --------------------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    """Left-aligned columns, numbers right-aligned; "-" for None."""
    cells = [[_text(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) and not isinstance(r[i], bool)
                           for r in rows)
        for i in range(len(headers))
    ]  # fmt: skip

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line([h.upper() for h in headers]), file=out)
    for row in cells:
        print(line(row), file=out)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _print_status(s: dict[str, Any], out: TextIO) -> None:
    print(
        f"smpp-bridge {s['version']} on {s['node']}, up {s['uptime_seconds']:g} s, "
        f"log level {s['log_level']}",
        file=out,
    )
    print("listening: " + ", ".join(f"{k} {v}" for k, v in s["listeners"].items()), file=out)
    print("\nBINDS", file=out)
    rows = [
        [a["system_id"], b["bind_type"], b["peer"], b["tls"], b.get("session", "")]
        for a in s["accounts"]
        for b in a["binds"]
    ]
    if rows:
        table(["account", "bind type", "peer", "tls", "session"], rows, out)
    else:
        print("(no ESME bound)", file=out)
    print("\nDELIVERY QUEUES (receipts and MO per account)", file=out)
    table(
        ["account", "binds", "waiting", "in flight"],
        [
            [a["system_id"], len(a["binds"]), a["delivery_queue"], a["delivery_in_flight"]]
            for a in s["accounts"]
        ],
        out,
    )
    q = s["queues"]
    print(
        f"\nQUEUES  pending dispatch {q['pending_dispatch']}, held by dispatcher "
        f"{q['held_by_dispatcher']}, reassembling {q['reassembly_pending']}, "
        f"deliveries waiting {q['deliveries']}",
        file=out,
    )
    print("\nPROVIDERS", file=out)
    table(
        ["provider", "type", "health", "circuit", "state", "queued", "oldest s", "balance"],
        [
            [
                p["name"],
                p["type"],
                {True: "healthy", False: "UNHEALTHY", None: "unknown"}[p["healthy"]],
                p["circuit"],
                "PAUSED" if p["paused"] else "sending",
                p["queued"],
                p["oldest_queued_seconds"],
                p["balance"],
            ]
            for p in s["providers"]
        ],
        out,
    )
    t = s["throughput"]
    print("\nTHROUGHPUT", file=out)
    table(
        ["counter", "total", "per second (last minute)"],
        [
            [k.replace("_", " "), int(v), t["per_second"].get(k, 0.0)]
            for k, v in t["totals"].items()
        ],
        out,
    )


def _print_trace(t: dict[str, Any], out: TextIO) -> None:
    fields = [
        ("message id", t["id"]),
        ("found by", t["matched_by"]),
        ("account", t["account"]),
        ("from", t["source"]),
        ("to", t["destination"]),
        ("state", f"{t['state']} (stat:{t['stat']} err:{t['error_code']:03d})"),
        ("created", t["created_at"]),
        ("done", t["done_at"]),
        ("expires", t["expires_at"]),
        ("route", " -> ".join(t["route"]) or None),
        ("provider", t["provider"]),
        ("provider's id", t["provider_message_id"]),
        ("attempts", t["attempts"]),
        ("parts", ", ".join(t["part_ids"])),
    ]
    if t["dispatcher"]:
        d = t["dispatcher"]
        fields.append(("dispatcher", f"{d['status']} for {d['provider']}"))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {_text(value)}", file=out)
    print("\nHISTORY", file=out)
    table(
        ["time", "state", "stat", "detail"],
        [[h["at"], h["state"], h["stat"], h["detail"]] for h in t["history"]],
        out,
    )


def _print_route(r: dict[str, Any], out: TextIO) -> None:
    who = f" from {r['account']}" if r["account"] else ""
    rule = r["rule"]
    if rule is None:
        print(f"+{r['number']}{who}: no rule matches (the message would be refused)", file=out)
        return
    conditions = ", ".join(
        f"{k}={v if isinstance(v, str) else ','.join(v)}"
        for k in ("accounts", "countries", "prefixes", "regex")
        if (v := rule[k]) is not None
    ) or "matches everything"  # fmt: skip
    print(f"+{r['number']}{who}: rule {rule['name']} (routes[{rule['index']}]; {conditions})",
          file=out)  # fmt: skip
    table(
        ["order", "provider", "can carry", "why not", "state", "circuit"],
        [
            [i, p["name"], p["can_carry"], p["reason"], "PAUSED" if p["paused"] else "sending",
             p["circuit"]]
            for i, p in enumerate(r["providers"], start=1)
        ],
        out,
    )  # fmt: skip
    if not r["routable"]:
        print("no provider of this rule can carry it: the message would be refused", file=out)


def _print_queue(q: dict[str, Any], out: TextIO) -> None:
    bound = "a receiver is bound" if q["receiver_bound"] else "NO receiver bound"
    print(f"{q['account']}: {q['depth']} waiting ({bound}); showing {len(q['items'])}", file=out)
    if q["items"]:
        table(
            ["id", "kind", "message id / from", "stat", "to", "queued at", "attempts"],
            [
                [
                    i["id"],
                    i["kind"],
                    i.get("message_id") or i.get("from"),
                    i.get("stat"),
                    i["to"],
                    i["enqueued_at"],
                    i["attempts"],
                ]
                for i in q["items"]
            ],
            out,
        )


# --------------------------------------------------------------------------- commands


def run_command(args: Any, out: TextIO = sys.stdout) -> int:
    """One admin command from parsed CLI arguments (see bridge.cli)."""
    prog = getattr(args, "prog", "smpp-bridge")
    try:
        client = AdminClient.from_config(args.config, getattr(args, "admin_url", None))
        answer, printer = _dispatch(client, args)
    except ClientError as e:
        print(f"{prog} {args.command}: {e}", file=sys.stderr)
        return e.code
    if args.json:
        print(json.dumps(answer, indent=2), file=out)
    else:
        printer(answer, out)
    return 0


def _dispatch(client: AdminClient, args: Any) -> tuple[Any, Any]:
    quote = urllib.parse.quote
    command = args.command
    if command == "status":
        return client.call("GET", "/api/status"), _print_status
    if command == "trace":
        return client.call("GET", f"/api/trace?id={quote(args.id, safe='')}"), _print_trace
    if command == "route":
        query = {"number": args.number}
        if args.account:
            query["account"] = args.account
        if args.unicode:
            query["unicode"] = "1"
        return client.call("GET", "/api/route?" + urllib.parse.urlencode(query)), _print_route
    if command == "queue":
        account = quote(args.account, safe="")
        if args.action == "ls":
            answer = client.call("GET", f"/api/queues/{account}?limit={args.limit}")
            return answer, _print_queue
        answer = client.call("POST", f"/api/queues/{account}/purge")
        return answer, lambda a, out: print(
            f"removed {a['removed']} item(s) from {a['account']}'s delivery queue", file=out
        )
    if command == "provider":
        name = quote(args.name, safe="")
        answer = client.call("POST", f"/api/providers/{name}/{args.action}")

        def said(a: dict[str, Any], out: TextIO) -> None:
            state = "paused" if a["paused"] else "sending"
            note = "" if a["changed"] else " already"
            print(f"provider {a['provider']}:{note} {state}", file=out)

        return answer, said
    if command == "kick":
        target = quote(args.target, safe="")
        answer = client.call("POST", f"/api/sessions/{target}/kick")
        return answer, lambda a, out: print(
            "unbinding session(s) " + ", ".join(str(i) for i in a["sessions"]), file=out
        )
    if command == "log-level":
        if args.level is None:
            answer = client.call("GET", "/api/log-level")
            return answer, lambda a, out: print(f"log level: {a['level']}", file=out)
        answer = client.call("POST", "/api/log-level", {"level": args.level})
        return answer, lambda a, out: print(
            f"log level: {a['level']} (was {a['previous']})", file=out
        )
    raise ClientError(f"unknown command {command}", 2)
