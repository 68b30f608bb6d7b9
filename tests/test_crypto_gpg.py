"""
GnuPG signing and validation with the real gpg and throwaway keys.

The gpg homes live in short directories under /tmp, not in self.mktemp():
gpg-agent's socket path must fit in a sockaddr_un (~107 bytes), which trial's
nested temp paths exceed.  Each home's agent is killed at cleanup.
"""

from __future__ import annotations

import base64
import shutil
import tempfile

from twisted.internet import defer, threads, utils
from twisted.trial import unittest

from fedmsg_twisted.config import ConfigError, from_dict
from fedmsg_twisted.crypto import AsyncRequired, Signer, Validator
from fedmsg_twisted.crypto.gpg import GpgSigner

TOPIC = "org.example.dev.myapp.thing.happened"


def envelope(**extra):
    env = {
        "topic": TOPIC,
        "msg": {"a": "h\u00e9llo \u2603", "b": 2},
        "msg_id": "2026-4bc8e87f-f504-4487-8645-ea99080df196",
        "i": 1,
        "timestamp": 1795800215,
        "username": "root",
    }
    env.update(extra)
    return env


def _make_home_blocking(n_keys: int) -> tuple[str, list[str], list[bytes]]:
    import gnupg

    home = tempfile.mkdtemp(prefix="fmt-gpg-", dir="/tmp")
    gpg = gnupg.GPG(gnupghome=home)
    fingerprints, public = [], []
    for i in range(n_keys):
        spec = gpg.gen_key_input(
            key_type="EDDSA",
            key_curve="ed25519",
            key_usage="sign",
            name_real=f"fedmsg test key {i}",
            name_email=f"key{i}@example.org",
            expire_date=0,
            no_protection=True,
        )
        key = gpg.gen_key(spec)
        if not key.fingerprint:
            raise RuntimeError(f"gpg key generation failed: {key.stderr}")
        fingerprints.append(key.fingerprint)
        public.append(gpg.export_keys(key.fingerprint).encode("ascii"))
    return home, fingerprints, public


def _import_blocking(home: str, keys: list[bytes]) -> None:
    import gnupg

    gpg = gnupg.GPG(gnupghome=home)
    for k in keys:
        result = gpg.import_keys(k)
        if not result.count:
            raise RuntimeError(f"gpg import failed: {result.stderr}")


async def make_gpg_homes(testcase, n_keys: int = 3, trusted: int = 2):
    """
    A signing home with C{n_keys} secret keys, and a validating home that
    holds the public halves of the first C{trusted} of them.

    Returns (sign_home, validate_home, fingerprints).  Blocking gpg work runs
    in a thread; agents and directories are removed at cleanup.
    """
    sign_home, fprs, public = await threads.deferToThread(_make_home_blocking, n_keys)
    testcase.addCleanup(_remove_home, sign_home)
    validate_home = tempfile.mkdtemp(prefix="fmt-gpgv-", dir="/tmp")
    testcase.addCleanup(_remove_home, validate_home)
    await threads.deferToThread(_import_blocking, validate_home, public[:trusted])
    return sign_home, validate_home, fprs


@defer.inlineCallbacks
def _remove_home(home: str):
    yield utils.getProcessValue("/usr/bin/gpgconf", ["--homedir", home, "--kill", "all"])
    shutil.rmtree(home, ignore_errors=True)


class GpgTestCase(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.sign_home, self.validate_home, self.fprs = yield defer.Deferred.fromCoroutine(
            make_gpg_homes(self)
        )

    def config(self, **kw):
        base = {
            "crypto_backend": "gpg",
            "crypto_validate_backends": ["gpg"],
            "gpg_home": self.sign_home,
            "gpg_signing_key": self.fprs[0],
        }
        base.update(kw)
        return from_dict(base)

    def validator(self, **kw):
        kw.setdefault("gpg_home", self.validate_home)
        return Validator.from_config(self.config(**kw))

    def sign(self, key_index=0, env=None):
        signer = GpgSigner(self.sign_home, self.fprs[key_index])
        return signer.sign_async(env or envelope())

    @defer.inlineCallbacks
    def test_sign_format(self):
        signed = yield self.sign()
        self.assertEqual(signed["crypto"], "gpg")
        self.assertNotIn("certificate", signed)
        self.assertIsInstance(signed["signature"], str)  # fedmsg #506: bytes on py3
        self.assertNotIn("\n", signed["signature"])
        raw = base64.b64decode(signed["signature"], validate=True)
        self.assertFalse(raw.startswith(b"-----"))  # binary, not armored

    @defer.inlineCallbacks
    def test_valid(self):
        signed = yield self.sign()
        verdict = yield self.validator().validate_async(signed)
        self.assertTrue(verdict.ok, verdict)
        self.assertEqual(verdict.signer, self.fprs[0])

    @defer.inlineCallbacks
    def test_gpg_runs_off_the_reactor(self):
        """
        Signing and verifying return unfired Deferreds: gpg runs in a thread.
        """
        d = self.sign()
        self.assertNoResult(d)
        signed = yield d
        d = self.validator().validate_async(signed)
        self.assertNoResult(d)
        verdict = yield d
        self.assertTrue(verdict.ok)

    @defer.inlineCallbacks
    def test_only_msg_is_signed(self):
        """
        As in fedmsg, only msg is covered: the topic may change, msg may not.
        """
        signed = yield self.sign()
        v = self.validator()
        verdict = yield v.validate_async(dict(signed, topic="other.topic", timestamp=1.5))
        self.assertTrue(verdict.ok)
        verdict = yield v.validate_async(dict(signed, msg={"a": "evil"}))
        self.assertEqual(verdict.reason, "bad-signature")
        # A bad signature only tells its long key id, not the fingerprint.
        self.assertTrue(self.fprs[0].endswith(verdict.signer), verdict)

    @defer.inlineCallbacks
    def test_unknown_key(self):
        signed = yield self.sign(key_index=2)
        verdict = yield self.validator().validate_async(signed)
        self.assertEqual(verdict.reason, "unknown-ca")
        self.assertTrue(self.fprs[2].endswith(verdict.signer), verdict)

    @defer.inlineCallbacks
    def test_malformed(self):
        v = self.validator()
        for sig, why in (("%%%", "not base64"), (base64.b64encode(b"garbage").decode(), "not a gpg sig"), (7, "int")):
            verdict = yield v.validate_async(envelope(crypto="gpg", signature=sig))
            self.assertIn(verdict.reason, ("malformed",), (why, verdict))
        verdict = yield v.validate_async(envelope(crypto="gpg"))
        self.assertEqual(verdict.reason, "unsigned")

    @defer.inlineCallbacks
    def test_policy_binds_fingerprints(self):
        signed = yield self.sign()
        other = yield self.sign(key_index=1)
        v = self.validator(routing_policy={TOPIC: [self.fprs[0]]})
        verdict = yield v.validate_async(signed)
        self.assertTrue(verdict.ok)
        verdict = yield v.validate_async(other)
        self.assertEqual((verdict.reason, verdict.signer), ("policy", self.fprs[1]))
        # Spaced, lower-case fingerprints in the config match too.
        spaced = " ".join(self.fprs[0][i:i + 4] for i in range(0, 40, 4)).lower()
        verdict = yield self.validator(routing_policy={TOPIC: [spaced]}).validate_async(signed)
        self.assertTrue(verdict.ok)
        verdict = yield self.validator(routing_nitpicky=True).validate_async(signed)
        self.assertEqual(verdict.reason, "policy")
        verdict = yield v.validate_signed_by(other, self.fprs[1])
        self.assertTrue(verdict.ok)

    @defer.inlineCallbacks
    def test_sync_validate_refuses_gpg(self):
        signed = yield self.sign()
        v = self.validator()
        self.assertRaises(AsyncRequired, v.validate, signed)
        # Cheap rejections still answer synchronously.
        self.assertEqual(v.validate(envelope(crypto="gpg", signature="%")).reason, "malformed")

    @defer.inlineCallbacks
    def test_x509_not_allowed(self):
        signed = yield self.sign()
        v = self.validator()
        verdict = v.validate(dict(signed, crypto="x509", certificate="AAAA"))
        self.assertEqual(verdict.reason, "backend-not-allowed")

    def test_signer_from_config(self):
        s = Signer.from_config(self.config())
        self.assertEqual(s.fingerprint, self.fprs[0])
        s = Signer.from_config(self.config(gpg_signing_key=None, gpg_keys={"box1": self.fprs[1]}), hostname="box1")
        self.assertEqual(s.fingerprint, self.fprs[1])
        e = self.assertRaises(
            ConfigError, Signer.from_config, self.config(gpg_signing_key=None), hostname="box2"
        )
        self.assertIn("gpg_keys['box2']", str(e))
        e = self.assertRaises(ConfigError, Signer.from_config, self.config(gpg_home="/nonexistent/x"))
        self.assertIn("gpg_home", str(e))

    @defer.inlineCallbacks
    def test_signing_failure_is_an_error(self):
        from fedmsg_twisted.crypto.gpg import GpgError

        signer = GpgSigner(self.validate_home, self.fprs[0])  # public key only
        yield self.assertFailure(signer.sign_async(envelope()), GpgError)
