"""The operator's side: admin API, status page and the CLI commands over them.

* :mod:`bridge.admin.store_view`: the admin's only access to the store (one place to adapt).
* :mod:`bridge.admin.service`: what the API answers, as plain data, from a running Bridge.
* :mod:`bridge.admin.web`: the ``[admin]`` listener's ASGI app (auth, JSON API, status page).
* :mod:`bridge.admin.client`: the CLI commands (``smpp-bridge status``, ``trace`` …) over HTTP.
"""
