"""
The active publisher's on-disk outbox (C{publish_outbox}): a publisher
process killed with -9 loses nothing it reported published; the next one
resends it once, and subscribers get every message once.

Real processes on loopback: a twistd fedmsg-relay with its archive, a
publisher process, a subscriber in the test process.
"""

from __future__ import annotations

import os
import signal

from twisted.trial import unittest

from fedmsg_twisted import config
from fedmsg_twisted.publisher import PublisherService
from tests.test_faults import DEADLINE, FaultTestCase, proc_pid
from tests.util import PYTHON, spawn, wait_for

PUBLISHER = r"""
import sys
from twisted.internet import defer, task
from fedmsg_twisted import config
from fedmsg_twisted.publisher import PublisherService, PublishError

def main(reactor, path, start, pad):
    cfg = config.load(path).replace(active=True)
    pub = PublisherService(cfg, name="relay_inbound")
    pub.startService()
    reactor.addSystemEventTrigger("before", "shutdown", pub.stopService)
    resent = [0]

    def report():
        if pub.counters.get("resent") != resent[0]:
            resent[0] = pub.counters.get("resent")
            print("resent", resent[0], flush=True)
    task.LoopingCall(report).start(0.05)

    @defer.inlineCallbacks
    def run():
        n = int(start)
        while True:
            try:
                yield pub.publish(topic="t", modname="fault", msg={"n": n, "pad": "z" * int(pad)})
            except PublishError:
                pass  # not reported published: the test expects nothing of it
            else:
                print(n, flush=True)
            n += 1
            yield task.deferLater(reactor, 0.005, lambda: None)
    run()
    return defer.Deferred()

task.react(main, sys.argv[1:])
"""


def numbers(proc) -> list[int]:
    return [int(x) for x in proc.lines if x.strip().isdigit()]


def resent(proc) -> int:
    counts = [int(x.split()[1]) for x in proc.lines if x.startswith("resent ")]
    return max(counts, default=0)


class OutboxFaultTests(FaultTestCase):
    def publisher_config(self, outbox: str | None) -> str:
        path = os.path.join(self.state, "pub.toml")
        with open(path, "w") as f:
            f.write(
                f'relay_inbound = ["{self.inbound}"]\npost_init_sleep = 10\n'
                "heartbeat_interval = 0.2\ntimeout = 1.0\n"
                + (f'publish_outbox = "{outbox}"\n' if outbox else "")
                + f'[replay_endpoints]\nrelay_outbound = "{self.replay}"\n'
            )
        return path

    async def test_publisher_killed_with_messages_in_flight(self):
        """
        The relay is frozen (SIGSTOP) while the publisher streams big
        messages, so that what it reports published piles up in its zmq
        queue; then the publisher is killed with -9 and the relay thawed.
        A new publisher process with the same outbox asks the archive what
        it has and resends the rest once: every message the first one
        reported published is delivered, none twice.
        """
        relay = await self.start_relay()
        sub, got = self.subscriber()
        await wait_for(lambda: sub.healer.relays, timeout=DEADLINE, what="first heartbeat")
        path = self.publisher_config(os.path.join(self.state, "outbox"))
        pad = str(512 * 1024)  # ~40 MB frozen: far more than socket buffers hold
        first = spawn(self, [PYTHON, "-c", PUBLISHER, path, "0", pad])
        await wait_for(lambda: len(set(numbers(first)) & set(got)) >= 5 or first.ended.called,
                       timeout=DEADLINE, what="first messages delivered")
        self.assertFalse(first.ended.called, first.stderr.decode())
        os.kill(proc_pid(relay), signal.SIGSTOP)
        try:
            mark = len(numbers(first))
            await wait_for(lambda: len(numbers(first)) >= mark + 80 or first.ended.called,
                           timeout=DEADLINE, what="messages published while the relay is frozen")
            await self.kill(first, "KILL")
        finally:
            os.kill(proc_pid(relay), signal.SIGCONT)
        sent = numbers(first)
        second = spawn(self, [PYTHON, "-c", PUBLISHER, path, "100000", "10"])
        await wait_for(lambda: resent(second) > 0 and len(numbers(second)) >= 20 or second.ended.called,
                       timeout=DEADLINE, what="the outbox resent")
        self.assertFalse(second.ended.called, second.stderr.decode())
        await self.kill(second, "TERM")
        sent += numbers(second)
        await wait_for(lambda: set(got) >= set(sent), timeout=DEADLINE,
                       what=f"all messages (missing {sorted(set(sent) - set(got))[:10]})")
        beats = sub.counters.get("heartbeats")
        await wait_for(lambda: sub.counters.get("heartbeats") >= beats + 3, timeout=DEADLINE, what="heartbeats")
        dupes = sorted(n for n in set(got) if got.count(n) > 1)
        self.assertEqual(dupes, [], "messages delivered twice")
        # At most the one message the killed process had published but not
        # yet printed may come in addition (it was in the outbox).
        extra = set(got) - set(sent)
        self.assertLessEqual(extra, {max(numbers(first)) + 1})


class OutboxUnitTests(unittest.TestCase):
    """
    The outbox file itself, with a publisher that has no relay (so nothing
    is confirmed): what it accepted is found again by the next one.
    """

    def cfg(self, outbox, **extra):
        from tests.util import free_port, tcp

        values = {
            "relay_inbound": [tcp(free_port())],
            "endpoints": {},
            "replay_endpoints": {"relay_outbound": tcp(free_port())},
            "active": True,
            "post_init_sleep": 0.1,
            "timeout": 0.2,
            "heartbeat_interval": 0.1,
            "publish_outbox": outbox,
        }
        values.update(extra)
        return config.from_dict(values)

    async def test_held_messages_survive_and_compaction(self):
        outbox = os.path.abspath(self.mktemp())
        pub = PublisherService(self.cfg(outbox), name="relay_inbound")
        pub.startService()
        held = [pub.publish(topic="t", modname="x", msg={"n": n}) for n in range(5)]
        for d in held:
            d.addErrback(lambda f: None)  # failed at stop: not published
        # Simulate the kill: a new publisher reads the file while this one
        # still has it open (nothing was flushed by a clean stop).
        pub2 = PublisherService(self.cfg(outbox), name="relay_inbound")
        pub2.startService()
        self.addCleanup(pub2.stopService)
        self.assertEqual(pub2.counters.get("outbox-loaded"), 5)
        self.assertEqual([e[0][0] for e in pub2._unacked.values()], [b"org.fedoraproject.dev.x.t"] * 5)
        # Held messages dropped at a clean stop were reported failed: gone.
        await pub.stopService()
        pub3 = PublisherService(self.cfg(outbox), name="relay_inbound")
        pub3.startService()
        self.addCleanup(pub3.stopService)
        self.assertEqual(pub3.counters.get("outbox-loaded"), 0)

    async def test_cut_line_and_garbage(self):
        outbox = os.path.abspath(self.mktemp())
        with open(outbox, "w") as f:
            f.write('A ["m1","t","{}"]\nA not json\nD m0\nA ["m2","t","{}"]\nA ["m3","t"')
        pub = PublisherService(self.cfg(outbox), name="relay_inbound")
        pub.startService()
        self.addCleanup(pub.stopService)
        self.assertEqual(list(pub._unacked), ["m1", "m2"])
        self.assertEqual(pub.counters.get("dropped", "outbox-garbled"), 1)
        # The cut line was terminated: the next record is readable.
        pub._outbox_forget("m1")
        with open(outbox) as f:
            self.assertTrue(f.read().endswith('"t"\nD m1\n'))

    async def test_compaction(self):
        outbox = os.path.abspath(self.mktemp())
        pub = PublisherService(self.cfg(outbox), name="relay_inbound")
        pub.startService()
        ds = [pub.publish(topic="t", modname="x", msg={"n": n}) for n in range(1500)]
        for d in ds:
            d.addErrback(lambda f: None)
        mids = list(pub._outbox_live)
        for mid in mids[:1400]:
            pub._outbox_forget(mid)
        await wait_for(lambda: not pub._outbox_tasks and os.path.exists(outbox + ".snap"), what="compaction")
        self.assertFalse(os.path.exists(outbox + ".old"))
        pub2 = PublisherService(self.cfg(outbox), name="relay_inbound")
        pub2.startService()
        self.addCleanup(pub2.stopService)
        self.assertEqual(list(pub2._unacked), mids[1400:])
        await pub.stopService()

    def test_unwritable_outbox_is_a_clear_error(self):
        from fedmsg_twisted.publisher import PublishError

        where = os.path.join(os.path.abspath(self.mktemp()), "missing-dir", "outbox")
        pub = PublisherService(self.cfg(where), name="relay_inbound")
        with self.assertRaises(PublishError) as cm:
            pub.startService()
        self.assertIn("publish_outbox", str(cm.exception))
        self.assertIn("missing-dir", str(cm.exception))
        self.assertIsNone(pub._socket)
