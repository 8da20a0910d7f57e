"""The Lua scripts, read from ``workers/lua/*.lua`` (shipped as package data).

Each script opens with a header naming its KEYS and ARGV and binds them to locals; keys and
prefixes come from ``loops_webhooks.workers.keys`` as arguments. A script that enqueues a job
has the library ``enqueue_job.lua`` prepended, so that step is written once.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["SCRIPTS", "register_script", "script_source"]

SCRIPTS: dict[str, tuple[str, ...]] = {
    "record_and_enqueue": ("enqueue_job",),
    "dead_letter_unparseable": (),
    "begin": (),
    "finish": (),
    "claim_due_jobs": (),
    "replay": ("enqueue_job",),
    "purge": (),
    "reenqueue_orphans": ("enqueue_job",),
    "trim_event_index": (),
}
"""Every script, with the libraries it needs."""


@cache
def script_source(name: str) -> str:
    """The script's Lua source, its libraries first."""
    parts = [*SCRIPTS[name], name]
    return "\n".join((files(__package__) / "lua" / f"{part}.lua").read_text() for part in parts)


def register_script(redis: Redis, name: str) -> AsyncScript:
    """The script, bound to ``redis`` (EVALSHA, loading it once if Redis does not know it)."""
    return redis.register_script(script_source(name))
