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
import contextlib
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any, cast

from bridge.smpp.pdu import CommandId, FrameReader, Pdu, decode, encode

_HEADER = struct.Struct(">IIII")
_BIND_RESP_BODY = b"baseline\0\x02\x10\x00\x01\x34"  # system_id + sc_interface_version


def _submit_bytes(seq: int) -> bytes:
    return encode(
        Pdu(
            CommandId.submit_sm,
            seq,
            0,
            {
                "source_addr_ton": 1,
                "source_addr_npi": 1,
                "source_addr": "4930123456",
                "dest_addr_ton": 1,
                "dest_addr_npi": 1,
                "destination_addr": "4915112345678",
                "registered_delivery": 1,
                "short_message": b"Benchmark message: hello from smpp-bridge",
            },
        )
    )


# --------------------------------------------------------------------------- client (subprocess)


def _client(port: int, messages: int, window: int, binds: int) -> dict[str, float]:
    """Blocking pipelined ESME; returns submits/s and binds/s."""
    bind = encode(
        Pdu(
            CommandId.bind_transmitter,
            1,
            0,
            {"system_id": "demo", "password": "demopass", "interface_version": 0x34},
        )
    )
    template = bytearray(_submit_bytes(1))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = FrameReader(1 << 20)

    def read_frames() -> list[bytes]:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed")
            reader.feed(data)
            frames = list(reader.frames())
            if frames:
                return frames

    sock.sendall(bind)
    resp = decode(read_frames()[0])
    if resp.command_status:
        raise RuntimeError(f"bind failed: {resp.command_status}")
    seqs = itertools.count(2)
    sent = answered = ok = 0
    t0 = time.perf_counter()
    batch = bytearray()
    while sent < min(window, messages):
        struct.pack_into(">I", template, 12, next(seqs))
        batch += template
        sent += 1
    sock.sendall(batch)
    while answered < messages:
        frames = read_frames()
        answered += len(frames)
        ok += sum(1 for f in frames if f[8:12] == b"\0\0\0\0")
        batch.clear()
        for _ in range(min(len(frames), messages - sent)):
            struct.pack_into(">I", template, 12, next(seqs))
            batch += template
            sent += 1
        if batch:
            sock.sendall(batch)
    elapsed = time.perf_counter() - t0
    sock.close()

    t1 = time.perf_counter()
    unbind = encode(Pdu(CommandId.unbind, 3))
    for _ in range(binds):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(bind)
        s.recv(1024)
        s.sendall(unbind)
        s.recv(1024)
        s.close()
    bind_elapsed = time.perf_counter() - t1
    return {
        "submits_per_s": messages / elapsed,
        "ok_ratio": ok / messages,
        "binds_per_s": binds / bind_elapsed if binds else 0.0,
    }


def _run_client(port: int, messages: int, window: int, binds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json,sys; from bridge.bench import _client; "
            f"print(json.dumps(_client({port}, {messages}, {window}, {binds})))",
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


class _BareResponder(asyncio.Protocol):
    """Baseline: frames PDUs and answers with prebuilt responses, nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        out = []
        for frame in self.reader.frames():
            _, cid, _, seq = _HEADER.unpack_from(frame)
            if cid == CommandId.unbind:
                out.append(_HEADER.pack(16, cid | 0x80000000, 0, seq))
            elif cid == CommandId.submit_sm:
                out.append(_HEADER.pack(20, cid | 0x80000000, 0, seq) + b"abc\0")
            else:
                head = _HEADER.pack(16 + len(_BIND_RESP_BODY), cid | 0x80000000, 0, seq)
                out.append(head + _BIND_RESP_BODY)
        self.transport.write(b"".join(out))


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
        bridge = await asyncio.to_thread(
            _run_client, server.ports["smpp"], messages, window, binds
        )
    finally:
        await server.stop(timeout=2)
    return {"baseline": baseline, "bridge": bridge}


def _bench_codec(n: int = 100_000) -> dict[str, float]:
    data = _submit_bytes(7)
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
    from bridge.bench_summary import codec_smpp_summary
    from bridge.observability import configure_logging

    configure_logging("warning", "console")
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if what in ("codec", "all"):
        report["codec"] = _bench_codec()
    if what in ("smpp", "all"):
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
            report["loop"] = "uvloop"
        report.setdefault("loop", "asyncio")
        smpp = asyncio.run(_bench_smpp(messages, window, binds))
        b, base = smpp["bridge"], smpp["baseline"]
        smpp["submit_vs_baseline"] = b["submits_per_s"] / base["submits_per_s"]
        smpp["binds_vs_baseline"] = b["binds_per_s"] / base["binds_per_s"]
        smpp["messages"], smpp["window"], smpp["binds"] = messages, window, binds
        report["smpp"] = smpp
    if not as_json:
        print(codec_smpp_summary(report), end="\n\n")
    print(json.dumps(report, indent=2))
    return 0
