"""The test harness: everything the tests start or fake, in one package.

It exists so that a test file imports its helpers from one place (``tests.harness.<module>``)
and gets the shared fixtures from one pytest plugin (:mod:`tests.harness.plugin`, loaded by
``tests/conftest.py``), instead of from scattered top-level modules and a fat conftest.

* :mod:`.loop` — an event loop on a background thread; ``wait_until``.
* :mod:`.server` — an :class:`~bridge.smpp.server.SmppServer` in such a loop, test handlers.
* :mod:`.esme` — the test ESMEs: :class:`~.esme.RawEsme` (our codec) and :class:`~.esme.Esme`
  (smpplib), PDU builders and receipt parsers.
* :mod:`.daemon` — the whole daemon in a loop thread, and the TOML it is built from.
* :mod:`.sims` — provider simulators (HTTP and the SMPP upstream) in loop threads.
* :mod:`.rig` — one provider rig for the provider end-to-end tests: simulator + bridge + ESME.
* :mod:`.redis_server`, :mod:`.tls`, :mod:`.fakes` — a private redis-server, a throw-away TLS
  certificate, an in-memory store.
* :mod:`.crash_writer`, :mod:`.instructions` — scripts the tests run in a subprocess. They run
  with this directory first on ``sys.path``, so no module here may be named after a top-level
  package they import (``bridge``, ``redis``).
"""
