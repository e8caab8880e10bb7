"""``smpp-bridge bench`` output: a paragraph a person reads first, JSON only with ``--json``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from bridge.bench.summary import e2e_summary, provider_summary, rate
from tests.harness.daemon import StartBridge


def _bench(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "bench", *args],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip


def test_bench_prints_a_summary_paragraph_then_the_json_report() -> None:
    out = _bench("codec", "--messages", "2000")
    summary, _, rest = out.partition("\n\n")
    assert summary.startswith("Codec: submit_sm decodes at ")
    assert "x a bare struct decoder" in summary
    assert summary.rstrip().endswith("Ratios compare with baselines measured in this same run.")
    assert "{" not in summary
    assert json.loads(rest)["codec"]["decode_per_s"] > 0


def test_bench_json_prints_only_json() -> None:
    report = json.loads(_bench("codec", "--messages", "2000", "--json"))
    assert set(report["codec"]) >= {"decode_per_s", "encode_per_s", "decode_vs_baseline"}


def _run(**bridge: object) -> dict[str, object]:
    b = {
        "submit_per_s": 4928.713159228039,
        "end_to_end_per_s": 4100.0,
        "latency_p50_ms": 3.21,
        "latency_p99_ms": 12.5,
        "accepted": 20000,
        "refused": 0,
        "receipts_matched": 20000,
        "receipts_missing": 0,
        "receipts_unknown": 0,
        "receipts_duplicated": 0,
        **bridge,
    }
    return {
        "bridge": b,
        "baseline": {"submit_per_s": 20000.0, "end_to_end_per_s": 19000.0},
        "ratios": {"submit_per_s": 0.246, "end_to_end_per_s": 0.216},
        "setup": {"binds": 4, "window": 64, "messages": 20000, "loop": "uvloop"},
    }


def test_e2e_summary_rounds_rates_and_says_whether_every_receipt_came() -> None:
    text = e2e_summary(_run())
    assert "submits answered at 4.93k/s (0.25x a do-nothing SMSC, 20k/s)" in " ".join(
        text.split()
    )
    assert "every one of the 20000 accepted messages got exactly one receipt" in " ".join(
        text.split()
    )
    assert "4928.71" not in text
    costed = _run(server_cpu_us_per_message=61.4)
    costed["baseline"]["server_cpu_us_per_message"] = 9.2  # type: ignore[index]
    assert "the server spent 61 µs of CPU per message (the do-nothing SMSC 9 µs);" in " ".join(
        e2e_summary(costed).split()
    )
    lossy = " ".join(e2e_summary(_run(refused=3, receipts_missing=2)).split())
    assert "but 3 submits refused, 2 receipts missing." in lossy


def test_provider_summary_names_the_naive_forwarder_baseline() -> None:
    res = _run()
    res["naive_forwarder"] = res.pop("baseline")
    res["ratio_end_to_end_vs_naive"] = 0.8
    res["setup"] = {**res["setup"], "http_pool": 64}  # type: ignore[dict-item]
    text = " ".join(provider_summary(res).split())
    assert "4.1k/s end to end" in text and "0.80x a naive forwarder" in text


def test_rate_keeps_three_significant_figures() -> None:
    assert (rate(4928.713159228039), rate(912.4), rate(461_234.0)) == ("4.93k/s", "912/s", "461k/s")


def test_bench_load_drives_a_running_bridge_and_counts_every_receipt(
    start_bridge: StartBridge,
) -> None:
    bt = start_bridge(delay=0.01)
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "bench", "load", "--port", str(bt.port),
         "--messages", "300", "--binds", "2", "--window", "8", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["accepted"] == 300 and result["receipts_matched"] == 300
    assert result["receipts_duplicated"] == 0 and result["receipts_missing"] == 0


def test_bench_load_says_why_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "bench", "load", "--port", str(port), "--messages", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("smpp-bridge bench load:")
