"""What the benchmarks share: the submit_sm they send, the load client that sends it (a
separate process, so it has its own core) and the bare responder they compare with.

One of each, so that ``bench smpp``, ``bench e2e``, ``bench provider``, ``bench load`` and the
scripts in ``benchmarks/`` measure the same traffic the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from bridge.smpp.pdu import CommandId, FrameReader, Pdu, decode, encode

__all__ = [
    "HEADER", "Responder", "bind_cycles", "load_client", "run_load_client", "submit_bytes",
]  # fmt: skip

_BINDS = (CommandId.bind_transceiver, CommandId.bind_transmitter, CommandId.bind_receiver)
_ANSWERED = (*_BINDS, CommandId.unbind, CommandId.enquire_link)


def submit_bytes(seq: int) -> bytes:
    """The submit_sm every benchmark sends (sequence number ``seq``)."""
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


HEADER = struct.Struct(">IIII")


def _submit_template() -> bytearray:
    return bytearray(submit_bytes(1))


def _receipted_id(frame: bytes) -> str | None:
    try:
        return decode(frame).tlv("receipted_message_id")  # type: ignore[no-any-return]
    except Exception:
        return None


def load_client(
    port: int,
    binds: int,
    window: int,
    messages: int,
    timeout: float,
    expect_receipts: bool = True,
    host: str = "127.0.0.1",
    system_id: str = "demo",
    password: str = "demopass",
    bind_type: int = CommandId.bind_transceiver,
) -> dict[str, Any]:
    """The load client (runs in its own process). Returns the measurements. Without
    ``expect_receipts`` it stops once every submit_sm is answered (a server that sends none)."""
    sel = selectors.DefaultSelector()
    bind = encode(
        Pdu(
            bind_type,
            1,
            0,
            {"system_id": system_id, "password": password, "interface_version": 0x34},
        )
    )
    template = _submit_template()
    conns: list[dict[str, Any]] = []
    for _ in range(binds):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(bind)
        reader = FrameReader(1 << 20)
        while True:
            reader.feed(s.recv(65536))
            frames = list(reader.frames())
            if frames:
                break
        if decode(frames[0]).command_status:
            raise RuntimeError("bind refused")
        s.setblocking(False)
        conn = {"sock": s, "reader": reader, "out": bytearray(), "inflight": 0, "seq": 2}
        conns.append(conn)
        sel.register(s, selectors.EVENT_READ, conn)

    sent_at: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    ids: set[str] = set()
    receipts: set[str] = set()
    duplicates = 0
    refused = 0
    sent = answered = 0
    t0 = time.perf_counter()
    submit_done = 0.0
    deadline = t0 + timeout
    last_progress = t0

    def fill(i: int, conn: dict[str, Any], now: float) -> None:
        nonlocal sent
        out = conn["out"]
        while conn["inflight"] < window and sent < messages:
            seq = conn["seq"]
            conn["seq"] = seq + 1
            struct.pack_into(">I", template, 12, seq)
            out += template
            sent_at[(i, seq)] = now
            conn["inflight"] += 1
            sent += 1

    def flush(conn: dict[str, Any]) -> None:
        out = conn["out"]
        while out:
            try:
                n = conn["sock"].send(out)
            except BlockingIOError:
                return
            del out[:n]

    index = {id(c): i for i, c in enumerate(conns)}
    now = time.perf_counter()
    for i, c in enumerate(conns):
        fill(i, c, now)
        flush(c)
    while time.perf_counter() < deadline:
        if answered >= messages and (not expect_receipts or len(receipts) >= len(ids)):
            break
        for key, _ in sel.select(0.5):
            conn = key.data
            i = index[id(conn)]
            try:
                data = conn["sock"].recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError("server closed the connection")
            conn["reader"].feed(data)
            now = time.perf_counter()
            for frame in conn["reader"].frames():
                _, cid, status, seq = HEADER.unpack_from(frame)
                if cid == CommandId.submit_sm_resp:
                    conn["inflight"] -= 1
                    answered += 1
                    started = sent_at.pop((i, seq), now)
                    latencies.append(now - started)
                    if status == 0:
                        ids.add(frame[16:-1].decode("latin-1"))
                    else:
                        refused += 1
                    if answered == messages:
                        submit_done = now
                elif cid == CommandId.deliver_sm:
                    rid = _receipted_id(frame)
                    if rid is not None:
                        if rid in receipts:
                            duplicates += 1
                        receipts.add(rid)
                    conn["out"] += HEADER.pack(17, CommandId.deliver_sm_resp, 0, seq) + b"\0"
                elif cid == CommandId.enquire_link:
                    conn["out"] += HEADER.pack(16, CommandId.enquire_link_resp, 0, seq)
            fill(i, conn, now)
            flush(conn)
        if now - last_progress > 0.5:
            last_progress = now
            print(
                f"\r  submitted {answered}/{messages}  receipts {len(receipts)}/{len(ids)}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        for c in conns:
            if c["out"]:
                flush(c)
    end = time.perf_counter()
    print(file=sys.stderr)
    for c in conns:
        with contextlib.suppress(OSError):
            c["sock"].close()
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    submit_elapsed = (submit_done or end) - t0
    return {
        "submit_per_s": answered / submit_elapsed if submit_elapsed else 0.0,
        "latency_p50_ms": pct(0.50),
        "latency_p99_ms": pct(0.99),
        "end_to_end_per_s": len(receipts & ids) / (end - t0),
        "accepted": len(ids),
        "refused": refused,
        "receipts_matched": len(receipts & ids),
        "receipts_missing": len(ids - receipts),
        "receipts_unknown": len(receipts - ids),
        "receipts_duplicated": duplicates,
    }


def run_load_client(
    port: int,
    binds: int,
    window: int,
    messages: int,
    timeout: float,
    expect_receipts: bool = True,
) -> dict[str, Any]:
    code = (
        "import json; from bridge.bench.wire import load_client; "
        f"print(json.dumps(load_client({port}, {binds}, {window}, {messages}, {timeout}, "
        f"{expect_receipts})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, timeout=timeout + 60,
        check=False,
    )
    if out.returncode:
        raise RuntimeError("benchmark client failed")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def bind_cycles(port: int, cycles: int, host: str = "127.0.0.1") -> float:
    """Connect, bind_transmitter, unbind, close — ``cycles`` times; returns cycles/s."""
    bind = encode(
        Pdu(
            CommandId.bind_transmitter,
            1,
            0,
            {"system_id": "demo", "password": "demopass", "interface_version": 0x34},
        )
    )
    unbind = encode(Pdu(CommandId.unbind, 3))
    started = time.perf_counter()
    for _ in range(cycles):
        with socket.create_connection((host, port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(bind)
            s.recv(1024)
            s.sendall(unbind)
            s.recv(1024)
    elapsed = time.perf_counter() - started
    return cycles / elapsed if cycles else 0.0


class Responder(asyncio.Protocol):
    """The baseline every benchmark compares with: answers binds, submits and enquire_links at
    once and, with ``receipts``, sends each submit's receipt straight away — no storage, no
    routing, no session rules: Python's ceiling on loopback for this traffic."""

    counter = 0
    receipts = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        out = []
        for frame in self.reader.frames():
            _, cid, _, seq = HEADER.unpack_from(frame)
            if cid == CommandId.submit_sm:
                Responder.counter += 1
                mid = format(Responder.counter, "x")
                out.append(encode(Pdu(CommandId.submit_sm_resp, seq, 0, {"message_id": mid})))
                if self.receipts:
                    receipt = Pdu(CommandId.deliver_sm, seq, 0, {"esm_class": 4})
                    receipt.set_tlv("receipted_message_id", mid)
                    receipt.set_tlv("message_state", 2)
                    out.append(encode(receipt))
            elif cid in _ANSWERED:
                out.append(encode(Pdu(cid | 0x80000000, seq, 0, {"system_id": "baseline"}
                                      if cid in _BINDS else {})))
        if out:
            self.transport.write(b"".join(out))
