"""
The IRC bot against a real IRC server (Debian's ngircd) on loopback.

A raw client joins the channel first (so it is channel operator), then the
bot connects; the tests assert on the exact lines the raw client receives.
"""

from __future__ import annotations

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
    async def setup_channel(self, **entry):
        await self.start_server()
        self.watcher = await raw_client(self, self.server.port, "watcher")
        for c in entry.pop("_join", [CHANNEL]):
            await self.watcher.join(c)
        self.start_bot(**entry)
        await self.bot_in_channel(self.watcher)
        return self.watcher

    async def test_terse_line_reaches_channel(self):
        """
        A message appears as one NOTICE with fedmsg's terse text.
        """
        watcher = await self.setup_channel()
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "hello world"}))
        await wait_for(lambda: watcher.said(CHANNEL), what="a line")
        self.assertEqual(watcher.said(CHANNEL), [("fedbot", "NOTICE", "logger.log -- hello world (ralph)")])

    async def test_pretty_privmsg_and_unknown_message(self):
        """
        make_pretty colours the title (two-digit codes) and the link; with
        irc_method msg lines are PRIVMSGs; a message no processor knows
        still gets a useful line; non-terse mode shows topic and JSON.
        """
        await self.start_server()
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join(CHANNEL)
        base = {"network": "127.0.0.1", "port": self.server.port, "nickname": "fedbot", "channel": CHANNEL,
                "line_rate": 0.0, "make_terse": True, "make_pretty": True}
        config = from_dict({"irc": [base, dict(base, nickname="rawbot", make_terse=False, make_pretty=False)],
                            "irc_method": "msg"})
        self.bot = irc.IRCBotService(config, subscribe=False)
        self.bot.startService()
        self.addCleanup(self.bot.stopService)
        for net, nick in zip(self.bot.networks, ("fedbot", "rawbot")):
            await wait_for(lambda: net.protocol is not None and CHANNEL in net.protocol.joined_channels, what=nick)
        await self.bot.announce(envelope("org.fedoraproject.dev.announce.announcement",
                                         {"message": "GOLD", "link": "https://l.example/x"}))
        await self.bot.announce(envelope("org.debian.prod.tracker.new", {"source": "hello", "version": "2.10-3"}))
        await wait_for(lambda: len(watcher.said(CHANNEL)) == 4, what="four lines")
        got = sorted(watcher.said(CHANNEL))
        self.assertEqual(
            got,
            [
                ("fedbot", "PRIVMSG", "\x0315announce.announcement\x03 -- GOLD \x0310https://l.example/x\x03"),
                ("fedbot", "PRIVMSG", "\x0315tracker.new\x03 -- source=hello version=2.10-3"),
                ("rawbot", "PRIVMSG", 'org.debian.prod.tracker.new    {"i":1,"msg":{"source":"hello","version":"2.10-3"},'
                                      '"msg_id":"2026-x","timestamp":1700000000.0,"username":"ralph"}'),
                ("rawbot", "PRIVMSG", 'org.fedoraproject.dev.announce.announcement {"i":1,"msg":{"link":"https://l.example/x",'
                                      '"message":"GOLD"},"msg_id":"2026-x","timestamp":1700000000.0,"username":"ralph"}'),
            ],
        )

    async def test_channels_include_and_filters(self):
        """
        Several channels on one connection; a channel's include list picks
        its topics; fedmsg's exclusion regexes (topic and body) drop messages.
        """
        await self.start_server()
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join("#all")
        await watcher.join("#tracker")
        self.start_bot(channel="all", channels=[{"name": "#tracker", "include": ["tracker.*", "org.debian.prod.ftp"]}],
                       filters={"topic": ["secret"], "body": ["'private': True"]})
        await self.bot_in_channel(watcher, channel="#all")
        await self.bot_in_channel(watcher, channel="#tracker")
        for e in [
            envelope("org.debian.prod.tracker.new", {"source": "a"}),
            envelope("org.debian.prod.secret.thing", {"source": "b"}),
            envelope("org.debian.prod.git.push", {"source": "c", "private": True}),
            envelope("org.debian.prod.ftp.sync", {"source": "d"}),
            envelope("org.debian.prod.ftpmaster.x", {"source": "e"}),
        ]:
            await self.bot.announce(e)
        await wait_for(lambda: len(watcher.said()) == 5, what="five lines")
        await sleep(0.2)
        self.assertEqual(
            [t for _, _, t in watcher.said("#all")],
            ["tracker.new -- source=a", "ftp.sync -- source=d", "ftpmaster.x -- source=e"],
        )
        self.assertEqual([t for _, _, t in watcher.said("#tracker")], ["tracker.new -- source=a", "ftp.sync -- source=d"])

    async def test_long_line_split_without_breaking_utf8(self):
        """
        A line longer than IRC's 512 bytes is split at spaces into valid
        UTF-8 lines that the server relays whole.
        """
        watcher = await self.setup_channel()
        words = " ".join(["\u00e9t\u00e9\u2603"] * 75)  # 75 * 9 bytes + spaces > 512, < 400 characters
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": words}, username="u"))
        await wait_for(lambda: len(watcher.said(CHANNEL)) == 2, what="two lines")
        raw = [l for l in watcher.raw if b" NOTICE #fedmsg :" in l]
        for line in raw:
            self.assertLessEqual(len(line) + 2, 512)
            line.decode("utf-8")  # strict: no character was cut
        texts = [t for _, _, t in watcher.said(CHANNEL)]
        self.assertEqual(" ".join(texts), f"logger.log -- {words} (u)")

    async def test_flood_burst_is_bounded_and_summarised(self):
        """
        500 messages at once: the queue keeps the newest queue_size lines,
        one line says how many were dropped, and the server never
        disconnects the bot for flooding.
        """
        watcher = await self.setup_channel(queue_size=10, line_rate=0.25)
        proto = self.bot.networks[0].protocol
        for n in range(500):
            self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": f"m{n}"}, username="u"))
        await wait_for(lambda: len(watcher.said(CHANNEL)) == 11, what="eleven lines", timeout=20)
        await sleep(0.5)
        self.assertEqual(
            [t for _, _, t in watcher.said(CHANNEL)],
            ["*** flood control: 490 older messages dropped"] + [f"logger.log -- m{n} (u)" for n in range(490, 500)],
        )
        self.assertIs(self.bot.networks[0].protocol, proto)
        self.assertFalse([l for l in watcher.lines if "QUIT" in l and "fedbot" in l])
        self.assertEqual(self.bot.stats.get("dropped", "flood"), 490)

    async def test_malformed_and_non_utf8(self):
        """
        A malformed bus message is skipped and counted; a latin-1 line from
        another user does not drop the bot's connection.
        """
        watcher = await self.setup_channel()
        proto = self.bot.networks[0].protocol
        await self.bot.announce(["not", "an", "envelope"])
        await self.bot.announce({"msg": "no topic"})
        self.assertEqual(self.bot.stats.get("dropped", "malformed"), 2)
        watcher.send(b"PRIVMSG #fedmsg :caf\xe9 cr\xe8me")
        watcher.send(b"PRIVMSG fedbot :\xff\xfe")
        await sleep(0.3)
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "still here"}))
        await wait_for(lambda: watcher.said(CHANNEL, "NOTICE"), what="a line")
        self.assertEqual(watcher.said(CHANNEL, "NOTICE"), [("fedbot", "NOTICE", "logger.log -- still here (ralph)")])
        self.assertIs(self.bot.networks[0].protocol, proto)


class ResilienceTests(ServerTestsMixin, unittest.TestCase):
    async def test_reconnects_after_server_restart(self):
        """
        The server dies and comes back on the same port: the bot reconnects,
        rejoins, and delivers what was announced while it was away.
        """
        await self.start_server()
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join(CHANNEL)
        self.start_bot()
        health = irc.IRCBotHealth(self.bot)
        await self.bot_in_channel(watcher)
        self.assertTrue(health.is_ready())
        net = self.bot.networks[0]
        await self.server.stop()
        await wait_for(lambda: net.protocol is None, what="bot noticed")
        self.assertFalse(health.is_ready())
        self.assertTrue(health.is_live())
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "while away"}))
        self.assertEqual(health.gauges()["irc_queued_lines"], {net.settings.name: 1})
        await self.server.start()
        watcher2 = await raw_client(self, self.server.port, "watcher2")
        await watcher2.join(CHANNEL)
        await wait_for(lambda: watcher2.said(CHANNEL), what="the held line", timeout=20)
        self.assertEqual(watcher2.said(CHANNEL), [("fedbot", "NOTICE", "logger.log -- while away (ralph)")])
        self.assertTrue(health.is_ready())

    async def test_nick_collision_and_regain(self):
        """
        The nick is taken: the bot registers as nick_, and takes its nick
        back when the holder changes nick.
        """
        await self.start_server()
        holder = await raw_client(self, self.server.port, "fedbot")
        await holder.join(CHANNEL)
        self.start_bot()
        await self.bot_in_channel(holder, nick="fedbot_")
        net = self.bot.networks[0]
        self.assertEqual(net.protocol.nickname, "fedbot_")
        holder.send("NICK somebody")
        await wait_for(lambda: net.protocol.nickname == "fedbot", what="nick regained")
        await wait_for(lambda: any(l.startswith(":fedbot_!") and " NICK " in l for l in holder.lines), what="NICK seen")

    async def test_kick_and_ban_then_rejoin(self):
        """
        Kicked: logged, rejoined after rejoin_delay.  Banned: the bot keeps
        trying with back-off and is back once the ban is lifted.
        """
        await self.start_server()
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join(CHANNEL)
        self.start_bot(rejoin_delay=0.2)
        await self.bot_in_channel(watcher)
        net = self.bot.networks[0]
        watcher.send(f"KICK {CHANNEL} fedbot :go away")
        await wait_for(lambda: CHANNEL not in net.protocol.joined_channels, what="kicked")
        await wait_for(lambda: CHANNEL in net.protocol.joined_channels, what="rejoined")
        watcher.send(f"MODE {CHANNEL} +b fedbot!*@*")
        watcher.send(f"KICK {CHANNEL} fedbot :banned")
        await wait_for(lambda: CHANNEL not in net.protocol.joined_channels, what="kicked again")
        await wait_for(lambda: net.protocol._rejoin_tries.get(CHANNEL, 0) >= 2, what="refused rejoins")
        self.assertNotIn(CHANNEL, net.protocol.joined_channels)
        watcher.send(f"MODE {CHANNEL} -b fedbot!*@*")
        await wait_for(lambda: CHANNEL in net.protocol.joined_channels, what="rejoined after unban", timeout=15)
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "back"}))
        await wait_for(lambda: watcher.said(CHANNEL), what="a line")
        self.assertEqual(watcher.said(CHANNEL), [("fedbot", "NOTICE", "logger.log -- back (ralph)")])


class AuthTests(ServerTestsMixin, unittest.TestCase):
    async def test_server_password(self):
        """
        The server password is sent; a wrong one never registers.
        """
        await self.start_server(password="s3cret")
        self.start_bot(password="wrong")
        net = self.bot.networks[0]
        await wait_for(lambda: net.failures >= 1, what="a refused registration")
        self.assertIsNone(net.protocol)
        await self.bot.stopService()
        self.start_bot(password="s3cret")
        p = await self.bot.networks[0].when_ready()
        self.assertEqual(p.nickname, "fedbot")

    async def test_tls_verified(self):
        """
        TLS with the configured CA and the server's name works; the wrong CA
        or the wrong name fails, and nothing is sent in clear.
        """
        await self.start_server(tls=True)
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join(CHANNEL)
        from tests.certs import make_pki

        other = make_pki(self.mktemp(), cn="another CA", crl=False)
        for expected, entry in [
            ("certificate verify failed", dict(ssl_ca=other.ca_cert_path)),
            ("DNSMismatch", dict(ssl_ca=self.server.certs["ca"], ssl_hostname="irc.example.org")),
        ]:
            self.start_bot(network="localhost", port=self.server.tls_port, ssl=True, **entry)
            net = self.bot.networks[0]
            await wait_for(lambda: net.failures >= 1, what="a refused TLS connection")
            self.assertIsNone(net.protocol)
            self.assertIn(expected, repr(net.last_failure.value))
            await self.bot.stopService()
        self.start_bot(network="localhost", port=self.server.tls_port, ssl=True, ssl_ca=self.server.certs["ca"])
        await self.bot_in_channel(watcher)
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "over tls"}))
        await wait_for(lambda: watcher.said(CHANNEL), what="a line")
        self.assertEqual(watcher.said(CHANNEL), [("fedbot", "NOTICE", "logger.log -- over tls (ralph)")])


class ServicesTests(ServerTestsMixin, unittest.TestCase):
    """
    SASL and NickServ against a real InspIRCd 3 with Atheme services.
    """

    from tests.ircserver import have_services

    if not have_services():
        skip = "inspircd and atheme-services are not installed (apt-get install -y inspircd atheme-services)"
    del have_services

    async def start_services(self):
        from tests.ircserver import ServicesServer

        self.server = ServicesServer(self)
        await self.server.start()

    async def test_sasl_plain(self):
        await self.start_services()
        await self.server.register("fedbot", "pw123456")
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join(CHANNEL)
        self.start_bot(sasl_password="pw123456")
        p = await self.bot.networks[0].when_ready()
        self.assertTrue(p.sasl_ok)
        self.assertEqual(p.account, "fedbot")
        await self.bot_in_channel(watcher)
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "authenticated"}))
        await wait_for(lambda: watcher.said(CHANNEL), what="a line")
        self.assertEqual(watcher.said(CHANNEL), [("fedbot", "NOTICE", "logger.log -- authenticated (ralph)")])

    async def test_sasl_failure_falls_back_to_nickserv(self):
        await self.start_services()
        await self.server.register("fedbot", "pw123456")
        self.start_bot(sasl_password="wrong-password", nickserv_password="pw123456")
        p = await self.bot.networks[0].when_ready()
        self.assertFalse(p.sasl_ok)
        await wait_for(lambda: p.account == "fedbot", what="identified through NickServ")
        self.flushLoggedErrors()

    async def test_nickserv_regain(self):
        """
        Someone sits on the bot's registered nick: the bot connects as
        fedbot_, identifies, and NickServ REGAIN gives it its nick back.
        """
        await self.start_services()
        squatter = await self.server.register("fedbot", "pw123456", stay=True)
        self.start_bot(nickserv_password="pw123456")
        net = self.bot.networks[0]
        p = await net.when_ready()
        self.assertEqual(p.nickname, "fedbot_")
        await wait_for(lambda: p.nickname == "fedbot", what="nick regained")
        self.assertEqual(p.account, "fedbot")
        await wait_for(lambda: any("has regained your nickname" in l for l in squatter.lines), what="squatter told")

    async def test_no_colours_in_plus_c_channel(self):
        """
        In a +c channel the server refuses coloured lines; the bot learns
        the mode after joining and sends plain text, and colours again
        once -c is set.
        """
        await self.start_services()
        watcher = await raw_client(self, self.server.port, "watcher")
        await watcher.join(CHANNEL)
        watcher.send(f"MODE {CHANNEL} +c")
        await wait_for(lambda: any(f" MODE {CHANNEL} " in l and l.endswith("+c") for l in watcher.lines), what="+c set")
        self.start_bot(make_pretty=True)
        # Queued before the bot is even connected: the first line it says
        # after joining must already know about +c.
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "plain"}))
        await self.bot_in_channel(watcher)
        net = self.bot.networks[0]
        await wait_for(lambda: watcher.said(CHANNEL), what="a line")
        watcher.send(f"MODE {CHANNEL} -c")
        await wait_for(lambda: CHANNEL not in net.protocol.no_colour, what="-c learnt")
        await self.bot.announce(envelope("org.fedoraproject.dev.logger.log", {"log": "colour"}))
        await wait_for(lambda: len(watcher.said(CHANNEL)) == 2, what="two lines")
        self.assertEqual(
            watcher.said(CHANNEL),
            [
                ("fedbot", "NOTICE", "logger.log -- plain (ralph)"),
                ("fedbot", "NOTICE", "\x0307logger.log\x03 -- colour (ralph)"),
            ],
        )
