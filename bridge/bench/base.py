"""What the whole-bridge benchmarks (``bench e2e``, ``bench provider``) share: the bridge's base
TOML config, and the run set-up every ``bench`` command does before measuring.

It exists so that both benchmarks measure a bridge configured the same way (one config builder,
not two copies that drift), and every report names its loop, CPUs and Python alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any


def bridge_config(data_dir: str, window: int, providers: str, *, storage: str = "") -> str:
    """A bridge on free loopback ports with the ``demo`` account, ``window`` requests in flight
    per bind and as many receipts per delivery window; ``providers`` is the TOML of its
    providers (and routes), ``storage`` more ``[storage]`` keys (a store URL)."""
    return f"""
[smpp]
port = 0
window = {window}
[http]
port = 0
[admin]
port = 0
[storage]
{storage}data_dir = "{data_dir}"
[logging]
level = "error"
[pipeline]
delivery_window = {window}
[[accounts]]
system_id = "demo"
password = "demopass"
max_outstanding = {window * 2}
{providers}"""


def install_uvloop() -> str:
    """Run on uvloop when it is installed (as ``smpp-bridge run`` does); the loop's name."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
        return "uvloop"
    return "asyncio"


def start_run(log_level: str = "error") -> str:
    """Quiet logs and the fastest loop before a benchmark runs; returns the loop's name."""
    from bridge.logs import configure_logging

    configure_logging(log_level, "console")
    return install_uvloop()


def machine() -> dict[str, object]:
    """Where the figures were measured (the end of every report's ``setup``)."""
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


def run_setup(
    loop: str, binds: int, window: int, messages: int, **more: object
) -> dict[str, object]:
    """A report's ``setup``: the load, what else the benchmark varies, the loop, the machine."""
    load = {"binds": binds, "window": window, "messages": messages}
    return {**load, **more, "loop": loop, **machine()}


def print_report(
    report: dict[str, Any], summary: Callable[[dict[str, Any]], str], as_json: bool
) -> int:
    """The paragraph a person reads first (unless ``as_json``), then the JSON report; exit 0."""
    if not as_json:
        print(summary(report), end="\n\n")
    print(json.dumps(report, indent=2))
    return 0
