"""REDIS_URL: a Sentinel URL is parsed into its Sentinels, master name, database and
credentials; a malformed one is a configuration error that names REDIS_URL, never the password."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool

from loops_webhooks.redis_url import (
    InvalidRedisUrl,
    SentinelAddress,
    check_redis_url,
    sentinel_address,
)
from loops_webhooks.workers.connection import open_redis


def test_a_plain_redis_url_is_not_a_sentinel_address():
    assert sentinel_address("redis://:secret@redis:6379/0") is None
    assert sentinel_address("rediss://redis:6380/1") is None
    assert sentinel_address("unix:///run/redis.sock") is None


def test_a_sentinel_url_names_every_sentinel_the_master_and_the_database():
    address = sentinel_address("redis+sentinel://:pa%40ss@s1:26379,s2:26380,[::1]/loops/3")
    assert address == SentinelAddress(
        sentinels=(("s1", 26379), ("s2", 26380), ("::1", 26379)),
        master_name="loops",
        db=3,
        username=None,
        password="pa@ss",
        tls=False,
    )


def test_a_plain_url_password_is_percent_decoded_as_for_a_sentinel_url():
    client = open_redis("redis://:pa%40ss%3A%2F%25@redis:6379/0")
    assert client.connection_pool.connection_kwargs["password"] == "pa@ss:/%"


def test_a_sentinel_url_without_a_database_means_database_zero_and_takes_a_user():
    address = sentinel_address("rediss+sentinel://app:pw@sentinel/loops")
    assert address is not None
    assert (address.db, address.username, address.password, address.tls) == (0, "app", "pw", True)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://s1:26379", "no master name"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel:///loops", "no Sentinel host"),
        ("redis+sentinel://:secret@s1:port/loops", "bad port"),
        ("redis+sentinel://s1:99999/loops", "bad port"),
        ("redis+sentinel://s1,,s2/loops", "without a host"),
        ("redis+sentinel://s1/loops/zero", "must be a number"),
        ("redis+sentinel://s1/loops?db=1", "query strings"),
    ],
)
def test_a_malformed_sentinel_url_says_what_is_wrong_and_hides_the_password(url, problem):
    with pytest.raises(InvalidRedisUrl) as raised:
        check_redis_url(url)
    message = str(raised.value)
    assert message.startswith("not a valid Sentinel URL")
    assert problem in message
    assert "secret" not in message


def test_a_plain_url_opens_a_plain_client():
    client = open_redis("redis://127.0.0.1:1/2", socket_timeout=1)
    assert client.connection_pool.connection_kwargs["db"] == 2
    assert not isinstance(client.connection_pool, SentinelConnectionPool)


def test_a_sentinel_url_opens_a_client_that_asks_the_sentinels_for_the_primary():
    client = open_redis(
        "redis+sentinel://:data-pw@127.0.0.1:1,127.0.0.1:2/loops/4",
        sentinel_password="sentinel-pw",
        socket_timeout=1.5,
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "loops"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, "data-pw")
    sentinels: list[Redis] = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    for sentinel in sentinels:
        assert sentinel.connection_pool.connection_kwargs["password"] == "sentinel-pw"
        assert sentinel.connection_pool.connection_kwargs["socket_timeout"] == 1.5
