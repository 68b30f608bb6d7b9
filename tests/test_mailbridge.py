"""
End-to-end tests of the mail bridge: real mail into a watched Maildir and
over real SMTP/LMTP sessions, the real PublisherService, a real subscriber
on the bus asserting on what arrives.
"""

from __future__ import annotations

import os
import smtplib
import socket

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.trial import unittest

from fedmsg_twisted.config import from_dict
from fedmsg_twisted.mailbridge_tap import Options, makeService
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.subscriber import SubscriberService
from tests import mails
from tests.util import PYTHON, free_port, sleep, spawn, tcp, wait_for


def deliver(maildir: str, raw: bytes, name: str) -> str:
    """
    Deliver as an MTA does: write into tmp/, then rename into new/.
    """
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(raw)
    final = os.path.join(maildir, "new", name)
    os.rename(tmp, final)
    return final


def ls(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


class Delegate(Service):
    """
    The bridge's publisher slot, forwarding to the test's long-lived real
    publisher, so a bridge can be stopped and restarted while the bus stays up.
    """

    def __init__(self, real: PublisherService) -> None:
        self.real = real
        self.calls = 0

    def publish(self, topic=None, msg=None, modname=None):
        self.calls += 1
        return self.real.publish(topic=topic, msg=msg, modname=modname)


class Stalled(Service):
    """
    A publisher that never confirms: the process "dies" between taking the
    mail and handing it to the bus.
    """

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def publish(self, topic=None, msg=None, modname=None):
        d = defer.Deferred()
        self.pending.append(d)
        return d


class BridgeTestCase(unittest.TestCase):
    timeout = 60

    async def start_bus(self, subscriber: bool = True) -> None:
        port = free_port()
        self.config = from_dict({
            "topic_prefix": "org.debian",
            "environment": "dev",
            "name": "mailbridge",
            "endpoints": {"mailbridge": [tcp(port)]},
            "post_init_sleep": 5.0,
        }, strict=False)
        self.config_path = self.mktemp() + ".toml"
        with open(self.config_path, "w") as f:
            f.write('topic_prefix = "org.debian"\nenvironment = "dev"\nname = "mailbridge"\n'
                    f'[endpoints]\nmailbridge = ["{tcp(port)}"]\n')
        self.publisher = PublisherService(self.config)
        self.publisher.startService()
        self.addCleanup(self.publisher.stopService)
        self.received: list[tuple[str, dict]] = []
        if not subscriber:
            return
        self.subscriber = SubscriberService(self.config, lambda n, e, t, m: self.received.append((t, m)))
        self.subscriber.startService()
        self.addCleanup(self.subscriber.stopService)
        await wait_for(self.publisher.has_subscriber, what="subscriber on the bus")

    def dirs(self) -> tuple[str, str]:
        base = self.mktemp()
        return os.path.join(base, "Maildir"), os.path.join(base, "state")

    async def start_bridge(self, maildir: str | None, state: str, publisher: Service | None = None,
                           listen: str = "none"):
        argv = ["--config", self.config_path, "--state-dir", state, "--listen", listen,
                "--rescan-interval", "0", "--max-mail-size", "200000"]
        if maildir is not None:
            argv += ["--maildir", maildir]
        opts = Options()
        opts.parseOptions(argv)
        publisher = publisher or Delegate(self.publisher)
        top = makeService(opts, publisher=publisher)
        top.startService()
        stopped = []

        async def stop():
            if not stopped:
                stopped.append(True)
                await top.stopService()

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
        top.stop = stop
        top.bridge = [s for s in top if s is not publisher][0]
        return top

    def topics(self) -> list[str]:
        return [t for t, _ in self.received]


class MaildirTests(BridgeTestCase):
    async def test_existing_and_new_mail_published(self) -> None:
        await self.start_bus()
        maildir, state = self.dirs()
        deliver(maildir, mails.bug_report(), "1000.first")
        top = await self.start_bridge(maildir, state)
        await wait_for(lambda: len(self.received) >= 1, what="the mail present at start-up")
        deliver(maildir, mails.dak_accepted(signed=True), "1001.second")
        await wait_for(lambda: len(self.received) >= 2, what="the mail delivered while running")
        self.assertEqual(self.topics(), ["org.debian.dev.debbugs.bug.report", "org.debian.dev.dak.upload.accepted"])
        report = self.received[0][1]
        self.assertEqual(report["topic"], "org.debian.dev.debbugs.bug.report")
        self.assertEqual(report["msg"]["bug"], 123456)
        self.assertEqual(report["msg"]["sender_name"], "Jörg Müller")
        upload = self.received[1][1]["msg"]
        self.assertEqual((upload["source"], upload["version"], upload["distribution"]), ("foo", "1.2-3", "unstable"))
        self.assertEqual(upload["changed_by"], "Zoë Ünal <zoe@example.org>")
        await wait_for(lambda: len(ls(os.path.join(maildir, "cur"))) == 2, what="mail moved to cur/")
        self.assertEqual(ls(os.path.join(maildir, "new")), [])
        self.assertEqual(ls(os.path.join(maildir, "cur")), ["1000.first:2,S", "1001.second:2,S"])
        self.assertEqual(top.bridge.counters.get("mail", "published"), 2)

    async def test_bad_mail_quarantined_and_next_goes_through(self) -> None:
        await self.start_bus()
        maildir, state = self.dirs()
        top = await self.start_bridge(maildir, state)
        bad = {
            "a-not-debian": mails.plain(),
            "b-charset": mails.bug_report().replace(b'charset="utf-8"', b'charset="x-klingon"'),
            "c-mime": (b"From: a@b\nMessage-ID: <mime@x>\nX-Debian-PR-Message: report 1\nSubject: Bug#1: x\n"
                       b"Content-Type: multipart/mixed\n\nno parts\n"),
            "d-changes": mails.dak_accepted(signed=False, changes="garbage\n"),
            "e-huge": mails.bug_report(patch=b"+" * 300000),
            "f-nofrom": b"".join(x for x in mails.bug_report().splitlines(True) if not x.startswith(b"From:")),
        }
        for name, raw in bad.items():
            deliver(maildir, raw, name)
        deliver(maildir, mails.bug_closed(), "g-good")
        await wait_for(lambda: self.received, what="the good mail after the bad ones")
        self.assertEqual(self.topics(), ["org.debian.dev.debbugs.bug.closed"])
        self.assertEqual(self.received[0][1]["msg"]["closed_by"], "Zoë Ünal")
        c = top.bridge.counters
        await wait_for(lambda: c.get("mail", "quarantined") == 6, what="all bad mail quarantined")
        self.assertEqual(
            {label: n for name, label, n in c.items() if name == "quarantined"},
            {"not-debian": 1, "unknown-charset": 1, "malformed-mime": 1, "bad-changes": 1, "too-large": 1,
             "missing-header": 1})
        await wait_for(lambda: ls(os.path.join(maildir, "new")) == [], what="new/ emptied")
        qdir = os.path.join(state, "quarantine", "new")
        self.assertEqual(len(ls(qdir)), 6)
        reasons = []
        for name in ls(qdir):
            with open(os.path.join(qdir, name), "rb") as f:
                first = f.readline()
            if first.startswith(b"X-Fedmsg-Quarantine-Reason: "):
                reasons.append(first.split(b": ", 1)[1].split(b":")[0].decode())
            else:
                reasons.append("unread:" + name.rsplit(",", 1)[-1])  # moved in unread: too large to read
        self.assertEqual(sorted(reasons), sorted(
            ["not-debian", "unknown-charset", "malformed-mime", "bad-changes", "missing-header", "unread:oversize"]))

    async def test_crash_before_publish_loses_nothing(self) -> None:
        """
        The first bridge takes the mail but never gets its publish confirmed
        (it dies): the mail stays in new/.  The restarted bridge publishes it
        exactly once and later restarts do not publish it again.
        """
        await self.start_bus()
        maildir, state = self.dirs()
        deliver(maildir, mails.bug_report(message_id="<crash@example.org>"), "2000.crash")
        stalled = Stalled()
        first = await self.start_bridge(maildir, state, publisher=stalled)
        await wait_for(lambda: stalled.pending, what="the mail taken by the first bridge")
        first.bridge.drain_timeout = 0.1
        await first.stop()
        self.assertEqual(ls(os.path.join(maildir, "new")), ["2000.crash"])
        self.assertEqual(self.received, [])

        second = await self.start_bridge(maildir, state)
        await wait_for(lambda: self.received, what="the mail published after restart")
        await wait_for(lambda: ls(os.path.join(maildir, "new")) == [], what="mail acknowledged")
        await second.stop()

        # Redelivered (the MTA retried, or the file was put back): no second publish.
        deliver(maildir, mails.bug_report(message_id="<crash@example.org>"), "2001.again")
        third = await self.start_bridge(maildir, state)
        await wait_for(lambda: ls(os.path.join(maildir, "new")) == [], what="duplicate acknowledged")
        self.assertEqual(third.bridge.counters.get("mail", "duplicate"), 1)
        await sleep(0.2)  # anything wrongly published would arrive by now
        self.assertEqual(len(self.received), 1)
        self.assertEqual(self.received[0][1]["msg"]["message_id"], "<crash@example.org>")

    async def test_crash_after_publish_does_not_double(self) -> None:
        """
        A crash after the publish and its record, before the file moved,
        leaves this on disk; the restart acknowledges without publishing.
        """
        await self.start_bus()
        maildir, state = self.dirs()
        first = await self.start_bridge(maildir, state)
        deliver(maildir, mails.dak_accepted(message_id="<after@example.org>"), "3000.one")
        await wait_for(lambda: self.received, what="first publish")
        await wait_for(lambda: ls(os.path.join(maildir, "new")) == [], what="moved")
        await first.stop()
        # put the state back as a crash before the move would have left it
        os.rename(os.path.join(maildir, "cur", "3000.one:2,S"), os.path.join(maildir, "new", "3000.one"))
        second = await self.start_bridge(maildir, state)
        await wait_for(lambda: ls(os.path.join(maildir, "new")) == [], what="acknowledged after restart")
        self.assertEqual(second.bridge.counters.get("mail", "duplicate"), 1)
        self.assertEqual(second.bridge.counters.get("mail", "published"), 0)
        await sleep(0.2)
        self.assertEqual(len(self.received), 1)


def smtp_send(port: int, raw: bytes, rcpts: list[str], lmtp: bool = False) -> dict:
    cls = smtplib.LMTP if lmtp else smtplib.SMTP
    s = cls("127.0.0.1", port, timeout=20)
    try:
        return s.sendmail("owner@bugs.debian.org", rcpts, raw)
    finally:
        s.quit()


def lmtp_raw(port: int, raw: bytes, rcpts: list[str]) -> list[bytes]:
    """
    An LMTP session by hand: smtplib reads only one reply after DATA, LMTP
    sends one per recipient.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            while True:
                line = f.readline()
                if line[3:4] != b"-":
                    return line

        reply()
        s.sendall(b"LHLO test\r\n")
        reply()
        s.sendall(b"MAIL FROM:<owner@bugs.debian.org>\r\n")
        reply()
        for r in rcpts:
            s.sendall(f"RCPT TO:<{r}>\r\n".encode())
            reply()
        s.sendall(b"DATA\r\n")
        reply()
        body = b"\r\n".join((b"." + line if line.startswith(b".") else line) for line in raw.split(b"\n"))
        s.sendall(body + b"\r\n.\r\n")
        out = [reply() for _ in rcpts]
        s.sendall(b"QUIT\r\n")
        reply()
        return out


class ListenerTests(BridgeTestCase):
    async def start(self):
        await self.start_bus()
        maildir, state = self.dirs()
        self.port = free_port()
        self.top = await self.start_bridge(None, state, listen=f"tcp:{self.port}:interface=127.0.0.1")
        return self.top

    async def test_smtp_two_recipients_published_once(self) -> None:
        top = await self.start()
        refused = await threads.deferToThread(
            smtp_send, self.port, mails.bug_closed(), ["debian-bugs-closed@lists.debian.org", "foo@packages.debian.org"])
        self.assertEqual(refused, {})
        # handed to the bus before the 250 (delivery to the subscriber is asynchronous)
        self.assertEqual(top.bridge.counters.get("mail", "published"), 1)
        await wait_for(lambda: self.received, what="the closed mail on the bus")
        self.assertEqual(self.topics(), ["org.debian.dev.debbugs.bug.closed"])
        await sleep(0.2)
        self.assertEqual(len(self.received), 1)
        self.assertEqual(top.bridge.counters.get("mail", "published"), 1)

    async def test_lmtp(self) -> None:
        await self.start()
        await threads.deferToThread(smtp_send, self.port, mails.dak_accepted(signed=False), ["ddc@localhost"], True)
        await wait_for(lambda: self.received, what="the LMTP upload on the bus")
        self.assertEqual(self.topics(), ["org.debian.dev.dak.upload.accepted"])
        replies = await threads.deferToThread(lmtp_raw, self.port, mails.bug_report(), ["a@localhost", "b@localhost"])
        self.assertEqual([r[:3] for r in replies], [b"250", b"250"])
        await wait_for(lambda: len(self.received) == 2, what="LMTP report")
        self.assertEqual(self.topics()[1], "org.debian.dev.debbugs.bug.report")

    async def test_smtp_redelivery_is_deduplicated(self) -> None:
        top = await self.start()
        raw = mails.bug_report(message_id="<twice@example.org>")
        await threads.deferToThread(smtp_send, self.port, raw, ["submit-list@localhost"])
        await threads.deferToThread(smtp_send, self.port, raw, ["submit-list@localhost"])
        self.assertEqual(top.bridge.counters.get("mail", "duplicate"), 1)
        await wait_for(lambda: self.received, what="the first copy on the bus")
        await sleep(0.2)  # a wrongly published second copy would arrive by now
        self.assertEqual(len(self.received), 1)

    async def test_one_message_to_two_bugs_is_two_events(self) -> None:
        """
        debbugs forwards a mail sent to two bugs once per bug, with the same
        Message-ID: both are published; a second copy of either is not.
        """
        top = await self.start()
        first = mails.bug_report(bug=111, kind="followup", message_id="<cc-both@example.org>")
        second = mails.bug_report(bug=222, kind="followup", message_id="<cc-both@example.org>")
        for raw in (first, second, first):
            await threads.deferToThread(smtp_send, self.port, raw, ["bugs-dist@localhost"])
        await wait_for(lambda: len(self.received) == 2, what="both followups")
        self.assertEqual(sorted(m["msg"]["bug"] for _, m in self.received), [111, 222])
        self.assertEqual(top.bridge.counters.get("mail", "duplicate"), 1)

    async def test_bad_mail_over_smtp_is_accepted_into_quarantine(self) -> None:
        top = await self.start()
        await threads.deferToThread(smtp_send, self.port, mails.plain(), ["x@localhost"])
        await threads.deferToThread(smtp_send, self.port, b"Subject: big\n\n" + b"y" * 250000, ["x@localhost"])
        await threads.deferToThread(smtp_send, self.port, mails.dak_accepted(), ["x@localhost"])
        await wait_for(lambda: self.received, what="the good mail on the bus")
        self.assertEqual(self.topics(), ["org.debian.dev.dak.upload.accepted"])
        self.assertEqual(top.bridge.counters.get("quarantined", "not-debian"), 1)
        self.assertEqual(top.bridge.counters.get("quarantined", "too-large"), 1)

    async def test_publish_failure_answers_451(self) -> None:
        from fedmsg_twisted.publisher import PublishError

        class Failing(Service):
            def publish(self, **kw):
                return defer.fail(PublishError("bus is down"))

        await self.start_bus()
        _, state = self.dirs()
        port = free_port()
        await self.start_bridge(None, state, publisher=Failing(), listen=f"tcp:{port}:interface=127.0.0.1")
        e = await self.assertFailure(threads.deferToThread(smtp_send, port, mails.bug_report(), ["x@localhost"]),
                                     smtplib.SMTPDataError)
        self.assertEqual(e.smtp_code, 451)


class TerseTailTests(BridgeTestCase):
    async def test_fedmsg_tail_terse_reads_well(self) -> None:
        """
        The real C{fedmsg-tail --terse} shows bridge messages through the
        Debian text processors.
        """
        from fedmsg_twisted import text

        if not hasattr(text, "terse"):
            raise unittest.SkipTest("fedmsg-tail --terse needs fedmsg_twisted.text.terse, not written yet")
        await self.start_bus(subscriber=False)
        tail = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.tail", "--config", self.config_path,
                            "--terse", "--count", "2"])
        await wait_for(self.publisher.has_subscriber, what="fedmsg-tail subscribed", timeout=30)
        maildir, state = self.dirs()
        await self.start_bridge(maildir, state)
        deliver(maildir, mails.bug_closed(), "5000.closed")
        deliver(maildir, mails.dak_accepted(), "5001.upload")
        code = await tail.ended
        self.assertEqual(code, 0, tail.stderr)
        self.assertEqual(tail.lines[:2], [
            "debbugs.bug.closed -- #123456 [src:foo] foo: crashes on startup closed by Zoë Ünal "
            "https://bugs.debian.org/123456",
            "dak.upload.accepted -- foo 1.2-3 accepted into unstable by Zoë Ünal (closes #123456) "
            "https://tracker.debian.org/pkg/foo",
        ])


class StateTests(unittest.TestCase):
    def test_record_survives_reopen_and_stays_bounded(self) -> None:
        from fedmsg_twisted.mailbridge import DedupRecord

        path = self.mktemp()
        r = DedupRecord(path, keep=3)
        r.open()
        for i in range(8):
            r.add(f"mid:<{i}@x>")
        r.sync()
        r.close()
        self.assertEqual(len(open(path).read().splitlines()), 8)  # append-only between starts
        again = DedupRecord(path, keep=3)
        again.open()
        self.addCleanup(again.close)
        self.assertEqual(len(again), 3)
        self.assertIn("mid:<7@x>", again)
        self.assertNotIn("mid:<4@x>", again)
        self.assertEqual(open(path).read().splitlines(), ["mid:<5@x>", "mid:<6@x>", "mid:<7@x>"])  # compacted

    def test_quarantine_reason_is_one_ascii_line(self) -> None:
        from fedmsg_twisted.mailbridge import Quarantine

        q = Quarantine(self.mktemp())
        q.ensure()
        path = q.store(b"Subject: x\n\nbody\n", "bad-header: caf\u00e9\nX-Injected: yes")
        with open(path, "rb") as f:
            data = f.read()
        first, rest = data.split(b"\n", 1)
        self.assertEqual(first, b"X-Fedmsg-Quarantine-Reason: bad-header: caf\\xe9 X-Injected: yes")
        self.assertEqual(rest, b"Subject: x\n\nbody\n")
        self.assertEqual(os.listdir(os.path.join(q.path, "tmp")), [])
