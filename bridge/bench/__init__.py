"""``smpp-bridge bench``: every benchmark reports its figures next to a baseline measured in
the same run (the machines are shared and noisy: ratios, not absolute rates).

* :mod:`~bridge.bench.wire` — what they share: the submit_sm, the load client, the responder;
* :mod:`~bridge.bench.base` — the base bridge config of ``bench e2e`` and ``bench provider``, and
  the run set-up (logging, uvloop, the machine in the report);
* :mod:`~bridge.bench.layer` — the codec and the SMPP layer with a null pipeline (``bench smpp``);
* :mod:`~bridge.bench.e2e` — the whole bridge on the sandbox (``bench e2e``), and the load
  client against a running bridge (``bench load``);
* :mod:`~bridge.bench.provider` — through an HTTP provider simulator (``bench provider``);
* :mod:`~bridge.bench.summary` — the paragraph each one ends with.

The deeper or slower measurements (CPU budget per step, journal medium, restart, attack storm,
cluster, Redis client) are scripts in the repository's ``benchmarks/``.
"""
