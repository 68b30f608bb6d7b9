"""
The seed's blocking API, exactly as the fedmsg talk spells it, run in a
separate script (it blocks, so it cannot share the test's reactor).
"""

from __future__ import annotations

import json
import os
import textwrap

from twisted.trial import unittest

from fedmsg_twisted import config
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests.util import PYTHON, free_port, spawn, tcp, wait_for

PUBLISH = """
import fedmsg_twisted
env = fedmsg_twisted.publish(topic='testing', modname='test', msg={'test': 'Hello World', 'n': 1.5})
print(env["msg_id"])
"""

TAIL = """
import sys
import fedmsg_twisted
config = fedmsg_twisted.config.load_config([], None)
count = int(sys.argv[1])
for name, endpoint, topic, msg in fedmsg_twisted.tail_messages(**config):
    print(name, endpoint, topic, flush=True)
    print(fedmsg_twisted.encoding.pretty_dumps(msg["msg"]).replace("\\n", " "), flush=True)
    count -= 1
    if not count:
        break
"""


class BlockingAPITests(unittest.TestCase):
    def setUp(self):
        self.cfg = config.from_dict(
            {
                "relay_inbound": [tcp(free_port())],
                "endpoints": {"relay_outbound": [tcp(free_port())]},
                "timeout": 5.0,
            }
        )
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(
                f'relay_inbound = ["{self.cfg["relay_inbound"][0]}"]\ntimeout = 5\n'
                f'[endpoints]\nrelay_outbound = ["{self.cfg["endpoints"]["relay_outbound"][0]}"]\n'
            )

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def script(self, code, *args):
        path = os.path.abspath(self.mktemp() + ".py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(code))
        return spawn(self, [PYTHON, path, *map(str, args)], env={"FEDMSG_CONFIG": self.path})

    async def test_publish(self):
        self.start(RelayService(self.cfg))
        got = []
        self.start(SubscriberService(self.cfg, lambda *a: got.append(a)))
        proc = self.script(PUBLISH)
        self.assertEqual(await proc.ended, 0, proc.stderr)
        await wait_for(lambda: got, what="the script's message")
        name, endpoint, topic, msg = got[0]
        self.assertEqual(topic, "org.fedoraproject.dev.test.testing")
        self.assertEqual(msg["msg"], {"test": "Hello World", "n": 1.5})
        self.assertEqual(msg["msg_id"], proc.lines[0])

    async def test_publish_without_relay_raises(self):
        proc = self.script(PUBLISH)
        self.assertEqual(await proc.ended, 1)
        self.assertIn(b"PublishError: no relay is listening", proc.stderr)

    async def test_tail_messages(self):
        relay = self.start(RelayService(self.cfg))
        proc = self.script(TAIL, 2)
        await wait_for(relay.has_subscriber, what="tail_messages to subscribe")
        pub = self.start(PublisherService(self.cfg.replace(active=True)))
        await pub.publish(topic="a", modname="svc", msg={"x": "\u00e9"})
        await pub.publish(topic="b", modname="svc", msg={"y": 2})
        self.assertEqual(await proc.ended, 0, proc.stderr)
        self.assertEqual(
            proc.lines[0],
            f"relay_outbound {self.cfg['endpoints']['relay_outbound'][0]} org.fedoraproject.dev.svc.a",
        )
        self.assertEqual(json.loads(proc.lines[1]), {"x": "\u00e9"})
        self.assertEqual(json.loads(proc.lines[3]), {"y": 2})
