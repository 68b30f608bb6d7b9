"""
The IRC bot end to end: published on the bus, seen in the channel of a real
IRC server (ngircd); in-process, and as C{twistd -n ircbot}; with signature
validation by the real crypto module.
"""

from __future__ import annotations

import os

from twisted.trial import unittest

from fedmsg_twisted import irc
from fedmsg_twisted.config import from_dict
from fedmsg_twisted.publisher import PublisherService
from tests.ircserver import NgircdServer, have_ngircd, raw_client
from tests.util import PYTHON, free_port, spawn, tcp, wait_for

CHANNEL = "#fedmsg"
TWISTD = os.path.join(os.path.dirname(PYTHON), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BusToIRCTests(unittest.TestCase):
    if not have_ngircd():
        skip = "ngircd is not installed (apt-get install -y ngircd)"

    async def setup_irc(self):
        self.server = NgircdServer(self)
        await self.server.start()
        self.watcher = await raw_client(self, self.server.port, "watcher")
        await self.watcher.join(CHANNEL)

    def irc_entry(self, **kw):
        entry = {"network": "127.0.0.1", "port": self.server.port, "nickname": "fedbot", "channel": CHANNEL,
                 "make_terse": True, "line_rate": 0.0}
        entry.update(kw)
        return entry

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def test_published_message_announced(self):
        await self.setup_irc()
        port = free_port()
        cfg = from_dict({"name": "svc", "endpoints": {"svc": [tcp(port)]}, "irc": [self.irc_entry()]})
        bot = self.start(irc.IRCBotService(cfg))
        pub = self.start(PublisherService(cfg))
        await wait_for(lambda: self.watcher.has_joined("fedbot", CHANNEL), what="bot in channel")
        await pub.publish(topic="log", modname="logger", msg={"log": "from the bus"})
        await wait_for(lambda: self.watcher.said(CHANNEL), what="the line")
        user = pub._envelopes._username
        self.assertEqual(self.watcher.said(CHANNEL), [("fedbot", "NOTICE", f"logger.log -- from the bus ({user})")])
        self.assertEqual(bot.stats.get("announced"), 1)

    async def test_twistd_ircbot(self):
        """
        C{twistd -n ircbot --config FILE} with a TOML config: subscribes,
        connects, announces.
        """
        await self.setup_irc()
        port = free_port()
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w") as f:
            f.write(
                f'endpoints = {{ svc = ["{tcp(port)}"] }}\n'
                "[[irc]]\n"
                f'network = "127.0.0.1"\nport = {self.server.port}\nnickname = "twistdbot"\n'
                f'channels = ["{CHANNEL}"]\nmake_terse = true\nline_rate = 0.0\n'
            )
        proc = spawn(self, [TWISTD, "-n", "--pidfile=", "ircbot", "--config", path], path=ROOT,
                     env={"PYTHONPATH": ROOT})
        cfg = from_dict({"name": "svc", "endpoints": {"svc": [tcp(port)]}})
        pub = self.start(PublisherService(cfg))
        await wait_for(lambda: self.watcher.has_joined("twistdbot", CHANNEL), what="bot in channel", timeout=20)
        await pub.publish(topic="announcement", modname="announce", msg={"message": "GOLD", "link": "https://l/x"})
        await wait_for(lambda: self.watcher.said(CHANNEL), what="the line")
        self.assertEqual(
            self.watcher.said(CHANNEL), [("twistdbot", "NOTICE", "announce.announcement -- GOLD https://l/x")]
        )
        self.assertIsNone(proc.exit_code, proc.stderr)
        # A clean stop says goodbye on IRC.
        proc.transport.signalProcess("TERM")
        await proc.ended  # twistd re-raises SIGTERM after a clean stop
        self.assertIn("Server Shut Down.", proc.lines[-1])
        await wait_for(lambda: any(l.startswith(":twistdbot!") and " QUIT " in l for l in self.watcher.lines),
                       what="QUIT seen")
        self.assertIn("shutting down", [l for l in self.watcher.lines if " QUIT " in l][0])

    async def test_twistd_ircbot_bad_config(self):
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w") as f:
            f.write('[[irc]]\nnetwork = "x"\nchanel = "#a"\n')
        proc = spawn(self, [TWISTD, "-n", "--pidfile=", "ircbot", "--config", path], path=ROOT,
                     env={"PYTHONPATH": ROOT})
        self.assertNotEqual(await proc.ended, 0)
        out = proc.stderr.decode() + "\n".join(proc.lines)
        self.assertIn("irc[0]: unknown key 'chanel' (did you mean 'channel'?)", out)

    async def test_signature_validation(self):
        """
        validate_signatures: a signed message is announced; an unsigned one
        is dropped on a network with on_invalid = "drop" and marked on one
        with "mark".
        """
        from fedmsg_twisted.crypto import Signer
        from tests.certs import make_pki

        await self.setup_irc()
        pki = make_pki(self.mktemp())
        pki.issue("svc-host.example.org", name="svc.host")
        cfg = from_dict({
            "validate_signatures": True,
            "ssldir": pki.directory,
            "certnames": {"svc.host": "svc.host"},
            "ca_cert_location": pki.ca_cert_path,
            "crl_location": pki.crl_path,
            "irc": [self.irc_entry(), self.irc_entry(nickname="markbot", on_invalid="mark")],
        })
        bot = self.start(irc.IRCBotService(cfg, subscribe=False))
        for n in bot.networks:
            await n.when_ready()
        await wait_for(lambda: all(CHANNEL in n.protocol.joined_channels for n in bot.networks), what="joined")
        envelope = {"topic": "org.fedoraproject.dev.logger.log", "msg": {"log": "signed"}, "username": "u",
                    "timestamp": 1700000000.0, "msg_id": "2026-a", "i": 1}
        signed = Signer.from_config(cfg, name="svc.host").sign(envelope)
        await bot.announce(signed)
        await bot.announce(dict(envelope, msg={"log": "unsigned"}))
        await bot.announce(dict(signed, msg={"log": "tampered"}))
        await wait_for(lambda: len(self.watcher.said(CHANNEL)) == 4, what="four lines")
        self.assertEqual(
            sorted(self.watcher.said(CHANNEL)),
            [
                ("fedbot", "NOTICE", "logger.log -- signed (u)"),
                ("markbot", "NOTICE", "logger.log -- signed (u)"),
                ("markbot", "NOTICE", "org.fedoraproject.dev.logger.log -- (invalid signature!)"),
                ("markbot", "NOTICE", "org.fedoraproject.dev.logger.log -- (unsigned)"),
            ],
        )
        self.assertEqual(bot.stats.get("invalid"), 2)
