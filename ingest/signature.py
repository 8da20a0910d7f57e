"""The ``loops-signature`` scheme: hex HMAC-SHA256 of the exact raw body with the signing secret.

Several secrets may be configured so one can be rotated without downtime: the first signs,
any one verifies. Every malformed header, whatever its shape, is the one ``InvalidSignature``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["SIGNATURE_HEADER", "InvalidSignature", "SignatureVerifier", "sign"]

SIGNATURE_HEADER = "loops-signature"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DIGEST_HEX_LENGTH = hashlib.sha256().digest_size * 2


class InvalidSignature(Exception):
    """The request is not signed by any configured secret (or its header is malformed)."""


def sign(body: bytes, secret: bytes) -> str:
    """The header value Loops sends for ``body``: lower-case hex HMAC-SHA256."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


class SignatureVerifier:
    """Checks ``loops-signature`` headers against one or more secrets in constant time."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets or any(not secret for secret in secrets):
            raise ValueError("at least one non-empty signing secret is required")
        self._secrets = tuple(secrets)

    def sign(self, body: bytes) -> str:
        return sign(body, self._secrets[0])

    def verify(self, body: bytes, header_values: Sequence[str]) -> None:
        """Return if exactly one well-formed header matches ``body``; raise InvalidSignature."""
        if len(header_values) != 1:
            raise InvalidSignature(
                "missing loops-signature header"
                if not header_values
                else "loops-signature header given more than once"
            )
        value = header_values[0]
        if len(value) != _DIGEST_HEX_LENGTH or not _HEX_DIGITS.issuperset(value):
            raise InvalidSignature("loops-signature is not a 64-digit hex HMAC-SHA256")
        presented = bytes.fromhex(value)
        matched = False
        for secret in self._secrets:
            # hmac.digest: OpenSSL's one-shot HMAC, without an HMAC object per request.
            expected = hmac.digest(secret, body, "sha256")
            matched |= hmac.compare_digest(presented, expected)
        if not matched:
            raise InvalidSignature("loops-signature does not match the body")
