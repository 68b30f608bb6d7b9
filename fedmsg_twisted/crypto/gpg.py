# -*- test-case-name: tests.test_crypto_gpg -*-
"""
GnuPG signatures, compatible with fedmsg 1.1.7 (and working on Python 3).

fedmsg's gpg backend signs only C{dumps(envelope["msg"])} with a detached
binary signature and sends its base64 (unwrapped) as C{signature}, with
C{crypto="gpg"} and no certificate.  The topic, timestamp and the rest are
not covered, which is fedmsg's design; we keep it for compatibility and add
what fedmsg lacks: the signer's fingerprint in the verdict, and the routing
policy applied to it (list fingerprints under a topic in C{routing_policy}).

gpg is a subprocess: every call runs in a thread, never on the reactor.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
import threading
from typing import Any, Mapping

from twisted.internet import threads
from twisted.logger import Logger

from fedmsg_twisted.config import ConfigError
from fedmsg_twisted.encoding import dumps

from .policy import check_policy, normalize_fingerprint
from .verdict import (
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    POLICY,
    REVOKED,
    UNKNOWN_CA,
    UNSIGNED,
    Verdict,
)

__all__ = ["GpgSigner", "GpgValidator", "GpgError"]

log = Logger(namespace="fedmsg_twisted.crypto.gpg")


class GpgError(RuntimeError):
    """
    gpg failed to sign (missing key, broken home, agent trouble).
    """


def _check_home(gpg_home: str | None, what: str) -> str:
    if not gpg_home:
        raise ConfigError(f"crypto: {what} needs 'gpg_home' (a GnuPG home directory)")
    if not os.path.isdir(gpg_home):
        raise ConfigError(f"crypto: key 'gpg_home' is {gpg_home!r}, which is not a directory")
    return gpg_home


class _Gpg:
    """
    A lazily built C{gnupg.GPG} (its constructor runs gpg, so only in a thread).
    """

    def __init__(self, gpg_home: str, gpgbinary: str = "gpg") -> None:
        self.gpg_home = gpg_home
        self.gpgbinary = gpgbinary
        self._gpg = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._gpg is None:
                import gnupg

                self._gpg = gnupg.GPG(gnupghome=self.gpg_home, gpgbinary=self.gpgbinary)
                self._gpg.encoding = "utf-8"
            return self._gpg


def _defer(reactor: Any, f, *args) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


class GpgSigner:
    """
    Signs envelopes with the gpg key C{fingerprint} from C{gpg_home}.
    """

    backend = "gpg"

    def __init__(self, gpg_home: str, fingerprint: str, gpgbinary: str = "gpg", reactor: Any = None) -> None:
        self.gpg_home = _check_home(gpg_home, "gpg signing")
        if not fingerprint:
            raise ConfigError("crypto: gpg signing needs 'gpg_signing_key' or a 'gpg_keys' entry for this host")
        self.fingerprint = fingerprint
        self._gpg = _Gpg(self.gpg_home, gpgbinary)
        self._reactor = reactor

    def sign_blocking(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """
        A signed copy of C{envelope}.  Blocks on gpg: call it from a thread.
        """
        signed = {k: v for k, v in envelope.items() if k not in ("signature", "certificate")}
        signed["crypto"] = "gpg"
        if "msg" not in signed:
            raise ValueError("cannot gpg-sign an envelope without a msg field")
        data = dumps(signed["msg"]).encode("utf-8")
        result = self._gpg.get().sign(data, keyid=self.fingerprint, detach=True, binary=True)
        sig = result.data
        if not sig or getattr(result, "returncode", 0):
            last = (result.stderr or "").strip().splitlines()[-1:] or [""]
            raise GpgError(
                f"gpg could not sign with key {self.fingerprint} in {self.gpg_home}: "
                f"{result.status or 'no signature'} ({last[0]})"
            )
        # Text, not bytes: fedmsg's signer returns bytes here (issue #506).
        signed["signature"] = base64.b64encode(sig).decode("ascii")
        return signed

    def sign_deferred(self, envelope: Mapping[str, Any]):
        """
        L{sign_blocking} in a thread; a Deferred firing with the signed envelope.
        """
        return _defer(self._reactor, self.sign_blocking, dict(envelope))

    sign_async = sign_deferred


class GpgValidator:
    """
    Verifies gpg-signed envelopes against the keyring in C{gpg_home}.

    Any key in the keyring is trusted (as in fedmsg); the routing policy
    then decides which fingerprints may publish which topics.
    """

    def __init__(
        self,
        gpg_home: str | None,
        routing_policy: Mapping[str, Any] | None = None,
        routing_nitpicky: bool = False,
        gpgbinary: str = "gpg",
        reactor: Any = None,
    ) -> None:
        # fedmsg validates against ~/.gnupg when gpg_home is unset.
        self.gpg_home = gpg_home or os.path.expanduser("~/.gnupg")
        self.routing_policy = routing_policy or {}
        self.routing_nitpicky = routing_nitpicky
        self._gpg = _Gpg(self.gpg_home, gpgbinary)
        self._reactor = reactor

    def precheck(self, envelope: Mapping[str, Any]) -> Verdict | bytes:
        """
        The cheap checks, on the reactor: a rejection, or the decoded signature.
        """
        if "signature" not in envelope:
            return Verdict.invalid(UNSIGNED, "no signature field")
        if "msg" not in envelope:
            return Verdict.invalid(MALFORMED, "no msg field")
        sig = envelope["signature"]
        if isinstance(sig, str):
            sig = sig.encode("ascii", "replace")
        if not isinstance(sig, bytes):
            return Verdict.invalid(MALFORMED, f"signature is a {type(sig).__name__}, not a string")
        try:
            raw = base64.b64decode(sig)
        except (ValueError, binascii.Error) as e:
            return Verdict.invalid(MALFORMED, f"signature is not base64: {e}")
        if not raw:
            return Verdict.invalid(MALFORMED, "empty signature")
        return raw

    def validate_blocking(
        self,
        envelope: Mapping[str, Any],
        routing_policy: Mapping[str, Any] | None = None,
        nitpicky: bool | None = None,
    ) -> Verdict:
        """
        The whole check.  Blocks on gpg: call it from a thread.
        """
        pre = self.precheck(envelope)
        if isinstance(pre, Verdict):
            return pre
        try:
            data = dumps(envelope["msg"]).encode("utf-8")
        except (TypeError, ValueError) as e:
            return Verdict.invalid(MALFORMED, f"cannot encode msg canonically: {e}")
        tmpdir = tempfile.mkdtemp(prefix="fedmsg-gpg-")
        try:
            sig_path = os.path.join(tmpdir, "sig")
            with open(sig_path, "wb") as f:
                f.write(pre)
            try:
                result = self._gpg.get().verify_data(sig_path, data)
            except (OSError, ValueError) as e:
                return Verdict.invalid(UNKNOWN_CA, f"cannot run gpg with home {self.gpg_home}: {e}")
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        primary = result.pubkey_fingerprint or result.fingerprint
        signer = normalize_fingerprint(primary) if primary else result.key_id
        if not result.valid:
            return Verdict.invalid(*self._reason(result), signer)
        why = check_policy(
            envelope.get("topic"),
            signer,
            self.routing_policy if routing_policy is None else routing_policy,
            self.routing_nitpicky if nitpicky is None else nitpicky,
            fingerprints=[f for f in (result.fingerprint, result.pubkey_fingerprint) if f],
        )
        if why is not None:
            return Verdict.invalid(POLICY, why, signer)
        return Verdict.valid(signer)

    @staticmethod
    def _reason(result) -> tuple[str, str]:
        status = result.key_status or result.status or "verification failed"
        text = status.lower()
        if "revoked" in text:
            return REVOKED, status
        if "expired" in text:
            return EXPIRED, status
        if "no public key" in text:
            return UNKNOWN_CA, f"no public key {result.key_id} in the keyring"
        if "bad" in text:
            return BAD_SIGNATURE, status
        if "expected but not found" in text or "unexpected" in text:
            return MALFORMED, f"signature is not a gpg signature ({status})"
        return BAD_SIGNATURE, status

    def validate_deferred(
        self,
        envelope: Mapping[str, Any],
        routing_policy: Mapping[str, Any] | None = None,
        nitpicky: bool | None = None,
    ):
        """
        L{validate_blocking} in a thread, after the cheap checks on the reactor.
        """
        pre = self.precheck(envelope)
        if isinstance(pre, Verdict):
            from twisted.internet import defer

            return defer.succeed(pre)
        return _defer(self._reactor, self.validate_blocking, envelope, routing_policy, nitpicky)
