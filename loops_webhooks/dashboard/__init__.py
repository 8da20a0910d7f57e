"""The dashboard: a web page and a JSON API to look at events and dead letters and replay them.

An edge like ``ingest``: its own aiohttp app on its own port (never the receiver's public
webhook port), built on ``loops_webhooks.workers.operator_api`` and never on Redis keys, behind
a token (``loops_webhooks.dashboard.auth``). It never imports ``handlers`` nor the CLI.
"""
