"""
Tests for L{fedmsg_twisted.discovery}.

Unit tests drive L{SRVDiscoveryService} with a L{task.Clock} and a scripted
C{resolve} (the DNS lookup is replaced there only so TTL floors of seconds
and caps of an hour can be checked exactly without waiting).  The
integration tests use the real reactor, dnspython in the thread pool, and a
real twisted.names authoritative server on loopback (L{tests.dnsserver})
whose records change while the service runs.
"""

from __future__ import annotations

import socket

import dns.rdata
import dns.rdataclass
import dns.rdatatype
from twisted.internet import defer, task, threads
from twisted.trial import unittest

from fedmsg_twisted import discovery
from fedmsg_twisted.config import ConfigError, from_dict
from fedmsg_twisted.discovery import (
    DiscoveryError,
    Resolution,
    SRVDiscoveryService,
    SRVRecord,
    parse_nameservers,
    resolve_srv_endpoints,
    srv_to_endpoints,
    static_endpoints,
)
from tests.dnsserver import DNSServer
from tests.util import wait_for


def _srv(text: str):
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV, text)


def _config(**kw):
    return from_dict(kw, strict=False)


class SRVToEndpointsTests(unittest.TestCase):
    def test_order_priority_then_weight(self):
        records = [
            SRVRecord(20, 100, 1, "c.example."),
            SRVRecord(10, 5, 2, "b.example."),
            SRVRecord(10, 50, 3, "a.example."),
            SRVRecord(10, 0, 4, "z.example."),
        ]
        self.assertEqual(
            srv_to_endpoints(records),
            ["tcp://a.example:3", "tcp://b.example:2", "tcp://z.example:4", "tcp://c.example:1"],
        )

    def test_equal_weights_deterministic(self):
        records = [SRVRecord(0, 10, 2, "b.example."), SRVRecord(0, 10, 1, "b.example."), SRVRecord(0, 10, 9, "a.example.")]
        expected = ["tcp://a.example:9", "tcp://b.example:1", "tcp://b.example:2"]
        self.assertEqual(srv_to_endpoints(records), expected)
        self.assertEqual(srv_to_endpoints(reversed(records)), expected)

    def test_dnspython_rdata(self):
        """
        dnspython SRV rdata works; the trailing dot goes, the case is folded.
        """
        records = [_srv("1 0 9941 Bus2.Example.ORG."), _srv("0 0 9940 bus.example.org.")]
        self.assertEqual(srv_to_endpoints(records), ["tcp://bus.example.org:9940", "tcp://bus2.example.org:9941"])

    def test_dot_target_and_duplicates(self):
        records = [SRVRecord(0, 0, 0, "."), SRVRecord(0, 1, 9940, "a.example."), SRVRecord(1, 1, 9940, "a.example")]
        self.assertEqual(srv_to_endpoints(records), ["tcp://a.example:9940"])
        self.assertEqual(srv_to_endpoints([_srv("0 0 0 .")]), [])


class StaticEndpointsTests(unittest.TestCase):
    def test_relay_inbound_skipped(self):
        """
        Like fedmsg, the endpoints entry named relay_inbound is skipped.
        """
        cfg = _config(
            endpoints={
                "relay_outbound": ["tcp://r:4001"],
                "relay_inbound": ["tcp://r:2003"],
                "app.host": ["tcp://h:3000", "tcp://h:3000", "tcp://h:3001"],
                "empty": [],
            },
        )
        self.assertEqual(
            static_endpoints(cfg),
            {"relay_outbound": ("tcp://r:4001",), "app.host": ("tcp://h:3000", "tcp://h:3001")},
        )


class ConfigCheckTests(unittest.TestCase):
    def test_nameserver_forms(self):
        self.assertEqual(
            parse_nameservers(["192.0.2.1", "192.0.2.2:5353", "::1", "[2001:db8::1]:54", "[::1]"]),
            (("192.0.2.1", 53), ("192.0.2.2", 5353), ("::1", 53), ("2001:db8::1", 54), ("::1", 53)),
        )

    def test_bad_nameservers(self):
        for bad in ["not an ip:xx", "ns.example.org", "192.0.2.1:0", "192.0.2.1:70000", "192.0.2.1:", "[::1", "[::1]x", ""]:
            with self.assertRaises(ConfigError, msg=bad) as cm:
                parse_nameservers([bad])
            self.assertIn("srv_nameservers", str(cm.exception))
            self.assertIn(repr(bad), str(cm.exception))

    def test_service_checks_config(self):
        with self.assertRaises(ConfigError) as cm:
            SRVDiscoveryService(_config(srv_nameservers=["not an ip:xx"]), print, clock=task.Clock())
        self.assertIn("'srv_nameservers'", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            SRVDiscoveryService(_config(srv_endpoints=["a..b"]), print, clock=task.Clock())
        self.assertIn("'srv_endpoints'", str(cm.exception))
        self.assertIn("'a..b'", str(cm.exception))

    def test_domains_normalised(self):
        svc = SRVDiscoveryService(_config(srv_endpoints=["a.example.", "a.example", "b.example"]), print)
        self.assertEqual(svc.domains, ("a.example", "b.example"))


class ScriptedResolver:
    """
    Stands in for the DNS lookup: each call returns a Deferred the test fires.
    """

    def __init__(self):
        self.calls: list[tuple[str, defer.Deferred]] = []

    def __call__(self, domain):
        d = defer.Deferred()
        self.calls.append((domain, d))
        return d

    def pending(self, domain):
        return [d for name, d in self.calls if name == domain and not d.called]

    def answer(self, domain, ttl, *hostports):
        (d,) = self.pending(domain)
        d.callback(Resolution(tuple(SRVRecord(0, 0, p, h + ".") for h, p in hostports), ttl))

    def fail(self, domain, reason="NXDOMAIN (no such name)"):
        (d,) = self.pending(domain)
        d.errback(DiscoveryError("_fedmsg._tcp." + domain, reason))


class ServiceUnitTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.resolver = ScriptedResolver()
        self.changes = []

    def make(self, **cfg):
        cfg.setdefault("srv_endpoints", ["a.example"])
        svc = SRVDiscoveryService(
            _config(**cfg),
            lambda **kw: self.changes.append(kw),
            clock=self.clock,
            resolve=self.resolver,
            min_interval=5,
            max_interval=3600,
            retry_interval=30,
        )
        svc.startService()
        self.addCleanup(self.stop, svc)
        return svc

    def stop(self, svc):
        if svc.running:
            for _name, d in self.resolver.calls:
                if not d.called:
                    d.errback(DiscoveryError("x", "test over"))
            return svc.stopService()

    def test_initial_and_change(self):
        svc = self.make()
        self.assertEqual([n for n, _ in self.resolver.calls], ["a.example"])
        self.resolver.answer("a.example", 60, ("h1", 1), ("h2", 2))
        self.assertEqual(svc.current(), {"a.example": ("tcp://h1:1", "tcp://h2:2")})
        self.assertEqual(self.changes, [{"name": "a.example", "added": {"tcp://h1:1", "tcp://h2:2"}, "removed": set()}])
        # Re-resolved at the TTL, not before.
        self.clock.advance(59.9)
        self.assertEqual(len(self.resolver.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.resolver.calls), 2)
        self.resolver.answer("a.example", 60, ("h2", 2), ("h3", 3))
        self.assertEqual(self.changes[-1], {"name": "a.example", "added": {"tcp://h3:3"}, "removed": {"tcp://h1:1"}})
        # Same answer again: no report.
        self.clock.advance(60)
        self.resolver.answer("a.example", 60, ("h3", 3), ("h2", 2))
        self.assertEqual(len(self.changes), 2)
        self.assertEqual(svc.endpoints(), {"a.example": ("tcp://h2:2", "tcp://h3:3")})

    def test_ttl_floor_and_cap(self):
        self.make()
        self.resolver.answer("a.example", 0, ("h", 1))
        self.clock.advance(4.9)
        self.assertEqual(len(self.resolver.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.resolver.calls), 2)
        self.resolver.answer("a.example", 7 * 86400, ("h", 1))
        self.clock.advance(3599.9)
        self.assertEqual(len(self.resolver.calls), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.resolver.calls), 3)

    def test_failure_keeps_last_good_set(self):
        svc = self.make()
        self.resolver.answer("a.example", 60, ("h1", 1))
        self.clock.advance(60)
        self.resolver.fail("a.example")
        self.assertEqual(svc.current(), {"a.example": ("tcp://h1:1",)})
        self.assertEqual(svc.last_error["a.example"], "NXDOMAIN (no such name)")
        self.assertEqual(len(self.changes), 1)
        # Retried after the retry interval, then recovers.
        self.clock.advance(29.9)
        self.assertEqual(len(self.resolver.calls), 2)
        self.clock.advance(0.1)
        self.resolver.answer("a.example", 60, ("h4", 4))
        self.assertIsNone(svc.last_error["a.example"])
        self.assertEqual(self.changes[-1], {"name": "a.example", "added": {"tcp://h4:4"}, "removed": {"tcp://h1:1"}})

    def test_first_lookup_fails(self):
        svc = self.make()
        self.resolver.fail("a.example", "timeout after 5s")
        self.assertEqual(svc.current(), {})
        self.assertEqual(self.changes, [])
        self.clock.advance(30)
        self.resolver.answer("a.example", 60, ("h", 1))
        self.assertEqual(svc.current(), {"a.example": ("tcp://h:1",)})

    def test_dot_target_withdraws_everything(self):
        svc = self.make()
        self.resolver.answer("a.example", 60, ("h1", 1))
        self.clock.advance(60)
        (d,) = self.resolver.pending("a.example")
        d.callback(Resolution((SRVRecord(0, 0, 0, "."),), 60))
        self.assertEqual(svc.current(), {"a.example": ()})
        self.assertEqual(self.changes[-1], {"name": "a.example", "added": set(), "removed": {"tcp://h1:1"}})

    def test_net_changes_across_sources(self):
        """
        Static endpoints, relay_inbound and addresses another domain still
        provides are never reported; an address is removed under the name it
        was added under.
        """
        svc = self.make(
            srv_endpoints=["a.example", "b.example"],
            endpoints={"static": ["tcp://s:1"]},
            relay_inbound=["tcp://in:2"],
        )
        self.resolver.answer("a.example", 60, ("s", 1), ("in", 2), ("shared", 3), ("a", 4))
        self.assertEqual(self.changes, [{"name": "a.example", "added": {"tcp://shared:3", "tcp://a:4"}, "removed": set()}])
        self.resolver.answer("b.example", 60, ("shared", 3), ("b", 5))
        self.assertEqual(self.changes[-1], {"name": "b.example", "added": {"tcp://b:5"}, "removed": set()})
        # Ordered as the SRV answer orders them (the target breaks the tie here).
        self.assertEqual(svc.endpoints(), {"a.example": ("tcp://a:4", "tcp://shared:3"), "b.example": ("tcp://b:5",)})
        # a drops shared: b still has it, so nothing to report.
        self.clock.advance(60)
        self.resolver.answer("a.example", 60, ("a", 4))
        self.assertEqual(len(self.changes), 2)
        self.assertEqual(svc.current()["a.example"], ("tcp://a:4",))
        # b drops it too, and adds one: two calls, the removal under a's name.
        self.resolver.answer("b.example", 60, ("b", 5), ("b", 6))
        self.assertEqual(
            self.changes[2:],
            [
                {"name": "b.example", "added": {"tcp://b:6"}, "removed": set()},
                {"name": "a.example", "added": set(), "removed": {"tcp://shared:3"}},
            ],
        )
        self.assertEqual(svc.endpoints(), {"a.example": ("tcp://a:4",), "b.example": ("tcp://b:5", "tcp://b:6")})

    def test_static_override(self):
        """
        The subscriber may pass the static endpoints it really connects to.
        """
        svc = SRVDiscoveryService(
            _config(srv_endpoints=["a.example"], endpoints={"x": ["tcp://x:1"]}),
            lambda **kw: self.changes.append(kw),
            clock=self.clock,
            resolve=self.resolver,
            static={"mine": ["tcp://m:1"]},
        )
        svc.startService()
        self.addCleanup(self.stop, svc)
        self.resolver.answer("a.example", 60, ("m", 1), ("x", 1))
        self.assertEqual(self.changes, [{"name": "a.example", "added": {"tcp://x:1"}, "removed": set()}])

    def test_on_change_error_is_logged(self):
        def broken(**kw):
            raise ZeroDivisionError("subscriber bug")

        svc = SRVDiscoveryService(
            _config(srv_endpoints=["a.example"]), broken, clock=self.clock, resolve=self.resolver, min_interval=5
        )
        svc.startService()
        self.addCleanup(self.stop, svc)
        self.resolver.answer("a.example", 60, ("h", 1))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(svc.current(), {"a.example": ("tcp://h:1",)})
        self.clock.advance(60)
        self.assertEqual(len(self.resolver.pending("a.example")), 1)

    def test_resolver_bug_is_logged_and_retried(self):
        svc = self.make()
        (d,) = self.resolver.pending("a.example")
        d.errback(KeyError("bug"))
        self.assertTrue(self.flushLoggedErrors(KeyError))
        self.assertEqual(svc.last_error["a.example"], "KeyError('bug')")
        self.clock.advance(30)
        self.assertEqual(len(self.resolver.pending("a.example")), 1)

    def test_stop_cancels_and_waits(self):
        svc = self.make(srv_endpoints=["a.example", "b.example"])
        self.resolver.answer("a.example", 60, ("h", 1))
        stopped = svc.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoResult(stopped)
        # The lookup in flight ends after stop: it is ignored, nothing rescheduled.
        self.resolver.answer("b.example", 60, ("late", 1))
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNotIn("b.example", svc.current())
        self.assertEqual(len(self.changes), 1)


def _dead_port() -> int:
    """
    A UDP port on 127.0.0.1 where nothing listens (a dead nameserver).
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class LiveDNSTests(unittest.TestCase):
    """
    Real reactor, dnspython in the thread pool, twisted.names on loopback.
    """

    timeout = 60

    async def start(self, config, **kw):
        self.changes = []
        kw.setdefault("min_interval", 0)
        kw.setdefault("retry_interval", 0.2)
        kw.setdefault("timeout", 1.0)
        svc = SRVDiscoveryService(config, lambda **c: self.changes.append(c), **kw)
        svc.startService()
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        return svc

    async def lookups_after(self, svc, domain, n=2):
        """
        Wait until C{n} more lookups of C{domain} have finished.
        """
        target = svc.lookups[domain] + n
        await wait_for(lambda: svc.lookups[domain] >= target, what=f"{n} lookups of {domain}")

    async def error_seen(self, svc, domain, reason):
        """
        Wait until a lookup of C{domain} has failed with C{reason}.
        """
        await wait_for(lambda: reason in (svc.last_error[domain] or ""), what=f"{reason} for {domain}")

    async def test_follows_record_changes(self):
        server = await DNSServer.start(self, zone="test", ttl=1)
        name = "_fedmsg._tcp.site.test"
        server.set_srv(name, [(0, 10, 9940, "bus1.site.test."), (10, 0, 9941, "bus2.site.test.")])
        svc = await self.start(_config(srv_endpoints=["site.test"], srv_nameservers=[server.address]))
        await wait_for(lambda: svc.current(), what="first answer")
        self.assertEqual(svc.current(), {"site.test": ("tcp://bus1.site.test:9940", "tcp://bus2.site.test:9941")})
        self.assertEqual(
            self.changes,
            [{"name": "site.test", "added": {"tcp://bus1.site.test:9940", "tcp://bus2.site.test:9941"}, "removed": set()}],
        )

        # A record goes, another comes: followed at the next TTL.
        server.set_srv(name, [(0, 10, 9940, "bus1.site.test."), (0, 5, 9942, "bus3.site.test.")])
        await wait_for(lambda: len(self.changes) == 2, what="second change")
        self.assertEqual(
            self.changes[1],
            {"name": "site.test", "added": {"tcp://bus3.site.test:9942"}, "removed": {"tcp://bus2.site.test:9941"}},
        )
        good = {"site.test": ("tcp://bus1.site.test:9940", "tcp://bus3.site.test:9942")}
        self.assertEqual(svc.current(), good)

        # NXDOMAIN, SERVFAIL and a silent server: the last good set stays.
        server.remove(name)
        await self.error_seen(svc, "site.test", "NXDOMAIN")
        server.mode = "servfail"
        await self.error_seen(svc, "site.test", "SERVFAIL")
        server.mode = "drop"
        await self.error_seen(svc, "site.test", "timeout")
        self.assertEqual(svc.current(), good)
        self.assertEqual(len(self.changes), 2)
        self.assertTrue(svc.running)

        # The server comes back with new records.
        server.mode = "answer"
        server.set_srv(name, [(0, 0, 9943, "bus4.site.test.")])
        await wait_for(lambda: len(self.changes) == 3, what="recovery")
        self.assertEqual(
            self.changes[2],
            {
                "name": "site.test",
                "added": {"tcp://bus4.site.test:9943"},
                "removed": {"tcp://bus1.site.test:9940", "tcp://bus3.site.test:9942"},
            },
        )
        self.assertIsNone(svc.last_error["site.test"])

    async def test_large_answer_over_tcp(self):
        """
        An answer too big for UDP comes back truncated; dnspython asks over TCP.
        """
        server = await DNSServer.start(self, zone="test", ttl=30)
        records = [(0, 0, 5000 + i, f"bus-{i:02d}.a-long-label-for-padding.big.test.") for i in range(25)]
        server.set_srv("_fedmsg._tcp.big.test", records)
        svc = await self.start(_config(srv_endpoints=["big.test"], srv_nameservers=[server.address]))
        await wait_for(lambda: svc.current(), what="answer")
        self.assertEqual(len(svc.current()["big.test"]), 25)
        self.assertIn(("_fedmsg._tcp.big.test", "tcp"), server.queries)
        self.assertIn(("_fedmsg._tcp.big.test", "udp"), server.queries)

    async def test_dead_nameserver(self):
        """
        Nothing listens: lookups time out, the static endpoints stay, and the
        service keeps trying.
        """
        cfg = _config(
            srv_endpoints=["site.test"],
            srv_nameservers=[f"127.0.0.1:{_dead_port()}"],
            endpoints={"static": ["tcp://127.0.0.1:4001"]},
        )
        svc = await self.start(cfg, timeout=0.2, retry_interval=0.05)
        await self.lookups_after(svc, "site.test", 2)
        self.assertIn("timeout", svc.last_error["site.test"])
        self.assertEqual(svc.current(), {})
        self.assertEqual(self.changes, [])
        self.assertTrue(svc.running)
        self.assertEqual(static_endpoints(cfg), {"static": ("tcp://127.0.0.1:4001",)})

    async def test_dead_then_live_nameserver(self):
        server = await DNSServer.start(self, zone="test", ttl=30)
        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, 9940, "bus.site.test.")])
        cfg = _config(srv_endpoints=["site.test"], srv_nameservers=[f"127.0.0.1:{_dead_port()}", server.address])
        svc = await self.start(cfg, timeout=2)
        await wait_for(lambda: svc.current(), what="answer from the second nameserver")
        self.assertEqual(svc.current(), {"site.test": ("tcp://bus.site.test:9940",)})

    async def test_static_and_srv_combine(self):
        server = await DNSServer.start(self, zone="test", ttl=30)
        server.set_srv("_fedmsg._tcp.a.test", [(0, 0, 4001, "127.0.0.1."), (0, 0, 4002, "127.0.0.1.")])
        server.set_srv("_fedmsg._tcp.b.test", [(0, 0, 4003, "127.0.0.1.")])
        cfg = _config(
            srv_endpoints=["a.test", "b.test", "missing.test"],
            srv_nameservers=[server.address],
            endpoints={"relay_outbound": ["tcp://127.0.0.1:4001"]},
        )
        svc = await self.start(cfg)
        await wait_for(lambda: len(svc.current()) == 2 and svc.lookups["missing.test"], what="all lookups")
        self.assertEqual(svc.endpoints(), {"a.test": ("tcp://127.0.0.1:4002",), "b.test": ("tcp://127.0.0.1:4003",)})
        self.assertEqual(
            sorted(self.changes, key=lambda c: c["name"]),
            [
                {"name": "a.test", "added": {"tcp://127.0.0.1:4002"}, "removed": set()},
                {"name": "b.test", "added": {"tcp://127.0.0.1:4003"}, "removed": set()},
            ],
        )
        self.assertIn("NXDOMAIN", svc.last_error["missing.test"])

    async def test_stop_waits_for_lookup_in_flight(self):
        server = await DNSServer.start(self, zone="test")
        server.mode = "drop"
        svc = await self.start(_config(srv_endpoints=["site.test"], srv_nameservers=[server.address]), timeout=1.0)
        await wait_for(lambda: server.queries, what="query sent")
        self.assertEqual(svc.lookups["site.test"], 0)
        await svc.stopService()
        # The thread finished its lookup before stop completed.
        self.assertEqual(svc.lookups["site.test"], 1)
        self.assertEqual(svc.current(), {})

    async def test_blocking_helper(self):
        server = await DNSServer.start(self, zone="test")
        server.set_srv("_fedmsg._tcp.a.test", [(1, 0, 2, "b.a.test."), (0, 0, 1, "a.a.test.")])
        result = await threads.deferToThread(
            resolve_srv_endpoints, ["a.test", "nx.test"], [server.address], 2.0
        )
        self.assertEqual(result, {"a.test": ("tcp://a.a.test:1", "tcp://b.a.test:2")})
        with self.assertRaises(ConfigError):
            resolve_srv_endpoints(["a.test"], ["garbage:xx"])

    def test_srv_query_reasons(self):
        """
        L{discovery.srv_query} names the failure (run in a thread, as in use).
        """

        async def run():
            server = await DNSServer.start(self, zone="test")
            ns = parse_nameservers([server.address])
            server.set_srv("_fedmsg._tcp.nodata.test", [])
            for domain, reason in [("nx.test", "NXDOMAIN"), ("nodata.test", "no SRV records")]:
                try:
                    await threads.deferToThread(discovery.srv_query, domain, ns, 2.0)
                except DiscoveryError as e:
                    self.assertIn(reason, e.reason)
                else:
                    self.fail(f"{domain} resolved")

        return defer.Deferred.fromCoroutine(run())


class SubscriberFollowsDNSTests(unittest.TestCase):
    """
    The real subscriber, plugged into discovery, follows SRV changes: it
    connects to the publisher the records name and drops the one removed.
    """

    timeout = 60

    async def test_subscriber_follows_srv(self):
        from fedmsg_twisted.publisher import PublisherService
        from fedmsg_twisted.subscriber import SubscriberService
        from tests.util import free_port, tcp

        p1, p2 = free_port(), free_port()
        pubs = {}
        for name, port in (("pub1", p1), ("pub2", p2)):
            pub = PublisherService(
                from_dict({"endpoints": {name: [tcp(port)]}, "name": name, "topic_prefix": "org.test"})
            )
            pub.startService()
            self.addCleanup(pub.stopService)
            pubs[name] = pub

        server = await DNSServer.start(self, zone="test", ttl=1)
        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, p1, "127.0.0.1.")])
        cfg = from_dict({"endpoints": {}, "srv_endpoints": ["site.test"], "srv_nameservers": [server.address]})
        got = []
        sub = SubscriberService(cfg, lambda *a: got.append(a))

        def on_change(name, added, removed):
            for a in removed:
                sub.remove_endpoint(name, a)
            for a in added:
                sub.add_endpoint(name, a)

        disco = SRVDiscoveryService(cfg, on_change, min_interval=0, retry_interval=0.2, timeout=1.0)
        sub.startService()
        self.addCleanup(sub.stopService)
        disco.startService()
        self.addCleanup(lambda: disco.stopService() if disco.running else None)

        async def receive_from(pub, port):
            before = len(got)
            await wait_for(pub.has_subscriber, what=f"subscriber on {port}")
            await pub.publish(topic="hello", msg={"port": port}, modname="disco")
            await wait_for(lambda: len(got) > before, what=f"message via {port}")
            return got[-1]

        name, endpoint, topic, msg = await receive_from(pubs["pub1"], p1)
        self.assertEqual((name, endpoint, topic), ("site.test", tcp(p1), "org.test.dev.disco.hello"))
        self.assertEqual(msg["msg"], {"port": p1})

        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, p2, "127.0.0.1.")])
        await wait_for(lambda: sub.endpoints() == {"site.test": (tcp(p2),)}, what="switch to pub2")
        name, endpoint, topic, msg = await receive_from(pubs["pub2"], p2)
        self.assertEqual((name, endpoint), ("site.test", tcp(p2)))
        # The subscriber really left pub1.
        await wait_for(lambda: not pubs["pub1"].has_subscriber(), what="pub1 loses its subscriber")

        # NXDOMAIN keeps the subscriber on pub2.
        server.remove("_fedmsg._tcp.site.test")
        await wait_for(lambda: "NXDOMAIN" in (disco.last_error["site.test"] or ""), what="NXDOMAIN")
        self.assertEqual(sub.endpoints(), {"site.test": (tcp(p2),)})
        await receive_from(pubs["pub2"], p2)


class AttachDiscoveryTests(unittest.TestCase):
    """
    The one-line wiring the taps use (ircbot, fedmsg-tail).
    """

    async def test_attach_follows_srv(self):
        from twisted.application.service import MultiService

        from fedmsg_twisted.discovery import attach_discovery
        from fedmsg_twisted.publisher import PublisherService
        from fedmsg_twisted.subscriber import SubscriberService
        from tests.util import free_port, tcp

        p1, p2 = free_port(), free_port()
        pubs = []
        for name, port in (("pub1", p1), ("pub2", p2)):
            pub = PublisherService(from_dict({"endpoints": {name: [tcp(port)]}, "name": name}))
            pub.startService()
            self.addCleanup(pub.stopService)
            pubs.append(pub)
        server = await DNSServer.start(self, zone="test", ttl=1)
        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, p1, "127.0.0.1.")])
        cfg = from_dict({"endpoints": {}, "srv_endpoints": ["site.test"], "srv_nameservers": [server.address]})
        top = MultiService()
        sub = SubscriberService(cfg, lambda *a: None)
        sub.setServiceParent(top)
        self.assertIsNone(attach_discovery(MultiService(), from_dict({}), sub))
        disco = attach_discovery(top, cfg, sub, min_interval=0, timeout=1.0)
        self.assertIs(disco.parent, top)
        top.startService()
        self.addCleanup(top.stopService)
        await wait_for(pubs[0].has_subscriber, what="subscriber on the SRV target")
        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, p2, "127.0.0.1.")])
        await wait_for(pubs[1].has_subscriber, what="subscriber follows the new record")
        await wait_for(lambda: not pubs[0].has_subscriber(), what="old target dropped")

    async def test_fedmsg_tail_follows_srv(self):
        import json
        import os

        from fedmsg_twisted.publisher import PublisherService
        from tests.util import PYTHON, free_port, spawn, tcp

        port = free_port()
        pub = PublisherService(from_dict({"endpoints": {"pub": [tcp(port)]}, "name": "pub"}))
        pub.startService()
        self.addCleanup(pub.stopService)
        server = await DNSServer.start(self, zone="test", ttl=1)
        server.set_srv("_fedmsg._tcp.site.test", [(0, 0, port, "127.0.0.1.")])
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'srv_endpoints = ["site.test"]\nsrv_nameservers = ["{server.address}"]\n[endpoints]\n')
        tail = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.tail", "--config", path, "--json", "--count", "1"])
        await wait_for(pub.has_subscriber, what="fedmsg-tail connected through SRV")
        await pub.publish(topic="t", modname="m", msg={"via": "srv"})
        self.assertEqual(await tail.ended, 0, tail.stderr)
        self.assertEqual(json.loads(tail.lines[0])["msg"], {"via": "srv"})
