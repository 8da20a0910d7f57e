"""The ``loops-signature`` check: hex HMAC-SHA256 of the raw body; one error for any bad header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from loops_webhooks.ingest.signature import InvalidSignature, SignatureVerifier

SECRET = b"whsec_test_5b8f0c2e9a1d4e7f"
BODY = b'{"id":"evt_abc123","type":"checkout.session.completed","data":{"id":"cs_abc123"}}'
HEX_DIGITS = "0123456789abcdef"

KNOWN_VECTOR_SECRET = b"whsec_known_vector"
KNOWN_VECTOR_BODY = (
    b'{"id":"evt_abc123","type":"checkout.session.completed","created":"2025-01-15T10:35:00Z",'
    b'"data":{"id":"cs_abc123","status":"completed"}}'
)
KNOWN_VECTOR_DIGEST = "58dc9108cf7e8d31cd8c228f8ba8f28425de8f8b57f89d8b441e702dec0d3b2a"
"""Computed independently: ``printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET"``."""

NODE_SIGNER = """
const crypto = require('crypto');
let payload = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { payload += chunk; });
process.stdin.on('end', () => {
  process.stdout.write(
    crypto.createHmac('sha256', process.env.SECRET).update(payload).digest('hex'));
});
"""


VERIFIER = SignatureVerifier([SECRET])


def signature(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_the_signature_of_the_body_verifies():
    VERIFIER.verify(BODY, [signature(BODY)])


def test_the_signature_in_upper_case_verifies():
    VERIFIER.verify(BODY, [signature(BODY).upper()])


def test_a_known_vector_computed_with_openssl_verifies():
    SignatureVerifier([KNOWN_VECTOR_SECRET]).verify(KNOWN_VECTOR_BODY, [KNOWN_VECTOR_DIGEST])


def test_a_signature_made_like_the_loops_nodejs_sample_verifies():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    body = '{"id":"evt_1","type":"checkout.session.completed","note":"café ✓"}'.encode()

    completed = subprocess.run(
        [node, "-e", NODE_SIGNER],
        input=body,
        env={**os.environ, "SECRET": SECRET.decode()},
        capture_output=True,
        check=True,
        timeout=30,
    )

    VERIFIER.verify(body, [completed.stdout.decode()])


def test_signing_makes_the_lower_case_hex_hmac_of_the_body():
    assert VERIFIER.sign(BODY) == signature(BODY)


MALFORMED_HEADERS = {
    "missing": [],
    "empty": [""],
    "one digit short": [signature(BODY)[:-1]],
    "one digit long": [signature(BODY) + "0"],
    "twice the length": [signature(BODY) * 2],
    "not hex": ["g" + signature(BODY)[1:]],
    "hex with a 0x prefix": ["0x" + signature(BODY)[2:]],
    "base64 of the digest": [base64.b64encode(bytes.fromhex(signature(BODY))).decode()],
    "repeated, both valid": [signature(BODY), signature(BODY)],
    "leading space": [" " + signature(BODY)],
    "surrounding spaces": [" " + signature(BODY) + " "],
    "trailing newline": [signature(BODY) + "\n"],
    "surrounding tabs, trimmed to length": ["\t" + signature(BODY)[1:-1] + "\t"],
    "inner space, right length": [signature(BODY)[:31] + " " + signature(BODY)[32:]],
    "non-ASCII letter": ["é" + signature(BODY)[1:]],
    "full-width digit": ["\uff10" + signature(BODY)[1:]],
    "sha256= prefix": ["sha256=" + signature(BODY)],
}


@pytest.mark.parametrize("header_values", MALFORMED_HEADERS.values(), ids=MALFORMED_HEADERS.keys())
def test_a_malformed_header_is_an_invalid_signature(header_values):
    with pytest.raises(InvalidSignature):
        VERIFIER.verify(BODY, header_values)


def test_the_signature_of_another_body_is_rejected():
    with pytest.raises(InvalidSignature):
        VERIFIER.verify(BODY, [signature(BODY + b" ")])


def test_a_signature_made_with_another_secret_is_rejected():
    with pytest.raises(InvalidSignature):
        VERIFIER.verify(BODY, [signature(BODY, b"another secret")])


@given(body=st.binary(), changed=st.binary())
@example(body=b"", changed=b"\x00")
def test_a_signature_for_one_body_rejects_any_other_body(body, changed):
    if changed == body:
        changed = body + b"\x00"
    with pytest.raises(InvalidSignature):
        VERIFIER.verify(changed, [signature(body)])


@given(body=st.binary(), position=st.integers(0, 63), shift=st.integers(1, 15))
def test_any_changed_digit_of_the_signature_is_rejected(body, position, shift):
    digits = signature(body)
    replacement = HEX_DIGITS[(HEX_DIGITS.index(digits[position]) + shift) % 16]
    changed = digits[:position] + replacement + digits[position + 1 :]

    with pytest.raises(InvalidSignature):
        VERIFIER.verify(body, [changed])


header_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
nearly_hex = st.text(
    st.sampled_from("0123456789abcdefABCDEF \t\n\x00xé\uff10-="), min_size=64, max_size=64
)


@given(body=st.binary(max_size=64), header_values=st.lists(header_text | nearly_hex, max_size=3))
def test_no_header_raises_anything_but_invalid_signature(body, header_values):
    with pytest.raises(InvalidSignature):
        VERIFIER.verify(body, header_values)


def test_during_rotation_the_new_secret_verifies():
    rotating = SignatureVerifier([b"new secret", b"old secret"])

    rotating.verify(BODY, [signature(BODY, b"new secret")])


def test_during_rotation_the_old_secret_verifies():
    rotating = SignatureVerifier([b"new secret", b"old secret"])

    rotating.verify(BODY, [signature(BODY, b"old secret")])


def test_during_rotation_a_third_secret_is_rejected():
    rotating = SignatureVerifier([b"new secret", b"old secret"])

    with pytest.raises(InvalidSignature):
        rotating.verify(BODY, [signature(BODY, b"a third secret")])


def test_during_rotation_the_first_secret_signs():
    rotating = SignatureVerifier([b"new secret", b"old secret"])

    assert rotating.sign(BODY) == signature(BODY, b"new secret")


@pytest.mark.parametrize("secrets", [[], [b""], [SECRET, b""]], ids=["none", "empty", "one empty"])
def test_a_verifier_cannot_be_built_without_non_empty_secrets(secrets):
    with pytest.raises(ValueError, match="secret"):
        SignatureVerifier(secrets)
