"""Who may use the dashboard: one shared token, a signed session cookie, and CSRF tokens.

The login form trades the token for a session cookie (HttpOnly, SameSite=Strict, Secure
behind https); the JSON API also takes ``Authorization: Bearer <token>``. Live sessions are
not stored anywhere: the cookie is a random nonce and its issue time, signed with a key
derived from the token, so a restart keeps people logged in and changing the token logs
everyone out. Only logged-out sessions are stored, until they would have expired
(``revoked_sessions``). A state-changing request authenticated by the cookie (or by
nothing, with ``--no-auth``) must carry the page's CSRF token in ``X-CSRF-Token``: a
cross-site form cannot set a header, and a cross-site script that tries needs a CORS
preflight this app never grants. Bearer requests need none, since no browser adds that
header on its own. Tokens and signatures are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from loops_webhooks.dashboard.errors import Unauthenticated, WrongToken

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "SESSION_MAX_AGE_SECONDS",
    "Credential",
    "Gate",
    "Identity",
    "Session",
]

SESSION_COOKIE = "loops_dashboard_session"
SESSION_MAX_AGE_SECONDS = 12 * 60 * 60
CSRF_HEADER = "X-CSRF-Token"


class Credential(StrEnum):
    COOKIE = "cookie"
    BEARER = "bearer"
    NONE = "no-auth"


@dataclass(frozen=True, slots=True)
class Session:
    """What a valid session cookie holds: its nonce and when it expires (seconds)."""

    nonce: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Identity:
    """How a request was authenticated, and the CSRF token its page must send back."""

    credential: Credential
    csrf_token: str
    session: Session | None = None
    """The cookie's session, to revoke on logout (None for bearer and ``--no-auth``)."""

    @property
    def needs_csrf(self) -> bool:
        return self.credential is not Credential.BEARER


class Gate:
    """Checks tokens, issues and reads session cookies; ``token=None`` lets everyone in
    (``--no-auth``), still with a CSRF token per process."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None
        seed = self._token if self._token is not None else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"loops-webhooks dashboard session\0" + seed).digest()

    @property
    def open(self) -> bool:
        return self._token is None

    def token_matches(self, candidate: str) -> bool:
        return self._token is not None and hmac.compare_digest(candidate.encode(), self._token)

    def new_session(self) -> str:
        """A fresh cookie value: ``<issued>.<nonce>.<signature>``."""
        body = f"{int(time.time())}.{secrets.token_urlsafe(18)}"
        return f"{body}.{self._sign(body)}"

    def identify(self, request: web.Request) -> Identity | None:
        """The request's identity; None without credentials; WrongToken for a bearer token
        that is wrong, Unauthenticated for a malformed header (a cookie that is not ours, or
        too old, counts as none)."""
        if self._token is None:
            return Identity(Credential.NONE, self._sign("csrf:open"))
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, candidate = authorization.partition(" ")
            if scheme.lower() != "bearer" or not candidate.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
            if not self.token_matches(candidate.strip()):
                raise WrongToken("wrong token")
            return Identity(Credential.BEARER, "")
        session = self._session(request.cookies.get(SESSION_COOKIE, ""))
        if session is None:
            return None
        return Identity(Credential.COOKIE, self._sign("csrf:" + session.nonce), session)

    def csrf_matches(self, identity: Identity, request: web.Request) -> bool:
        sent = request.headers.get(CSRF_HEADER, "")
        return bool(sent) and hmac.compare_digest(sent.encode(), identity.csrf_token.encode())

    def _session(self, cookie: str) -> Session | None:
        issued, _, rest = cookie.partition(".")
        nonce, _, signature = rest.partition(".")
        if not (issued.isdigit() and nonce and signature):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(f"{issued}.{nonce}").encode()):
            return None
        expires_at = int(issued) + SESSION_MAX_AGE_SECONDS
        if time.time() > expires_at:
            return None
        return Session(nonce, expires_at)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
