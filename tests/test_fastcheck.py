"""
The relay's validity-only check (L{fedmsg_twisted.fastcheck}) and its batched
forwarding path: the check vouches only for what L{encoding.parse_frames}
accepts, with the same topic, and the relay forwards and drops exactly what
it did one message at a time, in order.
"""

from __future__ import annotations

import json
import random

from twisted.trial import unittest

from fedmsg_twisted import encoding, fastcheck
from fedmsg_twisted import zmq as fzmq
from fedmsg_twisted.relay import HEARTBEAT_SUFFIX, RelayService
from tests.test_bus import BusTestCase, bus_config
from tests.util import sleep, wait_for

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the fixed corpus tests still run without it
    given = None

MAX = 64 * 1024

ENVELOPE = {
    "topic": "org.fedoraproject.prod.git.receive",
    "msg": {"commit": {"repo": "python-twisted", "stats": {"files": 3}}, "ok": True, "n": -1.5e-3},
    "msg_id": "2026-8e3f0a2c-1b4d-4c5e-9f60-7a8b9c0d1e2f",
    "timestamp": 1764270000,
    "i": 1,
    "username": "alice",
}


def frames_of(env, topic=None, **dump) -> list[bytes]:
    topic = env.get("topic", "a.b") if topic is None else topic
    return [topic.encode("utf-8"), json.dumps(env, **dump).encode("utf-8")]


# Bodies where simdjson and json.loads disagree or that sit on an edge;
# each with the frame topic "a.b".
TRICKY = [
    b'{"msg":1,"topic":"a.b"}',
    b'{"msg":1}',
    b'{"msg":1,"topic":"a.c"}',
    b'{"msg":1,"topic":"a.b","topic":"a.c"}',
    b'{"msg":1,"topic":"a.c","topic":"a.b"}',
    b'{"msg":1,"\\u0074opic":"a.c","topic":"a.b"}',
    b'{"msg":1,"topic":"a.b","\\u0074opic":"a.c"}',
    b'{"msg":1,"topic":"a\\u002eb"}',
    b'{"\\u006dsg":1,"topic":"a.b"}',
    b'{"topic":"a.b"}',
    b'{"msg":1,"topic":1}',
    b'{"msg":1,"topic":["a.b"]}',
    b'{"msg":1,"topic":{"a":"a.b"}}',
    b'{"msg":1,"topic":null}',
    b'\xef\xbb\xbf{"msg":1,"topic":"a.b"}',
    b' {"msg":1,"topic":"a.b"}',
    b'{"msg":1,"topic":"a.b"} ',
    b'{"msg":1,"topic":"a.b"}\n\r\t',
    b'{"msg":1,"topic":"a.b"}x',
    b'{"msg":1,"topic":"a.b"}\x00',
    b'{"msg":1,"topic":"a.b"}{}',
    b'{"msg":1,"topic":"a.b",}',
    b'{"msg":NaN,"topic":"a.b"}',
    b'{"msg":Infinity,"topic":"a.b"}',
    b'{"msg":-Infinity,"topic":"a.b"}',
    b'{"msg":1e400,"topic":"a.b"}',
    b'{"msg":-1e400,"topic":"a.b"}',
    b'{"msg":1.5e-400,"topic":"a.b"}',
    b'{"msg":123456789012345678901234567890,"topic":"a.b"}',
    b'{"msg":18446744073709551615,"topic":"a.b"}',
    b'{"msg":18446744073709551616,"topic":"a.b"}',
    b'{"msg":-9223372036854775808,"topic":"a.b"}',
    b'{"msg":-9223372036854775809,"topic":"a.b"}',
    b'{"msg":' + b"1" * 5000 + b',"topic":"a.b"}',
    b'{"msg":0.' + b"1" * 5000 + b',"topic":"a.b"}',
    b'{"msg":01,"topic":"a.b"}',
    b'{"msg":1.,"topic":"a.b"}',
    b'{"msg":.5,"topic":"a.b"}',
    b'{"msg":+1,"topic":"a.b"}',
    b'{"msg":-,"topic":"a.b"}',
    b'{"msg":1e,"topic":"a.b"}',
    b'{"msg":-0,"topic":"a.b"}',
    b'{"msg":tru,"topic":"a.b"}',
    b'{"msg":"\\ud800","topic":"a.b"}',
    b'{"msg":"\\udc00x","topic":"a.b"}',
    b'{"msg":"\\ud83d\\ude00","topic":"a.b"}',
    b'{"msg":"\\u0000","topic":"a.b"}',
    b'{"msg":"\\x","topic":"a.b"}',
    b'{"msg":"\x01","topic":"a.b"}',
    b'{"msg":"\x1f","topic":"a.b"}',
    b'{"msg":"\x7f","topic":"a.b"}',
    b'{"msg":"\t","topic":"a.b"}',
    b'{"msg":\x0c1,"topic":"a.b"}',
    b'{"msg":"\xed\xa0\x80","topic":"a.b"}',
    b'{"msg":"\xc0\xaf","topic":"a.b"}',
    b'{"msg":"\xf4\x90\x80\x80","topic":"a.b"}',
    b'{"msg":"h\xc3\xa9","topic":"a.b"}',
    b'{"msg":"\xe2\x80\xa8","topic":"a.b"}',
    b'{"msg":1,"topic":"a.b\\ud800"}',
    b'{"msg" : 1 , "topic" : "a.b" }',
    b'{"msg":[' + b"[" * 250 + b"]" * 250 + b'],"topic":"a.b"}',
    b'{"msg":[' + b"[" * 300 + b"]" * 300 + b'],"topic":"a.b"}',
    b'{"msg":[' + b"[" * 1000 + b"]" * 1000 + b'],"topic":"a.b"}',
    b'{"msg":[' + b"[" * 1100 + b"]" * 1100 + b'],"topic":"a.b"}',
    b'{"msg":"' + b"{" * 300 + b'","topic":"a.b"}',
    b"[]",
    b'"x"',
    b"{}",
    b"{",
    b"",
]


class EquivalenceMixin:
    def assertSameVerdict(self, check, frames):
        """
        C{check.topic} vouches only for what parse_frames accepts, with its topic.
        """
        got = check.topic(frames)
        if got is None:
            return None
        try:
            topic, _ = encoding.parse_frames(frames, check.max_size)
        except (encoding.DecodeError, RecursionError) as e:
            self.fail(f"fast check accepted {frames!r:.200}, parse_frames refused it: {e}")
        self.assertEqual(got, topic)
        self.assertIs(type(got), str)
        return got


class FrameCheckTests(EquivalenceMixin, unittest.TestCase):
    if not fastcheck.AVAILABLE:
        skip = "pysimdjson is not installed (the relay then checks every message fully)"

    def setUp(self):
        self.check = fastcheck.FrameCheck(MAX)

    def test_vouches_for_ordinary_envelopes(self):
        # Without this the fast path could silently never be taken.
        for dump in ({}, {"sort_keys": True, "separators": (",", ":")}, {"ensure_ascii": False}):
            self.assertEqual(self.check.topic(frames_of(ENVELOPE, **dump)), ENVELOPE["topic"], dump)
        self.assertEqual(self.check.topic(frames_of({"msg": {}}, topic="t\u00e9")), "t\u00e9")

    def test_tricky_bodies(self):
        vouched = 0
        for body in TRICKY:
            for topic in (b"a.b", b"a.c", b"\xff"):
                if self.assertSameVerdict(self.check, [topic, body]) is not None:
                    vouched += 1
        self.assertGreater(vouched, 5)

    def test_refused_cases_left_to_parse_frames(self):
        for frames in (
            [b"a.b"],
            [b"a.b", b'{"msg":1}', b"x"],
            [b"a.b", b'{"msg":"' + b"x" * MAX + b'"}'],
            [b"\xff", b'{"msg":1}'],
            [b"a.b", b'{"msg":1,"topic":"a.b","topic":"a.b"}'],
            [b"a.b", b'{"msg":[' + b"[" * 300 + b"]" * 300 + b'],"topic":"a.b"}'],
        ):
            self.assertIsNone(self.check.topic(frames), frames[:2])

    def test_no_size_limit(self):
        check = fastcheck.FrameCheck(0)
        big = [b"a.b", b'{"msg":"' + b"x" * (2 * MAX) + b'"}']
        self.assertEqual(check.topic(big), "a.b")

    def test_recovers_from_a_leaked_document(self):
        # simdjson refuses to reuse its buffer while a proxy into the last
        # document lives; the check must not stay refused forever.
        leaked = self.check._parser.parse(b'{"msg":{"a":1}}')["msg"]
        frames = frames_of(ENVELOPE)
        self.check.topic(frames)
        self.assertEqual(self.check.topic(frames), ENVELOPE["topic"])
        del leaked

    def test_recovers_after_big_integers(self):
        self.assertIsNone(self.check.topic([b"a.b", b'{"msg":123456789012345678901234567890}']))
        self.assertEqual(self.check.topic([b"a.b", b'{"msg":1}']), "a.b")

    def test_random_mutations(self):
        rnd = random.Random(7)
        bodies = [frames_of(ENVELOPE)[1], frames_of(ENVELOPE, ensure_ascii=False)[1]] + TRICKY[:60]
        alphabet = b'{}[]":,.-+0123456789eE\\u\x00\x1f \t\nabcdefnrstul\xc3\xa9\xff'
        vouched = 0
        for _ in range(20000):
            body = bytearray(rnd.choice(bodies))
            for _ in range(rnd.randint(1, 3)):
                op, at = rnd.randrange(3), rnd.randrange(len(body) + 1)
                if op == 0:
                    body[at:at] = bytes([rnd.choice(alphabet)])
                elif op == 1 and at < len(body):
                    del body[at]
                elif at < len(body):
                    body[at] = rnd.choice(alphabet)
            topic = rnd.choice([b"a.b", ENVELOPE["topic"].encode()])
            if self.assertSameVerdict(self.check, [topic, bytes(body)]) is not None:
                vouched += 1
        self.assertGreater(vouched, 100)

    if given is not None:

        @settings(max_examples=1500, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(
            st.dictionaries(
                st.sampled_from(["msg", "topic", "i", "x", "\u00e9"]),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=20,
                ),
            ),
            st.sampled_from(["a.b", "", "t\u00e9", "\ud800"]),
            st.booleans(),
        )
        def test_random_envelopes(self, env, topic, ascii_only):
            if ascii_only and "topic" not in env:
                env["topic"] = topic
            body = json.dumps(env, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
            self.assertSameVerdict(self.check, [topic.encode("utf-8", "surrogatepass"), body])


class RelayBatchTests(BusTestCase):
    """
    Valid messages and garbage interleaved in one burst: the relay forwards
    the valid ones in order, unchanged, and drops and counts the rest, with
    or without the fast check.
    """

    GARBAGE = [
        ([b"one frame only"], "bad-frames"),
        ([b"a.b", b"\xff\xfe"], "not-utf8"),
        ([b"a.b", b"not json"], "not-json"),
        ([b"a.b", b"[1]"], "not-an-object"),
        ([b"a.b", b'{"topic":"a.b"}'], "not-an-envelope"),
        ([b"a.b", b'{"msg":1,"topic":"c.d"}'], "topic-mismatch"),
        ([b"a.b", b'{"msg":1,"topic":"c.d","topic":"a.b","topic":"c.d"}'], "topic-mismatch"),
        ([b"a.b", b'{"msg":"' + b"x" * 2048 + b'","topic":"a.b"}'], "too-large"),
        ([b"a" + HEARTBEAT_SUFFIX.encode(), b'{"msg":1}'], "reserved-topic"),
    ]

    async def burst(self, fast: bool, sink=None):
        cfg = bus_config(max_message_size=1024)
        relay = RelayService(cfg)
        if not fast:
            relay._fast_check = None
        elif relay._fast_check is None:
            raise unittest.SkipTest("pysimdjson is not installed")
        if sink is not None:
            relay.add_sink(sink)
        self.start(relay)
        _, out = self.raw_sub(cfg["endpoints"]["relay_outbound"][0])
        pub = self.raw_pub(cfg["relay_inbound"][0])
        await wait_for(pub.has_subscriber, what="relay subscription")
        await wait_for(relay._out.has_subscriber, what="subscriber on the relay")
        await sleep(0.1)  # let the raw subscriber's subscription settle
        sent, valid = [], []
        for n in range(300):
            if n % 3 == 1:
                frames = self.GARBAGE[n // 3 % len(self.GARBAGE)][0]
            else:
                if n % 10 == 5:  # valid, but only json.loads says so
                    body = b'{"msg":{"n":%d},"topic":"a.b","x":[1.5,NaN]}' % n
                elif n % 10 == 9:  # valid: json.loads keeps the last topic
                    body = b'{"topic":"c.d","msg":{"n":%d},"topic":"a.b"}' % n
                else:
                    body = b'{"msg":{"n":%d},"topic":"a.b"}' % n
                frames = [b"a.b", body]
                valid.append(frames)
            sent.append(frames)
            pub.send_frames(frames)
        await wait_for(lambda: len(out) >= len(valid), what="every valid message")
        await sleep(0.1)
        self.assertEqual(out, valid)
        self.assertEqual(relay.counters.get("received"), len(sent))
        self.assertEqual(relay.counters.get("forwarded"), len(valid))
        expected = {}
        for n in range(1, 300, 3):
            reason = self.GARBAGE[n // 3 % len(self.GARBAGE)][1]
            expected[reason] = expected.get(reason, 0) + 1
        for reason, count in expected.items():
            self.assertEqual(relay.counters.get("dropped", reason), count, reason)
        self.assertEqual(relay.counters.get("dropped"), len(sent) - len(valid))
        self.assertIsNotNone(relay.last_message_at)
        self.flushLoggedErrors()
        return relay

    async def test_fast(self):
        await self.burst(fast=True)

    async def test_without_fast_check(self):
        await self.burst(fast=False)

    async def test_sink_gets_envelopes(self):
        seen = []
        await self.burst(fast=True, sink=lambda topic, body, env: seen.append((topic, env["msg"]["n"])))
        self.assertEqual(len(seen), 200)
        self.assertEqual(seen[0], ("a.b", 0))


class SocketBatchTests(BusTestCase):
    async def test_batch_mode_hands_lists_of_messages_in_order(self):
        from tests.util import free_port, tcp

        address = tcp(free_port())
        batches = []
        sub = fzmq.SubSocket(fzmq.shared_factory(), batches.append, ("",), [(fzmq._zmq.LINGER, 0)], batch=True)
        self.addCleanup(sub.close)
        sub.bind(address)
        pub = self.raw_pub(address)
        await wait_for(pub.has_subscriber, what="subscription")
        sent = [[b"t", b"%d" % n] for n in range(1000)] + [[b"one"], [b"a", b"b", b"c"]]
        self.assertEqual(pub.send_many(sent), 0)
        await wait_for(lambda: sum(map(len, batches)) >= len(sent), what="every message")
        self.assertEqual([m for b in batches for m in b], sent)
        self.assertTrue(all(0 < len(b) <= fzmq.READ_BATCH for b in batches))
