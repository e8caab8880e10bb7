"""``smpp-bridge bench``: throughput of the SMPP server, as ratios to a baseline from the same run.

The machines are shared and noisy, so an absolute number says little; every figure here is
reported next to a baseline measured seconds before on the same machine:

* **smpp** — a pipelined ESME (a separate process, so client and server each get a core) binds
  as transmitter and keeps ``window`` submit_sm in flight. Against the bridge's real SMPP server
  (sessions, codec, accounts, a handler that accepts every message) and, as the baseline, against
  a bare asyncio responder that frames PDUs and answers each with a prebuilt submit_sm_resp — the
  ceiling of Python on loopback. Also binds per second (connect, bind, unbind, close).
* **codec** — decode and encode of a submit_sm by :mod:`bridge.smpp.pdu` against a minimal
  hand-written ``struct`` decoder of the same PDU.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import struct
import subprocess
import sys
import time
from typing import Any

from bridge.bench.base import install_uvloop, print_report
from bridge.bench.wire import Responder, bind_cycles, load_client, submit_bytes
from bridge.smpp.pdu import CommandId, Pdu, decode, encode

# --------------------------------------------------------------------------- client (subprocess)


def layer_client(port: int, messages: int, window: int, binds: int) -> dict[str, float]:
    """The load client over one pipelined bind (no receipts), then ``binds`` bind/unbind
    cycles; runs in its own process."""
    result = load_client(
        port, 1, window, messages, 300.0, expect_receipts=False,
        bind_type=CommandId.bind_transmitter,
    )  # fmt: skip
    return {
        "submits_per_s": result["submit_per_s"],
        "ok_ratio": result["accepted"] / messages,
        "binds_per_s": bind_cycles(port, binds),
    }


def _run_client(port: int, messages: int, window: int, binds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json,sys; from bridge.bench.layer import layer_client; "
            f"print(json.dumps(layer_client({port}, {messages}, {window}, {binds})))",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"benchmark client failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout)
    return result


# --------------------------------------------------------------------------- servers


class _AcceptAll:
    """A handler that accepts every message at once: measures the SMPP layer alone."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def handle_request(self, session: Any, pdu: Pdu) -> Pdu:
        return Pdu(pdu.command_id, fields={"message_id": format(next(self._ids), "x")})

    def try_handle(self, session: Any, pdu: Pdu, reply: Any, token: Any) -> bool:
        reply(token, Pdu(pdu.command_id, fields={"message_id": format(next(self._ids), "x")}))
        return True

    def session_bound(self, session: Any) -> None:
        return None

    def session_closed(self, session: Any) -> None:
        return None


class _BareResponder(Responder):
    """The shared responder without receipts: the SMPP layer alone."""

    receipts = False


async def _bench_smpp(messages: int, window: int, binds: int) -> dict[str, Any]:
    from bridge.core.accounts import LOOPBACK_NETWORKS, Account, AccountRegistry, BindType
    from bridge.smpp.server import ServerConfig, SmppServer
    from bridge.smpp.session import SessionConfig

    loop = asyncio.get_running_loop()
    bare = await loop.create_server(_BareResponder, "127.0.0.1", 0)
    bare_port = bare.sockets[0].getsockname()[1]
    baseline = await asyncio.to_thread(_run_client, bare_port, messages, window, binds)
    bare.close()

    account = Account(
        system_id="demo",
        password="demopass",
        allowed_bind_types=frozenset(BindType),
        allowed_networks=LOOPBACK_NETWORKS,
        max_binds=1000,
        tps=0.0,
        max_outstanding=window * 2,
        default_region=None,
    )
    server = SmppServer(
        ServerConfig(host="127.0.0.1", port=0, session=SessionConfig(max_outstanding=window * 2)),
        AccountRegistry([account]),
        _AcceptAll(),
    )
    await server.start()
    try:
        bridge = await asyncio.to_thread(_run_client, server.ports["smpp"], messages, window, binds)
    finally:
        await server.stop(timeout=2)
    return {"baseline": baseline, "bridge": bridge}


def _bench_codec(n: int = 100_000) -> dict[str, float]:
    data = submit_bytes(7)
    pdu = decode(data)
    fmt_head = struct.Struct(">IIII")

    def baseline_decode(b: bytes) -> tuple[Any, ...]:
        # Minimal submit_sm decoder: header, C strings by index, the integer run, short_message.
        _length, _cid, _status, _seq = fmt_head.unpack_from(b)
        pos = 16
        out: list[Any] = []
        for _ in range(1):
            end = b.index(b"\0", pos)
            out.append(b[pos:end].decode("latin-1"))
            pos = end + 1
        out.extend(b[pos : pos + 2])
        pos += 2
        end = b.index(b"\0", pos)
        out.append(b[pos:end].decode("latin-1"))
        pos = end + 1
        out.extend(b[pos : pos + 2])
        pos += 2
        end = b.index(b"\0", pos)
        out.append(b[pos:end].decode("latin-1"))
        pos = end + 1
        out.extend(b[pos : pos + 3])
        pos += 3
        for _ in range(2):
            end = b.index(b"\0", pos)
            out.append(b[pos:end].decode("latin-1"))
            pos = end + 1
        out.extend(b[pos : pos + 4])
        pos += 4
        sm_len = b[pos]
        out.append(b[pos + 1 : pos + 1 + sm_len])
        return tuple(out)

    def rate(fn: Any, arg: Any) -> float:
        best = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n // 5):
                fn(arg)
            best = max(best, (n // 5) / (time.perf_counter() - t0))
        return best

    base = rate(baseline_decode, data)
    dec = rate(decode, data)
    enc = rate(encode, pdu)
    return {
        "baseline_decode_per_s": base,
        "decode_per_s": dec,
        "encode_per_s": enc,
        "decode_vs_baseline": dec / base,
        "encode_vs_baseline_decode": enc / base,
    }


def main(
    what: str = "all",
    *,
    messages: int = 20000,
    window: int = 100,
    binds: int = 200,
    as_json: bool = False,
) -> int:
    """Run the benchmarks; print the JSON report (ratios against same-run baselines) and,
    unless ``as_json``, a paragraph that says what it means before it."""
    from bridge.bench.summary import codec_smpp_summary
    from bridge.logs import configure_logging

    configure_logging("warning", "console")
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if what in ("codec", "all"):
        report["codec"] = _bench_codec()
    if what in ("smpp", "all"):
        report["loop"] = install_uvloop()
        smpp = asyncio.run(_bench_smpp(messages, window, binds))
        b, base = smpp["bridge"], smpp["baseline"]
        smpp["submit_vs_baseline"] = b["submits_per_s"] / base["submits_per_s"]
        smpp["binds_vs_baseline"] = b["binds_per_s"] / base["binds_per_s"]
        smpp["messages"], smpp["window"], smpp["binds"] = messages, window, binds
        report["smpp"] = smpp
    return print_report(report, codec_smpp_summary, as_json)
