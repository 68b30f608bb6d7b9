"""
Gap healing in one process, over real loopback sockets: a relay with its
archive, replay endpoint and heartbeat; subscribers that miss messages.
"""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from fedmsg_twisted import config
from fedmsg_twisted.heal import RelayHeartbeat, get_index, heartbeat_topic
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.replay import ReplayService, parse_query
from fedmsg_twisted.store import Archive, ArchiveService
from fedmsg_twisted.subscriber import SubscriberService
from tests.util import free_port, sleep, tcp, wait_for


def heal_config(**extra):
    values = {
        "relay_inbound": [tcp(free_port())],
        "endpoints": {"relay_outbound": [tcp(free_port())]},
        "replay_endpoints": {"relay_outbound": tcp(free_port())},
        "post_init_sleep": 5.0,
        "timeout": 5.0,
        "heartbeat_interval": 0.1,
        "archive_batch_interval": 0.01,
    }
    values.update(extra)
    return config.from_dict(values)


class HealTestCase(unittest.TestCase):
    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def relay(self, cfg, path=None):
        """
        What twistd fedmsg-relay runs, in this process.
        """
        archive = Archive(path or os.path.abspath(self.mktemp()), batch_interval=0.01)
        svc = ArchiveService(archive)
        self.start(svc)
        await svc.started
        relay = RelayService(cfg)
        relay.add_sink(archive.add)
        replay = ReplayService.from_config(cfg, archive, name="relay_outbound")
        self.start(replay)
        self.start(relay)
        hb = self.start(RelayHeartbeat(cfg, relay, archive, replay.address))
        return relay, archive, hb

    def subscriber(self, cfg, topics=("",), **kw):
        got = []
        sub = self.start(SubscriberService(cfg, lambda *a: got.append(a), topics, **kw))
        return sub, got

    async def publisher(self, cfg):
        pub = self.start(PublisherService(cfg, name="relay_inbound"))
        await wait_for(pub.has_subscriber, what="relay subscription")
        return pub


def logs(got):
    return [g[3]["msg"]["n"] for g in got]


class ExtensionQueryTests(unittest.TestCase):
    def test_parse(self):
        q = parse_query(b'{"seq_id_range": [1, 5], "fields": "index", "topics": ["a.b"], "limit": 3}')
        self.assertEqual((q.index, q.topics, q.limit, q.seq_id_range), (True, ("a.b",), 3, (1, 5)))

    def test_errors(self):
        for raw, text in [
            (b'{"fields": "index"}', "Empty query"),
            (b'{"seq_id": 1, "fields": "all"}', 'Ill-format "fields"'),
            (b'{"seq_id": 1, "topics": [1]}', 'Ill-format "topics"'),
            (b'{"seq_id": 1, "limit": 0}', 'Ill-format "limit"'),
        ]:
            with self.assertRaises(ValueError) as cm:
                parse_query(raw)
            self.assertIn(text, str(cm.exception))


class HealTests(HealTestCase):
    async def test_heartbeat_not_archived_not_delivered(self):
        cfg = heal_config()
        relay, archive, hb = await self.relay(cfg)
        sub, got = self.subscriber(cfg, topics=("org.fedoraproject.dev.x",))
        pub = await self.publisher(cfg)
        await wait_for(lambda: sub.counters.get("heartbeats") >= 2, what="heartbeats")
        await pub.publish(topic="t", modname="x", msg={"n": 1})
        await wait_for(lambda: len(got) == 1, what="message")
        await archive.flush()
        self.assertEqual(await archive.count(), 1)
        self.assertEqual([g[2] for g in got], ["org.fedoraproject.dev.x.t"])
        self.assertEqual(len(sub.healer.relays), 1)
        self.assertEqual(list(sub.healer.relays), [archive.identity])

    async def test_index_extension(self):
        cfg = heal_config()
        relay, archive, hb = await self.relay(cfg)
        pub = await self.publisher(cfg)
        sent = []
        for n in range(6):
            sent.append(await pub.publish(topic="t", modname="a" if n % 2 else "b", msg={"n": n}))
        await wait_for(lambda: (archive.committed_seq or 0) >= 6, what="archived")
        address = cfg["replay_endpoints"]["relay_outbound"]
        index = await get_index(address, {"seq_id_range": [1, 6], "topics": ["org.fedoraproject.dev.a"]})
        self.assertEqual(index, [(2, sent[1]["msg_id"]), (4, sent[3]["msg_id"]), (6, sent[5]["msg_id"])])
        page = await get_index(address, {"seq_id_range": [1, 6], "limit": 2})
        self.assertEqual([s for s, _ in page], [1, 2])

    async def test_missed_while_disconnected_healed_once(self):
        cfg = heal_config()
        relay, archive, hb = await self.relay(cfg)
        out = cfg["endpoints"]["relay_outbound"][0]
        sub, got = self.subscriber(cfg)
        pub = await self.publisher(cfg)
        await wait_for(lambda: sub.healer.relays, what="first heartbeat")
        for n in range(5):
            await pub.publish(topic="t", modname="m", msg={"n": n})
        await wait_for(lambda: len(got) == 5, what="live messages")
        sub.remove_endpoint("relay_outbound", out)
        for n in range(5, 15):
            await pub.publish(topic="t", modname="m", msg={"n": n})
        await wait_for(lambda: (archive.committed_seq or 0) >= 15, what="archived")
        sub.add_endpoint("relay_outbound", out)
        await wait_for(lambda: relay.has_subscriber(), what="resubscription")
        for n in range(15, 20):
            await pub.publish(topic="t", modname="m", msg={"n": n})
        await wait_for(lambda: sorted(logs(got)) == list(range(20)), what="healed")
        # One more heartbeat round: nothing delivered twice.
        beats = sub.counters.get("heartbeats")
        await wait_for(lambda: sub.counters.get("heartbeats") >= beats + 3, what="heartbeats")
        self.assertEqual(sorted(logs(got)), list(range(20)))
        self.assertEqual(sub.counters.get("healed"), 10, repr(sub.counters))

    async def test_catchup_capped_and_paged(self):
        cfg = heal_config(catchup_max=6, catchup_page=2)
        relay, archive, hb = await self.relay(cfg)
        out = cfg["endpoints"]["relay_outbound"][0]
        sub, got = self.subscriber(cfg)
        pub = await self.publisher(cfg)
        await wait_for(lambda: sub.healer.relays, what="first heartbeat")
        sub.remove_endpoint("relay_outbound", out)
        for n in range(10):
            await pub.publish(topic="t", modname="m", msg={"n": n})
        await wait_for(lambda: (archive.committed_seq or 0) >= 10, what="archived")
        sub.add_endpoint("relay_outbound", out)
        await wait_for(lambda: len(got) == 6, what="the newest six")
        self.assertEqual(logs(got), [4, 5, 6, 7, 8, 9])
        self.assertEqual(sub.counters.get("heal-skipped"), 4)

    async def test_state_file_heals_across_restart(self):
        state = os.path.abspath(self.mktemp())
        cfg = heal_config(subscriber_state_file=state)
        relay, archive, hb = await self.relay(cfg)
        sub = SubscriberService(cfg, lambda *a: None)
        sub.startService()
        pub = await self.publisher(cfg)
        await wait_for(lambda: os.path.exists(state), what="state file")
        await sub.stopService()
        for n in range(4):
            await pub.publish(topic="t", modname="m", msg={"n": n})
        await wait_for(lambda: (archive.committed_seq or 0) >= 4, what="archived")
        sub2, got = self.subscriber(cfg)
        await wait_for(lambda: len(got) == 4, what="healed after restart")
        self.assertEqual(logs(got), [0, 1, 2, 3])
        await wait_for(
            lambda: json.load(open(state))["relays"].get(archive.identity) == 4, what="state saved"
        )

    async def test_since_prints_backlog_then_live(self):
        cfg = heal_config()
        relay, archive, hb = await self.relay(cfg)
        pub = await self.publisher(cfg)
        sent = [await pub.publish(topic="t", modname="m", msg={"n": n}) for n in range(5)]
        await wait_for(lambda: (archive.committed_seq or 0) >= 5, what="archived")
        sub, got = self.subscriber(cfg, since=("msg_id", sent[2]["msg_id"]))
        await wait_for(lambda: relay.has_subscriber() and len(got) == 3, what="backlog")
        for n in range(5, 8):
            await pub.publish(topic="t", modname="m", msg={"n": n})
        await wait_for(lambda: len(got) == 6, what="live")
        self.assertEqual(logs(got), [2, 3, 4, 5, 6, 7])

    async def test_tracked_subscriber_hears_heartbeats(self):
        """
        The hub's subscriber (with connection tracking) also subscribes to
        relay heartbeats its topics do not cover, or it would never heal.
        """
        from fedmsg_twisted.health import TrackedSubscriberService

        cfg = heal_config()
        await self.relay(cfg)
        sub = self.start(TrackedSubscriberService(cfg, lambda *a: None, ("org.fedoraproject.dev.x",)))
        await wait_for(lambda: sub.counters.get("heartbeats") >= 2, what="heartbeats")
        self.assertTrue(sub.healer.relays)

    async def test_heartbeat_topic(self):
        self.assertEqual(heartbeat_topic(heal_config()), "org.fedoraproject.dev.relay._heartbeat")


class HeartbeatInteropTests(HealTestCase):
    async def test_real_fedmsg_validating_subscriber_accepts_everything(self):
        """
        A real fedmsg 1.1.7 subscriber that validates signatures, on the
        outbound of a relay that sends heartbeats: it accepts every signed
        message (the relay changes no byte); the unsigned heartbeats are
        only warnings to it and never reach its application.
        """
        from tests import fedmsgpeer
        from tests.certs import make_pki
        from tests.test_signed_bus import PEER_VALIDATING_TAIL
        from tests.util import spawn

        peer = fedmsgpeer.ensure_peer()
        pki = make_pki(os.path.abspath(self.mktemp()))
        pki.issue("svc.example.org", name="svc")
        cfg = heal_config(heartbeat_interval=0.05, **pki.certname_config())
        relay, archive, hb = await self.relay(cfg)
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        fedmsgpeer.write_peer_config(
            cwd,
            {
                "topic_prefix": "org.fedoraproject",
                "environment": "dev",
                "endpoints": {"relay_outbound": list(cfg["endpoints"]["relay_outbound"])},
                "ca_cert_location": pki.ca_cert_path,
                "crl_location": pki.crl_path,
            },
        )
        script = os.path.join(cwd, "tail.py")
        with open(script, "w") as f:
            f.write(PEER_VALIDATING_TAIL)
        count = 20
        tail = spawn(self, [peer, script, str(count)], path=cwd)
        await wait_for(relay.has_subscriber, timeout=30, what="fedmsg's validating tail")
        beats = hb.sent
        await wait_for(lambda: hb.sent >= beats + 5, what="heartbeats to the peer")
        pub = self.start(
            PublisherService(cfg.replace(active=True, sign_messages=True, certname="svc"), name="relay_inbound")
        )
        await wait_for(pub.has_subscriber, what="relay subscription")
        for n in range(count):
            await pub.publish(topic="thing", modname="svc", msg={"n": n, "s": "h\u00e9"})
            await sleep(0.01)  # heartbeats interleave
        self.assertEqual(await tail.ended, 0, tail.stderr)
        self.assertEqual([json.loads(line)["n"] for line in tail.lines if line], list(range(count)))


class ForgedHeartbeatTests(HealTestCase):
    async def test_relay_drops_heartbeats_from_publishers(self):
        from fedmsg_twisted import encoding

        cfg = heal_config(heartbeat_interval=0)
        relay, archive, hb = await self.relay(cfg)
        sub, got = self.subscriber(cfg)
        await wait_for(relay.has_subscriber, what="subscriber")
        forged = {"topic": heartbeat_topic(cfg), "msg": {"relay": "x", "seq": 10**9, "replay": "tcp://127.0.0.1:1"}}
        with self.assertRaises(encoding.DecodeError):
            await relay.inject([forged["topic"].encode(), encoding.dumps_bytes(forged)])
        self.assertEqual(relay.counters.get("dropped", "reserved-topic"), 1)
        self.assertEqual(sub.counters.get("heartbeats"), 0)


class LargeCatchUpTests(HealTestCase):
    async def test_fetch_split_under_replay_max_bytes(self):
        cfg = heal_config(replay_max_bytes=5000)
        relay, archive, hb = await self.relay(cfg)
        out = cfg["endpoints"]["relay_outbound"][0]
        sub, got = self.subscriber(cfg)
        pub = await self.publisher(cfg)
        await wait_for(lambda: sub.healer.relays, what="first heartbeat")
        sub.remove_endpoint("relay_outbound", out)
        for n in range(12):
            await pub.publish(topic="t", modname="m", msg={"n": n, "pad": "z" * 1500})
        await wait_for(lambda: (archive.committed_seq or 0) >= 12, what="archived")
        sub.add_endpoint("relay_outbound", out)
        await wait_for(lambda: len(got) == 12, what="healed in several requests")
        self.assertEqual(logs(got), list(range(12)))
        self.assertEqual(sub.counters.get("heal-failed"), 0)


class PublisherStoreTests(HealTestCase):
    async def test_seq_id_signed_and_gap_filled_from_publisher_store(self):
        """
        A passive publisher with its own store stamps seq_id before signing;
        a validating subscriber that misses some fetches them from the
        publisher's replay endpoint, and they validate.
        """
        from tests.certs import make_pki

        pki = make_pki(os.path.abspath(self.mktemp()))
        pki.issue("svc.example.org", name="svc")
        address, replay = tcp(free_port()), tcp(free_port())
        cfg = config.from_dict(
            {
                "endpoints": {"svc": [address]},
                "replay_endpoints": {"svc": replay},
                "post_init_sleep": 5.0,
                "timeout": 5.0,
                **pki.certname_config(),
            }
        )
        archive = Archive(os.path.abspath(self.mktemp()), batch_interval=0.01)
        svc = self.start(ArchiveService(archive))
        await svc.started
        self.start(ReplayService.from_config(cfg, archive, name="svc"))
        pub = self.start(PublisherService(cfg.replace(sign_messages=True, certname="svc"), name="svc", store=archive))
        sub, got = self.subscriber(cfg.replace(validate_signatures=True))
        await wait_for(pub.has_subscriber, what="subscriber")
        first = await pub.publish(topic="t", modname="svc", msg={"n": 0})
        self.assertEqual(first["seq_id"], 1)
        self.assertIn("signature", first)
        await wait_for(lambda: len(got) == 1, what="first")
        sub.remove_endpoint("svc", address)
        for n in range(1, 6):
            await pub.publish(topic="t", modname="svc", msg={"n": n})
        sub.add_endpoint("svc", address)
        await wait_for(lambda: pub.has_subscriber() and len(pub._socket.subscriptions) > 0, what="resubscribed")
        await sleep(0.2)
        await pub.publish(topic="t", modname="svc", msg={"n": 6})
        await wait_for(lambda: sorted(logs(got)) == list(range(7)), what="gap filled")
        self.assertEqual(sub.counters.get("rejected"), 0)
        self.assertEqual(sub.counters.get("healed"), 5)
        self.assertEqual([r.seq_id for r in await archive.get()], list(range(1, 8)))


class SinceWithoutArchiveTests(HealTestCase):
    async def test_no_replay_endpoint_goes_live(self):
        """
        --since against a relay that announces no replay endpoint: say so
        and deliver live messages instead of holding them forever.
        """
        cfg = heal_config(replay_endpoints={})
        archive = Archive(os.path.abspath(self.mktemp()), batch_interval=0.01)
        svc = self.start(ArchiveService(archive))
        await svc.started
        relay = RelayService(cfg)
        relay.add_sink(archive.add)
        self.start(relay)
        self.start(RelayHeartbeat(cfg, relay, archive, None))
        sub, got = self.subscriber(cfg, since=("time", 0))
        pub = await self.publisher(cfg)
        await wait_for(lambda: sub.counters.get("heartbeats") >= 1, what="heartbeat")
        await pub.publish(topic="t", modname="m", msg={"n": 1})
        await wait_for(lambda: len(got) == 1, what="live message")


class BadInputTests(HealTestCase):
    async def test_unreadable_state_file_and_bad_heartbeat(self):
        from twisted.logger import globalLogPublisher

        from fedmsg_twisted import encoding

        state = os.path.abspath(self.mktemp())
        with open(state, "w") as f:
            f.write("{not json")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        cfg = heal_config(subscriber_state_file=state)
        sub, got = self.subscriber(cfg)
        self.assertTrue(
            [e for e in events if "unreadable subscriber state file" in e.get("log_format", "")]
        )
        topic = heartbeat_topic(cfg)
        for msg in ({"relay": 1, "seq": 2}, {"relay": "r", "seq": "2"}, {"relay": "r", "seq": True}):
            body = encoding.dumps_bytes({"topic": topic, "msg": msg})
            sub.frames_received("relay_outbound", "tcp://x", [topic.encode(), body])
        self.assertEqual(sub.counters.get("dropped", "bad-heartbeat"), 3)
        self.assertEqual(got, [])
        self.assertEqual(sub.healer.relays, {})


class IdentityTests(unittest.TestCase):
    async def test_identity_survives_restart(self):
        path = os.path.abspath(self.mktemp())
        first = Archive(path)
        await first.start()
        identity = first.identity
        await first.stop()
        again = Archive(path)
        await again.start()
        self.addCleanup(again.stop)
        self.assertEqual(again.identity, identity)
        self.assertEqual(len(identity), 32)


class ResendTests(HealTestCase):
    async def test_resend_once_per_relay_reconnection(self):
        """
        Messages the archive never gets (here: the relay does not archive)
        are not resent over and over; only when the relay comes back, once.
        """
        cfg = heal_config()
        archive = Archive(os.path.abspath(self.mktemp()), batch_interval=0.01)
        svc = self.start(ArchiveService(archive))
        await svc.started
        self.start(ReplayService.from_config(cfg, archive, name="relay_outbound"))
        relay = RelayService(cfg)  # no archive sink
        relay.startService()
        pub = self.start(PublisherService(cfg.replace(active=True), name="relay_inbound"))
        await wait_for(pub.has_subscriber, what="relay subscription")
        for n in range(5):
            await pub.publish(topic="t", modname="m", msg={"n": n})
        await wait_for(lambda: relay.counters.get("forwarded") == 5, what="forwarded")
        await sleep(0.5)  # several reconcile rounds
        self.assertEqual(pub.counters.get("resent"), 0)
        self.assertEqual(len(pub._unacked), 5)
        await relay.stopService()
        relay = RelayService(cfg)
        for attempt in range(100):  # zmq releases the ports asynchronously
            try:
                relay.startService()
                break
            except Exception:
                await sleep(0.05)
        self.addCleanup(relay.stopService)
        await wait_for(lambda: pub.counters.get("resent") == 5, what="resent once")
        await wait_for(lambda: relay.counters.get("forwarded") == 5, what="forwarded again")
        await sleep(0.5)
        self.assertEqual(pub.counters.get("resent"), 5)


class JournalTests(HealTestCase):
    async def test_cut_line_dropped_and_terminated(self):
        """
        A journal line cut by a kill -9 mid-write is ignored, and the next
        line is not glued to it.
        """
        state = os.path.abspath(self.mktemp())
        with open(state + ".journal", "w") as f:
            f.write("m1\nm2\nm3-cu")
        cfg = heal_config(subscriber_state_file=state)
        sub, got = self.subscriber(cfg)
        self.assertIn("m1", sub.healer.delivered)
        self.assertIn("m2", sub.healer.delivered)
        self.assertNotIn("m3-cu", sub.healer.delivered)
        sub._deliver("relay_outbound", "x", "t", {"msg_id": "m4", "msg": {"n": 4}})
        with open(state + ".journal") as f:
            self.assertEqual(f.read(), "m1\nm2\nm3-cu\nm4\n")
        self.assertEqual(logs(got), [4])

    async def test_known_waits_for_pending_callbacks(self):
        """
        While an application callback's Deferred is pending, the state file
        does not move C{known} past its message (a kill -9 then would lose
        it); the message is journalled when the Deferred fires.
        """
        from twisted.internet import defer

        state = os.path.abspath(self.mktemp())
        cfg = heal_config(subscriber_state_file=state)
        relay, archive, hb = await self.relay(cfg)
        pending = defer.Deferred()
        got = []

        def callback(*a):
            got.append(a)
            if a[3]["msg"]["n"] == 0:
                return pending

        sub = self.start(SubscriberService(cfg, callback))
        await wait_for(lambda: sub.healer.relays, what="first heartbeat")
        pub = await self.publisher(cfg)
        sent = [await pub.publish(topic="t", modname="m", msg={"n": n}) for n in range(3)]
        await wait_for(lambda: len(got) == 3 and (archive.committed_seq or 0) >= 3, what="delivered")
        await wait_for(lambda: sub.healer.relays[archive.identity].known >= 3, what="known")
        beats = sub.counters.get("heartbeats")
        await wait_for(lambda: sub.counters.get("heartbeats") >= beats + 2 and not sub.healer._tasks, what="saved")

        def on_disk():
            with open(state) as f:
                data = json.load(f)
            with open(state + ".journal") as f:
                return data["relays"][archive.identity], set(data["delivered"]) | set(f.read().split())

        known, recorded = on_disk()
        self.assertEqual(known, 0)
        self.assertEqual(recorded, {sent[1]["msg_id"], sent[2]["msg_id"]})
        pending.callback(None)
        await wait_for(lambda: not sub.healer._tasks and on_disk()[0] == 3, what="known saved")
        self.assertEqual(on_disk()[1], {e["msg_id"] for e in sent})
