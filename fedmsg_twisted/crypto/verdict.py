# -*- test-case-name: tests.test_crypto -*-
"""
The outcome of validating one message: valid, or rejected with a reason.

Callers count and log rejections by C{reason} (a short fixed label, one of
L{REASONS}) and C{signer} (certificate CN or gpg fingerprint, when known), so
the reason set is closed and stable.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Verdict",
    "REASONS",
    "UNSIGNED",
    "BAD_SIGNATURE",
    "UNKNOWN_CA",
    "REVOKED",
    "EXPIRED",
    "POLICY",
    "MALFORMED",
    "BACKEND_NOT_ALLOWED",
]

#: No signature at all.
UNSIGNED = "unsigned"
#: The signature does not match the message (tampered, or signed by another key).
BAD_SIGNATURE = "bad-signature"
#: The signer is not vouched for: certificate not issued by our CA, CA or CRL
#: unavailable, or a gpg key not in the keyring.
UNKNOWN_CA = "unknown-ca"
#: The certificate (or gpg key) is revoked.
REVOKED = "revoked"
#: The certificate, the CA, the CRL (past its grace period) or the gpg key has expired.
EXPIRED = "expired"
#: The signer may not publish on this topic (routing_policy / routing_nitpicky).
POLICY = "policy"
#: Not a well-formed signed message (bad base64, unparsable certificate, wrong types).
MALFORMED = "malformed"
#: The message's signature kind is not in crypto_validate_backends.
BACKEND_NOT_ALLOWED = "backend-not-allowed"

REASONS = frozenset(
    {UNSIGNED, BAD_SIGNATURE, UNKNOWN_CA, REVOKED, EXPIRED, POLICY, MALFORMED, BACKEND_NOT_ALLOWED}
)


@dataclass(frozen=True)
class Verdict:
    """
    @ivar ok: the message is authentic and authorised.
    @ivar reason: one of L{REASONS} when not ok, else L{None}.
    @ivar signer: certificate CN (x509) or primary key fingerprint (gpg), if known.
    @ivar detail: a human-readable explanation for logs.
    """

    ok: bool
    reason: str | None = None
    signer: str | None = None
    detail: str = ""

    @classmethod
    def valid(cls, signer: str | None, detail: str = "") -> "Verdict":
        return cls(True, None, signer, detail)

    @classmethod
    def invalid(cls, reason: str, detail: str, signer: str | None = None) -> "Verdict":
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        return cls(False, reason, signer, detail)

    def __bool__(self) -> bool:
        return self.ok
