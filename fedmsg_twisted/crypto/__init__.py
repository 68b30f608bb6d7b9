# -*- test-case-name: tests.test_crypto -*-
"""
Signing and validating fedmsg messages (X.509 and GnuPG), wire-compatible
with fedmsg 1.1.7.

Public API::

    signer = Signer.from_config(config, name="myapp.host")   # at startup
    signed = signer.sign(envelope)              # x509 only: fast, synchronous
    d = signer.sign_async(envelope)             # either backend -> Deferred[dict]

    validator = Validator.from_config(config)
    verdict = validator.validate(envelope)      # x509 (sync); gpg raises AsyncRequired
    d = validator.validate_async(envelope)      # any backend -> Deferred[Verdict]
    if not verdict: stats.count("rejected", verdict.reason); log(verdict.signer, verdict.detail)

Unlike fedmsg, the backend choice is read from each config (no process-wide
globals), and every rejection says why (L{REASONS}).
"""

from __future__ import annotations

import abc
import socket
from typing import Any, Mapping

from twisted.internet import defer

from fedmsg_twisted.config import ConfigError

from .gpg import GpgSigner, GpgValidator
from .verdict import (
    BACKEND_NOT_ALLOWED,
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    POLICY,
    REASONS,
    REVOKED,
    UNKNOWN_CA,
    UNSIGNED,
    Verdict,
)
from .x509 import TrustStore, X509Signer, X509Validator

__all__ = [
    "Signer",
    "Validator",
    "Verdict",
    "AsyncRequired",
    "strip_credentials",
    "validate_signed_by",
    "signer_if_enabled",
    "validator_if_enabled",
    "select_certname",
    "select_gpg_key",
    "REASONS",
    "UNSIGNED",
    "BAD_SIGNATURE",
    "UNKNOWN_CA",
    "REVOKED",
    "EXPIRED",
    "POLICY",
    "MALFORMED",
    "BACKEND_NOT_ALLOWED",
    "X509Signer",
    "GpgSigner",
]

BACKENDS = ("x509", "gpg")


class AsyncRequired(TypeError):
    """
    A gpg-signed message was given to the synchronous L{Validator.validate}:
    gpg runs in a thread, so use L{Validator.validate_async}.
    """


def _hostname(hostname: str | None) -> str:
    return hostname or socket.gethostname().split(".")[0]


def strip_credentials(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """
    A copy of C{envelope} without C{signature} and C{certificate} (C{crypto} stays).
    """
    return {k: v for k, v in envelope.items() if k not in ("signature", "certificate")}


def select_certname(config: Mapping[str, Any], hostname: str | None = None, name: str | None = None) -> str:
    """
    The certificate name fedmsg would sign with, or a L{ConfigError} saying
    which C{certnames} entry is missing.

    Order: C{certname}; else C{certnames["<cert_prefix>.<hostname>"]} when
    C{cert_prefix} is set; else C{certnames[name]}, where the active
    publisher's name C{relay_inbound} stands for C{shell.<hostname>}.
    """
    explicit = config.get("certname")
    if explicit:
        return explicit
    hostname = _hostname(hostname)
    certnames = config.get("certnames") or {}
    prefix = config.get("cert_prefix")
    if prefix:
        key = f"{prefix}.{hostname}"
        why = f"cert_prefix is {prefix!r}"
    else:
        name = name if name is not None else config.get("name")
        if not name:
            raise ConfigError(
                "crypto: sign_messages needs a certificate: set 'certname', or 'cert_prefix', "
                "or 'name' with a matching 'certnames' entry"
            )
        key = f"shell.{hostname}" if name == "relay_inbound" else name
        why = f"the service name is {name!r}"
    if key not in certnames:
        known = ", ".join(sorted(certnames)) or "none"
        raise ConfigError(
            f"crypto: no certificate for signing: {why} but 'certnames' has no {key!r} entry "
            f"(entries: {known})"
        )
    return certnames[key]


def select_gpg_key(config: Mapping[str, Any], hostname: str | None = None) -> str:
    """
    C{gpg_signing_key}, else C{gpg_keys[hostname]}, else a L{ConfigError}.
    """
    key = config.get("gpg_signing_key")
    if key:
        return key
    hostname = _hostname(hostname)
    keys = config.get("gpg_keys") or {}
    if hostname in keys:
        return keys[hostname]
    raise ConfigError(
        f"crypto: crypto_backend is 'gpg' but neither 'gpg_signing_key' nor "
        f"gpg_keys[{hostname!r}] is set"
    )


class Signer(abc.ABC):
    """
    What signs outgoing envelopes: an L{X509Signer} or a L{GpgSigner}.

    Both have C{backend} and C{sign_async(envelope) -> Deferred[dict]};
    L{X509Signer} also has a synchronous C{sign(envelope) -> dict}.
    """

    backend: str

    @abc.abstractmethod
    def sign_async(self, envelope: Mapping[str, Any]) -> defer.Deferred:
        """
        A Deferred firing with a signed copy of C{envelope}.
        """

    @staticmethod
    def from_config(
        config: Mapping[str, Any],
        hostname: str | None = None,
        name: str | None = None,
        reactor: Any = None,
    ) -> "X509Signer | GpgSigner":
        """
        The signer C{config} asks for; raises L{ConfigError} if its key or
        certificate cannot be found or loaded (at startup, not at publish).
        """
        if config.get("crypto_backend", "x509") == "gpg":
            return GpgSigner(config.get("gpg_home"), select_gpg_key(config, hostname), reactor=reactor)
        ssldir = config.get("ssldir")
        if not ssldir:
            raise ConfigError("crypto: x509 signing needs 'ssldir'")
        return X509Signer(ssldir, select_certname(config, hostname, name), reactor=reactor)


Signer.register(X509Signer)
Signer.register(GpgSigner)


class Validator:
    """
    Validates received envelopes with the backends a config allows.

    @ivar allowed: backends accepted (C{crypto_validate_backends}, or the
        signer's C{crypto_backend} when that list is empty).
    @ivar trust: the L{TrustStore} (CA and CRL), if x509 is allowed.
    """

    def __init__(
        self,
        allowed: tuple[str, ...],
        x509: X509Validator | None = None,
        gpg: GpgValidator | None = None,
    ) -> None:
        self.allowed = tuple(allowed)
        self.x509 = x509
        self.gpg = gpg
        self.trust = x509.trust if x509 is not None else None

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        reactor: Any = None,
        clock: Any = None,
        recheck_interval: float = 1.0,
    ) -> "Validator":
        """
        Build from C{config}: reads the CA and CRL files now (small, once).

        @param clock: an C{IReactorTime} for certificate and CRL times
            (tests); default: the system clock.
        @param recheck_interval: seconds between checks of the CA/CRL files'
            modification times.
        """
        allowed = tuple(config.get("crypto_validate_backends") or ()) or (
            config.get("crypto_backend", "x509"),
        )
        for b in allowed:
            if b not in BACKENDS:
                raise ConfigError(f"crypto: {b!r} in crypto_validate_backends is not x509 or gpg")
        policy = config.get("routing_policy") or {}
        nitpicky = bool(config.get("routing_nitpicky", False))
        x509v = gpgv = None
        if "x509" in allowed:
            if not config.get("ca_cert_location"):
                raise ConfigError(
                    "crypto: validating x509 signatures needs 'ca_cert_location' "
                    "(a CA file or URL; fedmsg's implicit fedoraproject.org default is not used)"
                )
            trust = TrustStore(
                config.get("ca_cert_location"),
                config.get("crl_location"),
                crl_grace_period=float(config.get("crl_grace_period", 86400)),
                recheck_interval=recheck_interval,
                crl_refresh=float(config.get("crl_cache_expiry", 3600) or 0),
                ca_refresh=float(config.get("ca_cert_cache_expiry", 0) or 0),
                clock=clock,
                reactor=reactor,
            )
            x509v = X509Validator(trust, policy, nitpicky)
        if "gpg" in allowed:
            gpgv = GpgValidator(config.get("gpg_home"), policy, nitpicky, reactor=reactor)
        return cls(allowed, x509v, gpgv)

    def start(self) -> defer.Deferred:
        """
        Start fetching a CA/CRL given as URL; fires after the first fetch.
        A no-op for files.
        """
        return self.trust.start() if self.trust is not None else defer.succeed(None)

    def stop(self) -> None:
        if self.trust is not None:
            self.trust.stop()

    def backend_for(self, envelope: Any) -> str | Verdict:
        """
        Which backend validates C{envelope} (fedmsg's rules), or a rejection.
        """
        if type(envelope) is not dict and not isinstance(envelope, Mapping):  # (dict: no ABC check)
            return Verdict.invalid(MALFORMED, f"envelope is a {type(envelope).__name__}, not an object")
        if "crypto" in envelope:
            backend = envelope["crypto"]
            if backend not in BACKENDS:
                return Verdict.invalid(BACKEND_NOT_ALLOWED, f"unknown crypto backend {backend!r}")
        elif "certificate" in envelope:
            backend = "x509"
        elif "signature" in envelope:
            backend = "gpg"
        else:
            return Verdict.invalid(UNSIGNED, "no signature")
        if backend not in self.allowed:
            return Verdict.invalid(
                BACKEND_NOT_ALLOWED, f"{backend} signatures are not in crypto_validate_backends {list(self.allowed)}"
            )
        return backend

    def validate(
        self,
        envelope: Any,
        routing_policy: Mapping[str, Any] | None = None,
        nitpicky: bool | None = None,
    ) -> Verdict:
        """
        Validate now.  For x509 this is the fast path (about one RSA verify).

        @raise AsyncRequired: for a gpg-signed message that passed the
            cheap checks (gpg must run in a thread).
        """
        backend = self.backend_for(envelope)
        if isinstance(backend, Verdict):
            return backend
        if backend == "x509":
            assert self.x509 is not None
            return self.x509.validate(envelope, routing_policy, nitpicky)
        assert self.gpg is not None
        pre = self.gpg.precheck(envelope)
        if isinstance(pre, Verdict):
            return pre
        raise AsyncRequired("gpg-signed messages must be validated with validate_async")

    def validate_async(
        self,
        envelope: Any,
        routing_policy: Mapping[str, Any] | None = None,
        nitpicky: bool | None = None,
    ) -> defer.Deferred:
        """
        A Deferred firing with the L{Verdict}; gpg runs in a thread.
        """
        backend = self.backend_for(envelope)
        if isinstance(backend, Verdict):
            return defer.succeed(backend)
        if backend == "x509":
            assert self.x509 is not None
            return defer.maybeDeferred(self.x509.validate, envelope, routing_policy, nitpicky)
        assert self.gpg is not None
        return self.gpg.validate_deferred(envelope, routing_policy, nitpicky)

    def validate_signed_by(self, envelope: Any, signer: str) -> defer.Deferred:
        """
        Like L{validate_async}, but the signer must be C{signer} (a CN or a
        gpg fingerprint), whatever the configured routing policy says.
        """
        topic = envelope.get("topic") if isinstance(envelope, Mapping) else None
        policy = {topic: (signer,)} if isinstance(topic, str) else {}
        return self.validate_async(envelope, policy, True)


def signer_if_enabled(config: Mapping[str, Any], **kw: Any) -> "X509Signer | GpgSigner | None":
    """
    L{Signer.from_config} when C{sign_messages} is set, else L{None}.
    """
    return Signer.from_config(config, **kw) if config.get("sign_messages") else None


def validator_if_enabled(config: Mapping[str, Any], **kw: Any) -> Validator | None:
    """
    L{Validator.from_config} when C{validate_signatures} is set, else L{None}.
    """
    return Validator.from_config(config, **kw) if config.get("validate_signatures") else None


def validate_signed_by(envelope: Any, signer: str, validator: Validator) -> defer.Deferred:
    """
    fedmsg's C{validate_signed_by}: L{Validator.validate_signed_by}.
    """
    return validator.validate_signed_by(envelope, signer)
