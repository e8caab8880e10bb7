"""submit_sm round trips per second of our SMPP client, against aiosmpplib, in the same run.

Usage: ``python -m benchmarks.client [--messages 20000] [--aio-messages 2000] [--repeats 3]
[--window 50] [--binds 1] [--uvloop] [--json]`` (or ``python benchmarks/client.py ...``).

* **responder** — a bare asyncio SMSC in a separate process (so its CPU is not charged to the
  clients): ``struct`` framing, bind_* / enquire_link / unbind answered, every submit_sm answered
  at once with a submit_sm_resp; all responses to one read leave in one write. It runs on uvloop
  when installed, so that it is never what limits the clients.
* **ours** — :class:`bridge.smpp.client.SmppClient`, one transceiver bind (``--binds``), window
  ``--window``, no TPS limit, driven by ``2 × window × binds`` tasks that each await
  :meth:`~bridge.smpp.client.SmppClient.submit` in a loop until ``--messages`` responses are in.
  Also with window 1 (stop-and-wait), which shows what the window is worth.
* **aiosmpplib** — its ESME bound as transceiver against the same responder, driven the way its
  users drive it: ``--aio-messages`` SubmitSm through its broker, responses counted in its hook.
  It has no window (it sends as fast as its broker yields) and correlates responses in O(n) of
  the outstanding requests, so it gets fewer messages to keep the run short; rates are rates.

The machines are shared and noisy: rounds interleave the candidates, the best round of each
counts, and the ratio to aiosmpplib measured in the same run is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import platform
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.bench.wire import Responder
from bridge.smpp.client import ClientConfig, SmppClient
from bridge.smpp.pdu import CommandId, Pdu

# --------------------------------------------------------------------------- the responder

class _Responder(Responder):
    """The benchmarks' shared responder (bridge.bench.wire), without receipts."""

    receipts = False


def _serve(port_queue: Any) -> None:
    """The responder process: serve until killed."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Responder, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- candidates


def _submit_sm() -> Pdu:
    return Pdu(
        CommandId.submit_sm,
        # Every mandatory field, as a provider adapter builds it (a missing one costs the codec
        # a second pass with the defaults merged in).
        fields={
            "service_type": "",
            "source_addr_ton": 5,
            "source_addr_npi": 0,
            "source_addr": "Bridge",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": "4915112345678",
            "esm_class": 0,
            "protocol_id": 0,
            "priority_flag": 0,
            "schedule_delivery_time": "",
            "validity_period": "",
            "registered_delivery": 1,
            "replace_if_present_flag": 0,
            "data_coding": 0,
            "sm_default_msg_id": 0,
            "short_message": b"Your code is 123456. It expires in 10 minutes.",
        },
    )


async def _never(pdu: Pdu) -> int:
    return 0


async def run_ours(port: int, messages: int, window: int, binds: int) -> float:
    """Round trips per second of SmppClient.submit()."""
    config = ClientConfig("127.0.0.1", port, "bench", "bench", window=window, binds=binds, tps=0.0)
    client = SmppClient(config, _never, name="bench")
    await client.start()
    if not await client.wait_bound(10.0):
        raise RuntimeError("our client did not bind to the responder")
    while client.bound_count < binds:
        await asyncio.sleep(0.01)
    remaining = messages
    pdus = [_submit_sm() for _ in range(2 * window * binds)]

    async def worker(pdu: Pdu) -> None:
        nonlocal remaining
        submit = client.submit
        while remaining > 0:
            remaining -= 1
            resp = await submit(pdu)
            if resp.command_status:
                raise RuntimeError(f"submit_sm_resp status {resp.command_status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker(p) for p in pdus))
    elapsed = time.perf_counter() - started
    await client.stop(timeout=5.0)
    return messages / elapsed


async def run_aiosmpplib(port: int, messages: int) -> float:
    """Round trips per second of aiosmpplib's ESME (broker in, hook out)."""
    from aiosmpplib import (
        ESME,
        NPI,
        TON,
        AbstractHook,
        BindMode,
        PhoneNumber,
        SmppMessage,
        SmppSessionState,
        SubmitSm,
        SubmitSmResp,
    )

    done = asyncio.Event()
    count = 0

    class Counter(AbstractHook):
        async def sending(self, smpp_message: SmppMessage, pdu: bytes, client_id: str) -> None:
            return None

        async def received(
            self, smpp_message: SmppMessage | None, pdu: bytes, client_id: str
        ) -> None:
            nonlocal count
            if isinstance(smpp_message, SubmitSmResp):
                count += 1
                if count >= messages:
                    done.set()

        async def send_error(
            self, smpp_message: SmppMessage, error: Exception, client_id: str
        ) -> None:
            raise RuntimeError(f"aiosmpplib send error: {error!r}")

    esme = ESME(
        smsc_host="127.0.0.1",
        smsc_port=port,
        system_id="bench",
        password="bench",
        bind_mode=BindMode.TRANSCEIVER,
        hook=Counter(),
        log_level="ERROR",
        socket_timeout=30.0,
    )
    task = asyncio.create_task(esme.start())
    async with asyncio.timeout(10.0):
        while esme.session_state != SmppSessionState.BOUND_TRX:
            await asyncio.sleep(0.01)
    source = PhoneNumber("Bridge", TON.ALPHANUMERIC, NPI.UNKNOWN)
    dest = PhoneNumber("4915112345678", TON.INTERNATIONAL, NPI.ISDN)
    text = "Your code is 123456. It expires in 10 minutes."
    msgs = [
        SubmitSm(short_message=text, source=source, destination=dest, log_id=str(i))
        for i in range(messages)
    ]
    started = time.perf_counter()
    for m in msgs:
        await esme.broker.enqueue(m)
    await asyncio.wait_for(done.wait(), 600.0)
    elapsed = time.perf_counter() - started
    with contextlib.suppress(Exception):
        await asyncio.wait_for(esme.stop(), 5.0)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return messages / elapsed


# --------------------------------------------------------------------------- main


async def _bench(args: argparse.Namespace, port: int) -> dict[str, list[float]]:
    rounds: dict[str, list[float]] = {"ours": [], "ours_window_1": [], "aiosmpplib": []}
    for _ in range(args.repeats):
        rounds["ours"].append(await run_ours(port, args.messages, args.window, args.binds))
        rounds["ours_window_1"].append(
            await run_ours(port, max(1, args.messages // 4), 1, args.binds)
        )
        rounds["aiosmpplib"].append(await run_aiosmpplib(port, args.aio_messages))
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--aio-messages", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--binds", type=int, default=1)
    parser.add_argument("--uvloop", action="store_true", help="run the clients on uvloop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the clients' connect/bind logs are not the benchmark
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    ctx = multiprocessing.get_context("spawn")
    port_queue = ctx.Queue()
    responder = ctx.Process(target=_serve, args=(port_queue,), daemon=True)
    responder.start()
    try:
        port = port_queue.get(timeout=30)
        if args.uvloop:
            import uvloop

            rounds = uvloop.run(_bench(args, port))
        else:
            rounds = asyncio.run(_bench(args, port))
    finally:
        responder.terminate()
        responder.join(5)
    best = {name: max(values) for name, values in rounds.items()}
    base = best["aiosmpplib"]
    result = {
        "python": platform.python_version(),
        "loop": "uvloop" if args.uvloop else "asyncio",
        "window": args.window,
        "binds": args.binds,
        "messages": {"ours": args.messages, "aiosmpplib": args.aio_messages},
        "best_per_second": {k: round(v) for k, v in best.items()},
        "rounds": {k: [round(v) for v in vs] for k, vs in rounds.items()},
        "ratio_to_aiosmpplib": {k: round(v / base, 1) for k, v in best.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"submit_sm round trips/s, Python {result['python']}, {result['loop']} loop, "
        f"bare responder in its own process (best of {args.repeats})"
    )
    labels = {
        "ours": f"ours (window {args.window}, {args.binds} bind)",
        "ours_window_1": f"ours (window 1, {args.binds} bind)",
        "aiosmpplib": "aiosmpplib 0.7 (no window)",
    }
    for name, rate in best.items():
        print(f"  {labels[name]:<32} {rate:>10,.0f}/s   ×{rate / base:.1f} aiosmpplib")
    return 0


if __name__ == "__main__":
    sys.exit(main())
