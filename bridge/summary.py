"""What a config means, in lines an operator reads: its accounts, providers and routes.

``smpp-bridge check-config`` prints these lines, and the bridge logs the same facts at start-up
(one INFO line per provider and per route), so "which provider does this go to" is answered
without reading the TOML twice. Secrets never appear: only names, addresses and limits.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.config import Config
from bridge.config_sections import AccountConfig, RouteConfig
from bridge.providers.registry import ProviderConfig

__all__ = ["account_line", "provider_line", "route_line", "route_lines", "summary_lines"]


def _rate(tps: float) -> str:
    return "unlimited" if tps == 0 else f"{tps:g}/s"


def _join(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items)


def account_line(a: AccountConfig) -> str:
    """``demo: transmitter, receiver, transceiver from 127.0.0.0/8, ::1/128; …``"""
    parts = [
        f"{_join(b.value for b in a.allowed_bind_types)} from "
        f"{_join(a.allowed_ips) or 'nowhere (allowed_ips = [])'}",
        f"max {a.max_binds} binds",
        f"tps {_rate(a.tps)}",
    ]
    if a.default_region:
        parts.append(f"region {a.default_region}")
    if a.inbound_numbers:
        parts.append(f"inbound {_join(a.inbound_numbers)}")
    return f"{a.system_id}: " + "; ".join(parts)


def provider_endpoint(p: ProviderConfig) -> str:
    """Where the provider is: its base_url, an upstream's host:port, or the built-in sandbox."""
    base_url = getattr(p, "base_url", None)
    if isinstance(base_url, str):
        return base_url
    host, port = getattr(p, "host", None), getattr(p, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"smpp://{host}:{port}"
    delay = getattr(p, "delay", None)
    if isinstance(delay, float | int):
        return f"built in, reports {delay:g} s after each send"
    return "no network"


def provider_line(name: str, p: ProviderConfig) -> str:
    """``isms (isms_http): http://cp.isms.gr/api/http/; requests unlimited, 16 in flight``"""
    return (
        f"{name} ({p.type}): {provider_endpoint(p)}; requests {_rate(p.requests_per_second)},"
        f" {p.concurrency} in flight"
    )


def route_condition(r: RouteConfig) -> str:
    parts = []
    if r.accounts is not None:
        parts.append(f"accounts {_join(r.accounts)}")
    if r.countries is not None:
        parts.append(f"countries {_join(r.countries)}")
    if r.prefixes is not None:
        parts.append(f"prefixes {_join(r.prefixes)}")
    if r.regex is not None:
        parts.append(f"regex {r.regex}")
    return " and ".join(parts) or "everything"


def route_line(index: int, r: RouteConfig) -> str:
    """``1. germany: countries DE and prefixes 49 -> sandbox, backup``"""
    name = f" {r.name}" if r.name else ""
    return f"{index}.{name}: {route_condition(r)} -> {_join(r.providers)}"


def route_lines(cfg: Config) -> list[str]:
    if not cfg.routes:
        first = next(iter(cfg.providers))
        return [f"(no [[routes]]) everything -> {first}"]
    return [route_line(i, r) for i, r in enumerate(cfg.routes, 1)]


def summary_lines(cfg: Config) -> list[str]:
    """The lines ``check-config`` prints under its OK."""
    lines = [f"accounts ({len(cfg.accounts)}):"]
    lines += [f"  {account_line(a)}" for a in cfg.accounts]
    lines.append(f"providers ({len(cfg.providers)}):")
    lines += [f"  {provider_line(n, p)}" for n, p in cfg.providers.items()]
    lines.append(f"routes ({len(cfg.routes)}), first match wins:")
    lines += [f"  {line}" for line in route_lines(cfg)]
    lines.append(
        f"SMPP on {cfg.smpp.host}:{cfg.smpp.port}, HTTP on {cfg.http.host}:{cfg.http.port},"
        f" data in {cfg.storage.data_dir}"
    )
    return lines
