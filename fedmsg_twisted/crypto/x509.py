# -*- test-case-name: tests.test_crypto_x509 -*-
"""
X.509 signatures, byte-compatible with fedmsg 1.1.7.

Signing: set C{crypto="x509"}, RSA PKCS#1 v1.5 with SHA-1 over the canonical
JSON of the envelope (without C{signature}/C{certificate}), then add the
base64 signature and the base64 of the certificate's PEM text, both wrapped
at 76 columns with a trailing newline (M2Crypto's layout, which fedmsg keeps).

Validation follows fedmsg's steps (chain to the single CA, CRL, signature,
then the CN against the routing policy), but is built for a busy bus:

  - the key, CA and CRL are read once and re-read only when their files
    change (checked at most every C{recheck_interval} seconds);
  - parsed certificates are cached by their base64 text and their chain
    verdict by CA/CRL generation, so the steady state costs one RSA verify;
  - a CRL that expires or cannot be read does not stop the bus: the last
    good CRL stays in force until its nextUpdate plus C{crl_grace_period}
    (fedmsg issue #481), with loud logs; a revoked certificate is rejected at
    once;
  - a CA or CRL given as a URL is fetched asynchronously, never at import
    and never from a default Fedora address.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from twisted.internet import defer, task
from twisted.logger import Logger

from fedmsg_twisted.config import ConfigError
from fedmsg_twisted.encoding import dumps, dumps_bytes

# json's own string encoder, the one the canonical encoder uses for keys and
# string values (ensure_ascii).
from json.encoder import encode_basestring_ascii as _encode_string

from .policy import check_policy
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

__all__ = ["X509Signer", "TrustStore", "X509Validator", "wrap76", "canonical_bytes"]

log = Logger(namespace="fedmsg_twisted.crypto.x509")

_CREDENTIALS = ("signature", "certificate")
# Stateless algorithm descriptions, built once instead of per message.
_PKCS1 = padding.PKCS1v15()
_SHA1 = hashes.SHA1()


def wrap76(b64: bytes | str) -> str:
    """
    Split base64 text every 76 characters with a newline, plus a final one.
    """
    text = b64.decode("ascii") if isinstance(b64, bytes) else b64
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"


def canonical_bytes(envelope: Mapping[str, Any]) -> bytes:
    """
    The signed bytes: canonical JSON of the envelope minus signature and certificate.
    """
    return dumps_bytes({k: v for k, v in envelope.items() if k not in _CREDENTIALS})


def _common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Watched:
    """
    A file whose content we keep, re-read only when its stat changes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple | None = None

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            stamp: tuple = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        except OSError as e:
            stamp = ("error", e.errno)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


# --- signing -------------------------------------------------------------------


class X509Signer:
    """
    Signs envelopes with C{<ssldir>/<certname>.key} and C{.crt}.

    Both files are loaded at construction (so a missing or mismatched pair is
    a startup error, not a publish-time one) and re-loaded when they change.
    A failed re-load keeps the previous pair and logs an error.
    """

    backend = "x509"

    def __init__(
        self,
        ssldir: str,
        certname: str,
        recheck_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        reactor: Any = None,
    ) -> None:
        self.ssldir = ssldir
        self.certname = certname
        self._key_file = _Watched(os.path.join(ssldir, certname + ".key"))
        self._crt_file = _Watched(os.path.join(ssldir, certname + ".crt"))
        self._recheck = recheck_interval
        self._monotonic = monotonic
        self._reactor = reactor
        self._checked_at = monotonic()
        self._key_file.changed()
        self._crt_file.changed()
        self._key, self._cert_field, self.cn = self._load()

    def _load(self) -> tuple[rsa.RSAPrivateKey, str, str | None]:
        key_path, crt_path = self._key_file.path, self._crt_file.path
        try:
            key_pem = self._key_file.read()
        except OSError as e:
            raise ConfigError(
                f"certname {self.certname!r}: cannot read private key {key_path}: {e.strerror}"
            ) from None
        try:
            crt_pem = self._crt_file.read()
        except OSError as e:
            raise ConfigError(
                f"certname {self.certname!r}: cannot read certificate {crt_path}: {e.strerror}"
            ) from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise ConfigError(f"{key_path}: not an unencrypted PEM private key: {e}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{key_path}: fedmsg signatures need an RSA key, not {type(key).__name__}")
        try:
            cert = x509.load_pem_x509_certificate(crt_pem)
        except ValueError as e:
            raise ConfigError(f"{crt_path}: not a PEM certificate: {e}") from None
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise ConfigError(f"{crt_path} does not belong to the private key {key_path}")
        # fedmsg re-encodes the certificate, dropping any text around the PEM block.
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return key, wrap76(base64.b64encode(cert_pem)), _common_name(cert)

    def _maybe_reload(self) -> None:
        now = self._monotonic()
        if now - self._checked_at < self._recheck:
            return
        self._checked_at = now
        # Evaluate both: each call records the new stamp.
        key_changed = self._key_file.changed()
        crt_changed = self._crt_file.changed()
        if not (key_changed or crt_changed):
            return
        try:
            self._key, self._cert_field, self.cn = self._load()
        except ConfigError as e:
            # Mid-rotation (key written, cert not yet) or broken: keep signing
            # with the pair we have; the next change retries.
            log.error("Keeping the previous signing key: {error}", error=str(e))
        else:
            log.info("Reloaded signing key and certificate {certname}", certname=self.certname)

    def sign(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """
        A signed copy of C{envelope} (the argument is not changed).

        Any previous C{signature}/C{certificate} is dropped first, so
        re-signing a signed message yields a valid message (fedmsg's
        signing relay produced invalid ones).
        """
        self._maybe_reload()
        signed = {k: v for k, v in envelope.items() if k not in _CREDENTIALS}
        signed["crypto"] = "x509"
        sig = self._key.sign(dumps(signed).encode("utf-8"), _PKCS1, _SHA1)
        signed["signature"] = wrap76(base64.b64encode(sig))
        signed["certificate"] = self._cert_field
        return signed

    def sign_encoded(self, envelope: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """
        L{sign}, plus the wire body of the signed envelope, encoding the
        envelope once instead of twice (once to sign, once to send).

        The canonical form of a dict whose keys are all strings is C{"{"},
        its C{"key":value} members sorted by key and joined by C{","}, then
        C{"}"}, so the signed text and the wire body are joined from the same
        encoded members, the wire body with the signature and certificate
        members in their sorted places.  The body is byte-identical to
        C{encoding.dumps_bytes(signed)} (tested on random envelopes); with
        any non-string top-level key it is simply that.

        @return: C{(signed, body)}.
        """
        self._maybe_reload()
        signed = {k: v for k, v in envelope.items() if k not in _CREDENTIALS}
        signed["crypto"] = "x509"
        if not all(type(k) is str for k in signed):
            signed = self.sign(envelope)
            return signed, dumps_bytes(signed)
        members = {k: _encode_string(k) + ":" + dumps(v) for k, v in signed.items()}
        text = "{" + ",".join([members[k] for k in sorted(members)]) + "}"
        sig = self._key.sign(text.encode("utf-8"), _PKCS1, _SHA1)
        signed["signature"] = wrap76(base64.b64encode(sig))
        signed["certificate"] = self._cert_field
        for name in _CREDENTIALS:
            members[name] = _encode_string(name) + ":" + dumps(signed[name])
        body = "{" + ",".join([members[k] for k in sorted(members)]) + "}"
        return signed, body.encode("ascii")

    def sign_async(self, envelope: Mapping[str, Any]) -> defer.Deferred:
        """
        L{sign}, as a Deferred, for code that handles both backends.
        """
        return defer.maybeDeferred(self.sign, envelope)


# --- trust: CA and CRL -----------------------------------------------------------


def _is_url(location: str | None) -> bool:
    return bool(location) and location.startswith(("https://", "http://"))


def _utc_ts(dt: datetime.datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _parse_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _parse_ca(data: bytes) -> x509.Certificate:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


class TrustStore:
    """
    The CA certificate and the CRL in force, with their reload and grace rules.

    @ivar generation: bumped whenever the CA or the CRL in force changes;
        cached chain verdicts from an older generation are recomputed.
    """

    #: Seconds between repeated "CRL in grace period" warnings.
    nag_interval = 300.0

    def __init__(
        self,
        ca_location: str | None,
        crl_location: str | None,
        crl_grace_period: float = 86400.0,
        recheck_interval: float = 1.0,
        crl_refresh: float = 3600.0,
        ca_refresh: float = 0.0,
        clock: Any = None,
        reactor: Any = None,
        agent: Any = None,
    ) -> None:
        self.ca_location = ca_location
        self.crl_location = crl_location
        self.crl_grace_period = crl_grace_period
        self.recheck_interval = recheck_interval
        self._crl_refresh = crl_refresh
        self._ca_refresh = ca_refresh
        self._reactor = reactor
        self._clock = clock
        self._agent = agent
        self.generation = 0
        self.ca: x509.Certificate | None = None
        #: C{ca}'s notAfter as a timestamp (checked for every message).
        self.ca_not_after = 0.0
        self.ca_problem: str | None = "no CA certificate configured (ca_cert_location)" if not ca_location else None
        self.crl: x509.CertificateRevocationList | None = None
        self.crl_problem: str | None = None
        self._crl_pending: bytes | None = None
        self._checked_at: float | None = None
        self._nagged_at: float | None = None
        self._loops: list[task.LoopingCall] = []
        self._started = False
        self._ca_file = _Watched(ca_location) if ca_location and not _is_url(ca_location) else None
        self._crl_file = _Watched(crl_location) if crl_location and not _is_url(crl_location) else None
        if ca_location and _is_url(ca_location):
            self.ca_problem = f"CA {ca_location} not fetched yet"
        self.refresh_files(force=True)

    # time ------------------------------------------------------------------
    def now(self) -> float:
        """
        Wall-clock seconds (the injected clock's, for tests).
        """
        return self._clock.seconds() if self._clock is not None else time.time()

    @property
    def needs_network(self) -> bool:
        return _is_url(self.ca_location) or _is_url(self.crl_location)

    # files -----------------------------------------------------------------
    def refresh_files(self, force: bool = False) -> None:
        """
        Re-read the CA and CRL files if they changed (throttled unless C{force}).
        """
        now = self.now()
        # (A clock that went backwards also triggers a check.)
        if not force and self._checked_at is not None and 0 <= now - self._checked_at < self.recheck_interval:
            return
        self._checked_at = now
        if self._ca_file is not None and self._ca_file.changed():
            try:
                data = self._ca_file.read()
            except OSError as e:
                self._ca_failed(f"cannot read CA {self._ca_file.path}: {e.strerror}")
            else:
                self.accept_ca(data, self._ca_file.path)
        if self._crl_file is not None and self._crl_file.changed():
            try:
                data = self._crl_file.read()
            except OSError as e:
                self._crl_failed(f"cannot read CRL {self._crl_file.path}: {e.strerror}")
            else:
                self.accept_crl(data, self._crl_file.path)

    def _ca_failed(self, why: str) -> None:
        if self.ca is None:
            self.ca_problem = why
            log.error("No usable CA, rejecting every signed message: {why}", why=why)
        else:
            log.error("Keeping the previous CA certificate: {why}", why=why)

    def accept_ca(self, data: bytes, where: str) -> bool:
        """
        Install a new CA certificate from C{data}; keep the old one if unusable.
        """
        try:
            ca = _parse_ca(data)
        except ValueError as e:
            self._ca_failed(f"{where}: not a certificate: {e}")
            return False
        try:
            bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is not None and not bc.ca:
            self._ca_failed(f"{where}: certificate is not a CA (basicConstraints CA:FALSE)")
            return False
        if self.ca is not None and ca == self.ca:
            return True
        self.ca = ca
        self.ca_not_after = ca.not_valid_after_utc.timestamp()
        self.ca_problem = None
        self.generation += 1
        log.info("Loaded CA {subject} from {where}", subject=ca.subject.rfc4514_string(), where=where)
        # The CRL in force (or waiting) must be re-checked against the new CA.
        if self._crl_pending is not None:
            pending, self._crl_pending = self._crl_pending, None
            self.accept_crl(pending, self.crl_location or "<crl>")
        elif self.crl is not None:
            if not self.crl.is_signature_valid(ca.public_key()):
                self.crl = None
                self._crl_failed("the CRL in force was not signed by the new CA")
            if self._crl_file is not None:
                self._crl_file._stamp = None  # re-read against the new CA
        return True

    def _crl_failed(self, why: str) -> None:
        self.crl_problem = why
        if self.crl is None:
            log.critical(
                "CRL problem and no previous CRL: rejecting every x509 message: {why}", why=why
            )
        else:
            log.critical(
                "CRL problem; keeping the last good CRL (nextUpdate {next}) in force, "
                "grace period {grace}s after it: {why}",
                why=why,
                next=self.crl.next_update_utc,
                grace=self.crl_grace_period,
            )

    def accept_crl(self, data: bytes, where: str) -> bool:
        """
        Install a CRL from C{data} if it is well formed, signed by the CA and
        not older than the one in force; otherwise keep the one in force.
        """
        try:
            crl = _parse_crl(data)
        except ValueError as e:
            self._crl_failed(f"{where}: not a CRL: {e}")
            return False
        if self.ca is None:
            # Cannot check its signature yet; keep it for when the CA arrives.
            self._crl_pending = data
            return False
        if crl.issuer != self.ca.subject or not crl.is_signature_valid(self.ca.public_key()):
            self._crl_failed(f"{where}: CRL not issued by the CA {self.ca.subject.rfc4514_string()}")
            return False
        if self.crl is not None:
            if crl == self.crl:
                self.crl_problem = None
                return True
            if crl.last_update_utc < self.crl.last_update_utc:
                self._crl_failed(
                    f"{where}: CRL is older (lastUpdate {crl.last_update_utc}) than the one in force"
                )
                return False
        self.crl = crl
        self.crl_problem = None
        self._nagged_at = None
        self.generation += 1
        log.info(
            "Loaded CRL from {where}: {n} revoked, nextUpdate {next}",
            where=where,
            n=len(crl),
            next=crl.next_update_utc,
        )
        return True

    # the per-message question ----------------------------------------------
    def crl_verdict(self) -> tuple[str, str] | None:
        """
        L{None} if the CRL situation allows validation now, else (reason, detail).
        """
        if not self.crl_location:
            return None
        if self.crl is None:
            return UNKNOWN_CA, f"no usable CRL from {self.crl_location}: {self.crl_problem or 'not loaded yet'}"
        next_update = _utc_ts(self.crl.next_update_utc)
        if next_update is None:
            return None
        now = self.now()
        if now <= next_update and self.crl_problem is None:
            return None
        if now > next_update + self.crl_grace_period:
            return EXPIRED, (
                f"CRL from {self.crl_location} expired at {self.crl.next_update_utc} and its "
                f"grace period of {self.crl_grace_period:g}s is over"
            )
        if self._nagged_at is None or now - self._nagged_at >= self.nag_interval:
            self._nagged_at = now
            if now > next_update:
                log.critical(
                    "CRL from {where} expired at {next}; still enforcing it for the grace period "
                    "(until {until}). Publish a new CRL!",
                    where=self.crl_location,
                    next=self.crl.next_update_utc,
                    until=datetime.datetime.fromtimestamp(
                        next_update + self.crl_grace_period, datetime.timezone.utc
                    ),
                )
            else:
                log.error(
                    "CRL from {where} has a problem ({why}); enforcing the last good one",
                    where=self.crl_location,
                    why=self.crl_problem,
                )
        return None

    # network sources ---------------------------------------------------------
    def start(self) -> defer.Deferred:
        """
        Begin fetching URL locations (no-op for files).

        Fires once the first CA and CRL fetches are done (succeeded or
        failed: failures are logged and the last good copies kept).  The CA
        is fetched first so the CRL can be checked against it.
        """
        if self._started or not self.needs_network:
            return defer.succeed(None)
        self._started = True
        reactor = self._get_reactor()
        d: defer.Deferred = defer.succeed(None)
        for loc, interval, fetch in (
            (self.ca_location, self._ca_refresh, self.fetch_ca),
            (self.crl_location, self._crl_refresh, self.fetch_crl),
        ):
            if not _is_url(loc):
                continue
            d.addCallback(lambda _, fetch=fetch: fetch())
            if interval and interval > 0:
                loop = task.LoopingCall(fetch)
                loop.clock = reactor
                self._loops.append(loop)
                d.addCallback(lambda _, loop=loop, interval=interval: loop.start(interval, now=False) and None)
        return d

    def stop(self) -> None:
        """
        Stop periodic fetches (for service shutdown and test cleanup).
        """
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self._started = False

    def _get_reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _get(self, url: str) -> defer.Deferred:
        from twisted.web.client import Agent, readBody

        if self._agent is None:
            self._agent = Agent(self._get_reactor())

        def check(response):
            if response.code != 200:
                raise OSError(f"HTTP {response.code} from {url}")
            return readBody(response)

        return self._agent.request(b"GET", url.encode("ascii")).addCallback(check)

    def fetch_ca(self) -> defer.Deferred:
        assert self.ca_location is not None
        return self._fetch(self.ca_location, "CA", self.accept_ca, self._ca_failed)

    def fetch_crl(self) -> defer.Deferred:
        assert self.crl_location is not None
        return self._fetch(self.crl_location, "CRL", self.accept_crl, self._crl_failed)

    def _fetch(
        self, url: str, what: str, accept: Callable[[bytes, str], Any], failed: Callable[[str], None]
    ) -> defer.Deferred:
        d = self._get(url)
        d.addCallbacks(
            lambda data: accept(data, url) and None,
            lambda f: failed(f"cannot fetch {what} {url}: {f.getErrorMessage()}"),
        )
        return d


# --- validation -------------------------------------------------------------------


@dataclass
class _CertInfo:
    cert: x509.Certificate | None
    problem: str | None
    cn: str | None = None
    fingerprint: str = ""
    not_before: float = 0.0
    not_after: float = 0.0
    public_key: Any = None
    is_rsa: bool = False
    #: The (immutable) verdict for a good message from this certificate,
    #: made once instead of per message.
    valid: Verdict | None = None
    chain_generation: int = -1
    chain_result: tuple[str, str] | None = None


class X509Validator:
    """
    Validates x509-signed envelopes against a L{TrustStore} and a routing policy.
    """

    #: Parsed certificates kept (by their base64 text).
    cache_size = 1024

    def __init__(
        self,
        trust: TrustStore,
        routing_policy: Mapping[str, Any] | None = None,
        routing_nitpicky: bool = False,
    ) -> None:
        self.trust = trust
        self.routing_policy = routing_policy or {}
        self.routing_nitpicky = routing_nitpicky
        self._certs: collections.OrderedDict[str, _CertInfo] = collections.OrderedDict()
        #: How many chain/CRL checks ran (each is one RSA verify of a cert);
        #: stays flat in the steady state.
        self.chain_checks = 0

    def _cert_info(self, field: str) -> _CertInfo:
        info = self._certs.get(field)
        if info is not None:
            self._certs.move_to_end(field)
            return info
        info = self._parse_cert(field)
        self._certs[field] = info
        if len(self._certs) > self.cache_size:
            self._certs.popitem(last=False)
        return info

    @staticmethod
    def _parse_cert(field: str) -> _CertInfo:
        try:
            pem = base64.b64decode(field)
            cert = x509.load_pem_x509_certificate(pem)
        except (ValueError, binascii.Error) as e:
            return _CertInfo(None, f"certificate field is not base64 of a PEM certificate: {e}")
        try:
            public_key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            return _CertInfo(None, f"certificate public key unusable: {e}")
        return _CertInfo(
            cert,
            None,
            cn=_common_name(cert),
            fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            public_key=public_key,
            is_rsa=isinstance(public_key, rsa.RSAPublicKey),
        )

    def _chain(self, info: _CertInfo) -> tuple[str, str] | None:
        # Cached per CA/CRL generation: issuer and signature, then revocation.
        trust = self.trust
        if info.chain_generation == trust.generation:
            return info.chain_result
        self.chain_checks += 1
        result: tuple[str, str] | None
        ca = trust.ca
        cert = info.cert
        assert cert is not None
        if ca is None:
            result = (UNKNOWN_CA, trust.ca_problem or "no CA certificate")
        elif cert.issuer != ca.subject:
            result = (UNKNOWN_CA, f"certificate issued by {cert.issuer.rfc4514_string()}, not by our CA")
        else:
            try:
                cert.verify_directly_issued_by(ca)
                result = None
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as e:
                result = (UNKNOWN_CA, f"certificate not signed by our CA ({e.__class__.__name__})")
        if result is None and trust.crl is not None:
            revoked = trust.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None:
                result = (REVOKED, f"certificate serial {cert.serial_number:x} revoked at {revoked.revocation_date_utc}")
        info.chain_generation = trust.generation
        info.chain_result = result
        return result

    def validate(
        self,
        envelope: Mapping[str, Any],
        routing_policy: Mapping[str, Any] | None = None,
        nitpicky: bool | None = None,
    ) -> Verdict:
        """
        Check an x509-signed envelope; policy arguments override the configured ones.
        """
        for name in _CREDENTIALS:
            if name not in envelope:
                return Verdict.invalid(UNSIGNED, f"no {name} field")
        fields = []
        for name in _CREDENTIALS:
            value = envelope[name]
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    return Verdict.invalid(MALFORMED, f"{name} is not UTF-8")
            if not isinstance(value, str):
                return Verdict.invalid(MALFORMED, f"{name} is a {type(value).__name__}, not a string")
            fields.append(value)
        sig_field, cert_field = fields
        info = self._cert_info(cert_field)
        if info.cert is None:
            return Verdict.invalid(MALFORMED, info.problem or "bad certificate")
        signer = info.cn
        trust = self.trust
        trust.refresh_files()
        if trust.ca is None:
            return Verdict.invalid(UNKNOWN_CA, trust.ca_problem or "no CA certificate", signer)
        chain = self._chain(info)
        if chain is not None:
            return Verdict.invalid(chain[0], chain[1], signer)
        now = trust.now()
        if now < info.not_before:
            return Verdict.invalid(EXPIRED, f"certificate not valid before {info.cert.not_valid_before_utc}", signer)
        if now > info.not_after:
            return Verdict.invalid(EXPIRED, f"certificate expired at {info.cert.not_valid_after_utc}", signer)
        if now > trust.ca_not_after:
            return Verdict.invalid(EXPIRED, f"CA certificate expired at {trust.ca.not_valid_after_utc}", signer)
        crl = trust.crl_verdict()
        if crl is not None:
            return Verdict.invalid(crl[0], crl[1], signer)
        try:
            signature = base64.b64decode(sig_field)
        except (ValueError, binascii.Error) as e:
            return Verdict.invalid(MALFORMED, f"signature is not base64: {e}", signer)
        try:
            data = canonical_bytes(envelope)
        except (TypeError, ValueError) as e:
            return Verdict.invalid(MALFORMED, f"cannot encode envelope canonically: {e}", signer)
        key = info.public_key
        if not info.is_rsa:
            return Verdict.invalid(BAD_SIGNATURE, f"certificate key is {type(key).__name__}, not RSA", signer)
        try:
            key.verify(signature, data, _PKCS1, _SHA1)
        except InvalidSignature:
            return Verdict.invalid(BAD_SIGNATURE, "signature does not match the message", signer)
        if signer is None:
            return Verdict.invalid(POLICY, "certificate subject has no CN to check against routing_policy")
        why = check_policy(
            envelope.get("topic"),
            signer,
            self.routing_policy if routing_policy is None else routing_policy,
            self.routing_nitpicky if nitpicky is None else nitpicky,
        )
        if why is not None:
            return Verdict.invalid(POLICY, why, signer)
        if info.valid is None:
            info.valid = Verdict.valid(signer)
        return info.valid
