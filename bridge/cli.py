"""Command line: ``bridge run | check-config | hash-password | bench | simulate``, and the
operator's commands over a running bridge's admin API: ``status | trace | route | queue |
provider | log-level`` (:mod:`bridge.admin.client`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import sys
from pathlib import Path

DEFAULT_CONFIG = "config/bridge.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bridge", description="SMPP 3.4 to HTTP SMS provider bridge")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the bridge")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML file ({DEFAULT_CONFIG})")
    run.add_argument("--smpp-port", type=int, help="override smpp.port")
    run.add_argument("--http-port", type=int, help="override http.port")
    run.add_argument("--admin-port", type=int, help="override admin.port")
    run.add_argument("--data-dir", help="override storage.data_dir")
    run.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")

    check = sub.add_parser("check-config", help="validate a config file and report every error")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)

    cu = sub.add_parser(
        "callback-urls",
        help="print each provider's callback URLs (for providers whose push URL is set in "
        "their web interface)",
    )
    cu.add_argument("config", nargs="?", default=DEFAULT_CONFIG)

    hp = sub.add_parser("hash-password", help="print a pbkdf2_sha256 hash for an account password")
    hp.add_argument("--password", help="the password (prompted for when omitted)")

    bench = sub.add_parser("bench", help="measure codec and SMPP round-trip throughput")
    bench.add_argument(
        "what", nargs="?", choices=["codec", "smpp", "e2e", "provider", "all"], default="all"
    )
    bench.add_argument("--messages", type=int, default=20000, help="submit_sm per run")
    bench.add_argument("--binds", type=int, default=4, help="ESME binds (e2e)")
    bench.add_argument("--window", type=int, default=64, help="submit_sm in flight per bind (e2e)")

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


#: The commands that talk to a running bridge's admin listener.
ADMIN_COMMANDS = ("status", "trace", "route", "queue", "provider", "log-level")


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
    level = sub.add_parser(
        "log-level", parents=[common], help="show or change the log level at run time"
    )
    level.add_argument(
        "level", nargs="?", type=str.lower, choices=["debug", "info", "warning", "error"]
    )


def _simulate(args: argparse.Namespace) -> int:
    from bridge.observability import configure_logging
    from bridge.simulators import SIMULATORS

    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"bridge simulate: --option wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        options[key] = value
    configure_logging("info", "auto")
    _install_uvloop()
    module = importlib.import_module(SIMULATORS[args.provider])
    try:
        asyncio.run(module.serve(args.host, args.port, options))
    except ValueError as e:
        print(f"bridge simulate: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"bridge simulate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


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
        return _check_config(args.config)
    if args.command == "hash-password":
        return _hash_password(args.password)
    if args.command == "callback-urls":
        return _callback_urls(args.config)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "bench":
        if args.what == "provider":
            from bridge.bench_provider import main as provider_main

            return provider_main(binds=args.binds, window=args.window, messages=args.messages)
        if args.what == "e2e":
            from bridge.bench_e2e import main as e2e_main

            return e2e_main(binds=args.binds, window=args.window, messages=args.messages)
        from bridge.bench import main as bench_main

        return bench_main(args.what, messages=args.messages)
    return _run(args)


def _check_config(path: str) -> int:
    from bridge.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(f"{Path(path)}: OK ({len(cfg.accounts)} account(s))")
    return 0


def _callback_urls(path: str) -> int:
    from bridge.app import callback_urls
    from bridge.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
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
    from bridge.observability import configure_logging

    overrides: dict[str, object] = {
        k: v
        for k, v in (
            ("smpp_port", args.smpp_port),
            ("http_port", args.http_port),
            ("admin_port", args.admin_port),
            ("data_dir", args.data_dir),
        )
        if v is not None
    }
    try:
        cfg = apply_overrides(load_config(args.config), **overrides)  # type: ignore[arg-type]
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
        print(f"bridge: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
