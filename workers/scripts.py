"""The Lua scripts, read from ``workers/lua/*.lua`` (shipped as package data).

Each script opens with a header naming its KEYS and ARGV and binds them to locals; keys and
prefixes come from ``loops_webhooks.workers.keys`` as arguments. A script that enqueues a job
has the library ``enqueue_job.lua`` prepended, one that stores or removes a dead letter
``dead_letter.lua``, one that starts or ends a handler's run ``admission.lua``, so each of
those steps is written once. A library's constants of one worker (admission's settings) come
first, as a Lua table built at start-up (``lua_table``): no call sends them, no script
decodes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = [
    "SCRIPTS",
    "BatchedScript",
    "length_prefixed",
    "lua_table",
    "register_script",
    "script_source",
]

SCRIPTS: dict[str, tuple[str, ...]] = {
    "record_and_enqueue": ("length_prefixed", "search_entries", "enqueue_job"),
    "dead_letter_unparseable": ("length_prefixed", "dead_letter"),
    "begin": ("admission",),
    "finish": ("length_prefixed", "dead_letter", "admission"),
    "claim_due_jobs": (),
    "resume": (),
    "retry_now": (),
    "replay": ("enqueue_job", "length_prefixed", "dead_letter"),
    "purge": ("length_prefixed", "dead_letter"),
    "reenqueue_orphans": ("enqueue_job",),
    "trim_indexes": ("length_prefixed", "search_entries"),
    "index_event": ("length_prefixed", "search_entries"),
    "erase": ("length_prefixed", "search_entries"),
    "recount_dead_letter_reasons": (),
}
"""Every script, with the libraries it needs."""


@cache
def script_source(name: str, constants: str = "") -> str:
    """The script's Lua source, its libraries first, and before them ``constants`` (Lua that
    its libraries read, as ``lua_table`` writes it)."""
    parts = [*SCRIPTS[name], name]
    sources = [(files(__package__) / "lua" / f"{part}.lua").read_text() for part in parts]
    return "\n".join([constants, *sources] if constants else sources)


def lua_table(name: str, values: Mapping[str, str | int | bool]) -> str:
    """``local <name> = {...}``: constants for a script's source (``script_source``). Strings
    are printable ASCII (key prefixes), written as Lua string literals."""
    fields = []
    for field, value in values.items():
        if isinstance(value, bool):
            literal = "true" if value else "false"
        elif isinstance(value, int):
            literal = str(value)
        elif value.isascii() and value.isprintable():
            literal = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        else:
            raise ValueError(f"not a printable ASCII string: {value!r}")
        fields.append(f"{field} = {literal}")
    return f"local {name} = {{{', '.join(fields)}}}"


def length_prefixed(values: Iterable[bytes | str | int]) -> bytes:
    """Values as one script argument, each written ``<length>:<bytes>``, which
    ``lua/length_prefixed.lua`` reads back: any bytes fit, and one argument costs redis-py
    less to pack than one per value."""
    parts = []
    for value in values:
        encoded = value if isinstance(value, bytes) else str(value).encode()
        parts.append(b"%d:%b" % (len(encoded), encoded))
    return b"".join(parts)


def register_script(redis: Redis, name: str, constants: str = "") -> AsyncScript:
    """The script, bound to ``redis`` (EVALSHA, loading it once if Redis does not know it)."""
    return redis.register_script(script_source(name, constants))


class BatchedScript:
    """A script whose calls made within one event-loop tick share one Redis round trip.

    A worker's jobs move in step (claimed together, begun together, finished together), so
    calls of one tick are many; one pipeline of EVALSHA for all of them costs the client one
    connection checkout, one write and one read instead of one of each per call, which was
    the larger part of a short job's CPU. Each caller gets its own reply or its own error;
    a script Redis does not know (new or restarted Redis) is loaded and its calls run again.
    Calls are independent, as before: no transaction joins them.
    """

    def __init__(self, redis: Redis, name: str, constants: str = "") -> None:
        self._redis = redis
        self._script = register_script(redis, name, constants)
        self._waiting: list[tuple[Sequence[Any], Sequence[Any], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._start_flush)
        self._waiting.append((keys, args, future))
        return await future

    def _start_flush(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(
        self, batch: list[tuple[Sequence[Any], Sequence[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            if len(batch) == 1:
                script_keys, args, _ = batch[0]
                replies: list[Any] = [await self._script(keys=script_keys, args=args)]
            else:
                replies = await self._pipelined(batch)
        except BaseException as error:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipelined(
        self, batch: list[tuple[Sequence[Any], Sequence[Any], asyncio.Future[Any]]]
    ) -> list[Any]:
        sha = self._script.sha
        async with self._redis.pipeline(transaction=False) as pipe:
            for script_keys, args, _ in batch:
                pipe.evalsha(sha, len(script_keys), *script_keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                script_keys, args, _ = batch[index]
                try:
                    replies[index] = await self._script(keys=script_keys, args=args)
                except Exception as error:
                    replies[index] = error
        return replies
