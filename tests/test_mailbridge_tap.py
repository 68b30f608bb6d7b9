"""
C{twistd fedmsg-mailbridge} options and the service tree they build.
"""

from __future__ import annotations

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.python import usage
from twisted.trial import unittest

from fedmsg_twisted.mailbridge import MailBridge, MaildirWatcher
from fedmsg_twisted.mailbridge_tap import DEFAULT_LISTEN, Options, makeService


class OptionsTests(unittest.TestCase):
    def config(self, text: str = "") -> str:
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        o = Options()
        o.parseOptions(["--config", self.config(), "--state-dir", "/tmp/x"])
        self.assertEqual(o["listen"], DEFAULT_LISTEN)
        self.assertIsNone(o["maildir"])
        self.assertEqual(o["state-dir"], "/tmp/x")

    def test_nothing_to_read_from(self) -> None:
        e = self.assertRaises(usage.UsageError, Options().parseOptions,
                              ["--config", self.config(), "--listen", "none"])
        self.assertIn("--maildir", str(e))

    def test_bad_size(self) -> None:
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          ["--config", self.config(), "--max-mail-size", "lots"])

    def test_tree(self) -> None:
        o = Options()
        maildir = self.mktemp()
        o.parseOptions(["--config", self.config(), "--maildir", maildir, "--state-dir", self.mktemp(),
                        "--listen", "tcp:0:interface=127.0.0.1", "--max-body", "123"])
        top = makeService(o)
        kinds = [type(s).__name__ for s in top]
        self.assertEqual(kinds, ["PublisherService", "MailBridge"])  # publisher stops last
        bridge = list(top)[1]
        self.assertIsInstance(bridge, MailBridge)
        self.assertEqual(bridge.max_body, 123)
        children = list(bridge)
        self.assertIsInstance(children[0], MaildirWatcher)
        self.assertEqual(children[0].path, os.path.abspath(maildir))
        self.assertIsInstance(children[1], StreamServerEndpointService)
