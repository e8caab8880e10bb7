"""Command line: ``smpp-bridge run | check-config | callback-urls | hash-password | bench |
simulate | send``, and the operator's commands over a running bridge's admin API: ``status |
trace | route | queue | provider | log-level`` (:mod:`bridge.admin.client`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.config import Config

DEFAULT_CONFIG = "config/bridge.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smpp-bridge", description="SMPP 3.4 to HTTP SMS provider bridge"
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the bridge")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML file ({DEFAULT_CONFIG})")
    run.add_argument("--smpp-port", type=int, help="override smpp.port")
    run.add_argument("--http-port", type=int, help="override http.port")
    run.add_argument("--admin-port", type=int, help="override admin.port")
    run.add_argument("--data-dir", help="override storage.data_dir")
    run.add_argument(
        "--store-url",
        help="cluster mode: Redis URL, e.g. redis://HOST:6379/0 (overrides storage.url)",
    )
    run.add_argument("--node-id", help="this node's name in a cluster (overrides cluster.node_id)")
    run.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    _add_set(run)

    check = sub.add_parser("check-config", help="validate a config file and report every error")
    _add_config(check)
    _add_set(check)

    cu = sub.add_parser(
        "callback-urls",
        help="print each provider's callback URLs (for providers whose push URL is set in "
        "their web interface)",
    )
    _add_config(cu)
    _add_set(cu)

    hp = sub.add_parser("hash-password", help="print a pbkdf2_sha256 hash for an account password")
    hp.add_argument("--password", help="the password (prompted for when omitted)")

    bench = sub.add_parser("bench", help="measure codec and SMPP round-trip throughput")
    bench.add_argument(
        "what", nargs="?", choices=["codec", "smpp", "e2e", "provider", "load", "all"],
        default="all",
        help="load: the e2e load client against a running bridge (--host, --port, ...)",
    )
    bench.add_argument("--host", default="127.0.0.1", help="load: the bridge's SMPP address")
    bench.add_argument("--port", type=int, default=2775, help="load: the bridge's SMPP port")
    bench.add_argument("--system-id", default="demo", help="load: the account to bind as")
    bench.add_argument(
        "--password",
        default=None,
        help="load: its password (default: $SMPP_DEMO_PASSWORD, else demopass)",
    )
    bench.add_argument("--messages", type=int, default=20000, help="submit_sm per run")
    bench.add_argument("--binds", type=int, default=4, help="ESME binds (e2e)")
    bench.add_argument("--window", type=int, default=64, help="submit_sm in flight per bind (e2e)")
    bench.add_argument(
        "--json", action="store_true", help="print only the JSON report (for machines)"
    )
    bench.add_argument(
        "--store-url",
        help="e2e: also run the bridge on this Redis (cluster store) and compare; its keys go "
        "under a fresh prefix, deleted afterwards",
    )

    from bridge.send import PASSWORD_ENV

    send = sub.add_parser(
        "send",
        help="a small ESME: bind, submit a text, print the responses (and receipts)",
        description="Bind to an SMSC (the bridge), submit a text and print each submit_sm_resp; "
        "with --wait-receipt, bind as a transceiver and print each delivery receipt. Exits 1 "
        "with one line on stderr when the connection, bind or a submit is refused, or a "
        "receipt does not come in time or is neither DELIVRD nor ACCEPTD; 2 for what cannot "
        "be sent at all (a malformed number).",
    )
    send.add_argument("--to", required=True, help="destination, e.g. +491701234567")
    send.add_argument("--text", required=True, help="message text (split into parts when long)")
    send.add_argument("--from", dest="source", default="Test", help="source address (Test)")
    send.add_argument("--unicode", action="store_true", help="send as UCS2 even if GSM 7-bit fits")
    send.add_argument(
        "--wait-receipt", action="store_true", help="ask for receipts and wait for each"
    )
    send.add_argument("--count", type=int, default=1, help="how many messages (1)")
    send.add_argument("--host", default="127.0.0.1", help="SMSC address (127.0.0.1)")
    send.add_argument("--port", type=int, default=2775, help="SMSC port (2775)")
    send.add_argument("--system-id", default="demo", help="system_id to bind with (demo)")
    send.add_argument(
        "--password",
        help=f"password to bind with (default: ${PASSWORD_ENV}, else demopass)",
    )
    send.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the bind, each response, and the receipts (30)",
    )
    send.add_argument("--verbose", action="store_true", help="log the SMPP client's events")

    from bridge.simulators import SIMULATORS

    sim = sub.add_parser(
        "simulate", help="run a local simulator of a provider API (for tests and demos)"
    )
    sim.add_argument("provider", choices=sorted(SIMULATORS))
    sim.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    sim.add_argument("--port", type=int, default=0, help="listen port (0: any free port)")
    sim.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="simulator setting, repeatable (see the simulator's module docstring)",
    )
    _admin_parsers(sub)
    return p


def _add_config(parser: argparse.ArgumentParser) -> None:
    """The config file, as a positional argument or as ``--config`` (as ``run`` takes it)."""
    parser.add_argument("config", nargs="?", help=f"TOML file ({DEFAULT_CONFIG})")
    parser.add_argument("--config", dest="config_option", metavar="FILE", help="the same")


def _config_path(args: argparse.Namespace) -> str:
    path: str = args.config_option or args.config or DEFAULT_CONFIG
    return path


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        metavar="KEY=VALUE",
        help="override one setting of the file, e.g. providers.isms.base_url=http://127.0.0.1:9500/"
        " (repeatable; validated like the file)",
    )


#: The commands that talk to a running bridge's admin listener.
ADMIN_COMMANDS = ("status", "trace", "route", "queue", "provider", "kick", "log-level")


def _admin_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"the running bridge's TOML file: [admin] address and token ({DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--admin-url", help="admin listener to call (default: from [admin] host/port)"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")

    sub.add_parser(
        "status",
        parents=[common],
        help="binds, queues, providers and throughput of the running bridge",
    )
    trace = sub.add_parser(
        "trace", parents=[common], help="what happened to a message (our id, a part id or a "
        "provider's id)"
    )
    trace.add_argument("id")
    route = sub.add_parser(
        "route", parents=[common], help="which rule and providers a number is routed to"
    )
    route.add_argument("number", help="destination, e.g. +491701234567")
    route.add_argument("--account", help="the sending account (rules may depend on it)")
    route.add_argument("--unicode", action="store_true", help="test a UCS2 text")
    queue = sub.add_parser(
        "queue", parents=[common], help="an account's delivery queue (receipts and MO): ls | purge"
    )
    queue.add_argument("action", choices=["ls", "purge"])
    queue.add_argument("account")
    queue.add_argument("--limit", type=int, default=50, help="items to list (ls; 50)")
    provider = sub.add_parser(
        "provider", parents=[common], help="pause | resume sending to a provider"
    )
    provider.add_argument("action", choices=["pause", "resume"])
    provider.add_argument("name")
    kick = sub.add_parser(
        "kick", parents=[common], help="unbind and close an SMPP session (or an account's)"
    )
    kick.add_argument("target", help="a session number (see status) or a system_id")
    level = sub.add_parser(
        "log-level", parents=[common], help="show or change the log level at run time"
    )
    level.add_argument(
        "level", nargs="?", type=str.lower, choices=["debug", "info", "warning", "error"]
    )


def _simulate(args: argparse.Namespace) -> int:
    from bridge.logs import configure_logging
    from bridge.simulators import SIMULATORS

    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"smpp-bridge simulate: --option wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        options[key] = value
    configure_logging("info", "auto")
    _install_uvloop()
    module = importlib.import_module(SIMULATORS[args.provider])
    try:
        asyncio.run(module.serve(args.host, args.port, options))
    except ValueError as e:
        print(f"smpp-bridge simulate: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"smpp-bridge simulate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _send(args: argparse.Namespace) -> int:
    import os

    from bridge.logs import configure_logging
    from bridge.send import PASSWORD_ENV, SendError, SendRequest, UsageError, send

    password = args.password
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or "demopass"
    req = SendRequest(
        to=args.to,
        text=args.text,
        source=args.source,
        unicode=args.unicode,
        wait_receipt=args.wait_receipt,
        count=args.count,
        host=args.host,
        port=args.port,
        system_id=args.system_id,
        password=password,
        timeout=args.timeout,
    )
    # The client's own log lines (bind refused, reconnecting) would repeat what send prints.
    configure_logging("info" if args.verbose else "error", "console")
    try:
        return asyncio.run(send(req))
    except SendError as e:
        print(f"smpp-bridge send: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ADMIN_COMMANDS:
        from bridge.admin.client import run_command

        args.prog = parser.prog
        return run_command(args)
    if args.command == "check-config":
        return _check_config(_config_path(args), args.sets)
    if args.command == "hash-password":
        return _hash_password(args.password)
    if args.command == "callback-urls":
        return _callback_urls(_config_path(args), args.sets)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "send":
        return _send(args)
    if args.command == "bench":
        if args.what == "provider":
            from bridge.bench.provider import main as provider_main

            return provider_main(
                binds=args.binds, window=args.window, messages=args.messages, as_json=args.json
            )
        if args.what == "load":
            from bridge.bench.e2e import load_main
            from bridge.send import PASSWORD_ENV

            return load_main(
                host=args.host, port=args.port, system_id=args.system_id,
                password=args.password or os.environ.get(PASSWORD_ENV, "demopass"),
                binds=args.binds, window=args.window, messages=args.messages, as_json=args.json,
            )  # fmt: skip
        if args.what == "e2e":
            from bridge.bench.e2e import main as e2e_main

            return e2e_main(
                binds=args.binds,
                window=args.window,
                messages=args.messages,
                as_json=args.json,
                store_url=args.store_url,
            )
        from bridge.bench.layer import main as bench_main

        return bench_main(args.what, messages=args.messages, as_json=args.json)
    return _run(args)


def _load(path: str, sets: list[str]) -> Config | None:
    """The config file, or None after printing its problems (the caller exits 2)."""
    from bridge.config import ConfigError, load_config

    try:
        return load_config(path, sets=sets)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return None


def _check_config(path: str, sets: list[str]) -> int:
    cfg = _load(path, sets)
    if cfg is None:
        return 2
    from bridge.summary import summary_lines

    print(f"{Path(path)}: OK")
    for line in summary_lines(cfg):
        print(f"  {line}")
    return 0


def _callback_urls(path: str, sets: list[str]) -> int:
    from bridge.web.callbacks import callback_urls

    cfg = _load(path, sets)
    if cfg is None:
        return 2
    urls = callback_urls(cfg)
    if not urls:
        print("no configured provider takes pushes", file=sys.stderr)
    for name, kinds in urls.items():
        for kind, url in kinds.items():
            print(f"{name}\t{kind}\t{url}")
    return 0


def _hash_password(password: str | None) -> int:
    from bridge.passwords import hash_password

    if password is None:
        password = getpass.getpass("SMPP password (max 8 characters): ")
    if not 1 <= len(password) <= 8:
        print("an SMPP 3.4 password has 1 to 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def _run(args: argparse.Namespace) -> int:
    from bridge.app import run
    from bridge.config import ConfigError, apply_overrides, load_config
    from bridge.logs import configure_logging

    overrides: dict[str, object] = {
        k: v
        for k, v in (
            ("smpp_port", args.smpp_port),
            ("http_port", args.http_port),
            ("admin_port", args.admin_port),
            ("data_dir", args.data_dir),
            ("store_url", args.store_url),
            ("node_id", args.node_id),
        )
        if v is not None
    }
    try:
        cfg = apply_overrides(load_config(args.config, sets=args.sets), **overrides)  # type: ignore[arg-type]
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    configure_logging(cfg.logging.level, cfg.logging.format, redact=cfg.logging.redact)
    if not args.no_uvloop:
        _install_uvloop()
    try:
        asyncio.run(run(cfg, overrides))
    except KeyboardInterrupt:
        pass
    except OSError as e:  # e.g. the port is taken
        print(f"smpp-bridge: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
