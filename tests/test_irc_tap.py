"""
C{twistd ircbot} options and the service tree they build.
"""

from __future__ import annotations

from twisted.python import usage
from twisted.trial import unittest

from fedmsg_twisted.health import HealthService, TrackedSubscriberService
from fedmsg_twisted.irc import IRCBotService
from fedmsg_twisted.irc_tap import Options, makeService

ENTRY = '[[irc]]\nnetwork = "127.0.0.1"\nchannel = "#a"\n'


class OptionsTests(unittest.TestCase):
    def config(self, text: str) -> str:
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_no_networks(self):
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", self.config("")])
        self.assertIn("no IRC networks configured", str(e))

    def test_bad_entry(self):
        e = self.assertRaises(usage.UsageError, Options().parseOptions,
                              ["--config", self.config('[[irc]]\nchannel = "#a"\nline_rate = "fast"\n')])
        self.assertEqual(str(e), "irc[0]: key 'line_rate' must be a number >= 0; got 'fast'")

    def test_tree(self):
        o = Options()
        o.parseOptions(["--config", self.config(ENTRY)])
        top = makeService(o)
        (bot,) = list(top)
        self.assertIsInstance(bot, IRCBotService)
        self.assertIsInstance(bot.subscriber, TrackedSubscriberService)
        self.assertEqual([n.settings.network for n in bot.networks], ["127.0.0.1"])

    def test_tree_with_health(self):
        o = Options()
        o.parseOptions(["--config", self.config(ENTRY), "--health-listen", "tcp:0:interface=127.0.0.1"])
        top = makeService(o)
        self.assertEqual([type(s) for s in top], [IRCBotService, HealthService])
