"""
The gateway over real loopback sockets, in process and as C{twistd -n fedmsg-gateway}.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from fedmsg_twisted import config, encoding
from fedmsg_twisted import zmq as fzmq
from fedmsg_twisted.gateway import GatewayError, GatewayHealth, GatewayService, gateway_settings
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from tests.util import PYTHON, free_port, sleep, spawn, tcp, wait_for


def site_values():
    return {
        "relay_inbound": [tcp(free_port())],
        "endpoints": {"relay_outbound": [tcp(free_port())]},
        "post_init_sleep": 5.0,
    }


def frames_for(topic: str, msg, spaces: bool = False) -> list[bytes]:
    envelope = {"topic": topic, "msg": msg, "i": 1, "timestamp": 1, "msg_id": "x", "username": "u"}
    body = json.dumps(envelope) if spaces else encoding.dumps(envelope)
    return [topic.encode(), body.encode()]


class GatewayTestCase(unittest.TestCase):
    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def raw_pub(self, address, bind=False):
        sock = fzmq.PubSocket(fzmq.shared_factory(), options=[(fzmq._zmq.LINGER, 0)])
        self.addCleanup(sock.close)
        if bind:
            fzmq.bind_first(sock, [address])
        else:
            fzmq.connect(sock, address)
        return sock

    def raw_sub(self, address, topics=("",)):
        frames = []
        sock = fzmq.SubSocket(fzmq.shared_factory(), frames.append, topics, [(fzmq._zmq.LINGER, 0)])
        self.addCleanup(sock.close)
        sock.connect(address)
        return sock, frames


class GatewayTests(GatewayTestCase):
    async def gateway_with_outside(self, cfg, **kw):
        gw = self.start(GatewayService(cfg, bind=tcp(free_port()), **kw))
        outside, got = self.raw_sub(gw.address)
        await wait_for(lambda: gw.outside_subscriptions() > 0, what="outside subscriber")
        await wait_for(lambda: gw.subscriber.connected_count() > 0, what="gateway connected to the site")
        return gw, got

    async def test_original_bytes_through_relay(self):
        cfg = config.from_dict(site_values())
        self.start(RelayService(cfg))
        gw, got = await self.gateway_with_outside(cfg)
        pub = self.raw_pub(cfg["relay_inbound"][0])
        # Non-canonical JSON: spaces, key order. It must come out identical.
        sent = frames_for("org.fedoraproject.dev.svc.a", {"z": 1, "a": "\u00e9"}, spaces=True)
        await wait_for(lambda: pub.send_frames(sent) and got, what="message out of the gateway")
        self.assertEqual(got[0], sent)
        self.assertEqual(gw.counters.get("forwarded"), gw.counters.get("received"))
        self.assertEqual(gw.counters.get("messages_out", "org.fedoraproject.dev.svc"), len(got))

    async def test_topic_allow_list(self):
        values = site_values()
        svc = tcp(free_port())
        values["endpoints"] = {"svc": [svc]}
        cfg = config.from_dict(values)
        pub = self.raw_pub(svc, bind=True)
        gw, got = await self.gateway_with_outside(cfg, topics=["org.fedoraproject.dev.public*"])
        self.assertEqual(gw.topics, ("org.fedoraproject.dev.public",))
        secret = frames_for("org.fedoraproject.dev.secret.x", {})
        public = frames_for("org.fedoraproject.dev.public.x", {})
        # The secret goes first each round: had it passed, it would arrive first.
        for _ in range(200):
            if got:
                break
            pub.send_frames(secret)
            pub.send_frames(public)
            await sleep(0.05)
        self.assertTrue(got, "no public message came out")
        self.assertTrue(all(f == public for f in got), got)
        # Defence in depth: a message that gets past zmq's filter is still refused.
        gw.frames_received("svc", svc, secret)
        self.assertEqual(gw.counters.get("dropped", "not-allowed"), 1)

    async def test_garbage_dropped_and_next_forwarded(self):
        values = site_values()
        svc = tcp(free_port())
        values["endpoints"] = {"svc": [svc]}
        cfg = config.from_dict(values)
        pub = self.raw_pub(svc, bind=True)
        gw, got = await self.gateway_with_outside(cfg)
        await wait_for(lambda: pub.has_subscriber(), what="gateway subscribed")
        good = frames_for("org.fedoraproject.dev.svc.ok", {"n": 1})
        for bad in ([b"t"], [b"t", b"{not json"], [b"t", b"[1]"], [b"a", b"b", b"c"], [b"t", b'{"msg": {}, "topic": "u"}']):
            pub.send_frames(bad)
        pub.send_frames(good)
        await wait_for(lambda: got, what="good message")
        self.assertEqual(got, [good])
        for reason in ("bad-frames", "not-json", "not-an-object", "topic-mismatch"):
            self.assertTrue(gw.counters.get("dropped", reason) >= 1, reason)
        self.assertEqual(gw.counters.get("dropped"), 5)

    async def test_relay_heartbeats_stay_inside(self):
        values = site_values()
        svc = tcp(free_port())
        values["endpoints"] = {"svc": [svc]}
        cfg = config.from_dict(values)
        pub = self.raw_pub(svc, bind=True)
        gw, got = await self.gateway_with_outside(cfg)
        await wait_for(lambda: pub.has_subscriber(), what="gateway subscribed")
        beat = frames_for("org.fedoraproject.dev.relay._heartbeat", {"relay": "r", "seq": 1, "replay": "tcp://10.0.0.1:1"})
        good = frames_for("org.fedoraproject.dev.svc.ok", {"n": 1})
        pub.send_frames(beat)
        pub.send_frames(good)
        await wait_for(lambda: got, what="good message")
        await sleep(0.1)
        self.assertEqual(got, [good])
        self.assertEqual(gw.counters.get("dropped", "internal-heartbeat"), 1)

    async def test_own_high_water_mark(self):
        cfg = config.from_dict(site_values())
        gw = self.start(GatewayService(cfg, bind=tcp(free_port()), high_water_mark=7))
        self.assertEqual(gw._pub.socket.getsockopt(fzmq._zmq.SNDHWM), 7)
        self.assertEqual(gw.subscriber._sockets[("relay_outbound", cfg["endpoints"]["relay_outbound"][0])].socket.getsockopt(fzmq._zmq.SNDHWM), 0)

    async def test_slow_outsider_does_not_hold_up_others(self):
        """
        An outsider that never reads fills only its own queue (bounded by
        the gateway's high-water mark, where zmq drops for it alone); the
        gateway and the other outsiders go on.
        """
        import zmq

        cfg = config.from_dict(site_values())
        gw = self.start(GatewayService(cfg, bind=tcp(free_port()), high_water_mark=10))
        ctx = zmq.Context()
        self.addCleanup(ctx.term)
        lazy = ctx.socket(zmq.SUB)  # never read: not even attached to the reactor
        self.addCleanup(lazy.close, 0)
        lazy.setsockopt(zmq.RCVHWM, 1)
        lazy.setsockopt(zmq.RCVBUF, 4096)
        lazy.setsockopt(zmq.SUBSCRIBE, b"")
        lazy.connect(gw.address)
        _, got = self.raw_sub(gw.address)
        await wait_for(lambda: len(gw._pub.subscriptions) > 0, what="outsiders subscribed")
        await sleep(0.1)  # both subscriptions are the same prefix: give the second time to land
        big = frames_for("org.fedoraproject.dev.svc.big", {"pad": "x" * 200_000})
        for batch in range(20):
            for _ in range(5):
                gw.frames_received("svc", "test", big)
            await wait_for(lambda: len(got) == 5 * (batch + 1), what=f"batch {batch} at the fast outsider")
        self.assertEqual(gw.counters.get("forwarded"), 100)
        self.assertEqual(gw.counters.get("dropped"), 0)
        # The lazy one holds at most what the mark and the kernel buffers allow.
        lazy_got = 0
        while lazy.poll(0):
            lazy.recv_multipart()
            lazy_got += 1
        self.assertLess(lazy_got, 100)

    async def test_readiness_follows_site(self):
        cfg = config.from_dict(site_values())
        gw = self.start(GatewayService(cfg, bind=tcp(free_port())))
        health = GatewayHealth(gw)
        self.assertTrue(health.is_live())
        self.assertFalse(health.is_ready())
        relay = self.start(RelayService(cfg))
        await wait_for(health.is_ready, what="gateway ready")
        await relay.stopService()
        await wait_for(lambda: not health.is_ready(), what="gateway unready")

    def test_bind_taken(self):
        cfg = config.from_dict(site_values())
        address = tcp(free_port())
        self.raw_pub(address, bind=True)
        gw = GatewayService(cfg, bind=address)
        e = self.assertRaises(fzmq.BindError, gw.startService)
        self.assertIn(address, str(e))
        self.assertFalse(gw.running)
        self.assertFalse(gw.subscriber.running)

    async def test_stop_twice(self):
        gw = GatewayService(config.from_dict(site_values()), bind=tcp(free_port()))
        gw.startService()
        await gw.stopService()
        await gw.stopService()


class SettingsTests(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(gateway_settings(config.from_dict({})), ("tcp://127.0.0.1:9940", 10000, ()))

    def test_fedmsg_keys(self):
        self.assertEqual(
            gateway_settings({"fedmsg.consumers.gateway.port": 9999, "fedmsg.consumers.gateway.high_water_mark": 5}),
            ("tcp://*:9999", 5, ()),
        )

    def test_bad_values(self):
        for kw, key in (
            ({"bind": "localhost:9940"}, "gateway_bind"),
            ({"bind": 9940}, "gateway_bind"),
            ({"high_water_mark": -1}, "gateway_high_water_mark"),
            ({"high_water_mark": "10"}, "gateway_high_water_mark"),
            ({"topics": [1]}, "gateway_topics"),
            ({"topics": ["a.*.b"]}, "gateway_topics"),
        ):
            e = self.assertRaises(GatewayError, gateway_settings, {}, **kw)
            self.assertIn(key, str(e))
        e = self.assertRaises(GatewayError, gateway_settings, {"fedmsg.consumers.gateway.port": "x"})
        self.assertIn("fedmsg.consumers.gateway.port", str(e))

    def test_refuses_to_subscribe_to_itself(self):
        cfg = config.from_dict(site_values())
        e = self.assertRaises(GatewayError, GatewayService, cfg, bind=cfg["endpoints"]["relay_outbound"][0])
        self.assertIn("subscribe to itself", str(e))


def write_config(testcase, values) -> str:
    path = testcase.mktemp() + ".toml"
    lines = [f'relay_inbound = {json.dumps(values["relay_inbound"])}', "post_init_sleep = 5.0", "[endpoints]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values["endpoints"].items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def twistd(*args: str) -> list[str]:
    """
    C{twistd -n} in the foreground, as systemd runs it, with this Python.
    """
    return [PYTHON, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *args]


async def http_get(url: str):
    response = await Agent(reactor).request(b"GET", url.encode())
    return response.code, await readBody(response)


async def wait_http(url: str, code: int, proc=None, what: str = "HTTP answer"):
    """
    Poll C{url} until it answers C{code} (connection refused counts as not yet).
    """
    last = [None]

    async def once():
        try:
            last[0] = await http_get(url)
        except Exception as e:  # not listening yet
            last[0] = e
        return last[0]

    for _ in range(500):
        if proc is not None and proc.exit_code is not None:
            raise AssertionError(f"process ended ({proc.exit_code}): {proc.stderr.decode()} {proc.lines}")
        result = await once()
        if isinstance(result, tuple) and result[0] == code:
            return result
        await sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last[0]!r}")


class GatewayProcessTests(GatewayTestCase):
    timeout = 60
    async def test_twistd_gateway(self):
        values = site_values()
        cfg = config.from_dict(values)
        relay = self.start(RelayService(cfg))
        public, hport = tcp(free_port()), free_port()
        proc = spawn(
            self,
            twistd(
                "fedmsg-gateway",
                "--config", write_config(self, values),
                "--bind", public,
                "--topic", "org.fedoraproject.dev.svc",
                "--health-listen", f"tcp:{hport}:interface=127.0.0.1",
            ),
            path=os.getcwd(),
        )
        base = f"http://127.0.0.1:{hport}"
        _, body = await wait_http(base + "/ready", 200, proc, "gateway ready")
        self.assertTrue(json.loads(body)["components"]["gateway"]["ready"])
        _, got = self.raw_sub(public)
        pub = self.start(PublisherService(cfg.replace(active=True)))
        await pub.publish(topic="hidden", modname="other", msg={})
        # Keep publishing until the outside subscriber has joined.
        sent = []

        async def publish_until_seen():
            while not got:
                sent.append(await pub.publish(topic="thing", modname="svc", msg={"n": len(sent)}))
                await sleep(0.05)

        await publish_until_seen()
        topic, body = got[0]
        self.assertEqual(topic, b"org.fedoraproject.dev.svc.thing")
        self.assertIn(json.loads(body), sent)
        code, metrics = await http_get(base + "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'fedmsg_messages_out_total{component="gateway",topic="org.fedoraproject.dev.svc"}', metrics)
        self.assertNotIn(b"org.fedoraproject.dev.other", metrics)
        # The upstream goes away: /ready says so.
        await relay.stopService()
        await wait_http(base + "/ready", 503, proc, "gateway unready")
        code, _ = await http_get(base + "/live")
        self.assertEqual(code, 200)
        await stop_cleanly(self, proc)

    async def test_bad_option_exits_with_clear_error(self):
        proc = spawn(self, twistd("fedmsg-gateway", "--bind", "nonsense"))
        code = await proc.ended
        self.assertNotEqual(code, 0)
        self.assertIn("gateway_bind must be a zmq address", proc.stderr.decode() + "\n".join(proc.lines))

    async def test_bad_health_listen_exits_with_clear_error(self):
        proc = spawn(self, twistd("fedmsg-gateway", "--health-listen", "tcp:notaport"))
        code = await proc.ended
        self.assertNotEqual(code, 0)
        self.assertIn("health_listen 'tcp:notaport'", proc.stderr.decode() + "\n".join(proc.lines))


async def stop_cleanly(testcase, proc) -> None:
    """
    SIGTERM, as systemd sends it: twistd shuts down its services, then (since
    Twisted 24) ends itself with the same signal, which systemd counts as a
    clean stop.
    """
    os.kill(proc.transport.pid, 15)
    await proc.ended
    testcase.assertIn("Server Shut Down.", "\n".join(proc.lines))
    text = "\n".join(proc.lines)
    testcase.assertNotIn("Traceback", text[text.index("Received SIGTERM"):] + proc.stderr.decode())


class LogFormatTests(GatewayTestCase):
    timeout = 60

    async def test_twist_json_logs(self):
        """
        The documented way to get JSON logs: C{twist --log-format=json}.
        """
        hport = free_port()
        argv = [
            PYTHON, "-c", "from twisted.application.twist._twist import Twist; Twist.main()",
            "--log-format=json", "fedmsg-gateway", "--bind", tcp(free_port()),
            "--health-listen", f"tcp:{hport}:interface=127.0.0.1",
        ]
        proc = spawn(self, argv)
        await wait_http(f"http://127.0.0.1:{hport}/live", 200, proc, "gateway live")
        os.kill(proc.transport.pid, 15)
        await proc.ended
        # One event per line, each preceded by RS (\x1e, RFC 7464 JSON text sequences).
        self.assertTrue(all(line.startswith("\x1e") for line in proc.lines if line.strip()))
        events = [json.loads(line.lstrip("\x1e")) for line in proc.lines if line.strip()]
        started = [e for e in events if e.get("log_namespace") == "fedmsg_twisted.gateway"]
        self.assertEqual(len(started), 1)
        self.assertEqual(started[0]["hwm"], 10000)
        self.assertEqual(started[0]["log_level"]["name"], "info")
