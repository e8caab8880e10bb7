"""The tests' fixtures and helpers live in the :mod:`tests.harness` package; this loads
its plugin."""

pytest_plugins = ["tests.harness.plugin"]
