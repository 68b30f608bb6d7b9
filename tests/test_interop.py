"""
Interoperability with the real fedmsg 1.1.7, run as a separate process from
its own virtualenv (see L{tests.fedmsgpeer}).
"""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from fedmsg_twisted import config, encoding
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests import fedmsgpeer
from tests.util import PYTHON, free_port, spawn, tcp, wait_for

PEER = fedmsgpeer.ensure_peer()

PEER_PUBLISH = """
import sys, time, fedmsg
fedmsg.init(name="peer.host")
for n in range(int(sys.argv[1])):
    fedmsg.publish(topic="thing.happened", modname="peer", msg={"n": n, "s": "h\\u00e9llo \\u2603", "f": 2.5})
time.sleep(1.0)
"""

PEER_TAIL = """
import json, sys, fedmsg, fedmsg.config
config = fedmsg.config.load_config()
config["mute"] = True
count = int(sys.argv[1])
for name, endpoint, topic, msg in fedmsg.tail_messages(**config):
    print(json.dumps([name, endpoint, topic, msg]), flush=True)
    count -= 1
    if not count:
        break
"""

PEER_DUMPS = """
import json, sys, fedmsg.encoding
sys.stdout.write(fedmsg.encoding.dumps(json.loads(sys.stdin.read())))
"""


class InteropTestCase(unittest.TestCase):
    def peer_dir(self, peer_config):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        peer_config = dict(peer_config)
        peer_config.setdefault("topic_prefix", "org.fedoraproject")
        peer_config.setdefault("environment", "dev")
        peer_config.setdefault("post_init_sleep", 0.5)
        return fedmsgpeer.write_peer_config(d, peer_config)

    def peer_script(self, code, args, cwd):
        path = os.path.join(cwd, "peer_script.py")
        with open(path, "w") as f:
            f.write(code)
        return spawn(self, [PEER, path, *map(str, args)], path=cwd)

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def bus(self):
        return config.from_dict(
            {
                "relay_inbound": [tcp(free_port())],
                "endpoints": {"relay_outbound": [tcp(free_port())]},
                "post_init_sleep": 5.0,
                "timeout": 10.0,
            }
        )


class FedmsgPublisherTests(InteropTestCase):
    async def test_real_fedmsg_publisher_seen_by_our_subscriber(self):
        port = free_port()
        cwd = self.peer_dir({"endpoints": {"peer.host": [tcp(port)]}})
        cfg = config.from_dict({"endpoints": {"peer.host": [tcp(port)]}})
        got = []
        self.start(SubscriberService(cfg, lambda *a: got.append(a)))
        proc = self.peer_script(PEER_PUBLISH, [3], cwd)
        await wait_for(lambda: len(got) == 3, timeout=30, what="three messages from real fedmsg")
        self.assertEqual(await proc.ended, 0, proc.stderr)
        name, endpoint, topic, msg = got[0]
        self.assertEqual((name, endpoint), ("peer.host", tcp(port)))
        self.assertEqual(topic, "org.fedoraproject.dev.peer.thing.happened")
        self.assertEqual(msg["msg"], {"n": 0, "s": "h\u00e9llo \u2603", "f": 2.5})
        self.assertEqual([g[3]["i"] for g in got], [1, 2, 3])
        self.assertEqual(set(msg), {"topic", "msg", "msg_id", "i", "timestamp", "username"})

    async def test_real_fedmsg_publisher_seen_by_our_tail(self):
        port = free_port()
        cwd = self.peer_dir({"endpoints": {"peer.host": [tcp(port)]}})
        ours = os.path.join(self.mktemp())
        with open(ours, "w") as f:
            f.write(f'[endpoints]\n"peer.host" = ["{tcp(port)}"]\n')
        tail = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.tail", "--config", ours, "--json", "--count", "2"])
        # Our tail reconnects until the peer binds, and the peer waits 0.5 s
        # after binding: the tail's subscription is in place before publishing.
        proc = self.peer_script(PEER_PUBLISH, [2], cwd)
        self.assertEqual(await tail.ended, 0, tail.stderr)
        await proc.ended
        lines = [json.loads(line) for line in tail.lines if line]
        self.assertEqual([m["msg"]["n"] for m in lines], [0, 1])
        self.assertEqual(lines[0]["topic"], "org.fedoraproject.dev.peer.thing.happened")


class FedmsgSubscriberTests(InteropTestCase):
    async def test_our_logger_through_our_relay_seen_by_fedmsg_tail_messages(self):
        cfg = self.bus()
        relay = self.start(RelayService(cfg))
        cwd = self.peer_dir({"endpoints": {"relay_outbound": list(cfg["endpoints"]["relay_outbound"])}})
        tail = self.peer_script(PEER_TAIL, [2], cwd)
        await wait_for(relay.has_subscriber, timeout=30, what="fedmsg's tail subscribing to our relay")
        ours = self.mktemp()
        with open(ours, "w") as f:
            f.write(f'relay_inbound = ["{cfg["relay_inbound"][0]}"]\n')
        logger = spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.logger", "--config", ours, "--json-input",
                              "--message", '{"text": "h\\u00e9", "f": 0.1}', "--modname", "git", "--topic", "receive"])
        self.assertEqual(await logger.ended, 0, logger.stderr)
        pub = self.start(PublisherService(cfg.replace(active=True)))
        await pub.publish(topic="log", modname="logger", msg={"log": "second"})
        self.assertEqual(await tail.ended, 0, tail.stderr)
        received = [json.loads(line) for line in tail.lines if line]
        self.assertEqual(len(received), 2)
        name, endpoint, topic, msg = received[0]
        self.assertEqual(name, "relay_outbound")
        self.assertEqual(topic, "org.fedoraproject.dev.git.receive")
        self.assertEqual(msg["msg"], {"text": "h\u00e9", "f": 0.1})
        self.assertEqual(received[1][3]["msg"], {"log": "second"})

    async def test_real_fedmsg_logger_through_our_relay(self):
        cfg = self.bus()
        self.start(RelayService(cfg))
        got = []
        sub = self.start(SubscriberService(cfg, lambda *a: got.append(a)))
        cwd = self.peer_dir(
            {
                "relay_inbound": cfg["relay_inbound"][0],
                "endpoints": {"relay_outbound": list(cfg["endpoints"]["relay_outbound"])},
            }
        )
        logger = spawn(self, [fedmsgpeer.peer_bin("fedmsg-logger"), "--message", "from real fedmsg"], path=cwd)
        self.assertEqual(await logger.ended, 0, logger.stderr)
        await wait_for(lambda: got, timeout=10, what="the real fedmsg-logger's message")
        self.assertEqual(got[0][2], "org.fedoraproject.dev.logger.log")
        self.assertEqual(got[0][3]["msg"], {"log": "from real fedmsg"})
        self.assertEqual(sub.counters.get("dropped"), 0)


class EncodingInteropTests(InteropTestCase):
    async def test_canonical_bytes_equal_fedmsg(self):
        vector = {
            "msg": {"s": "h\u00e9llo \u2603 \U0001f600", "f": [0.1, 2.5, 1e-05, 1e22, -0.0], "z": None, "t": True, "q": "a/b\"\\\n\x01"},
            "topic": "org.fedoraproject.dev.x.y",
            "i": 7,
            "timestamp": 1700000000,
        }
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        path = os.path.join(cwd, "dumps.py")
        with open(path, "w") as f:
            f.write(PEER_DUMPS)
        out, err, code = await _run_with_stdin(PEER, path, json.dumps(vector).encode())
        self.assertEqual(code, 0, err)
        self.assertEqual(out, encoding.dumps_bytes(vector))


async def _run_with_stdin(python, script, data):
    """
    Run C{python script} with C{data} on stdin; return (stdout, stderr, code).
    """
    from twisted.internet import defer, protocol, reactor

    class P(protocol.ProcessProtocol):
        def __init__(self):
            self.out, self.err, self.d = b"", b"", defer.Deferred()

        def connectionMade(self):
            self.transport.write(data)
            self.transport.closeStdin()

        def outReceived(self, d):
            self.out += d

        def errReceived(self, d):
            self.err += d

        def processEnded(self, reason):
            self.d.callback(reason.value.exitCode)

    p = P()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    reactor.spawnProcess(p, python, [python, script], env=env)
    code = await p.d
    return p.out, p.err, code
