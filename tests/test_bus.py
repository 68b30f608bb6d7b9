"""
The bus over real loopback sockets: relay, publisher, subscriber.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from fedmsg_twisted import config, encoding
from fedmsg_twisted import zmq as fzmq
from fedmsg_twisted.publisher import PublisherService, PublishError
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests.util import free_port, sleep, tcp, wait_for


def bus_config(**extra):
    inbound, outbound = free_port(), free_port()
    values = {
        "relay_inbound": [tcp(inbound)],
        "endpoints": {"relay_outbound": [tcp(outbound)]},
        "post_init_sleep": 5.0,
        "timeout": 5.0,
    }
    values.update(extra)
    return config.from_dict(values)


class BusTestCase(unittest.TestCase):
    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def subscriber(self, cfg, topics=("",), **kw):
        got = []
        sub = self.start(SubscriberService(cfg, lambda *a: got.append(a), topics, **kw))
        return sub, got

    def raw_pub(self, address, bind=False):
        """
        A bare XPUB socket for sending anything at all, garbage included.
        """
        sock = fzmq.PubSocket(fzmq.shared_factory(), options=[(fzmq._zmq.LINGER, 0)])
        self.addCleanup(sock.close)
        if bind:
            fzmq.bind_first(sock, [address])
        else:
            fzmq.connect(sock, address)
        return sock

    def raw_sub(self, address):
        frames = []
        sock = fzmq.SubSocket(fzmq.shared_factory(), frames.append, ("",), [(fzmq._zmq.LINGER, 0)])
        self.addCleanup(sock.close)
        sock.connect(address)
        return sock, frames


class RelayTests(BusTestCase):
    async def test_active_publisher_through_relay(self):
        cfg = bus_config()
        relay = self.start(RelayService(cfg))
        sub, got = self.subscriber(cfg)
        pub = self.start(PublisherService(cfg.replace(active=True)))
        envelope = await pub.publish(topic="log", modname="logger", msg={"log": "h\u00e9llo"})
        await wait_for(lambda: got, what="message through the relay")
        name, endpoint, topic, msg = got[0]
        self.assertEqual((name, endpoint), ("relay_outbound", cfg["endpoints"]["relay_outbound"][0]))
        self.assertEqual(topic, "org.fedoraproject.dev.logger.log")
        self.assertEqual(msg, envelope)
        self.assertEqual(relay.counters.get("forwarded"), 1)

    async def test_original_bytes_forwarded_unchanged(self):
        cfg = bus_config()
        self.start(RelayService(cfg))
        _, frames = self.raw_sub(cfg["endpoints"]["relay_outbound"][0])
        pub = self.raw_pub(cfg["relay_inbound"][0])
        await wait_for(pub.has_subscriber, what="relay subscription")
        # Not the canonical form: spaces, unsorted keys, a float timestamp.
        body = b'{"topic": "a.dev.x.y", "msg": {"z": 1, "a": 2.50}, "timestamp": 1.5}'
        await sleep(0.2)  # let the raw subscriber's subscription reach the relay
        pub.send_frames([b"a.dev.x.y", body])
        await wait_for(lambda: frames, what="forwarded frames")
        self.assertEqual(frames[0], [b"a.dev.x.y", body])

    async def test_garbage_dropped_counted_next_delivered(self):
        cfg = bus_config(max_message_size=1024 * 1024)
        relay = self.start(RelayService(cfg))
        sub, got = self.subscriber(cfg)
        pub = self.raw_pub(cfg["relay_inbound"][0])
        await wait_for(pub.has_subscriber, what="relay subscription")
        await sleep(0.2)
        garbage = [
            [b"one frame only"],
            [b"a.b", b'{"msg":{},"topic":"a.b"}', b"third"],
            [b"a.b", b"\xff\xfe\xfd"],
            [b"a.b", b"not json at all"],
            [b"a.b", b"[1, 2, 3]"],
            [b"a.b", b'{"msg":"' + b"x" * (3 * 1024 * 1024) + b'","topic":"a.b"}'],
            [b"a.b", b'{"msg":{},"topic":"c.d"}'],
        ]
        for frames in garbage:
            pub.send_frames(frames)
        pub.send_frames([b"a.b", b'{"msg":{"ok":true},"topic":"a.b"}'])
        await wait_for(lambda: got, what="the valid message")
        await sleep(0.1)
        self.assertEqual([g[3]["msg"] for g in got], [{"ok": True}])
        self.assertEqual(relay.counters.get("dropped"), len(garbage))
        for reason, n in [("bad-frames", 2), ("not-utf8", 1), ("not-json", 1), ("not-an-object", 1), ("too-large", 1), ("topic-mismatch", 1)]:
            self.assertEqual(relay.counters.get("dropped", reason), n, reason)
        self.assertTrue(relay.running)

    def test_refuses_taken_address(self):
        cfg = bus_config()
        self.start(RelayService(cfg))
        second = RelayService(cfg)
        with self.assertRaises(fzmq.BindError) as cm:
            second.startService()
        self.assertIn(cfg["endpoints"]["relay_outbound"][0], str(cm.exception))
        self.assertFalse(second.running)

    def test_refuses_taken_inbound(self):
        cfg = bus_config()
        self.start(RelayService(cfg))
        other = cfg.replace(endpoints={"relay_outbound": [tcp(free_port())]})
        with self.assertRaises(fzmq.BindError) as cm:
            RelayService(other).startService()
        self.assertIn(cfg["relay_inbound"][0], str(cm.exception))

    async def test_stop_twice(self):
        relay = RelayService(bus_config())
        relay.startService()
        await relay.stopService()
        await relay.stopService()
        self.assertFalse(relay.running)


class PublisherTests(BusTestCase):
    async def test_passive_publish_to_subscriber(self):
        port = free_port()
        cfg = bus_config(name="svc", endpoints={"svc": [tcp(port)]})
        pub = self.start(PublisherService(cfg))
        self.assertEqual(pub.address, tcp(port))
        sub, got = self.subscriber(cfg, topics=["org.fedoraproject.dev.svc.a", "org.fedoraproject.dev.svc.c"])
        await wait_for(pub.has_subscriber, what="subscriber")
        for t in ("a", "b", "c"):
            await pub.publish(topic=t, modname="svc", msg={"t": t})
        await wait_for(lambda: len(got) == 2, what="two subscribed topics")
        await sleep(0.1)
        self.assertEqual([g[3]["msg"]["t"] for g in got], ["a", "c"])
        self.assertEqual({(g[0], g[1]) for g in got}, {("svc", tcp(port))})

    async def test_slow_joiner_messages_are_held_not_lost(self):
        port = free_port()
        cfg = bus_config(name="svc", endpoints={"svc": [tcp(port)]})
        pub = self.start(PublisherService(cfg))
        sent = [pub.publish(topic="t", modname="svc", msg={"n": n}) for n in range(5)]
        await sleep(0.3)  # the subscriber joins late
        self.assertFalse(any(d.called for d in sent))
        sub, got = self.subscriber(cfg)
        await defer.gatherResults(sent)
        await wait_for(lambda: len(got) == 5, what="all five held messages")
        self.assertEqual([g[3]["msg"]["n"] for g in got], list(range(5)))
        self.assertEqual(pub.counters.get("held"), 5)

    async def test_no_delay_when_subscriber_is_there(self):
        port = free_port()
        cfg = bus_config(name="svc", endpoints={"svc": [tcp(port)]})
        pub = self.start(PublisherService(cfg))
        sub, got = self.subscriber(cfg)
        await wait_for(pub.has_subscriber, what="subscriber")
        d = pub.publish(topic="t", modname="svc", msg={})
        self.assertTrue(d.called)
        await d
        self.assertEqual(pub.counters.get("held"), 0)

    async def test_gives_up_waiting_after_post_init_sleep(self):
        cfg = bus_config(name="svc", endpoints={"svc": [tcp(free_port())]}, post_init_sleep=0.2)
        pub = self.start(PublisherService(cfg))
        envelope = await pub.publish(topic="t", modname="svc", msg={})
        self.assertEqual(envelope["topic"], "org.fedoraproject.dev.svc.t")
        self.assertEqual(pub.counters.get("published"), 1)

    async def test_active_publisher_waits_for_relay(self):
        cfg = bus_config()
        pub = self.start(PublisherService(cfg.replace(active=True)))
        sent = [pub.publish(topic="t", modname="m", msg={"n": n}) for n in range(3)]
        await sleep(0.3)
        self.assertFalse(any(d.called for d in sent))
        relay = RelayService(cfg)  # the relay comes up late
        seen = []
        relay.add_sink(lambda topic, body, envelope: seen.append(envelope["msg"]["n"]))
        self.start(relay)
        await defer.gatherResults(sent)
        # What reaches the relay is what matters here: its own subscribers
        # can only see what is forwarded after they join.
        await wait_for(lambda: len(seen) == 3, what="held messages reaching the late relay")
        self.assertEqual(seen, [0, 1, 2])
        self.assertEqual(pub.counters.get("held"), 3)

    def test_binds_first_free_address(self):
        a, b = free_port(), free_port()
        cfg = bus_config(name="svc", endpoints={"svc": [tcp(a), tcp(b)]})
        first = self.start(PublisherService(cfg))
        second = self.start(PublisherService(cfg))
        self.assertEqual((first.address, second.address), (tcp(a), tcp(b)))
        with self.assertRaises(fzmq.BindError) as cm:
            PublisherService(cfg).startService()
        self.assertIn("Address already in use", str(cm.exception))

    async def test_unserialisable_message_fails_clearly(self):
        cfg = bus_config(name="svc", endpoints={"svc": ["tcp://127.0.0.1:*"]})
        pub = self.start(PublisherService(cfg))
        with self.assertRaises(PublishError) as cm:
            await pub.publish(topic="t", modname="m", msg={"x": object()})
        self.assertIn("not JSON-serialisable", str(cm.exception))

    async def test_publish_when_stopped(self):
        pub = PublisherService(bus_config(name="svc", endpoints={"svc": ["tcp://127.0.0.1:*"]}))
        with self.assertRaises(PublishError):
            await pub.publish(topic="t", modname="m", msg={})


class SubscriberTests(BusTestCase):
    async def test_garbage_straight_to_subscriber(self):
        port = free_port()
        cfg = bus_config(endpoints={"svc": [tcp(port)]})
        raw = self.raw_pub(tcp(port), bind=True)
        sub, got = self.subscriber(cfg)
        await wait_for(raw.has_subscriber, what="subscription")
        raw.send_frames([b"x"])
        raw.send_frames([b"a.b", b"\x80"])
        raw.send_frames([b"a.b", b'"a string"'])
        raw.send_frames([b"a.b", b'{"msg":1,"topic":"a.b"}'])
        await wait_for(lambda: got, what="the valid message")
        self.assertEqual(got[0][2:], ("a.b", {"msg": 1, "topic": "a.b"}))
        self.assertEqual(sub.counters.get("dropped"), 3)

    async def test_failing_callback_does_not_stop_delivery(self):
        port = free_port()
        cfg = bus_config(endpoints={"svc": [tcp(port)]})
        raw = self.raw_pub(tcp(port), bind=True)
        seen = []

        def callback(name, endpoint, topic, msg):
            seen.append(msg["msg"])
            if msg["msg"] == 1:
                raise RuntimeError("consumer bug")

        sub = self.start(SubscriberService(cfg, callback))
        await wait_for(raw.has_subscriber, what="subscription")
        for n in (1, 2):
            raw.send_frames([b"a.b", encoding.dumps_bytes({"msg": n, "topic": "a.b"})])
        await wait_for(lambda: len(seen) == 2, what="both messages")
        self.assertEqual(sub.counters.get("callback-errors"), 1)
        self.flushLoggedErrors(RuntimeError)

    async def test_add_and_remove_endpoint_at_run_time(self):
        port = free_port()
        cfg = bus_config(endpoints={})
        raw = self.raw_pub(tcp(port), bind=True)
        sub, got = self.subscriber(cfg)
        sub.add_endpoint("late", tcp(port))
        await wait_for(raw.has_subscriber, what="subscription after add_endpoint")
        raw.send_frames([b"a.b", b'{"msg":1,"topic":"a.b"}'])
        await wait_for(lambda: got, what="message")
        self.assertEqual(got[0][:2], ("late", tcp(port)))
        sub.remove_endpoint("late", tcp(port))
        await wait_for(lambda: not raw.has_subscriber(), what="unsubscription after remove_endpoint")
