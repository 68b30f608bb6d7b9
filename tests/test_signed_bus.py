"""
Signatures across the whole bus: publishers sign, the relay checks at the
door, subscribers and fedmsg-tail validate, and a real fedmsg 1.1.7
validating subscriber accepts what our relay forwards.
"""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from fedmsg_twisted import config, encoding
from fedmsg_twisted import zmq as fzmq
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests import fedmsgpeer
from tests.certs import make_pki
from tests.util import PYTHON, free_port, sleep, spawn, tcp, wait_for

PEER = fedmsgpeer.ensure_peer()

PEER_VALIDATING_TAIL = """
import json, sys, warnings, fedmsg, fedmsg.config
config = fedmsg.config.load_config()
config["mute"] = True
config["validate_signatures"] = True
count = int(sys.argv[1])
for name, endpoint, topic, msg in fedmsg.tail_messages(**config):
    print(json.dumps(msg["msg"]), flush=True)
    count -= 1
    if not count:
        break
"""


class SignedBusTests(unittest.TestCase):
    def setUp(self):
        self.pki = make_pki(os.path.abspath(self.mktemp()))
        self.pki.issue("svc.example.org", name="svc")
        self.pki.issue("intruder.example.org", name="intruder")
        self.base = {
            "relay_inbound": [tcp(free_port())],
            "endpoints": {"relay_outbound": [tcp(free_port())]},
            "post_init_sleep": 5.0,
            "timeout": 5.0,
            **self.pki.certname_config(),
            "routing_policy": {"org.fedoraproject.dev.svc.thing": ["svc.example.org"]},
        }
        self.cfg = config.from_dict(self.base)

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def signing_publisher(self, certname):
        return self.start(
            PublisherService(self.cfg.replace(active=True, sign_messages=True, certname=certname))
        )

    async def raw_inbound(self, relay):
        sock = fzmq.PubSocket(fzmq.shared_factory(), options=[(fzmq._zmq.LINGER, 0)])
        self.addCleanup(sock.close)
        fzmq.connect(sock, self.cfg["relay_inbound"][0])
        await wait_for(sock.has_subscriber, what="relay subscription")
        return sock

    async def test_relay_validates_at_the_door(self):
        relay = self.start(RelayService(self.cfg.replace(relay_validate=True)))
        got = []
        sub = self.start(SubscriberService(self.cfg.replace(validate_signatures=True), lambda *a: got.append(a)))
        await wait_for(relay.has_subscriber, what="subscriber")
        pub = self.signing_publisher("svc")
        good = await pub.publish(topic="thing", modname="svc", msg={"n": 1})
        self.assertEqual(good["crypto"], "x509")

        raw = await self.raw_inbound(relay)
        tampered = dict(good, msg={"n": 666})
        raw.send_frames([tampered["topic"].encode(), encoding.dumps_bytes(tampered)])
        unsigned = {k: v for k, v in good.items() if k not in ("signature", "certificate", "crypto")}
        raw.send_frames([unsigned["topic"].encode(), encoding.dumps_bytes(unsigned)])
        intruder = self.signing_publisher("intruder")
        await intruder.publish(topic="thing", modname="svc", msg={"n": 2})
        last = await pub.publish(topic="thing", modname="svc", msg={"n": 3})

        await wait_for(lambda: len(got) == 2, what="the two valid messages")
        await sleep(0.1)
        self.assertEqual([g[3]["msg"]["n"] for g in got], [1, 3])
        self.assertEqual(got[1][3], last)
        self.assertEqual(relay.counters.get("rejected", "bad-signature"), 1)
        self.assertEqual(relay.counters.get("rejected", "unsigned"), 1)
        self.assertEqual(relay.counters.get("rejected", "policy"), 1)
        self.assertEqual(relay.counters.get("forwarded"), 2)
        self.assertEqual(sub.counters.get("rejected"), 0)

    async def test_subscriber_drops_what_it_cannot_validate(self):
        relay = self.start(RelayService(self.cfg))  # no check at the door
        got = []
        sub = self.start(SubscriberService(self.cfg.replace(validate_signatures=True), lambda *a: got.append(a)))
        await wait_for(relay.has_subscriber, what="subscriber")
        raw = await self.raw_inbound(relay)
        pub = self.signing_publisher("svc")
        good = await pub.publish(topic="thing", modname="svc", msg={"n": 1})
        tampered = dict(good, timestamp=float(good["timestamp"]))
        raw.send_frames([tampered["topic"].encode(), encoding.dumps_bytes(tampered)])
        await pub.publish(topic="thing", modname="svc", msg={"n": 2})
        await wait_for(lambda: len(got) == 2, what="valid messages")
        await wait_for(lambda: sub.counters.get("rejected") == 1, what="the rejection")
        self.assertEqual([g[3]["msg"]["n"] for g in got], [1, 2])
        self.assertEqual(sub.counters.get("rejected", "bad-signature"), 1)

    async def test_fedmsg_tail_validate_shows_only_valid(self):
        relay = self.start(RelayService(self.cfg))
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                f'ca_cert_location = "{self.pki.ca_cert_path}"\ncrl_location = "{self.pki.crl_path}"\n'
                f'[endpoints]\nrelay_outbound = ["{self.cfg["endpoints"]["relay_outbound"][0]}"]\n'
            )
        tail = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.tail", "--config", path, "--validate",
                            "--query", "msg.n", "--count", "2"])
        await wait_for(relay.has_subscriber, what="fedmsg-tail")
        raw = await self.raw_inbound(relay)
        raw.send_frames([b"org.fedoraproject.dev.svc.thing", b'{"msg":{"n":0},"topic":"org.fedoraproject.dev.svc.thing"}'])
        pub = self.signing_publisher("svc")
        for n in (1, 2):
            await pub.publish(topic="thing", modname="svc", msg={"n": n})
        self.assertEqual(await tail.ended, 0, tail.stderr)
        self.assertEqual([line for line in tail.lines if line], ["1", "2"])

    async def test_real_fedmsg_validating_subscriber_accepts_our_relay_output(self):
        relay = self.start(RelayService(self.cfg))
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        fedmsgpeer.write_peer_config(
            cwd,
            {
                "topic_prefix": "org.fedoraproject",
                "environment": "dev",
                "endpoints": {"relay_outbound": list(self.cfg["endpoints"]["relay_outbound"])},
                "ca_cert_location": self.pki.ca_cert_path,
                "crl_location": self.pki.crl_path,
                "routing_policy": {"org.fedoraproject.dev.svc.thing": ["svc.example.org"]},
            },
        )
        script = os.path.join(cwd, "tail.py")
        with open(script, "w") as f:
            f.write(PEER_VALIDATING_TAIL)
        tail = spawn(self, [PEER, script, "2"], path=cwd)
        await wait_for(relay.has_subscriber, timeout=30, what="fedmsg's validating tail")
        raw = await self.raw_inbound(relay)
        pub = self.signing_publisher("svc")
        first = await pub.publish(topic="thing", modname="svc", msg={"n": 1, "s": "h\u00e9", "f": 0.1})
        forged = dict(first, msg={"n": 999})
        raw.send_frames([forged["topic"].encode(), encoding.dumps_bytes(forged)])
        await pub.publish(topic="thing", modname="svc", msg={"n": 2})
        self.assertEqual(await tail.ended, 0, tail.stderr)
        shown = [json.loads(line)["n"] for line in tail.lines if line]
        self.assertEqual(shown, [1, 2])

    async def test_fedmsg_logger_signs_with_cert_prefix(self):
        import socket

        host = socket.gethostname().split(".")[0]
        self.pki.issue("shell.example.org", name="shellcert")
        relay = self.start(RelayService(self.cfg.replace(relay_validate=True)))
        got = []
        self.start(SubscriberService(self.cfg.replace(validate_signatures=True), lambda *a: got.append(a)))
        await wait_for(relay.has_subscriber, what="subscriber")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(
                f'sign_messages = true\nssldir = "{self.pki.directory}"\n'
                f'relay_inbound = ["{self.cfg["relay_inbound"][0]}"]\n'
                f'[certnames]\n"ops.{host}" = "shellcert"\n'
            )
        logger = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.logger", "--config", path,
                              "--cert-prefix", "ops", "--message", "signed from the shell"])
        self.assertEqual(await logger.ended, 0, logger.stderr)
        await wait_for(lambda: got, what="the signed message")
        self.assertEqual(got[0][3]["msg"], {"log": "signed from the shell"})
        self.assertEqual(got[0][3]["crypto"], "x509")
        # An unknown prefix is a clear error, and nothing is sent.
        logger = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.logger", "--config", path,
                              "--cert-prefix", "nobody", "--message", "x"])
        self.assertEqual(await logger.ended, 1)
        self.assertIn(f"nobody.{host}".encode(), logger.stderr)
        self.assertEqual(relay.counters.get("received"), 1)

    async def test_signed_wire_body_is_canonical(self):
        relay = self.start(RelayService(self.cfg))
        frames = []
        sock = fzmq.SubSocket(fzmq.shared_factory(), frames.append, ("",), [(fzmq._zmq.LINGER, 0)])
        self.addCleanup(sock.close)
        sock.connect(self.cfg["endpoints"]["relay_outbound"][0])
        await wait_for(relay.has_subscriber, what="raw subscriber")
        pub = self.signing_publisher("svc")
        sent = await pub.publish(topic="thing", modname="svc", msg={"s": "h\u00e9", "f": [0.1, 1e22], "n": None})
        await wait_for(lambda: frames, what="the signed message")
        self.assertEqual(frames[0][1], encoding.dumps_bytes(sent))
        from fedmsg_twisted.publisher import PublishError

        with self.assertRaises(PublishError):
            await pub.publish(topic="thing", modname="svc", msg={"x": object()})
