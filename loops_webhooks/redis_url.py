"""``REDIS_URL``: the forms it accepts, the check of its form, the parse of a Sentinel URL,
and how to show it without its password.

A leaf, like the settings that validate with it: the Redis client (``workers/connection``)
parses with it too, so the form is checked and read in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = [
    "REDIS_URL_FORMS",
    "InvalidRedisUrl",
    "SentinelAddress",
    "check_redis_url",
    "redacted_url",
    "sentinel_address",
]


class InvalidRedisUrl(ValueError):
    """``REDIS_URL`` has no accepted form; the message says what is wrong, never the password."""


REDIS_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://... (TLS), "
    "unix:///path/to/redis.sock[?db=N], redis+sentinel://... or rediss+sentinel://..."
)
_HOST_SCHEMES = ("redis", "rediss")

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""Sentinel URL schemes, and whether each speaks TLS."""

DEFAULT_SENTINEL_PORT = 26379
SENTINEL_URL_SHAPE = "redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER_NAME[/DB]"


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A parsed Sentinel URL: where the Sentinels are, and which primary to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def _malformed(problem: str) -> InvalidRedisUrl:
    return InvalidRedisUrl(f"not a valid Sentinel URL ({problem}); expected {SENTINEL_URL_SHAPE}")


def _host_and_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _malformed(f"bad address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _malformed(f"a Sentinel without a host in {text!r}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _malformed(f"bad port in {text!r}")
    return host, int(port_text)


def sentinel_address(url: str) -> SentinelAddress | None:
    """The Sentinel address ``url`` names, or None if it names one Redis server.

    Raises InvalidRedisUrl, naming REDIS_URL but never its password, if it is malformed.
    """
    scheme, separator, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        return None
    if not separator:
        raise _malformed("no '://'")
    if "?" in rest or "#" in rest:
        raise _malformed("query strings and fragments are not supported")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    if not hosts:
        raise _malformed("no Sentinel host")
    sentinels = tuple(_host_and_port(part) for part in hosts.split(","))
    master_name, _, db_text = path.partition("/")
    if not master_name:
        raise _malformed("no master name after the hosts")
    db_text = db_text.rstrip("/")
    if db_text and not db_text.isdigit():
        raise _malformed(f"the database must be a number, not {db_text!r}")
    return SentinelAddress(
        sentinels=sentinels,
        master_name=unquote(master_name),
        db=int(db_text or 0),
        username=username,
        password=password,
        tls=SENTINEL_SCHEMES[scheme.lower()],
    )


def check_redis_url(url: str) -> str:
    """Return ``url`` if it has one of the accepted forms (``REDIS_URL_FORMS``), else raise
    InvalidRedisUrl (a ValueError) saying what is wrong: the one check of REDIS_URL's form. It
    never repeats the URL, which may hold a password."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in SENTINEL_SCHEMES:
        sentinel_address(url)
        return url
    if scheme == "unix":
        problem = "" if parts.path else "it names no socket path"
    elif scheme in _HOST_SCHEMES:
        problem = _host_url_problem(parts.hostname, parts.path)
        try:
            parts.port  # noqa: B018 (a property that raises for a port that is not a number)
        except ValueError:
            problem = "its port is not a number from 0 to 65535"
    elif not scheme or "://" not in url:
        problem = "it does not start with a scheme such as redis://"
    else:
        problem = f"its scheme {parts.scheme!r} is not one Redis accepts"
    if problem:
        raise InvalidRedisUrl(f"not a Redis URL: {problem}; accepted forms: {REDIS_URL_FORMS}")
    return url


def _host_url_problem(hostname: str | None, path: str) -> str:
    if not hostname:
        return "it names no host"
    database = path.strip("/")
    if database and not database.isdigit():
        return f"its database {database!r} is not a number"
    return ""


_PASSWORD_QUERY = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redacted_url(url: str) -> str:
    """``url`` with its password (in the userinfo, or a ``password=`` query, which redis-py
    also reads) replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        url = parts._replace(netloc=netloc).geturl()
    return _PASSWORD_QUERY.sub(r"\1***", url)
