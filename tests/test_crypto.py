"""
The crypto package's small parts: verdicts, the routing policy, backend and
certificate selection.
"""

from __future__ import annotations

from twisted.trial import unittest

from fedmsg_twisted import crypto
from fedmsg_twisted.config import ConfigError, from_dict
from fedmsg_twisted.crypto import Verdict
from fedmsg_twisted.crypto.policy import check_policy, normalize_fingerprint

FPR = "369FAF593DA9823D9963593909AEABEC57FD6639"


class VerdictTests(unittest.TestCase):
    def test_reasons(self):
        self.assertEqual(
            crypto.REASONS,
            {"unsigned", "bad-signature", "unknown-ca", "revoked", "expired", "policy", "malformed",
             "backend-not-allowed"},
        )
        self.assertEqual(crypto.REVOKED, "revoked")

    def test_constructors(self):
        ok = Verdict.valid("cn")
        self.assertTrue(ok)
        self.assertEqual((ok.ok, ok.reason, ok.signer), (True, None, "cn"))
        bad = Verdict.invalid("policy", "why", signer="cn")
        self.assertFalse(bad)
        self.assertEqual((bad.reason, bad.detail, bad.signer), ("policy", "why", "cn"))
        self.assertRaises(ValueError, Verdict.invalid, "nonsense", "x")

    def test_frozen(self):
        self.assertRaises(Exception, setattr, Verdict.valid("x"), "ok", False)


class PolicyTests(unittest.TestCase):
    def test_fedmsg_rules(self):
        policy = {"t": ("a", "b")}
        self.assertIsNone(check_policy("t", "a", policy, False))
        self.assertIn("'c'", check_policy("t", "c", policy, False))
        self.assertIsNone(check_policy("u", "c", policy, False))
        self.assertIsNotNone(check_policy("u", "c", policy, True))
        self.assertIsNotNone(check_policy(["not", "hashable"], "c", policy, True))
        self.assertIsNone(check_policy(None, "c", policy, False))

    def test_fingerprints(self):
        self.assertEqual(normalize_fingerprint("0x369f af59"), "369FAF59")
        policy = {"t": (FPR.lower(),)}
        self.assertIsNone(check_policy("t", "other", policy, True, fingerprints=[FPR]))
        # A long key id (last 16 hex digits) names the key too; a short one does not.
        self.assertIsNone(check_policy("t", "x", {"t": (FPR[-16:],)}, True, fingerprints=[FPR]))
        self.assertIsNotNone(check_policy("t", "x", {"t": (FPR[-8:],)}, True, fingerprints=[FPR]))
        # A CN listed for the topic does not admit a gpg key.
        self.assertIsNotNone(check_policy("t", FPR, {"t": ("host.example.org",)}, False, fingerprints=[FPR]))


class SelectionTests(unittest.TestCase):
    def test_certname(self):
        cfg = from_dict({"certnames": {"svc.h": "svc-h", "shell.h": "shell-h", "p.h": "p-h"}})
        self.assertEqual(crypto.select_certname(cfg, "h", "svc.h"), "svc-h")
        self.assertEqual(crypto.select_certname(cfg, "h", "relay_inbound"), "shell-h")
        self.assertEqual(crypto.select_certname(cfg.replace(cert_prefix="p"), "h", "svc.h"), "p-h")
        self.assertEqual(crypto.select_certname(cfg.replace(certname="x"), "h", "svc.h"), "x")
        e = self.assertRaises(ConfigError, crypto.select_certname, cfg, "h", None)
        self.assertIn("certname", str(e))

    def test_gpg_key(self):
        cfg = from_dict({"gpg_keys": {"h": FPR}})
        self.assertEqual(crypto.select_gpg_key(cfg, "h"), FPR)
        self.assertEqual(crypto.select_gpg_key(cfg.replace(gpg_signing_key="K"), "h"), "K")
        self.assertRaises(ConfigError, crypto.select_gpg_key, cfg, "other")

    def test_enabled_helpers(self):
        self.assertIsNone(crypto.signer_if_enabled(from_dict({})))
        self.assertIsNone(crypto.validator_if_enabled(from_dict({})))

    def test_backend_for(self):
        v = crypto.Validator(("x509", "gpg"))
        self.assertEqual(v.backend_for({"crypto": "gpg", "signature": "x"}), "gpg")
        self.assertEqual(v.backend_for({"certificate": "x", "signature": "y"}), "x509")
        self.assertEqual(v.backend_for({"signature": "y"}), "gpg")
        self.assertEqual(v.backend_for({}).reason, "unsigned")
        self.assertEqual(v.backend_for({"crypto": "rsa"}).reason, "backend-not-allowed")
        self.assertEqual(v.backend_for("text").reason, "malformed")
        self.assertEqual(crypto.Validator(("x509",)).backend_for({"signature": "y"}).reason, "backend-not-allowed")

    def test_validate_backends_per_config(self):
        """
        No process-wide freezing: two validators with different backend lists coexist.
        """
        a = crypto.Validator.from_config(from_dict({"crypto_validate_backends": ["gpg"], "gpg_home": "/tmp"}))
        b = crypto.Validator.from_config(from_dict({"crypto_backend": "gpg", "crypto_validate_backends": []}))
        self.assertEqual(a.allowed, ("gpg",))
        self.assertEqual(b.allowed, ("gpg",))
        self.assertRaises(ConfigError, crypto.Validator.from_config, from_dict({}))  # x509 without a CA


class CertsHelperTests(unittest.TestCase):
    """
    tests/certs.py makes certificates a real TLS stack accepts (teammates
    reuse it for TLS endpoints).
    """

    def handshake(self, pki, server, client=None, hostname="localhost"):
        import ssl

        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(*server)
        if client:
            sctx.verify_mode = ssl.CERT_REQUIRED
            sctx.load_verify_locations(pki.ca_cert_path)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(pki.ca_cert_path)
        if client:
            cctx.load_cert_chain(*client)
        s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
        s = sctx.wrap_bio(s_in, s_out, server_side=True)
        c = cctx.wrap_bio(c_in, c_out, server_hostname=hostname)
        done = set()
        for _ in range(20):
            for name, conn, out, peer_in in (("c", c, c_out, s_in), ("s", s, s_out, c_in)):
                if name not in done:
                    try:
                        conn.do_handshake()
                        done.add(name)
                    except ssl.SSLWantReadError:
                        pass
                peer_in.write(out.read())
            if done == {"c", "s"}:
                break
        c.write(b"ping")
        s_in.write(c_out.read())
        self.assertEqual(s.read(4), b"ping")
        return s.getpeercert()

    def test_server_and_client_certs(self):
        from tests.certs import make_pki

        pki = make_pki(self.mktemp())
        server = pki.issue("localhost", client=False, server=True, dns=["localhost"], ips=["127.0.0.1"])
        client = pki.issue("svc-host.example.org")
        peer = self.handshake(pki, server, client)
        self.assertIn((("commonName", "svc-host.example.org"),), peer["subject"])
        self.handshake(pki, server, hostname="127.0.0.1")

    def test_wrong_hostname_and_foreign_ca(self):
        import ssl

        from tests.certs import make_pki

        pki = make_pki(self.mktemp())
        server = pki.issue("localhost", client=False, server=True, dns=["localhost"])
        self.assertRaises(ssl.SSLCertVerificationError, self.handshake, pki, server, hostname="example.org")
        other = make_pki(self.mktemp(), cn="other CA")
        foreign = other.issue("localhost", client=False, server=True, dns=["localhost"])
        self.assertRaises(ssl.SSLCertVerificationError, self.handshake, pki, foreign)
