"""Exactly-once effects in the shop's own database (``loops_webhooks.handlers.effects``), at
the top level: ``from loops_webhooks.effects import once, once_async, create_table``.
"""

from loops_webhooks.handlers.effects import (
    CREATE_TABLE,
    TABLE,
    NotInTransaction,
    create_table,
    create_table_async,
    once,
    once_async,
)

__all__ = [
    "CREATE_TABLE",
    "TABLE",
    "NotInTransaction",
    "create_table",
    "create_table_async",
    "once",
    "once_async",
]
