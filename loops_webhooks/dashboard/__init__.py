"""The dashboard: a web page and a JSON API to look at events and dead letters and replay them.

An edge like ``ingest``: its own aiohttp app on its own port (never the receiver's public
webhook port), built on ``loops_webhooks.workers.operator_api``, behind a token
(``loops_webhooks.dashboard.auth``). Its only records of its own, wrong tokens per client and
logged-out sessions, live in Redis under keys from ``loops_webhooks.workers.keys``. It never
imports ``handlers`` nor the CLI.
"""
