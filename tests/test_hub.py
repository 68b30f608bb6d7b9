"""
The hub: consumers isolated from each other, bounded queues, draining stop;
in process over loopback zmq, and as C{twistd -n fedmsg-hub}.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.python import usage
from twisted.trial import unittest

import tests
from fedmsg_twisted import config
from fedmsg_twisted.consumer import Consumer, ConsumerError, normalize_topics
from fedmsg_twisted.crypto import Signer, Validator
from fedmsg_twisted.hub import HubHealth, HubService, load_consumer
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from tests.certs import make_pki
from tests.test_gateway import http_get, stop_cleanly, twistd, wait_http, write_config
from tests.util import free_port, sleep, spawn, tcp, wait_for

log = Logger(namespace="tests.test_hub")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))

# -- consumers used here and by the hub processes (tests.test_hub:Name) --------


class Recorder(Consumer):
    topic = "*"

    def __init__(self, config, hub=None):
        super().__init__(config, hub)
        self.seen = []

    def consume(self, message):
        self.seen.append(message)
        log.info("RECORDED {topic} {n}", topic=message["topic"], n=message["body"]["msg"].get("n"))


class Raiser(Consumer):
    topic = ["org.fedoraproject.dev.svc.*", "org.fedoraproject.dev.other"]

    def consume(self, message):
        raise ValueError(f"I always fail ({message['body']['msg'].get('n')})")


class Mutator(Consumer):
    def consume(self, message):
        message["body"]["msg"]["n"] = "mutated"
        message["body"].clear()


class Slow(Consumer):
    """
    Takes 0.05 s (on the reactor) per message.
    """

    topic = "org.fedoraproject.dev.svc"

    def consume(self, message):
        n = message["body"]["msg"].get("n")
        return task.deferLater(reactor, 0.05, lambda: log.info("SLOW DONE {n}", n=n))


class NotAConsumer:
    pass


def bus_values(**extra):
    values = {
        "relay_inbound": [tcp(free_port())],
        "endpoints": {"relay_outbound": [tcp(free_port())]},
        "post_init_sleep": 5.0,
    }
    values.update(extra)
    return values


class HubTestCase(unittest.TestCase):
    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def bus(self, consumers, **kw):
        cfg = config.from_dict(bus_values())
        self.start(RelayService(cfg))
        hub = self.start(HubService(cfg, consumers, **kw))
        await wait_for(lambda: hub.subscriber.connected_count() == 1, what="hub connected")
        pub = self.start(PublisherService(cfg.replace(active=True)))
        return cfg, hub, pub

    def worker(self, hub, name):
        return next(w for w in hub.workers if w.name == name)


class ConsumerIsolationTests(HubTestCase):
    async def test_raising_consumer_does_not_stop_neighbours(self):
        cfg, hub, pub = await self.bus([Raiser, Recorder])
        for n in range(5):
            await pub.publish(topic="thing", modname="svc", msg={"n": n})
        recorder = self.worker(hub, "Recorder").consumer
        await wait_for(lambda: len(recorder.seen) == 5, what="five messages recorded")
        self.assertEqual([m["body"]["msg"]["n"] for m in recorder.seen], [0, 1, 2, 3, 4])
        self.assertEqual(hub.counters.get("consumer_errors", "Raiser"), 5)
        self.assertEqual(hub.counters.get("consumed", "Recorder"), 5)
        self.assertEqual(hub.counters.get("consumed", "Raiser"), 0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 5)

    async def test_mutating_consumer_cannot_harm_another(self):
        cfg, hub, pub = await self.bus([Mutator, Recorder])
        await pub.publish(topic="thing", modname="svc", msg={"n": 1})
        recorder = self.worker(hub, "Recorder").consumer
        await wait_for(lambda: recorder.seen, what="message recorded")
        self.assertEqual(recorder.seen[0]["body"]["msg"], {"n": 1})
        self.assertEqual(recorder.seen[0]["topic"], "org.fedoraproject.dev.svc.thing")
        self.assertEqual(recorder.seen[0]["name"], "relay_outbound")

    async def test_topics(self):
        class OnlyA(Recorder):
            topic = "org.fedoraproject.dev.a.*"

        cfg, hub, pub = await self.bus([OnlyA, Recorder])
        self.assertEqual(hub.subscriber.topics, ("",))
        for mod in ("b", "a", "ab", "b"):
            await pub.publish(topic="x", modname=mod, msg={})
        everything = self.worker(hub, "Recorder").consumer
        await wait_for(lambda: len(everything.seen) == 4, what="all messages")
        self.assertEqual([m["topic"] for m in self.worker(hub, "OnlyA").consumer.seen], ["org.fedoraproject.dev.a.x"])

    async def test_plain_class_with_consume_works(self):
        seen = []

        class Plain:
            topic = "org.fedoraproject.dev.svc.*"

            def __init__(self, config, hub):
                self.config = config

            def consume(self, message):
                seen.append(message["topic"])

        cfg, hub, pub = await self.bus([Plain])
        await pub.publish(topic="thing", modname="svc", msg={})
        await wait_for(lambda: seen, what="plain consumer called")
        self.assertEqual(hub.workers[0].name, "Plain")
        self.assertEqual(hub.subscriber.topics, ("org.fedoraproject.dev.svc.",))

    def test_subscription_is_the_union(self):
        class A(Recorder):
            topic = "org.x.a.*"

        class B(Recorder):
            topic = ["org.x.b", "org.x.a.*"]

        hub = HubService(config.from_dict({}), [A, B])
        self.assertEqual(hub.subscriber.topics, ("org.x.a.", "org.x.b"))

    async def test_slow_consumer_bounded_queue_drops_oldest(self):
        release = []

        class Stuck(Consumer):
            def consume(self, message):
                d = defer.Deferred()
                release.append((message["body"]["msg"]["n"], d))
                return d

        Stuck.queue_size = 2
        cfg, hub, pub = await self.bus([Stuck, Recorder])
        for n in range(5):
            await pub.publish(topic="thing", modname="svc", msg={"n": n})
        recorder = self.worker(hub, "Recorder").consumer
        await wait_for(lambda: len(recorder.seen) == 5, what="neighbour got everything")
        stuck = self.worker(hub, "Stuck")
        # One in progress, the two newest waiting, the two oldest waiting ones dropped.
        self.assertEqual([n for n, _ in release], [0])
        self.assertEqual([m["body"]["msg"]["n"] for m in stuck.queue], [3, 4])
        self.assertEqual(hub.counters.get("consumer_dropped", "Stuck"), 2)
        self.assertEqual(HubHealth(hub).gauges()["queue_depth"], {"Stuck": 2, "Recorder": 0})
        # Concurrency 1: the next starts only when the previous is done.
        release[0][1].callback(None)
        self.assertEqual([n for n, _ in release], [0, 3])
        release[1][1].errback(RuntimeError("async failure"))
        self.assertEqual([n for n, _ in release], [0, 3, 4])
        release[2][1].callback(None)
        self.assertFalse(stuck.busy)
        self.assertEqual(hub.counters.get("consumed", "Stuck"), 2)
        self.assertEqual(hub.counters.get("consumer_errors", "Stuck"), 1)
        self.flushLoggedErrors(RuntimeError)


class ShutdownTests(HubTestCase):
    async def test_stop_drains_queues(self):
        done = []

        class Tortoise(Consumer):
            def consume(self, message):
                return task.deferLater(reactor, 0.01, done.append, message["body"]["msg"]["n"])

        cfg, hub, pub = await self.bus([Tortoise])
        for n in range(10):
            await pub.publish(topic="thing", modname="svc", msg={"n": n})
        await wait_for(lambda: hub.counters.get("delivered") == 10, what="all delivered")
        self.assertLess(len(done), 10)
        await hub.stopService()
        self.assertEqual(done, list(range(10)))
        self.assertEqual(hub.counters.get("dropped", "shutdown"), 0)
        # Twice is fine.
        await hub.stopService()

    async def test_stop_gives_up_after_timeout(self):
        stopped = []

        class Never(Consumer):
            def consume(self, message):
                return defer.Deferred()

            def stop(self):
                stopped.append(True)
                return defer.Deferred()  # never fires: bounded by shutdown_timeout too

        cfg, hub, pub = await self.bus([Never], shutdown_timeout=0.1)
        for n in range(4):
            await pub.publish(topic="thing", modname="svc", msg={"n": n})
        await wait_for(lambda: hub.counters.get("delivered") == 4, what="all delivered")
        await hub.stopService()
        self.assertEqual(hub.counters.get("dropped", "shutdown"), 3)
        self.assertEqual(hub.counters.get("consumer_dropped", "Never"), 3)
        self.assertEqual(stopped, [True])


class ValidationTests(HubTestCase):
    async def test_per_consumer_validation(self):
        pki = make_pki(self.mktemp())
        pki.issue("svc-host.example.org", name="svc.host")

        class Strict(Recorder):
            validate_signatures = True

        class Lax(Recorder):
            validate_signatures = False

        values = bus_values(**pki.certname_config(), certnames={"svc.host": "svc.host"})
        cfg = config.from_dict(values)
        validator = Validator.from_config(cfg)
        self.start(RelayService(cfg))
        hub = self.start(HubService(cfg, [Strict, Lax], validator=validator, stop_validator=True))
        await wait_for(lambda: hub.subscriber.connected_count() == 1, what="hub connected")
        signed = self.start(PublisherService(cfg.replace(active=True), signer=Signer.from_config(cfg, name="svc.host")))
        unsigned = self.start(PublisherService(cfg.replace(active=True)))
        await signed.publish(topic="thing", modname="svc", msg={"n": 1})
        await unsigned.publish(topic="thing", modname="svc", msg={"n": 2})
        lax = self.worker(hub, "Lax").consumer
        await wait_for(lambda: len(lax.seen) == 2, what="both messages")
        strict = self.worker(hub, "Strict")
        await wait_for(lambda: not strict.busy, what="validation done")
        self.assertEqual([m["body"]["msg"]["n"] for m in strict.consumer.seen], [1])
        self.assertEqual(hub.counters.get("rejected"), 1)

    def test_validation_needs_a_validator(self):
        class Strict(Recorder):
            validate_signatures = True

        e = self.assertRaises(ConsumerError, HubService, config.from_dict({}), [Strict])
        self.assertIn("no validator", str(e))


class BadInputTests(unittest.TestCase):
    def test_normalize_topics(self):
        self.assertEqual(normalize_topics("*"), ("",))
        self.assertEqual(normalize_topics("a.b.*"), ("a.b.",))
        self.assertEqual(normalize_topics(["a", "b*", "a"]), ("a", "b"))
        for bad in ("a.*.c", [], 5, ["a", 1], None):
            self.assertRaises(ConsumerError, normalize_topics, bad)

    def test_load_consumer(self):
        self.assertIs(load_consumer("tests.test_hub:Recorder"), Recorder)
        for spec, text in (
            ("tests.test_hub:Nope", "has no 'Nope'"),
            ("no.such.module:X", "cannot import 'no.such.module'"),
            ("tests.test_hub:NotAConsumer", "not a consumer class"),
            ("justaname", "no 'fedmsg_twisted.consumers' entry point"),
            (":X", "expected module:Class"),
            ("", "module:Class"),
        ):
            e = self.assertRaises(ConsumerError, load_consumer, spec)
            self.assertIn(text, str(e))

    def test_hub_settings(self):
        cfg = config.from_dict({})
        self.assertRaises(ConsumerError, HubService, cfg, [])
        self.assertRaises(ConsumerError, HubService, cfg, [Recorder], queue_size=0)
        self.assertRaises(ConsumerError, HubService, cfg, [Recorder], shutdown_timeout=-1)
        self.assertRaises(ConsumerError, HubService, cfg, [Recorder, Recorder])

        class BadTopic(Recorder):
            topic = "a*b"

        self.assertRaises(ConsumerError, HubService, cfg, [BadTopic])

    def test_tap_options(self):
        from fedmsg_twisted import hub_tap

        for argv, text in (
            (["--consumer", "nope:X"], "cannot import"),
            (["--consumer", "tests.test_hub:Recorder", "--queue-size", "0"], "--queue-size"),
            (["--consumer", "tests.test_hub:Recorder", "--health-listen", "bad:1"], "health_listen"),
            (["--consumer", "tests.test_hub:Recorder", "--ready-window", "-2"], "health_ready_window"),
        ):
            e = self.assertRaises(usage.UsageError, hub_tap.Options().parseOptions, argv)
            self.assertIn(text, str(e))
        opts = hub_tap.Options()
        opts.parseOptions(["--consumer", "tests.test_hub:Recorder", "--consumer", "tests.test_hub:Raiser"])
        top = hub_tap.makeService(opts)
        hub = list(top)[0]
        self.assertEqual([w.name for w in hub.workers], ["Recorder", "Raiser"])


def entry_point_dir(testcase, names: dict[str, str]) -> str:
    """
    A directory holding an installed distribution's metadata with
    C{fedmsg_twisted.consumers} entry points: real entry points, no install.
    """
    root = testcase.mktemp()
    info = os.path.join(root, "hubtest_consumers-1.0.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: hubtest-consumers\nVersion: 1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[fedmsg_twisted.consumers]\n" + "".join(f"{k} = {v}\n" for k, v in names.items()))
    return root


class HubProcessTests(HubTestCase):
    timeout = 60
    def spawn_hub(self, values, *args, pythonpath=()):
        hport = free_port()
        env = {"PYTHONPATH": os.pathsep.join([*pythonpath, ROOT])}
        proc = spawn(
            self,
            twistd("fedmsg-hub", "--config", write_config(self, values), "--health-listen", f"tcp:{hport}:interface=127.0.0.1", *args),
            env=env,
        )
        return proc, f"http://127.0.0.1:{hport}"

    async def test_entry_points_failing_consumer_and_readiness(self):
        values = bus_values()
        cfg = config.from_dict(values)
        relay = self.start(RelayService(cfg))
        eps = entry_point_dir(self, {"recorder": "tests.test_hub:Recorder", "raiser": "tests.test_hub:Raiser"})
        proc, base = self.spawn_hub(values, pythonpath=[eps])
        await wait_http(base + "/ready", 200, proc, "hub ready")
        pub = self.start(PublisherService(cfg.replace(active=True)))
        for n in range(3):
            await pub.publish(topic="thing", modname="svc", msg={"n": n})
        await wait_for(lambda: sum("RECORDED" in line for line in proc.lines) == 3, what="three recorded")
        self.assertEqual(
            [line.split("RECORDED ")[1] for line in proc.lines if "RECORDED" in line],
            [f"org.fedoraproject.dev.svc.thing {n}" for n in range(3)],
        )
        code, body = await http_get(base + "/metrics")
        text = body.decode()
        self.assertIn('fedmsg_consumer_errors_total{component="hub",consumer="Raiser"} 3\n', text)
        self.assertIn('fedmsg_consumed_total{component="hub",consumer="Recorder"} 3\n', text)
        self.assertIn('fedmsg_queue_depth{component="hub",consumer="Raiser"} 0\n', text)
        self.assertIn('fedmsg_messages_in_total{component="hub",topic="org.fedoraproject.dev.svc"} 3\n', text)
        self.assertEqual(sum("Consumer Raiser failed on" in line for line in proc.lines), 3)
        # The upstream goes away: not ready; it comes back: ready.
        await relay.stopService()
        await wait_http(base + "/ready", 503, proc, "hub unready")
        self.start(RelayService(cfg))
        await wait_http(base + "/ready", 200, proc, "hub ready again")
        await stop_cleanly(self, proc)

    async def test_sigterm_drains_queue(self):
        values = bus_values()
        cfg = config.from_dict(values)
        self.start(RelayService(cfg))
        proc, base = self.spawn_hub(values, "--consumer", "tests.test_hub:Slow", "--shutdown-timeout", "30")
        await wait_http(base + "/ready", 200, proc, "hub ready")
        pub = self.start(PublisherService(cfg.replace(active=True)))
        for n in range(6):
            await pub.publish(topic="thing", modname="svc", msg={"n": n})

        async def delivered():
            _, body = await http_get(base + "/metrics")
            return b'fedmsg_delivered_total{component="hub"} 6\n' in body

        for _ in range(500):
            if await delivered():
                break
            await sleep(0.02)
        await stop_cleanly(self, proc)
        done = [line.split("SLOW DONE ")[1] for line in proc.lines if "SLOW DONE" in line]
        self.assertEqual(done, [str(n) for n in range(6)])
        self.assertLess(
            max(i for i, line in enumerate(proc.lines) if "SLOW DONE" in line),
            min(i for i, line in enumerate(proc.lines) if "Server Shut Down." in line),
        )

    async def test_no_consumers_is_a_clear_error(self):
        proc = spawn(self, twistd("fedmsg-hub"), env={"PYTHONPATH": ROOT})
        code = await proc.ended
        self.assertNotEqual(code, 0)
        self.assertIn("no consumers", proc.stderr.decode() + "\n".join(proc.lines))

    async def test_consumer_setup_errors_are_one_line(self):
        moddir = self.mktemp()
        os.makedirs(moddir)
        with open(os.path.join(moddir, "hubtest_bad.py"), "w") as f:
            f.write(
                "from fedmsg_twisted.consumer import Consumer\n"
                "class Strict(Consumer):\n"
                "    validate_signatures = True\n"
                "    def consume(self, m): pass\n"
                "class Boom(Consumer):\n"
                "    def __init__(self, config, hub=None):\n"
                "        raise RuntimeError('no database')\n"
                "    def consume(self, m): pass\n"
            )
        env = {"PYTHONPATH": os.pathsep.join([moddir, ROOT])}
        for spec, text in (
            ("hubtest_bad:Strict", "cannot validate signatures: crypto: validating x509 signatures needs 'ca_cert_location'"),
            ("hubtest_bad:Boom", "fedmsg-hub: cannot start: no database"),
        ):
            proc = spawn(self, twistd("fedmsg-hub", "--consumer", spec), env=env)
            code = await proc.ended
            self.assertEqual(code, 1, spec)
            output = proc.stderr.decode() + "\n".join(proc.lines)
            self.assertIn(text, output)
            self.assertNotIn("Traceback", output)


class DiscoveryTests(HubTestCase):
    async def test_hub_follows_srv_records(self):
        from fedmsg_twisted import hub_tap
        from tests.dnsserver import DNSServer

        server = await DNSServer.start(self, zone="test", ttl=1)
        relay_out = free_port()
        values = bus_values(endpoints={"relay_outbound": [tcp(relay_out)]})
        cfg = config.from_dict(values)
        self.start(RelayService(cfg))
        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, relay_out, "localhost.")])
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(
                f'relay_inbound = {json.dumps(values["relay_inbound"])}\n'
                f'srv_endpoints = ["site.test"]\nsrv_nameservers = ["{server.address}"]\n'
                "[endpoints]\n"
            )
        opts = hub_tap.Options()
        opts.parseOptions(["--config", path, "--consumer", "tests.test_hub:Recorder"])
        top = hub_tap.makeService(opts)
        self.start(top)
        hub = next(s for s in top if isinstance(s, HubService))
        await wait_for(lambda: hub.subscriber.connected_count() == 1, what="connected through SRV")
        self.assertEqual(hub.subscriber.endpoints(), {"site.test": (f"tcp://localhost:{relay_out}",)})
        pub = self.start(PublisherService(cfg.replace(active=True)))
        await pub.publish(topic="thing", modname="svc", msg={"n": 7})
        recorder = self.worker(hub, "Recorder").consumer
        await wait_for(lambda: recorder.seen, what="message via the discovered relay")
        self.assertEqual(recorder.seen[0]["name"], "site.test")
        # The service is withdrawn (RFC 2782 target "."): the hub disconnects.
        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, 0, ".")])
        await wait_for(lambda: not hub.subscriber.endpoints().get("site.test"), what="endpoint removed", timeout=15)
        self.assertEqual(hub.subscriber.connected_count(), 0)
