"""
Faults survived, with real processes on loopback: messages sent are counted
against messages delivered after healing (docs/healing.rst says exactly what
is guaranteed; each test asserts no more than that).

Each test sends FEDMSG_FAULT_COUNT messages (default 120, a few seconds);
a soak run by hand sends more, e.g.:

    FEDMSG_FAULT_COUNT=5000 .venv/bin/python -m twisted.trial tests.test_faults
"""

from __future__ import annotations

import json
import os
import signal

from twisted.internet import defer
from twisted.trial import unittest

from fedmsg_twisted import config
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.subscriber import SubscriberService
from tests.util import PYTHON, free_port, sleep, spawn, tcp, wait_for

TWISTD = os.path.join(os.path.dirname(PYTHON), "twistd")
COUNT = int(os.environ.get("FEDMSG_FAULT_COUNT", "120"))
#: Generous safety net for a loaded CI machine; nothing asserts on time.
DEADLINE = 30.0 + COUNT / 50


class FaultTestCase(unittest.TestCase):
    timeout = 120 + COUNT / 10

    def setUp(self):
        self.inbound, self.outbound, self.replay = (tcp(free_port()) for _ in range(3))
        self.state = os.path.abspath(self.mktemp())
        os.makedirs(self.state)
        self.config_path = os.path.join(self.state, "relay.toml")
        self.write_config()
        self.cfg = config.from_dict(
            {
                "relay_inbound": [self.inbound],
                "endpoints": {"relay_outbound": [self.outbound]},
                "replay_endpoints": {"relay_outbound": self.replay},
                "post_init_sleep": 10.0,
                "timeout": 2.0,
                "heartbeat_interval": 0.2,
            }
        )
        self.relays = []

    def write_config(self, extra: str = "", archive_url: str | None = None) -> None:
        with open(self.config_path, "w") as f:
            f.write(
                f'relay_inbound = ["{self.inbound}"]\n'
                f'state_directory = "{self.state}"\n'
                "heartbeat_interval = 0.2\narchive_batch_interval = 0.01\n"
                + (f'archive_url = "{archive_url}"\n' if archive_url else "")
                + extra
                + f'[endpoints]\nrelay_outbound = ["{self.outbound}"]\n'
                f'[replay_endpoints]\nrelay_outbound = "{self.replay}"\n'
            )

    async def start_relay(self):
        proc = spawn(self, [TWISTD, "-n", "--pidfile=", "fedmsg-relay", "--config", self.config_path])
        self.relays.append(proc)
        await wait_for(
            lambda: any("Relay forwarding" in line for line in proc.lines) or proc.ended.called,
            timeout=DEADLINE,
            what="relay start-up",
        )
        self.assertFalse(proc.ended.called, "\n".join(proc.lines) + proc.stderr.decode())
        return proc

    async def kill(self, proc, sig="KILL"):
        os.kill(proc_pid(proc), getattr(signal, "SIG" + sig))
        await proc.ended

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def subscriber(self, **extra):
        got = []
        sub = self.start(
            SubscriberService(self.cfg.replace(**extra) if extra else self.cfg, lambda *a: got.append(a[3]["msg"]["n"]))
        )
        return sub, got

    async def publisher(self):
        pub = self.start(PublisherService(self.cfg.replace(active=True), name="relay_inbound"))
        await wait_for(pub.has_subscriber, timeout=DEADLINE, what="relay subscription")
        return pub

    async def healed(self, got, expected, sub=None):
        """
        Wait until every expected message is delivered, then two more
        heartbeat rounds, and check that none came twice.
        """
        await wait_for(lambda: set(got) >= set(expected), timeout=DEADLINE,
                       what=f"all messages (missing {sorted(set(expected) - set(got))[:10]})")
        if sub is not None:
            beats = sub.counters.get("heartbeats")
            await wait_for(lambda: sub.counters.get("heartbeats") >= beats + 3, timeout=DEADLINE, what="heartbeats")
        dupes = sorted(n for n in set(got) if got.count(n) > 1)
        self.assertEqual(dupes, [], "messages delivered twice")
        self.assertEqual(sorted(got), sorted(expected))

    async def start_tail(self, **extra):
        path = os.path.join(self.state, f"tail{len(self.relays)}-{free_port()}.toml")
        text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
        with open(path, "w") as f:
            f.write(text + f'[endpoints]\nrelay_outbound = ["{self.outbound}"]\n')
        proc = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.tail", "--config", path,
                            "--query", "msg.n", "--verbose"])

        def lines():
            return [int(x) for x in proc.lines if x.strip().isdigit()]

        # The tail has joined when it has heard a heartbeat (it logs it).
        await wait_for(lambda: "Healing from relay" in proc.stderr.decode() + "\n".join(proc.lines),
                       timeout=DEADLINE, what="tail subscribed")
        return proc, lines


def proc_pid(proc) -> int:
    return proc.transport.pid


class RelayFaultTests(FaultTestCase):
    async def test_relay_kill9_and_restart_mid_stream(self):
        """
        kill -9 of the relay while a publisher streams: the publisher holds
        what it sends while the relay is away and resends what the dead
        relay never archived; the subscriber heals the rest.  Zero lost,
        zero duplicated (the publisher ran throughout).
        """
        relay = await self.start_relay()
        sub, got = self.subscriber()
        await wait_for(lambda: sub.healer.relays, timeout=DEADLINE, what="first heartbeat")
        pub = await self.publisher()
        sent = []
        for n in range(COUNT):
            sent.append(pub.publish(topic="t", modname="fault", msg={"n": n}))
            if n == COUNT // 3:
                await self.kill(relay)
            if n == COUNT // 2:
                relay = await self.start_relay()
            await sleep(0.005)
        await defer.gatherResults(sent)
        await self.healed(got, range(COUNT), sub)

    async def test_subscriber_stopped_past_its_high_water_mark(self):
        """
        A subscriber process stopped with SIGSTOP while big messages flow
        (relay_high_water_mark 5): the relay's queue for it stays bounded,
        zmq drops for it, and after SIGCONT it heals every dropped message.
        """
        self.write_config(extra="relay_high_water_mark = 5\n")
        await self.start_relay()
        tail, lines = await self.start_tail(high_water_mark=5)
        pub = await self.publisher()
        os.kill(proc_pid(tail), signal.SIGSTOP)
        try:
            pad = "x" * 65536  # ~5 MB in all: more than the socket buffers hold
            for n in range(max(COUNT, 80)):
                await pub.publish(topic="t", modname="fault", msg={"n": n, "pad": pad})
                await sleep(0.001)
        finally:
            os.kill(proc_pid(tail), signal.SIGCONT)
        expected = list(range(max(COUNT, 80)))
        await wait_for(lambda: set(lines()) >= set(expected), timeout=DEADLINE,
                       what=f"healed tail (has {len(set(lines()))})")
        await sleep(1.0)  # a few more heartbeats: nothing comes twice
        self.assertEqual(sorted(lines()), expected)
        self.assertIn("missed messages from relay", tail.stderr.decode(),
                      "the SIGSTOP did not overflow anything: the test proved nothing")


class SubscriberFaultTests(FaultTestCase):
    async def restart_tail(self, sig):
        """
        A fedmsg-tail with a state file, stopped by C{sig} a third of the way
        and started again at half-way, while a publisher streams.
        """
        await self.start_relay()
        statefile = os.path.join(self.state, "tail-state.json")
        tail, lines = await self.start_tail(subscriber_state_file=statefile)
        pub = await self.publisher()
        printed = []
        for n in range(COUNT):
            await pub.publish(topic="t", modname="fault", msg={"n": n})
            if n == COUNT // 3:
                await wait_for(lambda: n in lines(), timeout=DEADLINE, what="tail caught up")
                os.kill(proc_pid(tail), getattr(signal, "SIG" + sig))
                await tail.ended
                printed += lines()
            if n == COUNT // 2:
                tail, lines = await self.start_tail(subscriber_state_file=statefile)
            await sleep(0.005)
        expected = set(range(COUNT))
        await wait_for(lambda: set(printed + lines()) >= expected, timeout=DEADLINE,
                       what=f"all messages (missing {sorted(expected - set(printed + lines()))[:10]})")
        await sleep(1.0)  # more heartbeats: nothing comes twice
        return printed, lines()

    async def test_subscriber_terminated_and_restarted(self):
        """
        SIGTERM: the tail saves its state file on the way out; the new one
        heals what was sent while it was down.  Zero lost, zero duplicated.
        """
        before, after = await self.restart_tail("TERM")
        self.assertEqual(sorted(before + after), list(range(COUNT)))

    async def test_subscriber_killed_and_restarted(self):
        """
        kill -9: nothing lost, nothing delivered twice.  Each message is
        journalled as soon as the callback returns, so the only message that
        may come again is one whose callback had run but was not yet
        journalled when the kill landed: the last one the killed tail
        printed (docs/healing.rst).  Without the journal every message
        printed since the last state-file write (a heartbeat's worth)
        comes again.
        """
        before, after = await self.restart_tail("KILL")
        got = before + after
        self.assertEqual(set(got), set(range(COUNT)))
        dupes = sorted(n for n in set(got) if got.count(n) > 1)
        self.assertIn(dupes, ([], [before[-1]]), "messages delivered twice")


PUBLISHER = r"""
import sys
from twisted.internet import defer, task
from fedmsg_twisted import config
from fedmsg_twisted.publisher import PublisherService

def main(reactor, path, start):
    cfg = config.load(path).replace(active=True)
    pub = PublisherService(cfg, name="relay_inbound")
    pub.startService()
    reactor.addSystemEventTrigger("before", "shutdown", pub.stopService)

    @defer.inlineCallbacks
    def run():
        n = int(start)
        while True:
            yield pub.publish(topic="t", modname="fault", msg={"n": n})
            print(n, flush=True)
            n += 1
            yield task.deferLater(reactor, 0.005, lambda: None)
    run()
    return defer.Deferred()

task.react(main, sys.argv[1:])
"""


class PublisherFaultTests(FaultTestCase):
    async def test_publisher_restarted(self):
        """
        A publisher process stopped (SIGTERM) and started again: every
        message it reported sent is delivered, once.
        """
        await self.start_relay()
        sub, got = self.subscriber()
        await wait_for(lambda: sub.healer.relays, timeout=DEADLINE, what="first heartbeat")
        path = os.path.join(self.state, "pub.toml")
        with open(path, "w") as f:
            f.write(f'relay_inbound = ["{self.inbound}"]\npost_init_sleep = 10\n'
                    f'[replay_endpoints]\nrelay_outbound = "{self.replay}"\n')
        sent = []
        start = 0
        for round in range(2):
            pub = spawn(self, [PYTHON, "-c", PUBLISHER, path, str(start)])
            await wait_for(lambda: len(pub.lines) > COUNT // 2 or pub.ended.called,
                           timeout=DEADLINE, what="publisher progress")
            await self.kill(pub, "TERM")
            done = [int(x) for x in pub.lines if x.strip().isdigit()]
            self.assertTrue(done, pub.stderr.decode())
            sent += done
            start = done[-1] + 1 + 1000  # a new process, new numbers
        await self.healed(got, sent, sub)


class ArchiveFaultTests(FaultTestCase):
    async def stream_through(self, relay):
        sub, got = self.subscriber()
        await wait_for(lambda: sub.healer.relays, timeout=DEADLINE, what="first heartbeat")
        pub = await self.publisher()
        for n in range(COUNT):
            await pub.publish(topic="t", modname="fault", msg={"n": n, "pad": "y" * 4096})
            await sleep(0.002)
        await self.healed(got, range(COUNT), sub)

    def small_tmpfs(self):
        from tests.test_store import _small_tmpfs

        return _small_tmpfs(self)

    async def test_disk_full(self):
        """
        The archive's disk fills up: the relay forwards every message and
        says so loudly (ARCHIVE FAILURE, critical).
        """
        mnt = self.small_tmpfs()
        self.write_config(archive_url=os.path.join(mnt, "archive.sqlite"))
        relay = await self.start_relay()
        from tests.test_store import _fill

        _fill(os.path.join(mnt, "filler"))
        await self.stream_through(relay)
        await wait_for(lambda: any("ARCHIVE FAILURE" in line for line in relay.lines),
                       timeout=DEADLINE, what="the loud failure")

    async def test_read_only(self):
        """
        The archive's file system is read-only: the relay starts, forwards
        every message and reports the failure loudly.
        """
        import subprocess

        mnt = self.small_tmpfs()
        self.write_config(archive_url=os.path.join(mnt, "archive.sqlite"))
        await self.kill(await self.start_relay(), "TERM")  # creates the archive
        r = subprocess.run(["mount", "-o", "remount,ro", mnt], capture_output=True)
        if r.returncode:
            raise unittest.SkipTest(f"cannot remount read-only: {r.stderr.decode().strip()}")
        relay = await self.start_relay()
        await self.stream_through(relay)
        await wait_for(lambda: any("ARCHIVE FAILURE" in line for line in relay.lines),
                       timeout=DEADLINE, what="the loud failure")


class TailSinceTests(FaultTestCase):
    async def test_tail_since_backlog_then_live(self):
        """
        fedmsg-tail --since: the archived backlog, then live, with no gap
        and no duplicate at the seam (live messages flow during catch-up).
        """
        import time

        await self.start_relay()
        pub = await self.publisher()
        before = time.time() - 5
        for n in range(30):
            await pub.publish(topic="t", modname="fault", msg={"n": n})
        path = os.path.join(self.state, "tail-since.toml")
        with open(path, "w") as f:
            f.write(f'catchup_page = 7\n[endpoints]\nrelay_outbound = ["{self.outbound}"]\n')
        tail = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.tail", "--config", path,
                            "--query", "msg.n", "--since", str(before), "--count", "60"])
        n = 30
        while not tail.ended.called and n < 60:
            await pub.publish(topic="t", modname="fault", msg={"n": n})
            n += 1
            await sleep(0.01)
        self.assertEqual(await tail.ended, 0, tail.stderr.decode())
        self.assertEqual([int(x) for x in tail.lines if x.strip()], list(range(60)))
