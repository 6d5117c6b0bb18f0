"""The hutch server: E2B's control plane and a streaming proxy to each sandbox's agent.

Modules, in the order a request meets them: ``app`` (the ASGI entry and ``run``), ``proxy``
(the data plane), ``routes`` (the control plane), ``manager`` (the lifecycle), ``pool`` (the
warm pool), ``expiry`` and ``reconcile`` (deadlines and start-up), ``upstream`` (HTTP/1.1 to a
sandbox's agent or ports), ``store`` and ``keys`` (SQLite records and API keys), ``config``
(the one table of settings).
"""
