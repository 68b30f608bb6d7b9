"""
SubscriberService's per-message path, driven with raw frames as its zmq
socket hands them over (no sockets needed: C{frames_received} is what the
socket calls), on a L{Clock}: checks and counters, duplicate suppression,
held messages, zmq_strict, validation before dedup, the journal.
"""

from __future__ import annotations

import os

from twisted.internet import task
from twisted.trial import unittest

from fedmsg_twisted import config, encoding
from fedmsg_twisted.heal import SINCE_WAIT, _LRU
from fedmsg_twisted.subscriber import SubscriberService

TOPIC = "org.fedoraproject.dev.svc.thing"


def frames(msg_id, n=0, topic=TOPIC, **extra):
    env = {"topic": topic, "msg_id": msg_id, "msg": {"n": n}, **extra}
    return [topic.encode(), encoding.dumps_bytes(env)]


class SubscriberTestCase(unittest.TestCase):
    def subscriber(self, topics=("",), validator=None, since=None, **extra):
        cfg = config.from_dict({"endpoints": {}, **extra}, strict=False)
        got = []
        clock = task.Clock()
        sub = SubscriberService(
            cfg, lambda *a: got.append(a), topics, endpoints={}, reactor=clock, validator=validator, since=since
        )
        return sub, got, clock

    def receive(self, sub, *messages):
        for f in messages:
            sub.frames_received("svc", "tcp://127.0.0.1:1", f)


def ns(got):
    return [g[3]["msg"]["n"] for g in got]


class PerMessageTests(SubscriberTestCase):
    def test_counted_and_delivered(self):
        sub, got, clock = self.subscriber()
        clock.advance(7)
        self.receive(sub, frames("m1", 1), [b"x"], [TOPIC.encode(), b"not json"], frames("m2", 2))
        self.assertEqual(ns(got), [1, 2])
        self.assertEqual(got[0][:3], ("svc", "tcp://127.0.0.1:1", TOPIC))
        self.assertEqual(sub.counters.get("received"), 4)
        self.assertEqual(sub.counters.get("delivered"), 2)
        self.assertEqual(sub.counters.get("dropped", "bad-frames"), 1)
        self.assertEqual(sub.counters.get("dropped", "not-json"), 1)
        self.assertEqual(sub.last_message_at, 7)

    def test_duplicate_msg_id_delivered_once(self):
        sub, got, _ = self.subscriber()
        self.receive(sub, frames("m1", 1), frames("m1", 1), frames("m2", 2), frames("m1", 1))
        self.assertEqual(ns(got), [1, 2])
        self.assertEqual(sub.counters.get("duplicates"), 2)
        self.assertEqual(sub.counters.get("delivered"), 2)

    def test_counters_replaced_after_construction(self):
        """
        The hub gives its subscriber its own counters after construction:
        what healing counts (duplicates) goes there too.
        """
        from fedmsg_twisted.stats import Counters

        sub, got, _ = self.subscriber()
        sub.counters = Counters()
        self.receive(sub, frames("m1", 1), frames("m1", 1))
        self.assertEqual(sub.counters.get("delivered"), 1)
        self.assertEqual(sub.counters.get("duplicates"), 1)

    def test_no_msg_id_or_no_healing_no_dedup(self):
        sub, got, _ = self.subscriber()
        body = encoding.dumps_bytes({"topic": TOPIC, "msg": {"n": 1}})
        self.receive(sub, [TOPIC.encode(), body], [TOPIC.encode(), body])
        self.assertEqual(ns(got), [1, 1])
        sub, got, _ = self.subscriber(heal=False)
        self.receive(sub, frames("m1", 1), frames("m1", 1))
        self.assertEqual(ns(got), [1, 1])

    def test_dedup_memory_is_a_bounded_lru(self):
        """
        C{heal_dedup_size} msg_ids are remembered, the oldest forgotten first.
        """
        sub, got, _ = self.subscriber(heal_dedup_size=3)
        self.receive(sub, *(frames(f"m{i}", i) for i in range(1, 5)))
        self.assertEqual(sub.healer.delivered.last(10), ["m2", "m3", "m4"])
        self.receive(sub, frames("m4", 4), frames("m1", 1))
        self.assertEqual(ns(got), [1, 2, 3, 4, 1])
        self.assertEqual(sub.counters.get("duplicates"), 1)

    def test_lru_add_moves_to_end(self):
        lru = _LRU(2)
        lru.add("a")
        lru.add("b")
        lru.add("a")
        lru.add("c")
        self.assertEqual(lru.last(5), ["a", "c"])
        self.assertNotIn("b", lru)
        self.assertEqual(lru.last(1), ["c"])

    def test_zmq_strict(self):
        """
        With zmq_strict, only the exact topics subscribed are delivered
        (zmq matches prefixes); an empty topic still means everything.
        """
        sub, got, _ = self.subscriber(topics=(TOPIC,), zmq_strict=True)
        self.receive(sub, frames("m1", 1), frames("m2", 2, topic=TOPIC + ".sub"))
        self.assertEqual(ns(got), [1])
        self.assertEqual(sub.counters.get("dropped", "not-subscribed"), 1)
        sub, got, _ = self.subscriber(topics=("",), zmq_strict=True)
        self.receive(sub, frames("m1", 1), frames("m2", 2, topic=TOPIC + ".sub"))
        self.assertEqual(ns(got), [1, 2])
        sub, got, _ = self.subscriber(topics=(TOPIC,))
        self.receive(sub, frames("m1", 1), frames("m2", 2, topic=TOPIC + ".sub"))
        self.assertEqual(ns(got), [1, 2])

    def test_heartbeat_never_reaches_the_callback(self):
        sub, got, _ = self.subscriber()
        hb = "org.fedoraproject.dev.relay._heartbeat"
        self.receive(sub, frames("h1", topic=hb), frames("m1", 1))
        self.assertEqual(ns(got), [1])
        self.assertEqual(sub.counters.get("heartbeats"), 1)

    def test_callback_errors_isolated(self):
        cfg = config.from_dict({"endpoints": {}}, strict=False)
        got = []

        def callback(*a):
            got.append(a)
            if a[3]["msg"]["n"] == 1:
                raise ValueError("boom")

        sub = SubscriberService(cfg, callback, endpoints={}, reactor=task.Clock())
        self.receive(sub, frames("m1", 1), frames("m2", 2), frames("m1", 1))
        self.assertEqual(ns(got), [1, 2])
        self.assertEqual(sub.counters.get("callback-errors"), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class HeldTests(SubscriberTestCase):
    def test_held_messages_are_not_recorded_until_delivered(self):
        """
        A live message held while the backlog comes (here C{--since} with no
        relay answering) is not recorded as delivered, so healing could still
        deliver it; once released, a copy received meanwhile is dropped.
        """
        sub, got, clock = self.subscriber(since=("msg_id", "m0"))
        sub.healer.start(clock)
        self.receive(sub, frames("m1", 1), frames("m2", 2), frames("m1", 1))
        self.assertEqual(got, [])
        self.assertEqual(sub.counters.get("held"), 3)
        self.assertNotIn("m1", sub.healer.delivered)
        clock.advance(SINCE_WAIT)
        self.assertEqual(ns(got), [1, 2])
        self.assertEqual(sub.counters.get("duplicates"), 1)
        self.receive(sub, frames("m3", 3), frames("m2", 2))
        self.assertEqual(ns(got), [1, 2, 3])
        self.assertEqual(sub.counters.get("duplicates"), 2)


class ValidatedTests(SubscriberTestCase):
    def setUp(self):
        from fedmsg_twisted.crypto import Signer, Validator
        from tests.certs import make_pki

        pki = make_pki(os.path.abspath(self.mktemp()), crl=False)
        pki.issue("svc.example.org", name="svc")
        self.cfg = {
            "ssldir": pki.directory,
            "certname": "svc",
            "certnames": {"svc": "svc"},
            "ca_cert_location": pki.ca_cert_path,
            "crl_location": None,
            "crypto_backend": "x509",
            "crypto_validate_backends": ["x509"],
        }
        cfg = config.from_dict({"endpoints": {}, **self.cfg}, strict=False)
        self.signer = Signer.from_config(cfg, name="svc")
        self.validator = Validator.from_config(cfg)

    def signed(self, msg_id, n):
        env = self.signer.sign({"topic": TOPIC, "msg_id": msg_id, "msg": {"n": n}})
        return [TOPIC.encode(), encoding.dumps_bytes(env)]

    def test_forged_copy_rejected_not_deduplicated(self):
        """
        With a validator, dedup comes after validation: a forged copy of a
        delivered message is counted as rejected, a genuine copy as a
        duplicate, and order of arrival is kept.
        """
        sub, got, _ = self.subscriber(validator=self.validator, **self.cfg)
        good = self.signed("m1", 1)
        forged_env = encoding.decode_body(good[1])
        forged_env["msg"] = {"n": 99}
        forged = [good[0], encoding.dumps_bytes(forged_env)]
        self.receive(sub, good, forged, good, self.signed("m2", 2), frames("m3", 3))
        self.assertEqual(ns(got), [1, 2])
        self.assertEqual(sub.counters.get("rejected"), 2)
        self.assertEqual(sub.counters.get("duplicates"), 1)
        self.assertEqual(sub.counters.get("delivered"), 2)


class JournalTests(SubscriberTestCase):
    def test_processed_msg_ids_journalled_only_with_a_state_file(self):
        state = os.path.abspath(self.mktemp())
        sub, got, clock = self.subscriber(subscriber_state_file=state)
        sub.healer.start(clock)
        self.addCleanup(sub.healer.stop)  # fsyncs and closes the journal
        self.receive(sub, frames("m1", 1), frames("m1", 1), frames("m2", 2))
        with open(state + ".journal") as f:
            self.assertEqual(f.read(), "m1\nm2\n")
        self.assertEqual(sub.healer.done.last(10), ["m1", "m2"])
        sub, got, clock = self.subscriber()
        self.receive(sub, frames("m1", 1))
        self.assertEqual(len(sub.healer.done), 0)
