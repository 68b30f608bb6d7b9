"""
A real crash: the bridge runs under twistd, takes mail from the Maildir and
over SMTP while no relay is there to hand it to, and is killed with SIGKILL.
After a restart with the relay up, each mail is published exactly once.
"""

from __future__ import annotations

import os
import smtplib
import sys

from twisted.internet import defer, error, threads
from twisted.trial import unittest

from fedmsg_twisted import config
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests import mails
from tests.test_mailbridge import deliver, ls, smtp_send
from tests.util import LineCollector, free_port, sleep, tcp, wait_for

TAC = """
import json, os
from twisted.application import service
from fedmsg_twisted.mailbridge_tap import Options, makeService

options = Options()
options.parseOptions(json.loads(os.environ["MAILBRIDGE_ARGV"]))
application = service.Application("fedmsg-mailbridge")
makeService(options).setServiceParent(application)
"""


class CrashTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        inbound, outbound = free_port(), free_port()
        self.cfg = config.from_dict({
            "topic_prefix": "org.debian",
            "relay_inbound": [tcp(inbound)],
            "endpoints": {"relay_outbound": [tcp(outbound)]},
            "post_init_sleep": 5.0,
        })
        self.cfg_path = os.path.join(base, "fedmsg.toml")
        with open(self.cfg_path, "w") as f:
            f.write(f'topic_prefix = "org.debian"\nactive = true\nrelay_inbound = ["{tcp(inbound)}"]\n'
                    f'post_init_sleep = 0.5\n[endpoints]\nrelay_outbound = ["{tcp(outbound)}"]\n')
        self.tac = os.path.join(base, "mailbridge.tac")
        with open(self.tac, "w") as f:
            f.write(TAC)
        self.maildir = os.path.join(base, "Maildir")
        self.state = os.path.join(base, "state")
        self.smtp_port = free_port()

    def start_bridge(self) -> tuple[LineCollector, object]:
        import json

        from twisted.internet import reactor

        argv = ["--config", self.cfg_path, "--maildir", self.maildir, "--state-dir", self.state,
                "--listen", f"tcp:{self.smtp_port}:interface=127.0.0.1", "--rescan-interval", "0"]
        env = dict(os.environ, MAILBRIDGE_ARGV=json.dumps(argv), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        proto = LineCollector()
        transport = reactor.spawnProcess(
            proto, sys.executable, [sys.executable, twistd, "-n", "--pidfile=", "--logfile=-", "-y", self.tac],
            env=env, path=self.base)

        async def cleanup():
            if not proto.ended.called:
                try:
                    transport.signalProcess("KILL")
                except error.ProcessExitedAlready:
                    pass
                await proto.ended

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(cleanup()))
        return proto, transport

    def count(self, proto: LineCollector, text: str) -> int:
        return sum(text in line for line in proto.lines)

    async def test_sigkill_between_receipt_and_publish(self) -> None:
        first, transport = self.start_bridge()
        await wait_for(lambda: self.count(first, "SMTPFactory starting on"), what="listener up",
                       timeout=30)
        deliver(self.maildir, mails.bug_report(message_id="<kill-1@example.org>"), "4000.kill")
        await wait_for(lambda: self.count(first, "Took mail mid:<kill-1@example.org>"), what="maildir mail taken")
        sending = threads.deferToThread(smtp_send, self.smtp_port, mails.dak_accepted(message_id="<kill-2@example.org>"),
                                        ["ddc@localhost"])
        await wait_for(lambda: self.count(first, "Took mail mid:<kill-2@example.org>"), what="smtp mail taken")
        transport.signalProcess("KILL")
        await first.ended
        # The MTA saw no 250: it keeps the mail and will retry.
        await self.assertFailure(sending, smtplib.SMTPServerDisconnected)
        self.assertEqual(ls(os.path.join(self.maildir, "new")), ["4000.kill"])
        self.assertFalse(os.path.exists(os.path.join(self.state, "published.log"))
                         and os.path.getsize(os.path.join(self.state, "published.log")))

        relay = RelayService(self.cfg)
        relay.startService()
        self.addCleanup(relay.stopService)
        got: list[tuple[str, dict]] = []
        sub = SubscriberService(self.cfg, lambda n, e, t, m: got.append((t, m)))
        sub.startService()
        self.addCleanup(sub.stopService)
        await wait_for(relay.has_subscriber, what="subscriber on the relay")

        second, transport2 = self.start_bridge()
        await wait_for(lambda: got, what="the maildir mail published after restart", timeout=30)
        await wait_for(lambda: self.count(second, "SMTPFactory starting on"), what="listener up again")
        raw = mails.dak_accepted(message_id="<kill-2@example.org>")
        await threads.deferToThread(smtp_send, self.smtp_port, raw, ["ddc@localhost"])  # the MTA's retry
        await wait_for(lambda: len(got) == 2, what="the smtp mail published")
        await threads.deferToThread(smtp_send, self.smtp_port, raw, ["ddc@localhost"])  # once more: duplicate
        await wait_for(lambda: self.count(second, "already published"), what="duplicate acknowledged")
        await sleep(0.3)
        self.assertEqual(sorted(m["msg"]["message_id"] for _, m in got),
                         ["<kill-1@example.org>", "<kill-2@example.org>"])
        self.assertEqual(sorted(t for t, _ in got),
                         ["org.debian.dev.dak.upload.accepted", "org.debian.dev.debbugs.bug.report"])
        self.assertEqual(ls(os.path.join(self.maildir, "new")), [])
        transport2.signalProcess("TERM")
        await second.ended  # twistd re-raises SIGTERM after a clean stop, so no exit code
        self.assertTrue(self.count(second, "Server Shut Down."), "\n".join(second.lines[-10:]))
