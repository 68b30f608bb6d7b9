"""
Unit tests of the IRC bot's protocol, queue and configuration.

The protocol runs on a C{StringTransport} with a C{Clock}: the test plays
the server's side line by line, with the exact replies a server sends.  This
pins the exact wire exchange and the cases a real server cannot be made to
produce on demand: the +c channel mode (ngircd has no mode c), SASL payload
chunking, CAP NAK, dead links and timers without waiting.  The same features
run against real servers in tests/test_irc_server.py (ngircd; InspIRCd with
Atheme for SASL and NickServ).
"""

from __future__ import annotations

import base64

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from fedmsg_twisted import irc
from fedmsg_twisted.config import ConfigError, from_dict


def settings(**kw) -> irc.NetworkSettings:
    entry = {"network": "irc.example.org", "nickname": "fedbot", "channel": "#chan", "make_terse": True}
    entry.update(kw)
    return irc.parse_irc_entry(entry, "irc[0]")


class Harness:
    """
    A L{Network} (not started) and one connected L{BotProtocol}.
    """

    def __init__(self, **kw) -> None:
        self.clock = Clock()
        self.net = irc.Network(settings(**kw), reactor=MemoryReactorClock(), clock=self.clock)
        self.proto = irc.BotProtocol(self.net)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def sent(self) -> list[str]:
        lines = self.transport.value().decode("utf-8").split("\r\n")
        self.transport.clear()
        return [l for l in lines if l]

    def server(self, *lines: str | bytes) -> None:
        for line in lines:
            if isinstance(line, str):
                line = line.encode("utf-8")
            self.proto.dataReceived(line + b"\r\n")

    def welcome(self, nick: str = "fedbot") -> None:
        self.server(f":irc.example.org 001 {nick} :Welcome", f":irc.example.org 005 {nick} NICKLEN=30 :are supported")

    def join(self, channel: str = "#chan", nick: str = "fedbot", modes: str = "+nt") -> None:
        self.server(f":{nick}!u@h JOIN {channel}")
        if modes is not None:
            self.server(f":irc.example.org 324 {nick} {channel} {modes}")


class RegistrationTests(unittest.TestCase):
    def test_plain_registration_and_join(self):
        h = Harness(password="pw", channels=[{"name": "#b", "key": "k"}])
        self.assertEqual(h.sent(), ["PASS pw", "NICK fedbot", "USER fedbot foo bar :fedmsg-twisted IRC bot"])
        h.welcome()
        self.assertEqual(h.sent(), ["JOIN #chan", "JOIN #b k"])
        self.assertIs(h.net.protocol, h.proto)
        h.join()
        self.assertEqual(h.sent(), ["MODE #chan"])
        self.assertEqual(h.proto.joined_channels, {"#chan"})

    def test_sasl_plain(self):
        """
        IRCv3 SASL PLAIN: CAP REQ before NICK/USER, AUTHENTICATE PLAIN on
        ACK, the base64 credentials on "+", CAP END on 903; no NickServ
        IDENTIFY afterwards since we are logged in.
        """
        h = Harness(sasl_password="s3cret", nickserv_password="s3cret")
        self.assertEqual(h.sent(), ["CAP REQ :sasl", "NICK fedbot", "USER fedbot foo bar :fedmsg-twisted IRC bot"])
        h.server(":irc.example.org CAP * ACK :sasl")
        self.assertEqual(h.sent(), ["AUTHENTICATE PLAIN"])
        h.server("AUTHENTICATE +")
        self.assertEqual(h.sent(), ["AUTHENTICATE " + base64.b64encode(b"fedbot\0fedbot\0s3cret").decode()])
        h.server(
            ":irc.example.org 900 fedbot fedbot!u@h fedbot :You are now logged in as fedbot",
            ":irc.example.org 903 fedbot :SASL authentication successful",
        )
        self.assertEqual(h.sent(), ["CAP END"])
        self.assertIsNone(h.net.protocol)
        h.welcome()
        self.assertEqual(h.sent(), ["JOIN #chan"])
        self.assertTrue(h.proto.sasl_ok)

    def test_sasl_long_payload_is_chunked(self):
        h = Harness(sasl_username="acct", sasl_password="x" * 600)
        h.sent()
        h.server(":s CAP * ACK :sasl", "AUTHENTICATE +")
        lines = h.sent()[1:]
        payload = base64.b64encode(b"acct\0acct\0" + b"x" * 600).decode()
        self.assertEqual(lines, [f"AUTHENTICATE {payload[i:i + 400]}" for i in range(0, len(payload), 400)])
        self.assertTrue(all(len(l) <= 413 for l in lines))

    def test_sasl_refused_falls_back_to_nickserv(self):
        """
        CAP NAK or a failed SASL exchange still ends CAP negotiation, and
        NickServ IDENTIFY is used after the welcome.
        """
        for server_lines in (
            [":s CAP * NAK :sasl"],
            [":s CAP * ACK :sasl", "AUTHENTICATE +", ":s 904 fedbot :SASL authentication failed"],
        ):
            h = Harness(sasl_password="pw", nickserv_password="pw", nickserv_account="acct")
            h.sent()
            h.server(*server_lines)
            self.assertEqual(h.sent()[-1], "CAP END")
            h.welcome()
            self.assertEqual(h.sent(), ["PRIVMSG NickServ :IDENTIFY acct pw", "JOIN #chan"])
            self.flushLoggedErrors()

    def test_nick_in_use_then_regained_through_nickserv(self):
        h = Harness(nickserv_password="pw", regain_interval=30)
        h.sent()
        h.server(":s 433 * fedbot :Nickname is already in use")
        self.assertEqual(h.sent(), ["NICK fedbot_"])
        h.welcome("fedbot_")
        self.assertEqual(
            h.sent(),
            ["PRIVMSG NickServ :IDENTIFY fedbot pw", "JOIN #chan", "PRIVMSG NickServ :REGAIN fedbot", "NICK fedbot"],
        )
        # Still taken: we keep fedbot_ (no fedbot__) and try again later.
        h.server(":s 433 fedbot_ fedbot :Nickname is already in use")
        self.assertEqual(h.sent(), [])
        h.clock.advance(30)
        self.assertEqual(h.sent(), ["PRIVMSG NickServ :REGAIN fedbot", "NICK fedbot"])
        h.server(":fedbot_!u@h NICK :fedbot")
        self.assertEqual(h.proto.nickname, "fedbot")
        h.clock.advance(300)
        self.assertEqual(h.sent(), [])

    def test_nick_regained_when_holder_quits(self):
        h = Harness()
        h.sent()
        h.server(":s 433 * fedbot :in use")
        h.sent()
        h.welcome("fedbot_")
        h.sent()
        h.server(":fedbot!x@y QUIT :bye")
        self.assertEqual(h.sent(), ["NICK fedbot"])

    def test_renamed_by_services_then_regained(self):
        h = Harness(regain_interval=30, ping_interval=0)
        h.welcome()
        h.sent()
        h.server(":fedbot!u@h NICK :Guest12345")
        self.assertEqual(h.proto.nickname, "Guest12345")
        self.assertEqual(h.sent(), ["NICK fedbot"])
        h.clock.advance(30)
        self.assertEqual(h.sent(), ["NICK fedbot"])
        h.server(":Guest12345!u@h NICK :fedbot")
        h.clock.advance(60)
        self.assertEqual(h.sent(), [])

    def test_too_long_nick_is_shortened(self):
        h = Harness(nickname="averyverylongnick")
        h.sent()
        h.server(":s 433 * averyverylongnick :in use")
        h.server(":s 432 * averyverylongnick_ :Erroneous nickname")
        self.assertEqual(h.sent(), ["NICK averyverylongnick_", "NICK averyverylongnic2"])

    def test_registration_timeout(self):
        h = Harness(timeout=30)
        h.clock.advance(29)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(2)
        self.assertTrue(h.transport.disconnecting)
        self.flushLoggedErrors()


class RobustnessTests(unittest.TestCase):
    def test_non_utf8_lines_do_not_break_the_connection(self):
        h = Harness()
        h.welcome()
        h.join()
        h.sent()
        h.server(b":x!y@z PRIVMSG #chan :caf\xe9 \xff\xfe", b"PING :irc.example.org")
        self.assertEqual(h.sent(), ["PONG irc.example.org"])
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_dead_link_detected(self):
        """
        PINGs go out every ping_interval; when nothing at all has come back
        for ping_timeout the connection is aborted (ClientService reconnects).
        """
        h = Harness(ping_interval=60, ping_timeout=150)
        h.welcome()
        h.sent()
        h.clock.advance(60)
        self.assertEqual(h.sent(), ["PING irc.example.org"])
        h.server(":irc.example.org PONG irc.example.org :irc.example.org")
        h.clock.advance(60)
        h.clock.advance(60)
        self.assertEqual(h.sent(), ["PING irc.example.org", "PING irc.example.org"])
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(60)  # 180 s since the PONG
        self.assertTrue(h.transport.disconnecting)

    def test_kick_logged_and_rejoined(self):
        h = Harness(rejoin_delay=10, ping_interval=0)
        h.welcome()
        h.join()
        h.sent()
        from twisted.logger import capturedLogs, formatEvent

        with capturedLogs() as events:
            h.server(":op!u@h KICK #chan fedbot :spam")
        self.assertIn("kicked from #chan by op: spam", [formatEvent(e).split(": ", 1)[1] for e in events])
        self.assertEqual(h.proto.joined_channels, set())
        h.clock.advance(9)
        self.assertEqual(h.sent(), [])
        h.clock.advance(1)
        self.assertEqual(h.sent(), ["JOIN #chan"])
        # Banned: retries back off (20 s, then 40 s).
        h.server(":s 474 fedbot #chan :Cannot join channel (+b)")
        h.clock.advance(19)
        self.assertEqual(h.sent(), [])
        h.clock.advance(1)
        self.assertEqual(h.sent(), ["JOIN #chan"])
        h.server(":s 474 fedbot #chan :Cannot join channel (+b)")
        h.clock.advance(39)
        self.assertEqual(h.sent(), [])
        h.clock.advance(1)
        self.assertEqual(h.sent(), ["JOIN #chan"])
        h.join()
        self.assertEqual(h.proto.joined_channels, {"#chan"})

    def test_connection_lost_cancels_timers(self):
        h = Harness()
        h.welcome()
        h.join()
        h.server(":op!u@h KICK #chan fedbot :x")
        h.proto.connectionLost(Exception("gone"))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertIsNone(h.net.protocol)
        self.flushLoggedErrors()


def env(topic="org.fedoraproject.dev.logger.log", **msg) -> dict:
    return {"topic": topic, "msg": msg or {"log": "hi"}, "username": "u"}


class QueueTests(unittest.TestCase):
    def announce(self, h, e, config=None):
        from fedmsg_twisted import text

        layer = text.TextLayer(config or {})
        return h.net.announce(e, layer.text(e), text.raw_line(e))

    def test_colours_follow_channel_mode_c(self):
        """
        The bot asks MODE after joining; +c (at join, or set later) means
        plain text in that channel.
        """
        h = Harness(make_pretty=True, line_rate=1.0)
        h.welcome()
        h.join()
        h.sent()
        self.announce(h, env())
        h.clock.advance(0)
        self.assertEqual(h.sent(), ["NOTICE #chan :\x0307logger.log\x03 -- hi (u)"])
        h.server(":s 324 fedbot #chan +nc")
        h.clock.advance(1)
        self.announce(h, env())
        h.clock.advance(1)
        self.assertEqual(h.sent(), ["NOTICE #chan :logger.log -- hi (u)"])
        h.server(":op!u@h MODE #chan -c")
        self.announce(h, env())
        h.clock.advance(1)
        self.assertEqual(h.sent(), ["NOTICE #chan :\x0307logger.log\x03 -- hi (u)"])

    def test_nothing_said_before_modes_are_known(self):
        """
        After JOIN the bot waits for the channel's modes (324), so the very
        first line in a +c channel is already plain; a server that never
        answers MODE gets MODE_WAIT seconds.
        """
        h = Harness(make_pretty=True, channels=["#other"])
        h.sent()
        h.welcome()
        self.announce(h, env())
        h.join(modes=None)
        h.clock.advance(1)
        self.assertEqual(h.sent(), ["JOIN #chan", "JOIN #other", "MODE #chan"])
        h.server(":s 324 fedbot #chan +ntc")
        h.clock.advance(0)
        self.assertEqual(h.sent(), ["NOTICE #chan :logger.log -- hi (u)"])
        h.join("#other", modes=None)
        h.clock.advance(irc.MODE_WAIT - 0.5)
        self.assertEqual(h.sent(), ["MODE #other"])
        self.assertNotIn("#other", h.proto.joined_channels)
        h.clock.advance(0.5)
        self.assertIn("#other", h.proto.joined_channels)
        self.assertEqual(h.sent(), ["NOTICE #other :\x0307logger.log\x03 -- hi (u)"])

    def test_bounded_queue_drops_oldest_with_summary(self):
        h = Harness(queue_size=3, line_rate=2.0)
        for n in range(6):
            self.announce(h, env(log=f"m{n}"))
        h.welcome()
        h.join()
        h.sent()
        h.clock.advance(0)
        self.assertEqual(h.sent(), ["NOTICE #chan :*** flood control: 3 older messages dropped"])
        h.clock.advance(1.9)
        self.assertEqual(h.sent(), [])
        h.clock.advance(0.1)
        self.assertEqual(h.sent(), ["NOTICE #chan :logger.log -- m3 (u)"])
        h.clock.advance(2)
        h.clock.advance(2)
        self.assertEqual(h.sent(), ["NOTICE #chan :logger.log -- m4 (u)", "NOTICE #chan :logger.log -- m5 (u)"])
        h.clock.advance(2)
        self.assertEqual(h.sent(), [])
        self.assertEqual(h.net.stats.get("dropped", "flood"), 3)

    def test_lines_wait_for_join_and_channels_share_the_rate(self):
        h = Harness(channels=["#a", "#b"], line_rate=1.0)
        h.welcome()
        h.sent()
        self.announce(h, env(log="x"))
        h.clock.advance(5)
        self.assertEqual(h.sent(), [])  # not joined yet
        h.join("#a")
        h.join("#b")
        h.sent()
        h.clock.advance(0)
        h.clock.advance(1)
        self.assertEqual(h.sent(), ["NOTICE #a :logger.log -- x (u)", "NOTICE #b :logger.log -- x (u)"])

    def test_msg_method_and_split(self):
        h = Harness(method="msg", line_rate=1.0)
        h.welcome()
        h.join()
        h.sent()
        self.announce(h, env(log="\u00e9" * 390))
        h.clock.advance(0)
        lines = h.sent()
        self.assertEqual(len(lines), 2)
        for l in lines:
            self.assertTrue(l.startswith("PRIVMSG #chan :"))
            self.assertLessEqual(len(l.encode("utf-8")) + 2 + len(":fedbot!uuuuuuuuuu@" + "h" * 63 + " "), 512)
        # The second half waits for its turn.
        self.assertEqual(len(h.net.clock.getDelayedCalls()), 2)

    def test_shortener_used_and_order_kept(self):
        """
        make_short: links are shortened before queueing; a slow or failed
        shortener falls back to the long link and never reorders lines.
        """
        pending = {}

        def shortener(url, template, timeout):
            d = defer.Deferred()
            pending[url] = d
            return d

        clock = Clock()
        s = settings(make_short=True, line_rate=0.0)
        net = irc.Network(s, reactor=MemoryReactorClock(), clock=clock, shortener=shortener)
        from fedmsg_twisted import text

        layer = text.TextLayer({})
        e1 = {"topic": "x.y.z.announce.a", "msg": {"message": "one", "link": "https://long/1"}}
        e2 = {"topic": "x.y.z.announce.a", "msg": {"message": "two", "link": "https://long/2"}}
        net.announce(e1, layer.text(e1), "")
        net.announce(e2, layer.text(e2), "")
        pending["https://long/2"].callback(None)  # shortener gave up: the long link
        self.assertEqual(list(net.queues["#chan"].lines), [])  # waits for the first
        pending["https://long/1"].callback("https://s/1")
        self.assertEqual(
            [l.plain for l in net.queues["#chan"].lines],
            ["announce.a -- one https://s/1", "announce.a -- two https://long/2"],
        )
        # A burst: at most MAX_SHORTENING requests in flight, the rest keep
        # their long links (and still wait for their turn).
        pending.clear()
        for n in range(10):
            e = {"topic": "x.y.z.announce.a", "msg": {"message": f"b{n}", "link": f"https://long/b{n}"}}
            net.announce(e, layer.text(e), "")
        self.assertEqual(len(pending), irc.MAX_SHORTENING)
        for d in pending.values():
            d.callback(None)
        self.assertEqual(len(net.queues["#chan"].lines), 12)
        self.assertEqual(net.stats.get("shortener_skipped"), 10 - irc.MAX_SHORTENING)


class MalformedTests(unittest.TestCase):
    def test_malformed_skipped_with_a_log_line(self):
        from twisted.logger import capturedLogs, formatEvent

        cfg = from_dict({"irc": [{"network": "127.0.0.1", "channel": "#a"}]})
        bot = irc.IRCBotService(cfg, subscribe=False, reactor=MemoryReactorClock())
        with capturedLogs() as events:
            d1 = bot.announce(b"\xff not json")
            d2 = bot.announce({"topic": 42})
        self.assertTrue(d1.called and d2.called)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 2)
        self.assertTrue(all(l.startswith("skipping a malformed message") for l in lines), lines)
        self.assertEqual(bot.stats.get("dropped", "malformed"), 2)
        self.assertEqual(bot.networks[0].queued(), 0)


class SplitTests(unittest.TestCase):
    def test_split_utf8(self):
        self.assertEqual(irc.split_utf8("abc def", 100), ["abc def"])
        self.assertEqual(irc.split_utf8("", 10), [""])
        self.assertEqual(irc.split_utf8("aaaa bbbb cccc", 9), ["aaaa bbbb", "cccc"])
        parts = irc.split_utf8("\u2603" * 10, 7)
        self.assertEqual(parts, ["\u2603\u2603", "\u2603\u2603", "\u2603\u2603", "\u2603\u2603", "\u2603\u2603"])
        for p in irc.split_utf8("x" + "\u00e9" * 50, 11):
            self.assertLessEqual(len(p.encode()), 11)


class ConfigTests(unittest.TestCase):
    def test_fedmsg_entry_unchanged(self):
        s = irc.parse_irc_entry(
            {
                "network": "irc.libera.chat",
                "port": 6667,
                "ssl": False,
                "nickname": "fedmsg-bot",
                "channel": "fedora-fedmsg",
                "timeout": 120,
                "make_pretty": True,
                "make_terse": True,
                "make_short": True,
                "line_rate": 0.9,
                "filters": {"topic": ["koji"], "body": ["lub-dub"]},
            },
            "irc[0]",
        )
        self.assertEqual([c.name for c in s.channels], ["#fedora-fedmsg"])
        self.assertEqual(s.make_short, "https://da.gd/s?url={url}")
        self.assertEqual(s.line_rate, 0.9)
        self.assertEqual(s.port, 6667)
        self.assertEqual(irc.parse_irc_entry({"channel": "#a", "ssl": True}, "x").port, 6697)

    def test_errors_name_the_key(self):
        cases = [
            ({"channel": "#a", "nick": "x"}, "irc[0]: unknown key 'nick' (did you mean 'nickname'?)"),
            ({"channel": "#a", "ca": "x"}, "irc[0]: unknown key 'ca' (did you mean 'ssl_ca'?)"),
            ({"network": "x"}, "irc[0]: needs 'channel' or 'channels'"),
            ({"channel": "#a", "port": "6667"}, "irc[0]: key 'port' must be a port number (1-65535); got '6667'"),
            ({"channel": "#a", "filters": {"topic": ["("]}}, "irc[0]: key 'filters' must be valid regular expressions"),
            ({"channel": "#a", "ssl_ca": "/x"}, "irc[0]: key 'ssl_ca' needs ssl = true"),
            ({"channels": [{"nom": "#a"}]}, "irc[0]: key 'channels' must be a channel table with keys name, key, include"),
        ]
        for entry, message in cases:
            e = self.assertRaises(ConfigError, irc.parse_irc_entry, entry, "irc[0]")
            self.assertTrue(str(e).startswith(message), str(e))

    def test_service_needs_networks(self):
        e = self.assertRaises(ConfigError, irc.IRCBotService, from_dict({}), subscribe=False)
        self.assertIn("no IRC networks", str(e))

    def test_unreadable_ca(self):
        e = self.assertRaises(ConfigError, irc.make_endpoint, settings(ssl=True, ssl_ca="/nonexistent.pem"), None)
        self.assertIn("ssl_ca '/nonexistent.pem': cannot read", str(e))


class DocumentedConfigTests(unittest.TestCase):
    def test_docs_example_is_valid(self):
        """
        The full example in docs/ircbot.rst loads and every irc entry checks.
        """
        import os
        import re

        from fedmsg_twisted import config

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "docs", "ircbot.rst"), encoding="utf-8") as f:
            doc = f.read()
        block = re.search(r"\.\. code-block:: toml\n\n((?:   .*\n|\n)+)", doc).group(1)
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write("\n".join(l[3:] for l in block.splitlines()))
        cfg = config.load(path)
        nets = irc.parse_irc_config(cfg)
        self.assertEqual([n.network for n in nets], ["irc.oftc.net", "irc.libera.chat"])
        self.assertEqual([c.name for c in nets[0].channels], ["#debian-bus", "#debian-devel-changes-bus", "#debian-ftp"])
        self.assertEqual(nets[0].channels[2].include, ("dak.*",))
        self.assertEqual(nets[1].port, 6697)

    def test_fedmsg_d_ircbot_py_unchanged(self):
        """
        fedmsg's shipped fedmsg.d/ircbot.py, as a legacy config file.
        """
        from fedmsg_twisted import config

        path = self.mktemp() + ".py"
        with open(path, "w") as f:
            f.write(
                "config = dict(\n"
                "    irc=[dict(network='irc.freenode.net', port=6667, ssl=False, nickname='fedmsg-dev',\n"
                "              channel='my-fedmsg-channel', timeout=120, make_pretty=True, make_terse=True,\n"
                "              make_short=True, line_rate=0.9,\n"
                "              filters=dict(topic=['koji'], body=['lub-dub']))],\n"
                "    irc_color_lookup={'fas': 'light blue', 'bodhi': 'green', 'git': 'red', 'tagger': 'brown',\n"
                "                      'wiki': 'purple', 'logger': 'orange', 'pkgdb': 'teal',\n"
                "                      'buildsys': 'yellow', 'planet': 'light green'},\n"
                "    irc_default_color='light grey',\n"
                "    irc_method='notice',\n"
                "    **{'fedmsg.consumers.ircbot.enabled': True}\n"
                ")\n"
            )
        cfg = config.load(path)
        bot = irc.IRCBotService(cfg, subscribe=False, reactor=MemoryReactorClock())
        (net,) = bot.networks
        self.assertEqual(net.settings.channels[0].name, "#my-fedmsg-channel")
        self.assertEqual(net.method, "notice")
        self.assertFalse(net.wants("org.fedoraproject.prod.buildsys.koji.x", {}))
        self.assertFalse(net.wants("org.fedoraproject.prod.bodhi.x", {"msg": "lub-dub"}))
        self.assertTrue(net.wants("org.fedoraproject.prod.bodhi.x", {"msg": "ok"}))


class ShortenerTests(unittest.TestCase):
    """
    The default shortener against a real HTTP server on loopback.
    """

    def setUp(self):
        from twisted.internet import reactor
        from twisted.web import resource, server

        self.requests = []
        self.stalled = []
        test = self

        class Short(resource.Resource):
            isLeaf = True

            def render_GET(self, request):
                test.requests.append(request.args)
                if request.path == b"/slow":
                    test.stalled.append(request)
                    return server.NOT_DONE_YET
                if request.path == b"/broken":
                    request.setResponseCode(500)
                    return b"oops"
                return b"https://s.example/abc\n"

        self.port = reactor.listenTCP(0, server.Site(Short()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.shorten = irc._agent_shortener(reactor)

    async def test_shortened(self):
        got = await self.shorten("https://example.org/a b?x=1", self.base + "/s?url={url}", 5)
        self.assertEqual(got, "https://s.example/abc")
        self.assertEqual(self.requests, [{b"url": [b"https://example.org/a b?x=1"]}])

    async def test_failures_give_the_long_link(self):
        self.assertIsNone(await self.shorten("https://e/x", self.base + "/broken?u={url}", 5))
        self.assertIsNone(await self.shorten("https://e/x", self.base + "/slow?u={url}", 0.3))
        self.assertEqual(len(self.stalled), 1)
        self.flushLoggedErrors()


class ValidationHookTests(unittest.TestCase):
    """
    The validator hook with a stand-in validator: the real one needs
    certificates and is exercised in tests/test_irc_bus.py; here we need one
    that never answers, which no real validator does on purpose.
    """

    def test_stuck_validation_times_out_and_order_is_kept(self):
        from fedmsg_twisted.crypto.verdict import Verdict

        answers = []

        class Validator:
            def validate_async(self, envelope):
                d = defer.Deferred()
                answers.append(d)
                return d

        reactor = MemoryReactorClock()
        cfg = from_dict({"irc": [{"network": "127.0.0.1", "channel": "#a", "make_terse": True}]})
        bot = irc.IRCBotService(cfg, subscribe=False, reactor=reactor, validator=Validator())
        d1 = bot.announce(env(log="one"))
        d2 = bot.announce(env(log="two"))
        answers[1].callback(Verdict(True))
        self.assertFalse(d2.called)  # waits for the first
        reactor.advance(irc.VALIDATION_TIMEOUT)
        self.assertTrue(d1.called and d2.called)
        self.assertEqual([l.plain for l in bot.networks[0].queues["#a"].lines], ["logger.log -- two (u)"])
        self.assertEqual(bot.stats.get("dropped", "error"), 1)
        self.flushLoggedErrors()
