"""The paragraph ``smpp-bridge bench`` ends with: the figures that matter, in words.

The JSON report (``--json`` prints only that) keeps every number; this says what they mean, as
ratios to the baselines measured in the same run (the machines are shared: absolute rates vary,
ratios much less).
"""

from __future__ import annotations

import textwrap
from typing import Any

__all__ = ["codec_smpp_summary", "e2e_summary", "paragraph", "provider_summary", "rate"]


def rate(per_s: float) -> str:
    """``48.3k/s``, ``912/s``: three significant figures are all a noisy machine gives."""
    if per_s >= 1000:
        return f"{per_s / 1000:.3g}k/s"
    return f"{per_s:.3g}/s"


def paragraph(sentences: list[str]) -> str:
    return textwrap.fill(" ".join(sentences), width=100)


def codec_smpp_summary(report: dict[str, Any]) -> str:
    sentences = []
    codec = report.get("codec")
    if codec:
        sentences.append(
            f"Codec: submit_sm decodes at {rate(codec['decode_per_s'])}"
            f" ({codec['decode_vs_baseline']:.2f}x a bare struct decoder without checks,"
            f" {rate(codec['baseline_decode_per_s'])}) and encodes at"
            f" {rate(codec['encode_per_s'])}."
        )
    smpp = report.get("smpp")
    if smpp:
        b, base = smpp["bridge"], smpp["baseline"]
        sentences.append(
            f"SMPP layer ({report.get('loop', 'asyncio')}, null message handler,"
            f" window {smpp['window']}):"
            f" {rate(b['submits_per_s'])} pipelined submit_sm round trips"
            f" ({smpp['submit_vs_baseline']:.2f}x a bare asyncio responder,"
            f" {rate(base['submits_per_s'])}), {b['ok_ratio']:.0%} answered ESME_ROK;"
            f" {rate(b['binds_per_s'])} bind/unbind cycles"
            f" ({smpp['binds_vs_baseline']:.2f}x)."
        )
    sentences.append("Ratios compare with baselines measured in this same run.")
    return paragraph(sentences)


def _losses(b: dict[str, Any]) -> str:
    problems = [
        f"{b[key]} {words}"
        for key, words in (
            ("refused", "submits refused"),
            ("receipts_missing", "receipts missing"),
            ("receipts_unknown", "unknown receipts"),
            ("receipts_duplicated", "duplicate receipts"),
        )
        if b.get(key)
    ]
    if not problems:
        return f"every one of the {b['accepted']} accepted messages got exactly one receipt."
    return "but " + ", ".join(problems) + "."


def _cpu(b: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """The server's CPU time per message, when the run measured it."""
    if "server_cpu_us_per_message" not in b:
        return []
    words = f"the server spent {b['server_cpu_us_per_message']:.0f} µs of CPU per message"
    if base.get("server_cpu_us_per_message"):
        words += f" (the do-nothing SMSC {base['server_cpu_us_per_message']:.0f} µs)"
    return [words + ";"]


def e2e_summary(res: dict[str, Any]) -> str:
    b, base, setup, ratios = res["bridge"], res["baseline"], res["setup"], res["ratios"]
    return paragraph(
        [
            f"Whole bridge on the sandbox provider ({setup['messages']} messages,"
            f" {setup['binds']} binds x window {setup['window']}, {setup['loop']}):"
            f" submits answered at {rate(b['submit_per_s'])}"
            f" ({ratios['submit_per_s']:.2f}x a do-nothing SMSC, {rate(base['submit_per_s'])}),"
            f" receipts back at {rate(b['end_to_end_per_s'])}"
            f" ({ratios['end_to_end_per_s']:.2f}x); submit_sm_resp latency"
            f" p50 {b['latency_p50_ms']:.1f} ms, p99 {b['latency_p99_ms']:.1f} ms;",
            *_cpu(b, base),
            _losses(b),
            "Ratios compare with baselines measured in this same run.",
        ]
    )


def provider_summary(res: dict[str, Any]) -> str:
    b, base, setup = res["bridge"], res["naive_forwarder"], res["setup"]
    return paragraph(
        [
            f"ESME -> bridge -> iSMS HTTP simulator -> receipt ({setup['messages']} messages,"
            f" {setup['binds']} binds x window {setup['window']}, HTTP pool"
            f" {setup['http_pool']}): {rate(b['end_to_end_per_s'])} end to end with a durable"
            f" store and receipts, {res['ratio_end_to_end_vs_naive']:.2f}x a naive forwarder"
            f" that only relays each submit as one HTTP request ({rate(base['submit_per_s'])});"
            f" submit_sm_resp latency p50 {b['latency_p50_ms']:.1f} ms,"
            f" p99 {b['latency_p99_ms']:.1f} ms;",
            _losses(b),
            "Ratios compare with baselines measured in this same run.",
        ]
    )
