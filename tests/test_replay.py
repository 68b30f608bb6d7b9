"""
Tests for L{fedmsg_twisted.replay}: a real zmq REP endpoint on loopback, a
real SQLite archive, our client and the real fedmsg 1.1.7 client.
"""

from __future__ import annotations

import json
import os

import zmq
from twisted.internet import defer
from twisted.trial import unittest

from fedmsg_twisted import encoding
from fedmsg_twisted.config import from_dict
from fedmsg_twisted.stats import Counters
from fedmsg_twisted.replay import (
    ReplayError,
    ReplayQuery,
    ReplayService,
    ReplayTimeout,
    catch_up,
    error_frame,
    get_replay,
    parse_query,
    QueryError,
)
from fedmsg_twisted.store import Archive
from tests.fedmsgpeer import ensure_peer, peer_python, script, write_peer_config
from tests.util import free_port, spawn, tcp, wait_for

ensure_peer()  # blocking venv creation, before the reactor runs

T0 = 1795800000

# trial -j sets PYTHONPATH to its own sys.path; the peer must not import our
# venv's packages (a newer pyOpenSSL silently disables fedmsg's X.509).
PEER_ENV = {"PYTHONPATH": ""}


def envelope(n: int) -> dict:
    return {
        "i": n,
        "msg": {"n": n, "text": "h\u00e9llo \u2603"},
        "msg_id": f"2026-{n:08d}-0000-4000-8000-000000000000",
        "timestamp": T0 + n,
        "topic": f"org.example.dev.app{n % 3}.thing.happened",
        "username": "apache",
    }


class ParseQueryTests(unittest.TestCase):
    """
    Query checking, without sockets.
    """

    def test_keys(self):
        q = parse_query(
            b'{"seq_id":1,"seq_ids":[2,3],"seq_id_range":[5,9],"msg_id":"a",'
            b'"msg_ids":["b"],"time":[1,2.5]}'
        )
        self.assertEqual(
            q,
            ReplayQuery(
                seq_ids=(1, 2, 3),
                seq_id_range=(5, 9),
                msg_ids=("a", "b"),
                time_range=(1.0, 2.5),
                keys=("msg_id", "msg_ids", "seq_id", "seq_id_range", "seq_ids", "time"),
            ),
        )

    def test_errors(self):
        cases = {
            b"not json": "Query is not valid JSON",
            b"\xff\xfe": "Query is not valid JSON",
            b"[1,2]": "Query must be a JSON object",
            b'"seq_id"': "Query must be a JSON object",
            b"{}": "Empty query: give any of seq_id, seq_ids, seq_id_range, msg_id, msg_ids, time",
            b'{"bogus":1,"seq_id":1}': 'Unsupported field: "bogus"',
            b'{"seq_id":"1"}': 'Ill-format "seq_id" field: expected an integer',
            b'{"seq_id":true}': 'Ill-format "seq_id" field: expected an integer',
            b'{"seq_id":1.5}': 'Ill-format "seq_id" field: expected an integer',
            b'{"seq_id":99999999999999999999999}': 'Ill-format "seq_id" field: integer out of range',
            b'{"seq_ids":5}': 'Ill-format "seq_ids" field: expected a list',
            b'{"seq_ids":[1,"2"]}': 'Ill-format "seq_ids" field: expected an integer',
            b'{"seq_id_range":[1]}': 'Ill-format "seq_id_range" field: expected a list of two values [low, high]',
            b'{"seq_id_range":{"a":1}}': 'Ill-format "seq_id_range" field: expected a list of two values [low, high]',
            b'{"seq_id_range":[5,1]}': 'Ill-format "seq_id_range" field: low end above high end',
            b'{"msg_id":5}': 'Ill-format "msg_id" field: expected a string',
            b'{"msg_ids":["a",null]}': 'Ill-format "msg_ids" field: expected a list of strings',
            b'{"time":["a",2]}': 'Ill-format "time" field: expected epoch seconds (a number)',
            b'{"time":[NaN,2]}': 'Ill-format "time" field: number out of range',
            b'{"time":[1e400,2]}': 'Ill-format "time" field: number out of range',
            b'{"time":[3,2]}': 'Ill-format "time" field: start after end',
            b'[' * 100000: "Query is not valid JSON",
        }
        for raw, text in cases.items():
            with self.subTest(raw=raw[:40]):
                e = self.assertRaises(QueryError, parse_query, raw)
                self.assertEqual(str(e), text)
        e = self.assertRaises(QueryError, parse_query, b'{"seq_ids":[1,2,3]}', 2)
        self.assertEqual(str(e), 'Ill-format "seq_ids" field: more than 2 items')

    def test_error_frame(self):
        self.assertEqual(
            error_frame("There was no match for the given query"),
            b"error: 'There was no match for the given query'",
        )


class _Endpoint:
    """
    Shared set-up: an archive with ten messages and a running endpoint.
    """

    async def endpoint(self, count: int = 10, **kw) -> tuple[Archive, ReplayService]:
        from txzmq import ZmqFactory

        self.factory = ZmqFactory()
        self.addCleanup(self.factory.shutdown)
        archive = Archive(state_directory=self.mktemp())
        await archive.start()
        self.addCleanup(archive.stop)
        self.bodies = {}
        for n in range(1, count + 1):
            env = envelope(n)
            raw = encoding.dumps_bytes(env)
            if n == 4:
                # Not canonical, with a fedmsg-style seq_id of its own: must come back as is.
                raw = b'{"seq_id": 77, "msg_id": "%s", "topic": "x.y.z.w", "timestamp": %d}' % (
                    env["msg_id"].encode(),
                    env["timestamp"],
                )
                env = json.loads(raw)
            seq = await archive.add(env["topic"], raw, env)
            self.bodies[seq] = raw
        self.address = tcp(free_port())
        self.stats = Counters()
        svc = ReplayService(archive, self.address, factory=self.factory, stats=self.stats, **kw)
        svc.startService()
        self.addCleanup(svc.stopService)
        return archive, svc

    def raw(self, *frames: bytes, timeout: float = 5.0) -> defer.Deferred:
        from fedmsg_twisted import zmq_reqrep

        return zmq_reqrep.request(self.factory, self.address, list(frames), timeout)


class ReplayServiceTests(_Endpoint, unittest.TestCase):
    """
    The endpoint with our own client and raw requests.
    """

    @defer.inlineCallbacks
    def test_every_key(self):
        yield defer.Deferred.fromCoroutine(self.endpoint())

        def ns(query):
            return get_replay(self.address, query, 5, self.factory).addCallback(
                lambda msgs: [m.get("i", "x") for m in msgs]
            )

        self.assertEqual((yield ns({"seq_id": 2})), [2])
        self.assertEqual((yield ns({"seq_ids": [9, 1, 3]})), [1, 3, 9])
        # Inclusive at both ends; fedmsg's store always failed this one.
        self.assertEqual((yield ns({"seq_id_range": [5, 8]})), [5, 6, 7, 8])
        self.assertEqual((yield ns({"msg_id": envelope(6)["msg_id"]})), [6])
        self.assertEqual((yield ns({"msg_ids": [envelope(10)["msg_id"], envelope(1)["msg_id"]]})), [1, 10])
        self.assertEqual((yield ns({"time": [T0 + 2, T0 + 3]})), [2, 3])
        # Several keys: any match, seq order, no duplicates.
        self.assertEqual(
            (yield ns({"seq_id": 10, "seq_id_range": [1, 2], "time": [T0 + 2, T0 + 3]})),
            [1, 2, 3, 10],
        )
        # No match: fedmsg's error, which our client turns into [].
        self.assertEqual((yield ns({"seq_id": 99})), [])

    @defer.inlineCallbacks
    def test_bytes_unchanged(self):
        """
        Each reply frame is the stored body, byte for byte; a message that
        carried its own seq_id keeps it.
        """
        yield defer.Deferred.fromCoroutine(self.endpoint())
        frames = yield self.raw(b'{"seq_id_range":[1,10]}')
        self.assertEqual(frames, [self.bodies[s] for s in range(1, 11)])
        self.assertEqual(json.loads(frames[3])["seq_id"], 77)
        self.assertNotIn("seq_id", json.loads(frames[0]))

    @defer.inlineCallbacks
    def test_bad_input_keeps_serving(self):
        """
        Every kind of bad request gets one C{error: '...'} frame, and the
        endpoint answers the next good query.
        """
        _, svc = yield defer.Deferred.fromCoroutine(self.endpoint(max_messages=5))
        cases = [
            ((b"garbage{",), "error: 'Query is not valid JSON'"),
            ((b"\xff\x00",), "error: 'Query is not valid JSON'"),
            ((b"[]",), "error: 'Query must be a JSON object'"),
            ((b'{"bogus":1}',), "error: 'Unsupported field: \"bogus\"'"),
            ((b'{"seq_id":"2"}',), "error: 'Ill-format \"seq_id\" field: expected an integer'"),
            ((b'{"time":[1]}',), "error: 'Ill-format \"time\" field: expected a list of two values [low, high]'"),
            ((b'{"seq_id_range":[0,9223372036854775807]}',),
             "error: 'Too many messages match the query (more than 5); narrow it down'"),
            ((b'{"seq_id":1}', b"extra"), "error: 'Query must be a single frame, got 2'"),
            ((b"",), "error: 'Query is not valid JSON'"),
            ((b'{"seq_id":12345}',), "error: 'There was no match for the given query'"),
        ]
        for frames, text in cases:
            reply = yield self.raw(*frames)
            self.assertEqual(reply, [text.encode()], frames)
        self.assertEqual((yield self.raw(b'{"seq_id":3}')), [self.bodies[3]])
        self.assertEqual(svc.counters["refused"], 9)
        self.assertEqual(svc.counters["no_match"], 1)
        self.assertEqual(self.stats.get("replay", "refused"), 9)
        # Our client reports errors as ReplayError with the server's text.
        e = yield self.assertFailure(get_replay(self.address, {"bogus": 1}, 5, self.factory), ReplayError)
        self.assertIn('Unsupported field: "bogus"', str(e))

    @defer.inlineCallbacks
    def test_catch_up(self):
        """
        catch_up() gets a whole time range from an endpoint that refuses
        more than 3 messages per reply, by splitting it.
        """
        yield defer.Deferred.fromCoroutine(self.endpoint(max_messages=3))
        msgs = yield catch_up(self.address, T0, T0 + 100, 5, self.factory)
        self.assertEqual([m["msg_id"] for m in msgs], [envelope(n)["msg_id"] for n in range(1, 11)])
        msgs = yield catch_up(self.address, T0 + 2, T0 + 4, 5, self.factory)
        self.assertEqual([m["timestamp"] for m in msgs], [T0 + 2, T0 + 3, T0 + 4])
        self.assertEqual((yield catch_up(self.address, 0, 5, 5, self.factory)), [])
        yield self.assertFailure(
            catch_up(self.address, T0, T0 + 100, 5, self.factory, max_requests=2), ReplayError
        )

    @defer.inlineCallbacks
    def test_catch_up_unsplittable(self):
        """
        More messages in one instant than the endpoint will send: a clear error.
        """
        archive, _ = yield defer.Deferred.fromCoroutine(self.endpoint(count=0, max_messages=2))
        for n in range(3):
            yield archive.add("a.b.c.d", b"{}", {"msg_id": str(n), "timestamp": 5})
        e = yield self.assertFailure(catch_up(self.address, 5, 5, 5, self.factory), ReplayError)
        self.assertIn("Too many messages", str(e))

    @defer.inlineCallbacks
    def test_max_bytes(self):
        yield defer.Deferred.fromCoroutine(self.endpoint(max_bytes=300))
        reply = yield self.raw(b'{"seq_id_range":[1,10]}')
        self.assertTrue(reply[0].startswith(b"error: 'The reply would be too large ("), reply)
        self.assertEqual((yield self.raw(b'{"seq_id":1}')), [self.bodies[1]])

    @defer.inlineCallbacks
    def test_envelope_garbage(self):
        """
        A peer that sends frames without a REQ envelope is dropped and counted.
        """
        _, svc = yield defer.Deferred.fromCoroutine(self.endpoint())
        ctx = zmq.Context.instance()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        self.addCleanup(dealer.close)
        dealer.connect(self.address)
        dealer.send(b'{"seq_id":1}', zmq.NOBLOCK)  # no empty delimiter frame
        yield defer.Deferred.fromCoroutine(
            wait_for(lambda: svc.counters["malformed_envelope"] == 1, what="garbage counted")
        )
        self.assertEqual((yield self.raw(b'{"seq_id":1}')), [self.bodies[1]])

    @defer.inlineCallbacks
    def test_archive_failure(self):
        """
        When the archive cannot answer, the client still gets an error reply.
        """
        archive, svc = yield defer.Deferred.fromCoroutine(self.endpoint())
        yield archive.stop()
        reply = yield self.raw(b'{"seq_id":1}')
        self.assertEqual(reply, [b"error: 'The archive could not answer the query'"])
        self.assertEqual(svc.counters["archive_failed"], 1)

    @defer.inlineCallbacks
    def test_internal_error_still_replies(self):
        """
        Even a bug in the handler gets the client an error reply (fedmsg's
        client would otherwise wait forever), and the endpoint goes on.
        """
        _, svc = yield defer.Deferred.fromCoroutine(self.endpoint())
        real = svc.server.handle
        svc._conn.handler = lambda frames: 1 / 0
        reply = yield self.raw(b'{"seq_id":1}')
        self.assertEqual(reply, [b"error: 'Internal error in the replay server'"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        svc._conn.handler = real
        self.assertEqual((yield self.raw(b'{"seq_id":1}')), [self.bodies[1]])

    @defer.inlineCallbacks
    def test_busy(self):
        """
        Beyond max_concurrent queries in progress, new ones are answered "busy".
        """
        archive, svc = yield defer.Deferred.fromCoroutine(self.endpoint())
        svc.server.max_concurrent = 0
        reply = yield self.raw(b'{"seq_id":1}')
        self.assertEqual(reply, [b"error: 'Replay server is busy, try again later'"])
        self.assertEqual(svc.counters["busy"], 1)

    @defer.inlineCallbacks
    def test_timeout(self):
        """
        Nobody listening: the client fails with ReplayTimeout.
        """
        from txzmq import ZmqFactory

        factory = ZmqFactory()
        self.addCleanup(factory.shutdown)
        yield self.assertFailure(
            get_replay(tcp(free_port()), {"seq_id": 1}, 0.2, factory), ReplayTimeout
        )

    @defer.inlineCallbacks
    def test_bind_error(self):
        """
        An address already in use stops start-up with an error naming it.
        """
        _, svc = yield defer.Deferred.fromCoroutine(self.endpoint())
        other = ReplayService(None, self.address, factory=self.factory)
        e = self.assertRaises(OSError, other.startService)
        self.assertIn(self.address, str(e))
        self.assertFalse(other.running)

    def test_from_config(self):
        cfg = from_dict(
            {"name": "relay", "replay_endpoints": {"relay": "tcp://relay.example.org:2004"}, "active": True}
        )
        svc = ReplayService.from_config(dict(cfg, replay_max_messages=7), archive=None)
        self.assertEqual(svc.address, "tcp://relay.example.org:2004")
        self.assertEqual(svc.bind_address, "tcp://relay.example.org:2004")
        self.assertEqual(svc.server.max_messages, 7)
        svc = ReplayService.from_config(dict(cfg, relay_bind_host=False), archive=None)
        self.assertEqual(svc.bind_address, "tcp://*:2004")
        e = self.assertRaises(KeyError, ReplayService.from_config, cfg, None, name="other")
        self.assertIn("other", str(e))


FEDMSG_CLIENT = script(
    """
    import json, sys
    import fedmsg.config, fedmsg.replay
    config = fedmsg.config.load_config([], None)
    for line in sys.argv[1:]:
        query = json.loads(line)
        try:
            msgs = list(fedmsg.replay.get_replay("relay", query, config))
            print(json.dumps({"ok": msgs}), flush=True)
        except ValueError as e:
            arg = e.args[0]
            print(json.dumps({"error": arg.decode() if isinstance(arg, bytes) else str(arg)}), flush=True)
    """
)


class FedmsgClientTests(_Endpoint, unittest.TestCase):
    """
    fedmsg 1.1.7's own C{get_replay}, in its own venv, against our endpoint.
    """

    @defer.inlineCallbacks
    def test_fedmsg_get_replay(self):
        yield defer.Deferred.fromCoroutine(self.endpoint())
        workdir = self.mktemp()
        write_peer_config(
            workdir,
            {
                "endpoints": {"relay_outbound": ["tcp://127.0.0.1:1"]},
                "replay_endpoints": {"relay": self.address},
                "io_threads": 1,
            },
        )
        queries = [
            {"seq_id": 2},
            {"seq_ids": [1, 3]},
            {"seq_id_range": [2, 5]},
            {"time": [T0 + 6, T0 + 7]},
            {"msg_id": envelope(9)["msg_id"], "seq_id": 1},
            {"seq_id": 999},
            {"bogus": 1},
            {"seq_id": "x"},
        ]
        proc = spawn(
            self,
            [peer_python(), "-c", FEDMSG_CLIENT] + [json.dumps(q) for q in queries],
            env=PEER_ENV,
            path=os.path.abspath(workdir),
        )
        code = yield proc.ended
        self.assertEqual(code, 0, proc.stderr.decode(errors="replace")[-2000:])
        results = [json.loads(line) for line in proc.lines if line.strip()]
        self.assertEqual(len(results), len(queries), proc.lines)

        def decoded(*seqs):
            return {"ok": [json.loads(self.bodies[s]) for s in seqs]}

        self.assertEqual(results[0], decoded(2))
        self.assertEqual(results[1], decoded(1, 3))
        self.assertEqual(results[2], decoded(2, 3, 4, 5))
        self.assertEqual(results[3], decoded(6, 7))
        self.assertEqual(results[4], decoded(1, 9))
        self.assertEqual(results[5], {"error": "error: 'There was no match for the given query'"})
        self.assertEqual(results[6], {"error": "error: 'Unsupported field: \"bogus\"'"})
        self.assertEqual(results[7], {"error": "error: 'Ill-format \"seq_id\" field: expected an integer'"})


FEDMSG_SIGN = script(
    """
    import sys, time
    import fedmsg.config, fedmsg.crypto, fedmsg.encoding
    config = fedmsg.config.load_config([], None)
    config["certname"] = "myapp.host"
    fedmsg.crypto.init(**config)
    for n in range(3):
        msg = {"topic": "org.example.dev.myapp.signed", "msg": {"n": n, "s": "h\\u00e9"},
               "msg_id": "2026-signed-%d" % n, "timestamp": int(time.time()), "i": n + 1,
               "username": "apache"}
        print(fedmsg.encoding.dumps(fedmsg.crypto.sign(msg, **config)), flush=True)
    """
)

FEDMSG_VALIDATE = script(
    """
    import json
    import fedmsg.config, fedmsg.crypto, fedmsg.replay
    config = fedmsg.config.load_config([], None)
    fedmsg.crypto.init(**config)
    msgs = list(fedmsg.replay.get_replay("relay", {"msg_ids": ["2026-signed-0", "2026-signed-2"]}, config))
    print(json.dumps([[m["msg_id"], fedmsg.crypto.validate(m, **config)] for m in msgs]), flush=True)
    """
)


class SignedReplayTests(_Endpoint, unittest.TestCase):
    """
    Messages signed by the real fedmsg still validate in the real fedmsg
    after a trip through our archive and replay endpoint.
    """

    @defer.inlineCallbacks
    def test_signatures_survive(self):
        from tests.certs import make_pki

        archive, _ = yield defer.Deferred.fromCoroutine(self.endpoint(count=1))
        pki = make_pki(os.path.abspath(self.mktemp()))
        pki.issue("myapp-host.example.org", name="myapp.host")
        workdir = self.mktemp()
        write_peer_config(
            workdir,
            {
                "endpoints": {"relay_outbound": ["tcp://127.0.0.1:1"]},
                "replay_endpoints": {"relay": self.address},
                "io_threads": 1,
                "sign_messages": True,
                "validate_signatures": True,
                "crypto_backend": "x509",
                "crypto_validate_backends": ["x509"],
                "ssldir": pki.directory,
                "certnames": {"myapp.host": "myapp.host"},
                "ca_cert_location": pki.ca_cert_path,
                "crl_location": None,
            },
        )
        signer = spawn(self, [peer_python(), "-c", FEDMSG_SIGN], env=PEER_ENV, path=os.path.abspath(workdir))
        code = yield signer.ended
        self.assertEqual(code, 0, signer.stderr.decode(errors="replace")[-2000:])
        bodies = [line.encode() for line in signer.lines if line.strip()]
        self.assertEqual(len(bodies), 3)
        for raw in bodies:
            env = json.loads(raw)
            self.assertIn("signature", env)
            yield archive.add(env["topic"], raw, env)
        frames = yield self.raw(b'{"msg_id":"2026-signed-1"}')
        self.assertEqual(frames, [bodies[1]])
        checker = spawn(self, [peer_python(), "-c", FEDMSG_VALIDATE], env=PEER_ENV, path=os.path.abspath(workdir))
        code = yield checker.ended
        self.assertEqual(code, 0, checker.stderr.decode(errors="replace")[-2000:])
        self.assertEqual(
            json.loads(checker.lines[0]), [["2026-signed-0", True], ["2026-signed-2", True]]
        )


class RelayArchiveReplayTests(_Endpoint, unittest.TestCase):
    """
    The whole chain: the real fedmsg-logger publishes through our relay, the
    archive (a relay sink) stores it, and the real fedmsg get_replay reads it
    back, byte for byte what the relay received.
    """

    @defer.inlineCallbacks
    def test_logger_relay_archive_replay(self):
        from fedmsg_twisted.relay import RelayService
        from tests.fedmsgpeer import peer_bin

        archive, _ = yield defer.Deferred.fromCoroutine(self.endpoint(count=0))
        cfg = from_dict(
            {
                "relay_inbound": [tcp(free_port())],
                "endpoints": {"relay_outbound": [tcp(free_port())]},
            }
        )
        relay = RelayService(cfg, factory=self.factory)
        relay.startService()
        self.addCleanup(relay.stopService)
        relay.add_sink(archive.add)
        workdir = write_peer_config(
            os.path.abspath(self.mktemp()),
            {
                "relay_inbound": cfg["relay_inbound"][0],
                "endpoints": {"relay_outbound": list(cfg["endpoints"]["relay_outbound"])},
                "replay_endpoints": {"relay": self.address},
                "io_threads": 1,
            },
        )
        logger = spawn(
            self,
            [peer_bin("fedmsg-logger"), "--message", "archived h\u00e9"],
            env=PEER_ENV,
            path=workdir,
        )
        self.assertEqual((yield logger.ended), 0, logger.stderr)
        yield defer.Deferred.fromCoroutine(
            wait_for(lambda: archive.counters["stored"] == 1, what="the message archived")
        )
        (row,) = yield archive.get()
        self.assertEqual(json.loads(row.body)["msg"], {"log": "archived h\u00e9"})
        self.assertEqual(row.category, "logger")
        client = spawn(
            self,
            [peer_python(), "-c", FEDMSG_CLIENT, json.dumps({"msg_id": row.msg_id})],
            env=PEER_ENV,
            path=workdir,
        )
        self.assertEqual((yield client.ended), 0, client.stderr)
        self.assertEqual(json.loads(client.lines[0]), {"ok": [json.loads(row.body)]})
