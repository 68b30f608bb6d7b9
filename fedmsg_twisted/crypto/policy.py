# -*- test-case-name: tests.test_crypto -*-
"""
Authorisation: may this signer publish on this topic?

fedmsg's rule, kept: a topic listed in C{routing_policy} may only be
published by the signers listed for it; an unlisted topic passes unless
C{routing_nitpicky} is set.  Signers are certificate CNs, and (our addition)
gpg key fingerprints, compared without spaces and case-insensitively.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

__all__ = ["check_policy", "normalize_fingerprint"]


def normalize_fingerprint(fpr: str) -> str:
    """
    C{"ABCD 1234 ..."} or C{"0xabcd1234..."} -> C{"ABCD1234..."}.
    """
    fpr = fpr.replace(" ", "").upper()
    if fpr.startswith("0X"):
        fpr = fpr[2:]
    return fpr


def _gpg_match(allowed: str, fingerprints: Iterable[str]) -> bool:
    want = normalize_fingerprint(allowed)
    # A long key id (16 hex) or a full fingerprint both identify a key.
    return len(want) >= 16 and any(f.endswith(want) for f in fingerprints)


def check_policy(
    topic: Any,
    signer: str,
    routing_policy: Mapping[str, Iterable[str]],
    nitpicky: bool,
    fingerprints: Iterable[str] = (),
) -> str | None:
    """
    L{None} if allowed, else a sentence saying why not.

    @param signer: the CN, or for gpg the primary key fingerprint.
    @param fingerprints: for gpg, every fingerprint that identifies the
        signing key (primary and subkey); listed entries match any of them.
    """
    if isinstance(topic, str) and topic in routing_policy:
        allowed = routing_policy[topic]
        if signer in allowed:
            return None
        fprs = [normalize_fingerprint(f) for f in fingerprints if f]
        if fprs and any(_gpg_match(a, fprs) for a in allowed):
            return None
        return f"signer {signer!r} is not allowed to publish on {topic!r} by routing_policy"
    if nitpicky:
        return f"topic {topic!r} is not in routing_policy and routing_nitpicky is set"
    return None
