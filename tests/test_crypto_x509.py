"""
X.509 signing and validation against a throwaway CA (tests/certs.py).
"""

from __future__ import annotations

import base64
import json
import os
import time

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import defer, task
from twisted.trial import unittest

from fedmsg_twisted import crypto
from fedmsg_twisted.config import ConfigError, from_dict
from fedmsg_twisted.crypto import Signer, Validator, Verdict
from fedmsg_twisted.crypto.x509 import X509Signer, canonical_bytes, wrap76
from fedmsg_twisted.encoding import dumps
from tests.certs import make_pki

TOPIC = "org.example.dev.myapp.thing.happened"


def envelope(**extra):
    env = {
        "topic": TOPIC,
        "msg": {"a": "h\u00e9llo \u2603", "b": 2, "z": [1, 2.5, None, True]},
        "msg_id": "2026-4bc8e87f-f504-4487-8645-ea99080df196",
        "i": 1,
        "timestamp": 1795800215,
        "username": "root",
    }
    env.update(extra)
    return env


def wall_clock() -> task.Clock:
    """
    A manual clock that starts at the real time (certificates use real dates).
    """
    clock = task.Clock()
    clock.advance(time.time())
    return clock


class PKITestCase(unittest.TestCase):
    def setUp(self):
        self.pki = make_pki(self.mktemp())
        self.pki.issue("myapp-host.example.org", name="myapp.host")
        self.pki.issue("other-host.example.org", name="other.host")
        self.clock = wall_clock()

    def config(self, **kw):
        base = {
            "sign_messages": True,
            "validate_signatures": True,
            "ssldir": self.pki.directory,
            "certnames": {"myapp.host": "myapp.host", "other.host": "other.host"},
            "name": "myapp.host",
            "endpoints": {"myapp.host": ["tcp://127.0.0.1:1"]},
            "ca_cert_location": self.pki.ca_cert_path,
            "crl_location": self.pki.crl_path,
        }
        base.update(kw)
        return from_dict(base)

    def validator(self, **kw):
        v = Validator.from_config(self.config(**kw), clock=self.clock, recheck_interval=0)
        self.addCleanup(v.stop)
        return v

    def signer(self, name="myapp.host", **kw):
        return Signer.from_config(self.config(**kw), name=name)


class SigningFormatTests(PKITestCase):
    def test_wire_format(self):
        """
        crypto is set and signed, signature and certificate are base64
        wrapped at 76 columns with a trailing newline, the signature is
        PKCS#1 v1.5 SHA-1 over the canonical JSON, and the certificate is
        base64 of the PEM text.
        """
        signed = self.signer().sign(envelope())
        self.assertEqual(signed["crypto"], "x509")
        for field in ("signature", "certificate"):
            text = signed[field]
            self.assertIsInstance(text, str)
            self.assertTrue(text.endswith("\n"))
            lines = text[:-1].split("\n")
            self.assertTrue(all(len(line) == 76 for line in lines[:-1]))
            self.assertLessEqual(len(lines[-1]), 76)
        pem = base64.b64decode(signed["certificate"])
        self.assertTrue(pem.startswith(b"-----BEGIN CERTIFICATE-----\n"))
        cert = cx509.load_pem_x509_certificate(pem)
        self.assertEqual(cert, self.pki.certs["myapp.host"])
        expected_data = dumps({k: v for k, v in signed.items() if k not in ("signature", "certificate")})
        self.assertIn('"crypto":"x509"', expected_data)
        self.assertEqual(canonical_bytes(signed), expected_data.encode())
        # Raises InvalidSignature if anything differs.
        cert.public_key().verify(
            base64.b64decode(signed["signature"]), expected_data.encode(), padding.PKCS1v15(), hashes.SHA1()
        )

    def test_does_not_mutate_and_replaces_old_credentials(self):
        env = envelope(signature="old", certificate="old")
        signed = self.signer().sign(env)
        self.assertEqual(env["signature"], "old")
        self.assertNotIn("crypto", env)
        self.assertTrue(self.validator().validate(signed).ok)

    def test_wrap76(self):
        self.assertEqual(wrap76("a" * 77), "a" * 76 + "\na\n")
        self.assertEqual(wrap76(b"abc"), "abc\n")

    def test_json_roundtrip(self):
        """
        A signed message survives the wire (dumps, loads) and validates.
        """
        signed = self.signer().sign(envelope())
        received = json.loads(dumps(signed))
        self.assertEqual(self.validator().validate(received), Verdict.valid("myapp-host.example.org"))

    def test_sign_async(self):
        d = self.signer().sign_async(envelope())
        signed = self.successResultOf(d)
        self.assertTrue(self.validator().validate(signed).ok)


class CertSelectionTests(PKITestCase):
    def test_certnames_by_name(self):
        s = self.signer(name="other.host")
        self.assertEqual(s.certname, "other.host")
        self.assertEqual(s.cn, "other-host.example.org")

    def test_name_from_config(self):
        self.assertEqual(Signer.from_config(self.config()).certname, "myapp.host")

    def test_explicit_certname_wins(self):
        s = Signer.from_config(self.config(certname="other.host"), name="myapp.host")
        self.assertEqual(s.certname, "other.host")

    def test_cert_prefix(self):
        cfg = self.config(cert_prefix="other", certnames={"other.box1": "other.host"})
        self.assertEqual(Signer.from_config(cfg, hostname="box1").certname, "other.host")

    def test_relay_inbound_is_shell(self):
        cfg = self.config(certnames={"shell.box1": "other.host"})
        self.assertEqual(Signer.from_config(cfg, hostname="box1", name="relay_inbound").certname, "other.host")

    def test_missing_entry_is_a_config_error(self):
        """
        fedmsg raised KeyError at publish time (#181); we refuse at startup
        and name the missing entry.
        """
        e = self.assertRaises(ConfigError, Signer.from_config, self.config(), name="nope.host")
        self.assertIn("'nope.host'", str(e))
        self.assertIn("certnames", str(e))
        e = self.assertRaises(ConfigError, Signer.from_config, self.config(cert_prefix="p"), hostname="h")
        self.assertIn("'p.h'", str(e))

    def test_missing_files(self):
        e = self.assertRaises(ConfigError, Signer.from_config, self.config(certname="absent"))
        self.assertIn("absent.key", str(e))

    def test_mismatched_pair(self):
        os.replace(
            os.path.join(self.pki.directory, "other.host.crt"),
            os.path.join(self.pki.directory, "myapp.host.crt"),
        )
        e = self.assertRaises(ConfigError, Signer.from_config, self.config())
        self.assertIn("does not belong", str(e))

    def test_validator_needs_ca(self):
        e = self.assertRaises(ConfigError, Validator.from_config, self.config(ca_cert_location=None))
        self.assertIn("ca_cert_location", str(e))


class ValidationTests(PKITestCase):
    def test_valid(self):
        v = self.validator()
        verdict = v.validate(self.signer().sign(envelope()))
        self.assertEqual(verdict, Verdict(True, None, "myapp-host.example.org", ""))
        self.assertTrue(verdict)

    def test_tampered(self):
        signed = self.signer().sign(envelope())
        v = self.validator()
        for change in (
            {"msg": {"a": "evil"}},
            {"topic": TOPIC + ".x"},
            {"timestamp": 1795800215.0},  # int turned float, as datagrepper does
            {"seq_id": 3},
            {"headers": {}},
        ):
            verdict = v.validate(dict(signed, **change))
            self.assertEqual((verdict.reason, verdict.signer), ("bad-signature", "myapp-host.example.org"), change)
        no_crypto = dict(signed)
        del no_crypto["crypto"]
        self.assertEqual(v.validate(no_crypto).reason, "bad-signature")

    def test_resigned_with_other_key(self):
        """
        A signature made by another key under a genuine certificate fails.
        """
        signed = self.signer().sign(envelope())
        forged = self.signer(name="other.host").sign(envelope())
        forged["certificate"] = signed["certificate"]
        self.assertEqual(self.validator().validate(forged).reason, "bad-signature")

    def test_unwrapped_and_legacy(self):
        """
        Unwrapped base64 validates, and so does a legacy message with no
        crypto field that was signed without one.
        """
        signed = self.signer().sign(envelope())
        flat = dict(signed, signature=signed["signature"].replace("\n", ""),
                    certificate=signed["certificate"].replace("\n", ""))
        self.assertTrue(self.validator().validate(flat).ok)
        key = self.pki.keys["myapp.host"]
        legacy = envelope()
        sig = key.sign(dumps(legacy).encode(), padding.PKCS1v15(), hashes.SHA1())
        legacy["signature"] = base64.b64encode(sig).decode()
        legacy["certificate"] = signed["certificate"]
        self.assertTrue(self.validator().validate(legacy).ok)

    def test_bytes_fields(self):
        """
        Like fedmsg, signature and certificate given as bytes are decoded.
        """
        signed = self.signer().sign(envelope())
        as_bytes = dict(signed, signature=signed["signature"].encode(), certificate=signed["certificate"].encode())
        self.assertTrue(self.validator().validate(as_bytes).ok)
        self.assertEqual(self.validator().validate(dict(signed, signature=b"\xff")).reason, "malformed")

    def test_unknown_ca(self):
        rogue = make_pki(self.mktemp(), cn="rogue CA")
        rogue.issue("myapp-host.example.org", name="myapp.host")
        signed = X509Signer(rogue.directory, "myapp.host").sign(envelope())
        verdict = self.validator().validate(signed)
        self.assertEqual((verdict.reason, verdict.signer), ("unknown-ca", "myapp-host.example.org"))

    def test_same_subject_other_ca(self):
        """
        A CA with our CA's name but another key does not fool the chain check.
        """
        rogue = make_pki(self.mktemp(), cn="impostor")
        # Issue a cert that claims our CA as issuer but is signed by the rogue key.
        rogue.issue("myapp-host.example.org", name="forged", issuer=_Impostor(self.pki, rogue))
        signed = X509Signer(rogue.directory, "forged").sign(envelope())
        self.assertEqual(self.validator().validate(signed).reason, "unknown-ca")

    def test_expired_certificate(self):
        self.pki.issue("old-host", name="old.host", expired=True)
        signed = Signer.from_config(self.config(certname="old.host")).sign(envelope())
        verdict = self.validator().validate(signed)
        self.assertEqual((verdict.reason, verdict.signer), ("expired", "old-host"))

    def test_revoked(self):
        self.pki.issue("bad-host", name="bad.host")
        self.pki.revoke("bad.host")
        self.pki.write_crl()
        signed = Signer.from_config(self.config(certname="bad.host")).sign(envelope())
        verdict = self.validator().validate(signed)
        self.assertEqual((verdict.reason, verdict.signer), ("revoked", "bad-host"))
        # Without a CRL the same message passes: the CRL is what rejects it.
        self.assertTrue(self.validator(crl_location=None).validate(signed).ok)

    def test_revoked_at_once_on_crl_change(self):
        v = self.validator()
        signed = self.signer().sign(envelope())
        self.assertTrue(v.validate(signed).ok)
        self.pki.revoke("myapp.host")
        self.pki.write_crl()
        self.assertEqual(v.validate(signed).reason, "revoked")

    def test_malformed(self):
        signed = self.signer().sign(envelope())
        v = self.validator()
        cases = [
            (dict(signed, certificate="%%%not base64"), "malformed"),
            (dict(signed, certificate=base64.b64encode(b"not a pem").decode()), "malformed"),
            (dict(signed, certificate=42), "malformed"),
            (dict(signed, signature=["x"]), "malformed"),
            (dict(signed, signature="abc"), "malformed"),  # bad base64 padding
            (["not", "a", "dict"], "malformed"),
        ]
        for env, reason in cases:
            self.assertEqual(v.validate(env).reason, reason, env if isinstance(env, list) else env.get("signature"))

    def test_unsigned_and_backends(self):
        v = self.validator()
        self.assertEqual(v.validate(envelope()).reason, "unsigned")
        self.assertEqual(v.validate(envelope(crypto="rot13")).reason, "backend-not-allowed")
        # A gpg-looking message when only x509 is allowed.
        self.assertEqual(v.validate(envelope(signature="AAAA")).reason, "backend-not-allowed")
        self.assertEqual(v.validate(envelope(crypto="gpg", signature="AAAA")).reason, "backend-not-allowed")
        signed = self.signer().sign(envelope())
        gpg_only = self.validator(crypto_validate_backends=["gpg"])
        self.assertEqual(gpg_only.validate(signed).reason, "backend-not-allowed")
        # Empty list: the signer backend is the one allowed.
        self.assertEqual(self.validator(crypto_validate_backends=[]).allowed, ("x509",))

    def test_x509_missing_certificate(self):
        v = self.validator()
        self.assertEqual(v.validate(envelope(crypto="x509", signature="AAAA")).reason, "unsigned")

    def test_validate_async(self):
        v = self.validator()
        verdict = self.successResultOf(v.validate_async(self.signer().sign(envelope())))
        self.assertTrue(verdict.ok)

    def test_strip_credentials(self):
        signed = self.signer().sign(envelope())
        stripped = crypto.strip_credentials(signed)
        self.assertEqual(set(signed) - set(stripped), {"signature", "certificate"})
        self.assertIn("crypto", stripped)
        self.assertIn("signature", signed)


class PolicyTests(PKITestCase):
    def test_policy(self):
        signed = self.signer().sign(envelope())
        v = self.validator(routing_policy={TOPIC: ["myapp-host.example.org"]})
        self.assertTrue(v.validate(signed).ok)
        v = self.validator(routing_policy={TOPIC: ["other-host.example.org"]})
        verdict = v.validate(signed)
        self.assertEqual((verdict.reason, verdict.signer), ("policy", "myapp-host.example.org"))
        self.assertIn(TOPIC, verdict.detail)

    def test_nitpicky(self):
        signed = self.signer().sign(envelope())
        v = self.validator(routing_policy={"other.topic": ["x"]}, routing_nitpicky=False)
        self.assertTrue(v.validate(signed).ok)
        v = self.validator(routing_policy={"other.topic": ["x"]}, routing_nitpicky=True)
        self.assertEqual(v.validate(signed).reason, "policy")

    def test_validate_signed_by(self):
        signed = self.signer().sign(envelope())
        v = self.validator()
        ok = self.successResultOf(crypto.validate_signed_by(signed, "myapp-host.example.org", v))
        self.assertTrue(ok.ok)
        bad = self.successResultOf(v.validate_signed_by(signed, "other-host.example.org"))
        self.assertEqual(bad.reason, "policy")


class _Impostor:
    """
    An issuer with the real CA's subject but another CA's private key.
    """

    def __init__(self, real, rogue):
        self.ca_cert = real.ca_cert
        self.ca_key = rogue.ca_key


class ReloadAndCacheTests(PKITestCase):
    def test_chain_checked_once_per_certificate(self):
        """
        The steady state is one RSA verification per message: the chain and
        CRL verdict is computed once per certificate and CA/CRL generation.
        """
        v = self.validator()
        signer = self.signer()
        for i in range(5):
            self.assertTrue(v.validate(signer.sign(envelope(i=i))).ok)
        self.assertEqual(v.x509.chain_checks, 1)
        self.pki.write_crl()  # a new CRL: one more chain check
        for i in range(3):
            self.assertTrue(v.validate(signer.sign(envelope(i=i))).ok)
        self.assertEqual(v.x509.chain_checks, 2)

    def test_signer_reloads_changed_files(self):
        signer = X509Signer(self.pki.directory, "myapp.host", recheck_interval=0)
        v = self.validator()
        self.assertEqual(v.validate(signer.sign(envelope())).signer, "myapp-host.example.org")
        # Rotate: a new certificate (new CN, new key) under the same certname.
        self.pki.issue("rotated-host.example.org", name="myapp.host", fresh_key=True)
        self.assertEqual(v.validate(signer.sign(envelope())).signer, "rotated-host.example.org")

    def test_signer_keeps_old_pair_on_broken_files(self):
        signer = X509Signer(self.pki.directory, "myapp.host", recheck_interval=0)
        with open(os.path.join(self.pki.directory, "myapp.host.key"), "wb") as f:
            f.write(b"garbage")
        signed = signer.sign(envelope())
        self.assertTrue(self.validator().validate(signed).ok)
        self.flushLoggedErrors()

    def test_signer_throttles_stat(self):
        now = [0.0]
        signer = X509Signer(self.pki.directory, "myapp.host", recheck_interval=10, monotonic=lambda: now[0])
        self.pki.issue("rotated-host.example.org", name="myapp.host", fresh_key=True)
        v = self.validator()
        self.assertEqual(v.validate(signer.sign(envelope())).signer, "myapp-host.example.org")
        now[0] = 11
        self.assertEqual(v.validate(signer.sign(envelope())).signer, "rotated-host.example.org")

    def test_ca_reload(self):
        """
        A replaced CA file is picked up; certificates of the old CA then fail.
        """
        v = self.validator()
        signed = self.signer().sign(envelope())
        self.assertTrue(v.validate(signed).ok)
        new = make_pki(self.mktemp(), cn="new CA")
        os.replace(new.ca_cert_path, self.pki.ca_cert_path)
        verdict = v.validate(signed)
        self.assertEqual(verdict.reason, "unknown-ca")

    def test_broken_ca_file_keeps_last_good(self):
        v = self.validator()
        signed = self.signer().sign(envelope())
        with open(self.pki.ca_cert_path, "wb") as f:
            f.write(b"not a certificate")
        self.assertTrue(v.validate(signed).ok)

    def test_missing_ca_file(self):
        v = self.validator(ca_cert_location=os.path.join(self.pki.directory, "nope.crt"))
        verdict = v.validate(self.signer().sign(envelope()))
        self.assertEqual(verdict.reason, "unknown-ca")
        self.assertIn("nope.crt", verdict.detail)


class CRLGraceTests(PKITestCase):
    """
    fedmsg #481: an expired or unreadable CRL must not stop the bus.
    """

    def setUp(self):
        super().setUp()
        self.pki.issue("bad-host", name="bad.host")
        self.pki.revoke("bad.host")
        self.good = self.signer().sign(envelope())
        self.bad = Signer.from_config(self.config(certname="bad.host")).sign(envelope())

    def test_expired_crl_within_grace(self):
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc)
        self.pki.write_crl(
            last_update=now - datetime.timedelta(days=2), next_update=now - datetime.timedelta(hours=1)
        )
        v = self.validator(crl_grace_period=86400)
        self.assertTrue(v.validate(self.good).ok)
        self.assertEqual(v.validate(self.bad).reason, "revoked")
        # The grace period runs out: every message fails, loudly.
        self.clock.advance(86400)
        verdict = v.validate(self.good)
        self.assertEqual((verdict.reason, verdict.signer), ("expired", "myapp-host.example.org"))
        self.assertIn("CRL", verdict.detail)
        # A fresh CRL restores service.
        self.pki.write_crl()
        self.clock.advance(1)
        self.assertTrue(v.validate(self.good).ok)

    def test_grace_is_loud(self):
        """
        Running on an expired CRL logs at critical level, rate-limited.
        """
        from twisted.logger import LogLevel, globalLogPublisher

        events = []

        def observer(event):
            if event.get("log_namespace") == "fedmsg_twisted.crypto.x509" and event["log_level"] == LogLevel.critical:
                events.append(event)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.pki.write_crl(expired=True)
        v = self.validator(crl_grace_period=3 * 86400)
        for i in range(3):
            self.assertTrue(v.validate(self.good).ok)
        self.assertEqual(len(events), 1)
        self.assertIn("grace", events[0]["log_format"])
        self.clock.advance(v.trust.nag_interval)
        self.assertTrue(v.validate(self.good).ok)
        self.assertEqual(len(events), 2)

    def test_expired_crl_without_grace(self):
        self.pki.write_crl(expired=True)
        v = self.validator(crl_grace_period=0)
        self.assertEqual(v.validate(self.good).reason, "expired")

    def test_unreadable_crl_keeps_last_good(self):
        self.pki.write_crl()
        v = self.validator()
        self.assertTrue(v.validate(self.good).ok)
        for breakage in ("garbage", "delete", "other-ca"):
            if breakage == "garbage":
                with open(self.pki.crl_path, "wb") as f:
                    f.write(b"-----BEGIN X509 CRL-----\nnonsense\n-----END X509 CRL-----\n")
            elif breakage == "delete":
                os.unlink(self.pki.crl_path)
            else:
                make_pki(self.mktemp(), cn="other CA").write_crl(path=self.pki.crl_path)
            self.assertTrue(v.validate(self.good).ok, breakage)
            self.assertEqual(v.validate(self.bad).reason, "revoked", breakage)
            self.assertIsNotNone(v.trust.crl_problem)
        # A good CRL again: the problem clears.
        self.pki.write_crl()
        self.assertTrue(v.validate(self.good).ok)
        self.assertIsNone(v.trust.crl_problem)

    def test_no_crl_at_all(self):
        """
        A CRL is configured but there never was a readable one: fail closed.
        """
        v = self.validator(crl_location=os.path.join(self.pki.directory, "missing.pem"))
        verdict = v.validate(self.good)
        self.assertEqual(verdict.reason, "unknown-ca")
        self.assertIn("missing.pem", verdict.detail)

    def test_unreadable_then_expired(self):
        """
        The last good CRL kept after a read failure still expires (plus grace).
        """
        self.pki.write_crl()
        v = self.validator(crl_grace_period=60)
        os.unlink(self.pki.crl_path)
        self.assertTrue(v.validate(self.good).ok)
        self.clock.advance(8 * 86400)
        self.assertEqual(v.validate(self.good).reason, "expired")


class URLSourceTests(PKITestCase):
    """
    A CA and CRL given as URLs are fetched asynchronously with an Agent.
    """

    def setUp(self):
        super().setUp()
        from twisted.internet import reactor
        from twisted.web import server, static

        self.pki.write_crl()
        root = static.File(self.pki.directory)
        self.port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}/"

    @defer.inlineCallbacks
    def test_fetch(self):
        v = self.validator(ca_cert_location=self.base + "ca.crt", crl_location=self.base + "crl.pem",
                           crl_cache_expiry=3600)
        signed = self.signer().sign(envelope())
        self.assertEqual(v.validate(signed).reason, "unknown-ca")  # not fetched yet
        yield v.start()
        self.assertTrue(v.validate(signed).ok)
        self.pki.revoke("myapp.host")
        self.pki.write_crl()
        yield v.trust.fetch_crl()
        self.assertEqual(v.validate(signed).reason, "revoked")

    @defer.inlineCallbacks
    def test_fetch_failure_keeps_last_good(self):
        v = self.validator(ca_cert_location=self.base + "ca.crt", crl_location=self.base + "crl.pem")
        yield v.start()
        signed = self.signer().sign(envelope())
        self.assertTrue(v.validate(signed).ok)
        os.unlink(self.pki.crl_path)
        yield v.trust.fetch_crl()
        self.assertIn("404", v.trust.crl_problem)
        self.assertTrue(v.validate(signed).ok)
