"""
/live, /ready and /metrics over real HTTP on loopback, with real services.
"""

from __future__ import annotations

import json

from twisted.internet import reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from fedmsg_twisted import config
from fedmsg_twisted.health import (
    HealthError,
    HealthService,
    PublisherHealth,
    RelayHealth,
    SubscriberHealth,
    TopicCounter,
    TrackedSubscriberService,
    check_listen,
    health_settings,
    render_metrics,
    topic_depth,
)
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.stats import Counters
from tests.util import free_port, tcp, wait_for


def bus_config(**extra):
    values = {
        "relay_inbound": [tcp(free_port())],
        "endpoints": {"relay_outbound": [tcp(free_port())]},
        "post_init_sleep": 5.0,
    }
    values.update(extra)
    return config.from_dict(values)


class Static:
    """
    A component whose state the test sets (for the HTTP layer alone).
    """

    def __init__(self, name, live=True, ready=True):
        self.name = name
        self.live = live
        self.ready = ready
        self.counters = Counters()

    def is_live(self):
        return self.live

    def is_ready(self):
        return self.ready

    def gauges(self):
        return {"queue_depth": {"A": 3}, "things": 2}


class Broken(Static):
    def is_ready(self):
        raise RuntimeError("boom")


class HTTPTestCase(unittest.TestCase):
    def serve(self, components):
        health = HealthService("tcp:0:interface=127.0.0.1", components)
        health.startService()
        self.addCleanup(health.stopService)
        self.base = f"http://127.0.0.1:{health.port.getHost().port}"
        return health

    async def get(self, path, method=b"GET"):
        agent = Agent(reactor)
        response = await agent.request(method, (self.base + path).encode())
        body = await readBody(response)
        return response.code, response.headers, body

    async def ready(self, path="/ready"):
        code, _, body = await self.get(path)
        return code, json.loads(body)


class HealthHTTPTests(HTTPTestCase):
    async def test_live_and_ready(self):
        a, b = Static("relay"), Static("hub", ready=False)
        self.serve([a, b])
        code, report = await self.ready("/live")
        self.assertEqual(code, 200)
        self.assertTrue(report["live"])
        code, report = await self.ready()
        self.assertEqual(code, 503)
        self.assertEqual(report["components"]["relay"]["ready"], True)
        self.assertEqual(report["components"]["hub"]["ready"], False)
        code, _ = await self.ready("/ready?component=relay")
        self.assertEqual(code, 200)
        b.ready = True
        code, report = await self.ready()
        self.assertEqual((code, report["ready"]), (200, True))
        a.live = False
        code, _ = await self.ready("/live")
        self.assertEqual(code, 503)

    async def test_unknown_component_is_not_ready(self):
        self.serve([Static("relay")])
        code, report = await self.ready("/ready?component=nope")
        self.assertEqual(code, 503)
        self.assertEqual(report["components"]["nope"]["error"], "no such component")

    async def test_unknown_path_404_and_other_methods_405(self):
        self.serve([Static("relay")])
        code, _, _ = await self.get("/")
        self.assertEqual(code, 404)
        code, _, _ = await self.get("/ready/extra")
        self.assertEqual(code, 404)
        for method in (b"POST", b"PUT", b"DELETE"):
            code, headers, _ = await self.get("/ready", method)
            self.assertEqual(code, 405, method)
            self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        code, _, _ = await self.get("/metrics", b"POST")
        self.assertEqual(code, 405)
        code, _, body = await self.get("/ready", b"HEAD")
        self.assertEqual((code, body), (200, b""))

    async def test_broken_component_reported_not_ready(self):
        self.serve([Broken("bot"), Static("relay")])
        code, report = await self.ready()
        self.assertEqual(code, 503)
        self.assertFalse(report["components"]["bot"]["ready"])
        code, _, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'fedmsg_ready{component="bot"} 0', body)
        self.flushLoggedErrors(RuntimeError)

    async def test_metrics_format(self):
        s = Static("hub")
        s.counters.incr("dropped", "not-json", 2)
        s.counters.incr("received")
        s.counters.incr("messages_in", 'a"b\\c')
        self.serve([s])
        code, headers, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4"))
        text = body.decode()
        self.assertIn("# TYPE fedmsg_dropped_total counter\n", text)
        self.assertIn('fedmsg_dropped_total{component="hub",reason="not-json"} 2\n', text)
        self.assertIn('fedmsg_received_total{component="hub"} 1\n', text)
        self.assertIn('fedmsg_messages_in_total{component="hub",topic="a\\"b\\\\c"} 1\n', text)
        self.assertIn('fedmsg_queue_depth{component="hub",consumer="A"} 3\n', text)
        self.assertIn('fedmsg_things{component="hub"} 2\n', text)
        self.assertIn('fedmsg_up{component="hub"} 1\n', text)
        # One TYPE line per family.
        self.assertEqual(text.count("# TYPE fedmsg_dropped_total"), 1)

    def test_replay_and_archive_counters(self):
        from fedmsg_twisted.store import MirroredCounter

        s = Static("relay")
        replay = MirroredCounter("replay", s.counters)
        replay["requests"] += 3
        replay["no_match"] += 1
        text = render_metrics([s])
        self.assertIn('fedmsg_replay_total{component="relay",event="requests"} 3\n', text)
        self.assertIn('fedmsg_replay_total{component="relay",event="no_match"} 1\n', text)

    def test_port_taken_is_a_clear_error(self):
        health = self.serve([Static("relay")])
        port = health.port.getHost().port
        other = HealthService(f"tcp:{port}:interface=127.0.0.1", [Static("relay")])
        e = self.assertRaises(HealthError, other.startService)
        self.assertIn(f"cannot listen on 'tcp:{port}:interface=127.0.0.1'", str(e))
        self.assertFalse(other.running)

    def test_stop_twice(self):
        health = self.serve([Static("relay")])
        health.stopService()
        health.stopService()


class SettingsTests(unittest.TestCase):
    def test_bad_listen(self):
        for bad in ("", "tcp:notaport", "nosuchkind:1", 9941, ["tcp:1"]):
            self.assertRaises(HealthError, check_listen, bad)
        self.assertIsNone(check_listen(None))

    def test_bad_window(self):
        cfg = config.from_dict({})
        for bad in (-1, "5", True):
            e = self.assertRaises(HealthError, health_settings, cfg, None, bad)
            self.assertIn("health_ready_window", str(e))
        self.assertEqual(health_settings(cfg, "tcp:0", 3), ("tcp:0", 3.0))

    def test_duplicate_names(self):
        self.assertRaises(HealthError, HealthService, "tcp:0", [Static("a"), Static("a")])

    def test_topic_labels_bounded(self):
        counters = Counters()
        tc = TopicCounter(counters, depth=4, limit=3)
        for i in range(10):
            tc.count("messages_in", f"org.fedoraproject.prod.svc{i}.thing.done")
        tc.count("messages_in", "org.fedoraproject.prod.svc0.other")
        labels = {label for name, label, _ in counters.items()}
        self.assertEqual(labels, {"org.fedoraproject.prod.svc0", "org.fedoraproject.prod.svc1", "org.fedoraproject.prod.svc2", "other"})
        self.assertEqual(counters.get("messages_in", "org.fedoraproject.prod.svc0"), 2)
        self.assertEqual(counters.get("messages_in", "other"), 7)

    def test_topic_depth(self):
        self.assertEqual(topic_depth(config.from_dict({"topic_prefix": "org.debian"})), 4)
        self.assertEqual(topic_depth({"topic_prefix": "a", "metrics_topic_depth": 2}), 2)
        self.assertRaises(HealthError, topic_depth, {"metrics_topic_depth": -1})


class BusHealthTests(HTTPTestCase):
    """
    Readiness of real services on loopback zmq.
    """

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def test_relay_ready_when_bound_and_metrics_per_topic(self):
        cfg = bus_config()
        relay = RelayService(cfg)
        component = RelayHealth(relay)
        self.serve([component])
        code, _ = await self.ready()
        self.assertEqual(code, 503)
        self.start(relay)
        code, report = await self.ready()
        self.assertEqual(code, 200)
        self.assertEqual(report["components"]["relay"]["details"]["outbound"], cfg["endpoints"]["relay_outbound"][0])
        got = []
        self.start(TrackedSubscriberService(cfg, lambda *a: got.append(a)))
        pub = self.start(PublisherService(cfg.replace(active=True)))
        await pub.publish(topic="thing.done", modname="svc", msg={})
        await wait_for(lambda: got, what="message through the relay")
        _, _, body = await self.get("/metrics")
        text = body.decode()
        self.assertIn('fedmsg_messages_out_total{component="relay",topic="org.fedoraproject.dev.svc"} 1\n', text)
        self.assertIn('fedmsg_forwarded_total{component="relay"} 1\n', text)
        await relay.stopService()
        code, _ = await self.ready()
        self.assertEqual(code, 503)

    async def test_subscriber_ready_follows_upstream(self):
        cfg = bus_config()
        sub = TrackedSubscriberService(cfg, lambda *a: None)
        self.serve([SubscriberHealth(sub, "hub")])
        self.start(sub)
        # Nothing to connect to yet: running, but not ready.
        code, report = await self.ready()
        self.assertEqual(code, 503)
        self.assertEqual(report["components"]["hub"]["details"]["connected"], False)
        relay = self.start(RelayService(cfg))
        await wait_for(lambda: sub.connected_count() == 1, what="subscriber connected")
        code, _ = await self.ready()
        self.assertEqual(code, 200)
        # The upstream goes away: not ready any more.
        await relay.stopService()
        await wait_for(lambda: sub.connected_count() == 0, what="disconnect seen")
        code, report = await self.ready()
        self.assertEqual(code, 503)
        # And back.
        self.start(RelayService(cfg))
        await wait_for(lambda: sub.connected_count() == 1, what="reconnected")
        code, _ = await self.ready()
        self.assertEqual(code, 200)
        self.assertEqual(sub.counters.get("disconnections"), 1)

    async def test_ready_window(self):
        cfg = bus_config()
        clock = task.Clock()
        clock.advance(1000)
        self.start(RelayService(cfg))
        got = []
        sub = self.start(TrackedSubscriberService(cfg, lambda *a: got.append(a), reactor=clock))
        component = SubscriberHealth(sub, "hub", window=60, reactor=clock)
        await wait_for(lambda: sub.connected_count() == 1, what="subscriber connected")
        # Connected but nothing heard within the window yet.
        self.assertFalse(component.is_ready())
        pub = self.start(PublisherService(cfg.replace(active=True)))
        await pub.publish(topic="x", modname="svc", msg={})
        await wait_for(lambda: got, what="message")
        self.assertTrue(component.is_ready())
        clock.advance(59)
        self.assertTrue(component.is_ready())
        self.assertEqual(component.gauges()["last_message_age_seconds"], 59.0)
        clock.advance(2)
        self.assertFalse(component.is_ready())
        # Without a window, connection state alone decides.
        self.assertTrue(SubscriberHealth(sub, "hub", reactor=clock).is_ready())

    async def test_publisher_ready_once_subscribed(self):
        cfg = bus_config(endpoints={"svc": [tcp(free_port())]}, name="svc")
        pub = self.start(PublisherService(cfg))
        component = PublisherHealth(pub)
        self.assertFalse(component.is_ready())
        self.start(TrackedSubscriberService(cfg, lambda *a: None))
        await wait_for(component.is_ready, what="subscription seen")
        self.assertIn('fedmsg_has_subscriber{component="publisher"} 1', render_metrics([component]))
