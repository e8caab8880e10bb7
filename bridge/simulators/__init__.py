"""Faithful local fakes of the provider APIs (real servers), for tests, demos and trying a config.

``smpp-bridge simulate NAME --port N [--option key=value ...]`` runs one; each module here exposes
``async def serve(host: str, port: int, options: Mapping[str, str]) -> None`` which runs until
cancelled. :data:`SIMULATORS` maps the command-line names to the modules, from the provider
registry (:mod:`bridge.providers.registry`): every provider ``type`` of the config that has a
simulator is a name, and the older names (``isms-http``, ``smpp-upstream``) stay as aliases.
"""

from bridge.providers.registry import simulator_modules

SIMULATORS = simulator_modules()
