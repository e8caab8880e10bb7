"""A well-behaved ESME under attack: bind time and submit latency, with and without the attack.

Usage: ``python -m benchmarks.storm [--seconds 6] [--idle 1000] [--flooders 5] [--submits 300]
[--json]`` (or ``python benchmarks/storm.py ...``). Loopback only, bounded in time and count.

Issue 14, findings 3 and 4. Each phase starts a fresh SMPP server (``SmppServer`` with a handler
that accepts every message at once, logging at INFO as JSON to a file, like production) in a
process of its own, then:

* **attack** (a second process): ``--idle`` connections from 127.0.0.1 that never bind (each
  one reconnects 10 ms after the server closes it: a reconnect storm), and ``--flooders``
  sessions from 127.0.0.3, bound to an account with ``tps = 100`` and ``max_outstanding = 50``,
  that pipeline submit_sm and unknown command ids as fast as the socket takes them (each one
  answered ESME_RTHROTTLED or generic_nack: a log line each, before issue 14);
* **good ESME** (this process), from 127.0.0.2: connect + bind_transceiver (the bind time),
  then ``--submits`` submit_sm one at a time (stop and wait), each latency recorded.

Phases: ``quiet`` (no attack: the baseline), ``attack`` (the defaults: per-address cap, bind
reserve, sampled logs, at most 128 PDUs per session per loop pass, the batched accept loop), and
``unprotected`` (the same attack with the settings turned off: ``max_unbound_per_address`` 10⁶,
``bind_reserve`` 0, ``log_sample_interval`` ≈ 0; what is not a setting stays: the accept loop,
the fairness bound, and eviction of the oldest idle connection when the budget is full). The
figures to compare are the ratios to ``quiet`` measured in the same run. ``--phases
quiet,attack`` also runs against an older bridge (``PYTHONPATH=<its checkout>``), which is how
the README's "before" figures were taken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import platform
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.core.accounts import LOOPBACK_NETWORKS, Account, AccountRegistry
from bridge.smpp.pdu import CommandId, FrameReader, Pdu, decode, encode
from bridge.smpp.server import ServerConfig, SessionInfo, SmppServer

GOOD_HOST = "127.0.0.2"
FLOOD_HOST = "127.0.0.3"  # a bound customer misbehaving, not the idle storm's address
_HEADER = struct.Struct(">IIII")


def _submit(seq: int, text: bytes = b"storm") -> bytes:
    return encode(
        Pdu(
            CommandId.submit_sm,
            seq,
            fields={
                "source_addr_ton": 5,
                "source_addr": "Bench",
                "dest_addr_ton": 1,
                "dest_addr_npi": 1,
                "destination_addr": "4915112345678",
                "short_message": text,
            },
        )
    )


def _bind(system_id: str, password: str, seq: int = 1) -> bytes:
    return encode(
        Pdu(
            CommandId.bind_transceiver,
            seq,
            fields={"system_id": system_id, "password": password, "interface_version": 0x34},
        )
    )


# --------------------------------------------------------------------------- the server


class _Accepting:
    """Accepts every message at once (the pipeline is not what this measures)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Any, token: Any) -> bool:
        reply(token, Pdu(pdu.command_id, fields={"message_id": f"{next(self._ids):x}"}))
        return True

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        return Pdu(pdu.command_id, fields={"message_id": f"{next(self._ids):x}"})

    def session_bound(self, session: SessionInfo) -> None:
        return None

    def session_closed(self, session: SessionInfo) -> None:
        return None


def _serve(port_out: Any, log_path: str, settings: dict[str, Any], stop: Any) -> None:
    from bridge.logs import configure_logging

    if not os.environ.get("STORM_ASYNCIO"):
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    configure_logging("info", "json", stream=log)
    accounts = AccountRegistry(
        [
            Account("good", "goodpw", allowed_networks=LOOPBACK_NETWORKS, max_outstanding=100),
            Account(
                "flood",
                "floodpw",
                allowed_networks=LOOPBACK_NETWORKS,
                tps=100,
                max_outstanding=50,
                max_binds=100,
            ),
        ]
    )

    async def main() -> None:
        cfg = ServerConfig(host="127.0.0.1", port=0, max_connections=1000, **settings)
        server = SmppServer(cfg, accounts, _Accepting())
        await server.start()
        port_out.send(server.ports["smpp"])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop(timeout=1.0)

    asyncio.run(main())
    log.flush()


# --------------------------------------------------------------------------- the attack


async def _idle_slot(port: int, deadline: float, counts: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect_failed"] += 1
            await asyncio.sleep(0.01)
            continue
        counts["connections"] += 1
        try:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(65536), max(0.0, deadline - loop.time()))
        finally:
            writer.close()
        await asyncio.sleep(0.01)


async def _flooder(port: int, deadline: float, counts: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(FLOOD_HOST, 0)
    )
    writer.write(_bind("flood", "floodpw"))
    head = await reader.readexactly(16)
    await reader.readexactly(_HEADER.unpack(head)[0] - 16)
    unknown = _HEADER.pack(16, 0x00000099, 0, 7)
    blob = b"".join(_submit(i) + unknown for i in range(2, 2002))
    loop = asyncio.get_running_loop()

    async def drain() -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return
                counts["flood_answer_bytes"] += len(data)

    reading = asyncio.ensure_future(drain())
    try:
        while loop.time() < deadline:
            writer.write(blob)
            counts["flood_pdus"] += 4000
            await writer.drain()
    except OSError:
        pass
    finally:
        reading.cancel()
        writer.close()


def _attack(port: int, seconds: float, idle: int, flooders: int, out: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> dict[str, int]:
        counts = dict.fromkeys(
            ("connections", "connect_failed", "flood_pdus", "flood_answer_bytes"), 0
        )
        deadline = asyncio.get_running_loop().time() + seconds
        jobs = [_idle_slot(port, deadline, counts) for _ in range(idle)]
        jobs += [_flooder(port, deadline, counts) for _ in range(flooders)]
        await asyncio.gather(*jobs, return_exceptions=True)
        return counts

    out.send(asyncio.run(main()))


# --------------------------------------------------------------------------- the good ESME


class _Esme:
    """A blocking ESME from GOOD_HOST: connect + bind_transceiver, timed."""

    def __init__(self, port: int) -> None:
        t0 = time.perf_counter()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(30.0)
        self.sock.bind((GOOD_HOST, 0))
        self.reader = FrameReader(1 << 20)
        self.sock.connect(("127.0.0.1", port))
        self.connect_s = time.perf_counter() - t0
        self.sock.sendall(_bind("good", "goodpw"))
        self.bind_status = self.recv().command_status
        self.bind_s = time.perf_counter() - t0

    def recv(self) -> Pdu:
        while True:
            for frame in self.reader.frames():
                return decode(frame)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _good_esme(port: int, binds: int, submits: int) -> dict[str, Any]:
    """``binds`` bind cycles (bind time each), then ``submits`` stop-and-wait submit_sm."""
    bind_times: list[float] = []
    connect_times: list[float] = []
    refused = 0
    esme: _Esme | None = None
    try:
        for i in range(binds):
            esme = _Esme(port)
            bind_times.append(esme.bind_s)
            connect_times.append(esme.connect_s)
            if esme.bind_status != 0:
                refused += 1
            if i < binds - 1:
                esme.close()
        latencies = []
        if esme is not None and esme.bind_status == 0:
            for seq in range(2, submits + 2):
                t = time.perf_counter()
                esme.sock.sendall(_submit(seq))
                while True:
                    r = esme.recv()
                    if r.sequence_number == seq:
                        break
                if r.command_status == 0:
                    latencies.append(time.perf_counter() - t)
    except (OSError, ConnectionError) as e:
        return {"error": str(e), "binds": len(bind_times), "binds_refused": refused,
                "answered": 0}  # fmt: skip
    finally:
        if esme is not None:
            esme.close()
    return {
        "binds": len(bind_times),
        "binds_refused": refused,
        "bind_p50_s": _pct(bind_times, 0.5),
        "bind_max_s": max(bind_times) if bind_times else None,
        "bind_times_s": [round(t, 4) for t in bind_times],
        "connect_times_s": [round(t, 4) for t in connect_times],
        "answered": len(latencies),
        "submit_p50_s": _pct(latencies, 0.5),
        "submit_p99_s": _pct(latencies, 0.99),
        "submit_max_s": max(latencies) if latencies else None,
    }


# --------------------------------------------------------------------------- phases


def _phase(
    name: str, settings: dict[str, Any], attack: bool, args: argparse.Namespace
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "server.log")
        port_rx, port_tx = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        server = ctx.Process(target=_serve, args=(port_tx, log_path, settings, stop))
        server.start()
        port = port_rx.recv()
        attacker = None
        if attack:
            out_rx, out_tx = ctx.Pipe(duplex=False)
            attacker = ctx.Process(
                target=_attack, args=(port, args.seconds, args.idle, args.flooders, out_tx)
            )
            attacker.start()
            time.sleep(min(2.0, args.seconds / 3))  # let the storm build up
        good = _good_esme(port, args.binds, args.submits)
        counts: dict[str, int] = {}
        if attacker is not None:
            counts = out_rx.recv()
            attacker.join(30)
        stop.set()
        server.join(30)
        log_bytes = os.path.getsize(log_path)
        with open(log_path, "rb") as f:
            log_lines = sum(1 for _ in f)
    return {"phase": name, "good": good, "attack": counts, "log_lines": log_lines,
            "log_bytes": log_bytes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="attack duration per phase")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections (127.0.0.1)")
    parser.add_argument("--flooders", type=int, default=5, help="log-flooding sessions")
    parser.add_argument("--binds", type=int, default=20, help="the good ESME's bind cycles")
    parser.add_argument("--submits", type=int, default=300, help="the good ESME's submit_sm")
    parser.add_argument(
        "--phases",
        default="quiet,attack,unprotected",
        help="comma-separated; quiet,attack also run against older versions of the bridge",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args()
    unprotected = {
        "max_unbound_per_address": 1_000_000,
        "bind_reserve": 0,
        "log_sample_interval": 1e-9,
    }
    plan = {
        "quiet": ({}, False),
        "attack": ({}, True),
        "unprotected": (unprotected, True),
    }
    phases = [_phase(name, *plan[name], args) for name in args.phases.split(",")]
    report = {"python": platform.python_version(), "cpus": os.cpu_count(), "phases": phases}
    if not args.json:
        quiet = phases[0]["good"]
        for p in phases:
            g = p["good"]
            if g.get("error") or not g["answered"]:
                what = f"FAILED: {g}"
            else:
                p99 = g["submit_p99_s"]
                what = (
                    f"bind p50 {g['bind_p50_s'] * 1000:.1f} ms max "
                    f"{g['bind_max_s'] * 1000:.1f} ms ({g['binds_refused']}/{g['binds']} "
                    f"refused), submit p50 {g['submit_p50_s'] * 1000:.2f} ms p99 "
                    f"{p99 * 1000:.2f} ms ({p99 / quiet['submit_p99_s']:.0f}x quiet), "
                    f"{g['answered']}/{args.submits} answered"
                )
            print(
                f"{p['phase']:>11}: {what}; server log {p['log_lines']} lines "
                f"({p['log_bytes'] / 1e6:.1f} MB); attack {p['attack']}"
            )
        print()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
