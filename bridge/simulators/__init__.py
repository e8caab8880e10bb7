"""Faithful local fakes of the provider APIs (real servers), for tests, demos and trying a config.

``smpp-bridge simulate NAME --port N [--option key=value ...]`` runs one; each module here exposes
``async def serve(host: str, port: int, options: Mapping[str, str]) -> None`` which runs until
cancelled. :data:`SIMULATORS` maps the command-line names to the modules: every provider
``type`` of the config is a name (``isms_http``, ``isms_smpp``), and the older names
(``isms-http``, ``smpp-upstream``) stay as aliases.
"""

SIMULATORS = {
    "phlymail": "bridge.simulators.phlymail",
    "smsflatrate": "bridge.simulators.smsflatrate",
    "mycoolsms": "bridge.simulators.mycoolsms",
    "sms1601": "bridge.simulators.sms1601",
    "isms_http": "bridge.simulators.isms_http",
    "isms_smpp": "bridge.simulators.smpp_upstream",
    # aliases
    "isms-http": "bridge.simulators.isms_http",
    "smpp-upstream": "bridge.simulators.smpp_upstream",
}
