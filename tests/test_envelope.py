import re

from twisted.trial import unittest

from fedmsg_twisted import config
from fedmsg_twisted.envelope import Envelopes, build_topic, guess_calling_module


class TopicTests(unittest.TestCase):
    def test_prefix_env_modname_topic(self):
        self.assertEqual(build_topic("org.debian", "prod", "dak", "upload.accepted"), "org.debian.prod.dak.upload.accepted")

    def test_modname_with_prefix_bypasses(self):
        # fedmsg's rule: only a modname.topic already starting with the prefix is kept.
        self.assertEqual(build_topic("org.debian", "dev", "org.debian.stg.x", "y"), "org.debian.stg.x.y")

    def test_full_topic_as_topic_is_double_prefixed(self):
        self.assertEqual(build_topic("org.d", "dev", "m", "org.d.dev.m.t"), "org.d.dev.m.org.d.dev.m.t")

    def test_guess_module(self):
        # Called from this test module, whose top-level package is "tests".
        self.assertEqual(guess_calling_module(), "tests")


class EnvelopeTests(unittest.TestCase):
    def setUp(self):
        self.env = Envelopes(config.from_dict({"topic_prefix": "org.debian", "environment": "stg"}), now=lambda: 1700000000.7)

    def test_fields(self):
        e = self.env.make(topic="log", msg={"a": 1}, modname="logger")
        self.assertEqual(set(e), {"topic", "msg", "msg_id", "i", "timestamp", "username"})
        self.assertEqual(e["topic"], "org.debian.stg.logger.log")
        self.assertEqual(e["timestamp"], 1700000000)
        self.assertIsInstance(e["timestamp"], int)
        self.assertRegex(e["msg_id"], r"^\d{4}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        self.assertIsInstance(e["username"], str)

    def test_counter_and_unique_ids(self):
        a = self.env.make(msg={"x": 1}, modname="m")
        b = self.env.make(msg={"x": 1}, modname="m")
        self.assertEqual((a["i"], b["i"]), (1, 2))
        self.assertNotEqual(a["msg_id"], b["msg_id"])

    def test_defaults(self):
        e = self.env.make(msg=None, modname="m")
        self.assertEqual(e["msg"], {})
        self.assertEqual(e["topic"], "org.debian.stg.m.unspecified")
