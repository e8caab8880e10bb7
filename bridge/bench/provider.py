"""``smpp-bridge bench provider``: ESME → bridge → a provider simulator over real HTTP → receipt,
against a naive forwarder measured in the same run.

Three processes, as in production: the load client (``bench.wire.load_client``, its own
process), the system under test (this process), and the iSMS HTTP simulator (``smpp-bridge
simulate isms-http``, a subprocess) which answers ``send.php`` and pushes each delivery report
to the ``dlr-url``.

* **Naive forwarder** (the baseline): an SMPP responder that, for each submit_sm, makes one
  aiohttp GET to the simulator's ``send.php`` with a pooled session and answers submit_sm_resp
  with the provider's id. No store, no routing, no rate limit, no receipts: the most a Python
  process can forward on this machine, one HTTP request per message.
* **The bridge**: the real daemon (SQLite store, ``synchronous=FULL``, dispatcher, the iSMS HTTP
  adapter with ``dlr-url``), with every message asking for a receipt; a message counts when its
  receipt deliver_sm, built from the simulator's push to the bridge's callback URL, reached the
  ESME.

The figure of merit is the bridge's end-to-end messages/s (receipts matched) as a ratio of the
naive forwarder's messages/s (HTTP requests answered). Same client, same simulator, same
connection pool size for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.bench.base import bridge_config, print_report, run_setup, start_run
from bridge.bench.wire import run_load_client as _run_client
from bridge.smpp.pdu import CommandId, FrameReader, Pdu, encode

_HEADER = struct.Struct(">IIII")
USERNAME = "bench"
PASSWORD = "benchpass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_simulator(port: int, delay: float) -> subprocess.Popen[bytes]:
    """``smpp-bridge simulate isms-http`` in its own process, once it accepts connections."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "simulate",
            "isms-http",
            "--port",
            str(port),
            "--option",
            f"delay={delay}",
            "--option",
            f"username={USERNAME}",
            "--option",
            f"password={PASSWORD}",
            "--option",
            "credits=100000000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the simulator did not start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the simulator did not start listening")


class _NaiveForwarder(asyncio.Protocol):
    """Baseline: each submit_sm becomes one GET to send.php; its reply becomes the resp."""

    session: Any = None
    base_url = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.reader = FrameReader()
        self.tasks: set[asyncio.Task[None]] = set()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        for frame in self.reader.frames():
            _, cid, _, seq = _HEADER.unpack_from(frame)
            if cid == CommandId.submit_sm:
                task = asyncio.ensure_future(self._forward(seq))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif cid in (CommandId.bind_transceiver, CommandId.unbind, CommandId.enquire_link):
                fields = {"system_id": "naive"} if cid == CommandId.bind_transceiver else {}
                self.transport.write(encode(Pdu(cid | 0x80000000, seq, 0, fields)))

    async def _forward(self, seq: int) -> None:
        params = {
            "username": USERNAME,
            "password": PASSWORD,
            "from": "Bench",
            "to": "306912345678",
            "message": "benchmark message",
            "coding": "GSM",
        }
        try:
            async with self.session.get(f"{self.base_url}/send.php", params=params) as resp:
                body = await resp.text()
            status = 0 if resp.status == 200 and body.startswith("ID:") else 0x45
            mid = body[3:].strip()[:64] if status == 0 else ""
        except Exception:
            status, mid = 0x08, ""
        self.transport.write(
            encode(Pdu(CommandId.submit_sm_resp, seq, status, {"message_id": mid}))
        )


def _bridge_config(data_dir: str, window: int, sim_url: str, concurrency: int) -> str:
    return bridge_config(
        data_dir,
        window,
        f"""[providers.isms]
type = "isms_http"
base_url = "{sim_url}/"
username = "{USERNAME}"
password = "{PASSWORD}"
concurrency = {concurrency}
[[routes]]
providers = ["isms"]
""",
    )


async def _bench(
    binds: int, window: int, messages: int, timeout: float, concurrency: int, delay: float
) -> dict[str, Any]:
    import aiohttp

    from bridge.app import Bridge
    from bridge.config import load_config_text
    from bridge.runtime import tune_gc

    sim_port = _free_port()
    sim = _start_simulator(sim_port, delay)
    sim_url = f"http://127.0.0.1:{sim_port}"
    try:
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            _NaiveForwarder.session = session
            _NaiveForwarder.base_url = sim_url
            naive = await loop.create_server(_NaiveForwarder, "127.0.0.1", 0)
            port = naive.sockets[0].getsockname()[1]
            print("naive forwarder (one aiohttp GET per submit_sm):", file=sys.stderr)
            baseline = await asyncio.to_thread(
                _run_client, port, binds, window, messages, timeout, False
            )
            naive.close()
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _bridge_config(tmp, window, sim_url, concurrency)
            bridge = Bridge(load_config_text(cfg, base_dir=Path(tmp)))
            await bridge.start()
            tune_gc()  # as `smpp-bridge run` does (bridge/runtime.py)
            print("bridge (iSMS HTTP adapter, SQLite store, receipts):", file=sys.stderr)
            try:
                result = await asyncio.to_thread(
                    _run_client, bridge.smpp.ports["smpp"], binds, window, messages, timeout
                )
            finally:
                await bridge.stop()
    finally:
        sim.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sim.wait(5)
    return {"naive_forwarder": baseline, "bridge": result}


def main(
    *,
    binds: int = 4,
    window: int = 64,
    messages: int = 20_000,
    timeout: float = 300,
    concurrency: int = 64,
    delay: float = 0.2,
    as_json: bool = False,
) -> int:
    from bridge.bench.summary import provider_summary

    loop_name = start_run()
    res = asyncio.run(_bench(binds, window, messages, timeout, concurrency, delay))
    b, base = res["bridge"], res["naive_forwarder"]
    naive_rate = base["submit_per_s"]
    res["ratio_end_to_end_vs_naive"] = b["end_to_end_per_s"] / naive_rate if naive_rate else 0.0
    res["setup"] = run_setup(
        loop_name, binds, window, messages, http_pool=concurrency, report_delay=delay
    )
    return print_report(res, provider_summary, as_json)
