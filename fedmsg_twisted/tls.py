# -*- test-case-name: tests.test_push,tests.test_web -*-
"""
Server TLS material from config keys, checked at start-up.

The push endpoint and the dashboard both serve TLS from a certificate chain
and a key named in the config.  Twisted would only notice a bad file at the
first handshake; we read and check everything when the service starts, and
every error names the config key and the file.
"""

from __future__ import annotations

import datetime
from typing import Any, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedmsg_twisted.config import ConfigError

__all__ = ["read_pem", "load_certificates", "load_key_and_chain"]


def read_pem(config: Mapping[str, Any], key: str, context: str, missing: str) -> tuple[str, bytes]:
    """
    The path and bytes of the file named by C{config[key]}.

    @param context: the prefix of every message (C{"push"}, C{"web"}).
    @param missing: the message when the key is unset.
    """
    path = config.get(key)
    if not path:
        raise ConfigError(f"{context}: {missing}")
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except OSError as e:
        raise ConfigError(f"{context}: {key} {path}: cannot read: {e.strerror}") from None


def load_certificates(context: str, key: str, path: str, data: bytes) -> list[x509.Certificate]:
    """
    Every PEM certificate in C{data}, at least one.
    """
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{context}: {key} {path} holds no PEM certificate")
    return certs


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key_and_chain(
    config: Mapping[str, Any],
    context: str,
    certificate_key: str,
    private_key_key: str,
    missing: str,
    now: datetime.datetime | None = None,
) -> tuple[Any, list[x509.Certificate]]:
    """
    The private key and the certificate chain (leaf first), checked: the key
    is an unencrypted PEM key, it matches the leaf, and the leaf is valid now.

    @param missing: the message for an unset key, with C{{key}} for its name.
    @raise ConfigError: naming the key and the file that is wrong.
    """
    crt_path, crt_data = read_pem(config, certificate_key, context, missing.format(key=repr(certificate_key)))
    key_path, key_data = read_pem(config, private_key_key, context, missing.format(key=repr(private_key_key)))
    chain = load_certificates(context, certificate_key, crt_path, crt_data)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(
            f"{context}: {private_key_key} {key_path} is encrypted; give an unencrypted key "
            "(readable only by the service's user)"
        ) from None
    except (ValueError, serialization.UnsupportedAlgorithm) as e:
        raise ConfigError(f"{context}: {private_key_key} {key_path} is not a PEM private key ({e})") from None
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise ConfigError(f"{context}: {private_key_key} {key_path} does not match {certificate_key} {crt_path}")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    leaf = chain[0]
    if leaf.not_valid_after_utc < now:
        raise ConfigError(
            f"{context}: {certificate_key} {crt_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise ConfigError(
            f"{context}: {certificate_key} {crt_path} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    return key, chain
