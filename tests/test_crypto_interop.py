"""
Interoperability with the real fedmsg 1.1.7 (tests/fedmsgpeer.py): our
signatures validate with C{fedmsg.crypto.validate}, fedmsg's validate with
ours, and both reject the same tampered, re-signed, revoked, foreign and
policy-violating messages.

The peer runs as a subprocess; each test sends it one batch of operations
through a JSON file and reads one JSON line of results.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer, utils
from twisted.trial import unittest

from fedmsg_twisted.config import from_dict
from fedmsg_twisted.crypto import Signer, Validator
from fedmsg_twisted.crypto.gpg import GpgSigner
from tests.certs import make_pki
from tests.fedmsgpeer import ensure_peer, peer_python, script
from tests.test_crypto_gpg import make_gpg_homes
from tests.test_crypto_x509 import wall_clock

ensure_peer()

TOPIC = "org.example.dev.myapp.thing.happened"

PEER = script(
    """
    import base64, json, sys, warnings
    warnings.simplefilter("ignore")
    import logging
    logging.disable(logging.CRITICAL)
    import fedmsg.crypto, fedmsg.crypto.gpg, fedmsg.encoding

    job = json.load(open(sys.argv[1]))
    out = []
    for op in job["ops"]:
        cfg = dict(job["config"], **op.get("config", {}))
        if op["op"] == "validate":
            out.append(bool(fedmsg.crypto.validate(op["msg"], **cfg)))
        elif op["op"] == "sign":
            out.append(fedmsg.crypto.sign(dict(op["msg"]), **cfg))
        elif op["op"] == "gpg-sign":
            # fedmsg's gpg signer returns bytes on Python 3 (#506); use its
            # own gpg call and only fix the type.
            msg = dict(op["msg"], crypto="gpg")
            sig = fedmsg.crypto.gpg._ctx.sign(
                fedmsg.encoding.dumps(msg["msg"]), cfg["gpg_signing_key"], homedir=cfg["gpg_home"])
            msg["signature"] = base64.b64encode(sig).decode("ascii")
            out.append(msg)
    print(json.dumps(out))
    """
)


def envelope(i=1, **extra):
    env = {
        "topic": TOPIC,
        "msg": {"a": "h\u00e9llo \u2603 \U0001f600", "b": 2, "f": 0.1, "z": [1, 2.5, None, True, 1e-05]},
        "msg_id": f"2026-4bc8e87f-f504-4487-8645-ea99080df19{i}",
        "i": i,
        "timestamp": 1795800215,
        "username": "root",
    }
    env.update(extra)
    return env


class PeerMixin:
    @defer.inlineCallbacks
    def peer(self, config, ops):
        """
        Run a batch of operations in the real fedmsg; return their results.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        job = os.path.join(workdir, "job.json")
        with open(job, "w") as f:
            json.dump({"config": config, "ops": ops}, f)
        d = utils.getProcessOutputAndValue(
            peer_python(), ["-c", PEER, job], env={"HOME": workdir, "PATH": os.environ.get("PATH", "")},
            path=workdir,
        )

        def killed(f):
            # On a signal it fails with a bare (out, err, signal) tuple.
            if isinstance(f.value, tuple):
                _, err, sig = f.value
                raise AssertionError(f"peer killed by signal {sig}: {err.decode(errors='replace')}")
            return f

        out, err, code = yield d.addErrback(killed)
        if code != 0:
            raise AssertionError(f"peer failed ({code}): {err.decode(errors='replace')}")
        return json.loads(out.decode().strip().splitlines()[-1])


class X509InteropTests(PeerMixin, unittest.TestCase):
    def setUp(self):
        self.pki = make_pki(self.mktemp())
        self.pki.issue("myapp-host.example.org", name="myapp.host")
        self.pki.issue("other-host.example.org", name="other.host")
        self.pki.issue("bad-host.example.org", name="bad.host")
        self.pki.revoke("bad.host")
        self.pki.write_crl()
        self.rogue = make_pki(self.mktemp(), cn="rogue CA")
        self.rogue.issue("myapp-host.example.org", name="myapp.host")

    def ours(self, **kw):
        cfg = {
            "ssldir": self.pki.directory,
            "certname": "myapp.host",
            "ca_cert_location": self.pki.ca_cert_path,
            "crl_location": self.pki.crl_path,
        }
        cfg.update(kw)
        return from_dict(cfg)

    def peer_config(self, **kw):
        cfg = {
            "ssldir": self.pki.directory,
            "ca_cert_location": self.pki.ca_cert_path,
            "crl_location": self.pki.crl_path,
            "crypto_backend": "x509",
            "crypto_validate_backends": ["x509"],
        }
        cfg.update(kw)
        return cfg

    def validator(self, **kw):
        return Validator.from_config(self.ours(**kw), clock=wall_clock())

    @defer.inlineCallbacks
    def test_ours_validate_in_fedmsg(self):
        signer = Signer.from_config(self.ours())
        good = [signer.sign(envelope(i)) for i in range(3)]
        good.append(signer.sign(envelope(4, msg={})))
        tampered = dict(good[0], msg={"a": "evil"})
        float_ts = dict(good[0], timestamp=1795800215.0)
        seq = dict(good[0], seq_id=1)
        forged = dict(Signer.from_config(self.ours(certname="other.host")).sign(envelope()),
                      certificate=good[0]["certificate"])
        revoked = Signer.from_config(self.ours(certname="bad.host")).sign(envelope())
        from fedmsg_twisted.crypto.x509 import X509Signer

        foreign = X509Signer(self.rogue.directory, "myapp.host").sign(envelope())
        cases = good + [tampered, float_ts, seq, forged, revoked, foreign]
        expected = [True] * len(good) + [False] * 6
        results = yield self.peer(self.peer_config(), [{"op": "validate", "msg": m} for m in cases])
        self.assertEqual(results, expected)
        ours = [self.validator().validate(json.loads(json.dumps(m))).ok for m in cases]
        self.assertEqual(ours, expected)

    @defer.inlineCallbacks
    def test_fedmsg_signed_validate_with_ours(self):
        ops = [
            {"op": "sign", "msg": envelope(i), "config": {"certname": "myapp.host"}} for i in range(3)
        ] + [{"op": "sign", "msg": envelope(), "config": {"certname": "bad.host"}}]
        signed = yield self.peer(self.peer_config(), ops)
        v = self.validator()
        for m in signed[:3]:
            self.assertEqual(m["crypto"], "x509")
            verdict = v.validate(m)
            self.assertTrue(verdict.ok, verdict)
            self.assertEqual(verdict.signer, "myapp-host.example.org")
            # Byte-identical to what we produce for the same envelope and key.
            ours = Signer.from_config(self.ours()).sign({k: x for k, x in m.items()
                                                         if k not in ("signature", "certificate", "crypto")})
            self.assertEqual(ours, m)
        self.assertEqual(v.validate(dict(signed[0], msg={"a": "evil"})).reason, "bad-signature")
        self.assertEqual(v.validate(signed[3]).reason, "revoked")

    @defer.inlineCallbacks
    def test_policy_agrees(self):
        signer = Signer.from_config(self.ours())
        msg = signer.sign(envelope())
        policies = [
            ({TOPIC: ["myapp-host.example.org"]}, False, True),
            ({TOPIC: ["other-host.example.org"]}, False, False),
            ({"some.other.topic": ["x"]}, False, True),
            ({"some.other.topic": ["x"]}, True, False),
        ]
        ops = [
            {"op": "validate", "msg": msg, "config": {"routing_policy": p, "routing_nitpicky": n}}
            for p, n, _ in policies
        ]
        results = yield self.peer(self.peer_config(), ops)
        expected = [e for _, _, e in policies]
        self.assertEqual(results, expected)
        ours = [
            self.validator(routing_policy=p, routing_nitpicky=n).validate(msg).ok for p, n, _ in policies
        ]
        self.assertEqual(ours, expected)


class GpgInteropTests(PeerMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.sign_home, self.validate_home, self.fprs = yield defer.Deferred.fromCoroutine(
            make_gpg_homes(self, n_keys=2, trusted=1)
        )

    @defer.inlineCallbacks
    def test_ours_validate_in_fedmsg(self):
        good = yield GpgSigner(self.sign_home, self.fprs[0]).sign_async(envelope())
        unknown = yield GpgSigner(self.sign_home, self.fprs[1]).sign_async(envelope())
        tampered = dict(good, msg={"a": "evil"})
        cases = [good, tampered, unknown]
        results = yield self.peer(
            {"gpg_home": self.validate_home, "crypto_validate_backends": ["gpg"]},
            [{"op": "validate", "msg": json.loads(json.dumps(m))} for m in cases],
        )
        self.assertEqual(results, [True, False, False])

    @defer.inlineCallbacks
    def test_fedmsg_signed_validate_with_ours(self):
        signed = yield self.peer(
            {"gpg_home": self.sign_home, "gpg_signing_key": self.fprs[0]},
            [{"op": "gpg-sign", "msg": envelope()}],
        )
        v = Validator.from_config(
            from_dict({"crypto_validate_backends": ["gpg"], "gpg_home": self.validate_home})
        )
        verdict = yield v.validate_async(signed[0])
        self.assertTrue(verdict.ok, verdict)
        self.assertEqual(verdict.signer, self.fprs[0])
        verdict = yield v.validate_async(dict(signed[0], msg={"a": "evil"}))
        self.assertEqual(verdict.reason, "bad-signature")
