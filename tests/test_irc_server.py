"""
The IRC bot against a real IRC server (Debian's ngircd) on loopback.

A raw client joins the channel first (so it is channel operator), then the
bot connects; the tests assert on the exact lines the raw client receives.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from fedmsg_twisted import irc
from fedmsg_twisted.config import from_dict
from tests.ircserver import NgircdServer, have_ngircd, raw_client
from tests.util import sleep, wait_for

CHANNEL = "#fedmsg"


def envelope(topic: str, msg, **extra) -> dict:
    e = {"topic": topic, "msg": msg, "timestamp": 1700000000.0, "msg_id": "2026-x", "i": 1, "username": "ralph"}
    e.update(extra)
    return e


def coroutine(f):
    def wrapper(*a, **k):
        return defer.Deferred.fromCoroutine(f(*a, **k))

    wrapper.__name__ = f.__name__
    return wrapper


class ServerTestsMixin:
    if not have_ngircd():
        skip = "ngircd is not installed (apt-get install -y ngircd)"

    async def start_server(self, **kw) -> NgircdServer:
        self.server = NgircdServer(self, **kw)
        await self.server.start()
        return self.server

    def start_bot(self, **entry) -> irc.IRCBotService:
        base = {
            "network": "127.0.0.1",
            "port": self.server.port,
            "nickname": "fedbot",
            "channel": CHANNEL,
            "make_terse": True,
            "line_rate": 0.0,
            "ping_interval": 5,
            "ping_timeout": 12,
        }
        base.update(entry)
        config = from_dict({"irc": [base], "topic_prefix": "org.fedoraproject"})
        bot = irc.IRCBotService(config, subscribe=False)
        bot.startService()
        self.addCleanup(bot.stopService)
        self.bot = bot
        return bot

    async def bot_in_channel(self, watcher, nick: str = "fedbot", channel: str = CHANNEL) -> None:
        await wait_for(lambda: watcher.has_joined(nick, channel), what=f"{nick} in {channel}")
        # The bot asks MODE after joining; let it learn the modes.
        net = self.bot.networks[0]
        await wait_for(lambda: net.protocol is not None and channel.lower() in net.protocol.joined_channels, what="bot joined")


class AnnounceTests(ServerTestsMixin, unittest.TestCase):
    @coroutine
    async def test_terse_line_reaches_channel(self):
        """
        A published message appears as one NOTICE with fedmsg's terse text.
        """
        await self.start_server()
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join(CHANNEL)
        self.start_bot()
        await self.bot_in_channel(watcher)
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "hello world"}))
        await wait_for(lambda: watcher.said(CHANNEL), what="a line")
        self.assertEqual(watcher.said(CHANNEL), [("fedbot", "NOTICE", "logger.log -- hello world (ralph)")])
