"""Cluster mode: one node on Redis against two, in the same run.

Usage: ``python -m benchmarks.cluster [--messages 20000]``

Starts its own ``redis-server`` (a temporary directory, ``appendonly yes``, ``appendfsync
always``, a free port), then:

* **one node** — ``smpp-bridge run --store-url redis://… --node-id a`` on ``config/bridge.toml``
  (sandbox provider), driven by one ``smpp-bridge bench load`` client (4 binds, window 64) with
  ``--messages`` submit_sm, every receipt awaited;
* **two nodes** — nodes ``a`` and ``b`` on the same Redis, each driven by its own load client
  with ``--messages`` / 2 at the same time, as two ESMEs (accounts ``demo`` and ``demo2``) bound
  to different nodes: each account's receipts go out from the node where it is bound (README,
  "Running several nodes"); the rate is the sum.

For each phase it reports the messages per second end to end (all receipts matched), and the
CPU seconds per message of the bridge processes and of redis-server (from ``/proc``), so the
figure for one core per node can be worked out from the measured cost rather than guessed: on
a 2-core machine, two nodes, Redis and the load clients share the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


_SECOND_ACCOUNT = """
[[accounts]]
system_id = "demo2"
password = "demopass"
allowed_ips = ["127.0.0.0/8", "::1/128"]
max_binds = 10
tps = 0
max_outstanding = 100
default_region = "DE"
"""


def _config(tmp: Path) -> Path:
    """config/bridge.toml with a second account (another ESME), next to it in ``tmp``."""
    text = (REPO / "config" / "bridge.toml").read_text()
    path = tmp / "cluster.toml"
    path.write_text(text + _SECOND_ACCOUNT)
    return path


def _node(name: str, redis_url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "bridge", "run", "--config", str(_config(tmp)),
            "--store-url", redis_url, "--node-id", name, "--smpp-port", str(port),
            "--http-port", str(_free_port()), "--admin-port", str(_free_port()),
            "--data-dir", str(tmp / f"data-{name}"),
        ],
        stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    _wait_port(port)
    return proc, port


def _load(port: int, messages: int, account: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "bench", "load", "--port", str(port),
         "--messages", str(messages), "--system-id", account, "--password", "demopass",
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _phase(names: list[str], redis_url: str, redis_pid: int, messages: int,
           tmp: Path) -> dict[str, Any]:  # fmt: skip
    nodes = [_node(name, redis_url, tmp) for name in names]
    try:
        time.sleep(1.0)  # heartbeats seen, leases free
        cpu0 = [_cpu_seconds(p.pid) for p, _ in nodes]
        redis0 = _cpu_seconds(redis_pid)
        started = time.perf_counter()
        share = messages // len(nodes)
        accounts = ["demo", "demo2"]
        loads = [_load(port, share, accounts[i]) for i, (_, port) in enumerate(nodes)]
        results = []
        for load in loads:
            out, _ = load.communicate(timeout=600)
            results.append(json.loads(out))
        wall = time.perf_counter() - started
        cpu = sum(_cpu_seconds(p.pid) for p, _ in nodes) - sum(cpu0)
        redis_cpu = _cpu_seconds(redis_pid) - redis0
    finally:
        for proc, _ in nodes:
            proc.terminate()
        for proc, _ in nodes:
            proc.wait(timeout=30)
    matched = sum(r["receipts_matched"] for r in results)
    return {
        "nodes": len(names),
        "messages": share * len(names),
        "receipts_matched": matched,
        "receipts_duplicated": sum(r["receipts_duplicated"] for r in results),
        "end_to_end_per_s": round(matched / wall),
        "submit_per_s": round(sum(r["submit_per_s"] for r in results)),
        "bridge_cpu_us_per_message": round(cpu / matched * 1e6, 1),
        "redis_cpu_us_per_message": round(redis_cpu / matched * 1e6, 1),
    }


def run(messages: int) -> dict[str, Any]:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    port = _free_port()
    server = subprocess.Popen(
        [redis, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port)
        url = f"redis://127.0.0.1:{port}/0"
        one = _phase(["a"], url, server.pid, messages, tmp)
        two = _phase(["a", "b"], url, server.pid, messages, tmp)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "one_node": one,
        "two_nodes": two,
        "ratio_two_to_one": round(two["end_to_end_per_s"] / one["end_to_end_per_s"], 2),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args(argv)
    report = run(args.messages)
    for key in ("one_node", "two_nodes"):
        r = report[key]
        print(
            f"{r['nodes']} node(s): {r['end_to_end_per_s']:,} msg/s end to end "
            f"({r['receipts_matched']:,} receipts matched, {r['receipts_duplicated']} twice); "
            f"bridge CPU {r['bridge_cpu_us_per_message']} µs/msg, "
            f"redis-server {r['redis_cpu_us_per_message']} µs/msg",
            file=sys.stderr,
        )
    print(f"two nodes / one: {report['ratio_two_to_one']} on {report['cpus']} cores",
          file=sys.stderr)  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
