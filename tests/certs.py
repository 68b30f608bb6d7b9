"""
A throwaway PKI for tests: a CA, service and server certificates, a CRL.

Everything is generated with the C{cryptography} library into a directory the
test owns (C{self.mktemp()}), laid out the way fedmsg expects
(C{<ssldir>/<certname>.crt} and C{.key}), so the same files serve our code,
the real fedmsg peer, and TLS endpoints::

    pki = make_pki(self.mktemp())
    crt, key = pki.issue("myapp-host.example.org")          # clientAuth
    crt, key = pki.issue("localhost", client=False, server=True,
                         dns=["localhost"], ips=["127.0.0.1"])
    pki.revoke("bad-host.example.org")
    pki.write_crl()                   # current CRL at pki.crl_path
    pki.write_crl(expired=True)       # a CRL whose nextUpdate has passed

RSA key generation dominates the cost, so keys come from a per-process pool:
within one PKI every certificate has its own key, but separate PKIs reuse the
same keys (use C{fresh_key=True} when a test needs a key no other PKI has).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PKI", "Issued", "make_pki", "new_key"]

_KEY_POOL: list[rsa.RSAPrivateKey] = []


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """
    A brand new RSA key (slow-ish: tens of milliseconds).
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _pooled_key(index: int) -> rsa.RSAPrivateKey:
    while len(_KEY_POOL) <= index:
        _KEY_POOL.append(new_key())
    return _KEY_POOL[index]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    # Write then rename, so a reader never sees half a file.
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class Issued(NamedTuple):
    """
    Paths of an issued certificate and its private key (unpacks as a pair).
    """

    crt_path: str
    key_path: str


@dataclass
class PKI:
    """
    A test certificate authority living in C{directory}.

    @ivar ca_cert_path: the CA certificate (PEM), for C{ca_cert_location}.
    @ivar crl_path: where L{write_crl} writes, for C{crl_location}.
    @ivar certs: certificate objects by name (the file stem).
    """

    directory: str
    ca_key: rsa.RSAPrivateKey
    ca_cert: x509.Certificate
    ca_cert_path: str
    ca_key_path: str
    crl_path: str
    certs: dict[str, x509.Certificate] = field(default_factory=dict)
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    revoked: dict[int, datetime.datetime] = field(default_factory=dict)
    _next_key: int = 0
    _crl_number: int = 0

    def _key(self, fresh: bool) -> rsa.RSAPrivateKey:
        if fresh:
            return new_key()
        key = _pooled_key(self._next_key)
        self._next_key += 1
        return key

    def issue(
        self,
        cn: str,
        client: bool = True,
        server: bool = False,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        name: str | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        expired: bool = False,
        fresh_key: bool = False,
        key: rsa.RSAPrivateKey | None = None,
        issuer: "PKI | None" = None,
    ) -> Issued:
        """
        Issue a certificate for C{cn}; write C{<name>.crt} and C{<name>.key}.

        @param client: add the clientAuth extended key usage (fedmsg service certs).
        @param server: add serverAuth (TLS servers; give C{dns}/C{ips} SANs too).
        @param name: file stem, i.e. the fedmsg certname; defaults to C{cn}.
        @param expired: validity ended yesterday.
        @param key: reuse this private key (e.g. to forge a look-alike).
        @param issuer: sign with another PKI's CA instead (files still land here).
        """
        name = name or cn
        issuer = issuer or self
        now = _now()
        if expired:
            not_before = not_before or now - datetime.timedelta(days=30)
            not_after = not_after or now - datetime.timedelta(days=1)
        not_before = not_before or now - datetime.timedelta(hours=1)
        not_after = not_after or now + datetime.timedelta(days=365)
        key = key or self._key(fresh_key)
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=True, data_encipherment=False, key_agreement=False,
                    key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.ca_key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(issuer.ca_key, hashes.SHA256())
        crt_path = os.path.join(self.directory, name + ".crt")
        key_path = os.path.join(self.directory, name + ".key")
        _write(key_path, _key_pem(key), 0o600)
        _write(crt_path, cert.public_bytes(serialization.Encoding.PEM))
        self.certs[name] = cert
        self.keys[name] = key
        return Issued(crt_path, key_path)

    def revoke(self, name_or_cert: "str | x509.Certificate", when: datetime.datetime | None = None) -> None:
        """
        Mark a certificate revoked; call L{write_crl} to publish it.
        """
        cert = self.certs[name_or_cert] if isinstance(name_or_cert, str) else name_or_cert
        self.revoked[cert.serial_number] = when or _now() - datetime.timedelta(minutes=5)

    def crl(
        self,
        expired: bool = False,
        last_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> x509.CertificateRevocationList:
        """
        Build a CRL listing every revoked serial.  C{expired}: nextUpdate was yesterday.
        """
        now = _now()
        if expired:
            last_update = last_update or now - datetime.timedelta(days=8)
            next_update = next_update or now - datetime.timedelta(days=1)
        last_update = last_update or now - datetime.timedelta(minutes=1)
        next_update = next_update or now + datetime.timedelta(days=7)
        self._crl_number += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca_cert.subject)
            .last_update(last_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(self._crl_number), critical=False)
        )
        for serial, when in self.revoked.items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(signing_key or self.ca_key, hashes.SHA256())

    def write_crl(self, expired: bool = False, path: str | None = None, **kw) -> str:
        """
        Write the CRL (PEM) to C{path} (default L{crl_path}); return the path.
        """
        path = path or self.crl_path
        _write(path, self.crl(expired=expired, **kw).public_bytes(serialization.Encoding.PEM))
        return path

    def certname_config(self) -> dict:
        """
        The crypto keys a fedmsg config needs to trust this CA and its CRL.
        """
        return {"ssldir": self.directory, "ca_cert_location": self.ca_cert_path, "crl_location": self.crl_path}


def make_pki(directory: str, cn: str = "fedmsg-twisted test CA", crl: bool = True, ca_days: int = 3650) -> PKI:
    """
    Create C{directory} with a fresh CA (C{ca.crt}, C{ca.key}) and, unless
    C{crl=False}, an empty current CRL (C{crl.pem}).
    """
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    ca_key = _ca_key(cn)
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_cert_path = os.path.join(directory, "ca.crt")
    ca_key_path = os.path.join(directory, "ca.key")
    _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(ca_key_path, _key_pem(ca_key), 0o600)
    pki = PKI(
        directory=directory,
        ca_key=ca_key,
        ca_cert=ca_cert,
        ca_cert_path=ca_cert_path,
        ca_key_path=ca_key_path,
        crl_path=os.path.join(directory, "crl.pem"),
    )
    if crl:
        pki.write_crl()
    return pki


_CA_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def _ca_key(cn: str) -> rsa.RSAPrivateKey:
    # One key per CA name per process: two CAs with different names never
    # share a key, so "signed by another CA" really is unverifiable.
    if cn not in _CA_KEYS:
        _CA_KEYS[cn] = new_key()
    return _CA_KEYS[cn]
