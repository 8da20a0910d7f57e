"""``lua_table``: a worker's constants written as Lua, read back by a script as they were."""

from __future__ import annotations

import pytest
from fakeredis import FakeAsyncRedis

from loops_webhooks.workers.scripts import lua_table


async def test_strings_numbers_and_flags_reach_the_script_unchanged(
    redis: FakeAsyncRedis,
) -> None:
    constants = lua_table(
        "settings",
        {"prefix": "loops:it's\\here:", "ttl_ms": 27000, "on": True, "off": False},
    )

    read = await redis.eval(  # type: ignore[misc]
        constants + "\nreturn {settings.prefix, settings.ttl_ms, tostring(settings.on),"
        " tostring(settings.off)}",
        0,
    )

    assert read == [b"loops:it's\\here:", 27000, b"true", b"false"]


@pytest.mark.parametrize("value", ["line\nbreak", "caf\u00e9"])
def test_a_string_that_is_not_printable_ascii_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a printable ASCII string"):
        lua_table("settings", {"prefix": value})
