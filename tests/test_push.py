"""
Tests for L{fedmsg_twisted.push} and L{fedmsg_twisted.cli.push_client}.

Everything runs for real on loopback: a throwaway PKI (L{tests.certs}), a
started L{RelayService} with a L{SubscriberService} on its outbound side, the
push endpoint with mutual TLS, and clients using Python's C{ssl} and
C{http.client} in threads (or C{fedmsg-logger} as a subprocess).  Every bad
request is followed by a good "sentinel" message: the subscriber must see
the sentinel and nothing before it, which proves nothing else was forwarded.

Timeouts are tested without sockets, on a L{task.Clock}, so nothing waits
on the wall clock.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl

from twisted.internet import defer, endpoints, protocol, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from fedmsg_twisted import encoding, push
from fedmsg_twisted.cli import push_client
from fedmsg_twisted.config import Config, ConfigError, from_dict
from fedmsg_twisted.envelope import Envelopes
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests.certs import make_pki
from tests.util import PYTHON, free_port, spawn, tcp, wait_for

ALICE = "bodhi01.example.org"
BOB = "koji01.example.org"
BODHI_TOPIC = "org.fedoraproject.dev.bodhi.update.comment"
SENTINEL_TOPIC = "org.fedoraproject.dev.sentinel.ok"

#: Child processes get no config file and no proxy from the environment.
NO_PROXY_ENV = {
    "FEDMSG_CONFIG": "",
    **{k: "" for k in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY")},
}


def _config(base: dict, extra: dict) -> Config:
    # push_* keys are not in config.KEYS yet: from_dict(strict=False) would
    # drop them, so add them to the checked core config directly.
    cfg = from_dict(base, strict=False)
    values = dict(cfg)
    values.update(extra)
    return Config(values, cfg.sources)


class _PKI:
    """
    One CA for the relay and its clients, and a second, unrelated CA.
    """

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.pki = make_pki(testcase.mktemp())
        self.ca = self.pki.ca_cert_path
        self.server = self.pki.issue("localhost", client=False, server=True, dns=["localhost"], ips=["127.0.0.1"])
        self.alice = self.pki.issue(ALICE)
        self.bob = self.pki.issue(BOB)
        self.other = make_pki(testcase.mktemp(), cn="Some other CA", crl=False)
        self.impostor = self.other.issue(ALICE)


def _post(
    port: int,
    body: bytes | None,
    *,
    client: tuple[str, str] | None,
    ca: str,
    content_type: str | None = "application/json",
    method: str = "POST",
    path: str = "/publish",
    host: str = "localhost",
    chunked: bool = False,
    tls12: bool = False,
) -> tuple[int, dict | None]:
    """
    One HTTPS request with Python's ssl (run in a thread).
    """
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls12:  # the client certificate is then checked inside the handshake
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        ctx.load_cert_chain(*client)
    conn = http.client.HTTPSConnection(host, port, timeout=10, context=ctx)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        if chunked:
            conn.request(method, path, body=iter([body[i : i + 1000] for i in range(0, len(body), 1000)]),
                         headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)
    finally:
        conn.close()


class _RawSubscriber(SubscriberService):
    """
    A real subscriber that also keeps the raw frames it received.
    """

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.frames: list[list[bytes]] = []

    def frames_received(self, name, endpoint, frames):
        self.frames.append(list(frames))
        super().frames_received(name, endpoint, frames)


class _Splice(protocol.Protocol):
    """
    One side of a CONNECT tunnel: what it receives goes to C{other}.
    """

    other: "protocol.Protocol | None" = None

    def dataReceived(self, data):
        self.other.transport.write(data)

    def connectionLost(self, reason):
        if self.other is not None and self.other.transport is not None:
            self.other.transport.loseConnection()


class _ConnectProxy(_Splice):
    """
    A minimal HTTP CONNECT proxy, like the one a firewalled site runs.
    """

    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        if self.other is not None:
            return super().dataReceived(data)
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        self.factory.requests.append(head)
        method, target, _ = head.split(b"\r\n")[0].split(b" ")
        host, port = target.rsplit(b":", 1)
        if method != b"CONNECT" or host != b"localhost":
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            self.transport.loseConnection()
            return
        self.transport.pauseProducing()
        upstream = _Splice()
        upstream.other = self
        d = endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(port)), upstream)

        def connected(_):
            self.other = upstream
            self.factory.open.append(upstream)
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.transport.write(rest)
            self.transport.resumeProducing()

        d.addCallback(connected)


class PushTestCase(unittest.TestCase):
    """
    A relay, a subscriber on its outbound side, and the push endpoint.
    """

    max_body = 4096
    policy = {BODHI_TOPIC: [ALICE]}
    nitpicky = False

    async def _setUp(self) -> None:
        for k in list(os.environ):  # the thread clients follow https_proxy
            if k.lower().endswith("_proxy"):
                self.addCleanup(os.environ.__setitem__, k, os.environ.pop(k))
        self.certs = _PKI(self)
        self.prepare_certs()
        self.config = self.make_config()
        self.relay = RelayService(self.config)
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.delivered: list[dict] = []
        self.subscriber = _RawSubscriber(self.config, lambda n, e, t, m: self.delivered.append(m))
        self.subscriber.startService()
        self.addCleanup(self.subscriber.stopService)
        self.push = push.PushService(self.config, self.relay)
        self.push.startService()
        self.addCleanup(self.push.stopService)
        self.port = self.push.port.getHost().port
        await wait_for(lambda: self.relay._out.has_subscriber(), what="the subscriber to reach the relay")

    def setUp(self):
        return defer.Deferred.fromCoroutine(self._setUp())

    #: Extra checked config keys, and push_* keys, for a test class.
    base_extra: dict = {}
    push_extra: dict = {}

    def prepare_certs(self) -> None:
        """
        Called once the PKI exists, before the services start.
        """

    def make_config(self, **push_keys) -> Config:
        keys = {
            "push_listen": "tcp:0:interface=127.0.0.1",
            "push_certificate": self.certs.server.crt_path,
            "push_private_key": self.certs.server.key_path,
            "push_ca": self.certs.ca,
            "push_max_body": self.max_body,
            "push_timeout": 30,
        }
        keys.update(self.push_extra)
        keys.update(push_keys)
        return _config(
            {
                "endpoints": {"relay_outbound": [tcp(free_port())]},
                "relay_inbound": [tcp(free_port())],
                "routing_policy": self.policy,
                "routing_nitpicky": self.nitpicky,
                **self.base_extra,
            },
            keys,
        )

    def post(self, body, client="alice", **kw) -> defer.Deferred:
        pair = {
            "alice": self.certs.alice,
            "bob": self.certs.bob,
            "impostor": self.certs.impostor,
            "server": self.certs.server,
            None: None,
        }[client] if not isinstance(client, tuple) else client
        return threads.deferToThread(_post, self.port, body, client=pair, ca=self.certs.ca, **kw)

    def envelope(self, topic=BODHI_TOPIC, **msg) -> dict:
        envelope = Envelopes(self.config).make(topic="t", msg=msg or {"comment": "LGTM"}, modname="m")
        envelope["topic"] = topic
        return envelope

    async def assert_nothing_forwarded(self) -> None:
        """
        Push a good message; it must be the only thing the bus ever saw.
        """
        status, answer = await self.post(encoding.dumps_bytes(self.envelope(SENTINEL_TOPIC)))
        self.assertEqual(status, 202, answer)
        await wait_for(lambda: self.subscriber.frames, what="the sentinel")
        self.assertEqual([f[0] for f in self.subscriber.frames], [SENTINEL_TOPIC.encode()])
        self.assertEqual(self.relay.counters.get("received"), 1)
        self.assertEqual(self.relay.counters.get("forwarded"), 1)


def inline(f):
    """
    Run an C{async def} test method as a Deferred.
    """

    def run(self):
        return defer.Deferred.fromCoroutine(f(self))

    run.__name__ = f.__name__
    run.__doc__ = f.__doc__
    return run


class AcceptTests(PushTestCase):
    @inline
    async def test_envelope_bytes_unchanged(self):
        """
        A complete envelope is forwarded with the exact bytes received, even
        when they are not the canonical encoding.
        """
        envelope = self.envelope(comment="caf\u00e9")
        body = json.dumps(envelope, indent=2, ensure_ascii=False).encode("utf-8")
        status, answer = await self.post(body)
        self.assertEqual((status, answer), (202, {"msg_id": envelope["msg_id"]}))
        await wait_for(lambda: self.delivered, what="delivery")
        self.assertEqual(self.subscriber.frames, [[BODHI_TOPIC.encode(), body]])
        self.assertEqual(self.delivered, [envelope])
        self.assertEqual(self.relay.counters.get("received", "push"), 1)
        self.assertEqual(self.relay.counters.get("forwarded"), 1)
        self.assertEqual(self.push.resource.counters.get("accepted"), 1)

    @inline
    async def test_signed_envelope_still_validates(self):
        """
        A signed envelope goes through untouched, so fedmsg's validation
        (re-canonicalise and check) passes on the subscriber side.
        """
        from fedmsg_twisted.crypto.x509 import X509Signer
        from fedmsg_twisted.crypto import Validator

        self.certs.pki.issue("bodhi-host", name="bodhi-host")
        signer = X509Signer(self.certs.pki.directory, "bodhi-host")
        signed = signer.sign(self.envelope())
        body = json.dumps(signed, indent=1).encode()
        status, _ = await self.post(body)
        self.assertEqual(status, 202)
        await wait_for(lambda: self.delivered, what="delivery")
        self.assertEqual(self.subscriber.frames[0][1], body)
        validator = Validator.from_config(
            from_dict({"validate_signatures": True, **self.certs.pki.certname_config()}, strict=False)
        )
        await validator.start()
        self.addCleanup(validator.stop)
        verdict = await validator.validate_async(self.delivered[0])
        self.assertTrue(verdict.ok, verdict)

    @inline
    async def test_short_form_full_topic(self):
        """
        C{{"topic": FULL, "msg": ...}}: the relay builds the envelope.
        """
        status, answer = await self.post(json.dumps({"topic": BODHI_TOPIC, "msg": {"a": 1}}).encode())
        self.assertEqual(status, 202, answer)
        await wait_for(lambda: self.delivered, what="delivery")
        [envelope] = self.delivered
        self.assertEqual(envelope["topic"], BODHI_TOPIC)
        self.assertEqual(envelope["msg"], {"a": 1})
        self.assertEqual(envelope["msg_id"], answer["msg_id"])
        self.assertEqual(set(envelope), {"topic", "msg", "msg_id", "timestamp", "i", "username"})
        self.assertEqual(self.subscriber.frames[0][1], encoding.dumps_bytes(envelope))

    @inline
    async def test_short_form_modname(self):
        """
        C{{"modname", "topic", "msg"}} becomes C{PREFIX.ENV.MODNAME.TOPIC}.
        """
        status, answer = await self.post(
            json.dumps({"modname": "bodhi", "topic": "update.comment", "msg": {}}).encode()
        )
        self.assertEqual(status, 202, answer)
        await wait_for(lambda: self.delivered, what="delivery")
        self.assertEqual(self.delivered[0]["topic"], BODHI_TOPIC)

    @inline
    async def test_unlisted_topic_allowed_without_nitpicky(self):
        status, _ = await self.post(encoding.dumps_bytes(self.envelope("org.fedoraproject.dev.koji.build")), client="bob")
        self.assertEqual(status, 202)

    @inline
    async def test_push_client_send_all(self):
        """
        The blocking client used by C{fedmsg-logger} builds, posts, returns 0.
        """
        args = argparse.Namespace(
            relay_url=f"https://localhost:{self.port}/publish",
            client_cert=self.certs.alice.crt_path,
            client_key=self.certs.alice.key_path,
            ca=self.certs.ca,
            topic="update.comment",
            modname="bodhi",
        )
        code = await threads.deferToThread(push_client.send_all, "fedmsg-logger", args, self.config, [{"n": 1}, {"n": 2}])
        self.assertEqual(code, 0)
        await wait_for(lambda: len(self.delivered) == 2, what="two deliveries")
        self.assertEqual([m["msg"] for m in self.delivered], [{"n": 1}, {"n": 2}])
        self.assertEqual({m["topic"] for m in self.delivered}, {BODHI_TOPIC})

    @inline
    async def test_push_client_signs(self):
        """
        With C{sign_messages}, the client signs locally and the relay's
        subscriber receives a message that validates.
        """
        from fedmsg_twisted.crypto import Validator

        self.certs.pki.issue("shell-host", name="shell-host")
        cfg = _config({"sign_messages": True, "ssldir": self.certs.pki.directory, "certname": "shell-host"}, {})
        args = argparse.Namespace(
            relay_url=f"https://localhost:{self.port}/publish",
            client_cert=self.certs.alice.crt_path,
            client_key=self.certs.alice.key_path,
            ca=self.certs.ca,
            topic="update.comment",
            modname="bodhi",
        )
        code = await threads.deferToThread(push_client.send_all, "fedmsg-logger", args, cfg, [{"n": 1}])
        self.assertEqual(code, 0)
        await wait_for(lambda: self.delivered, what="delivery")
        self.assertIn("signature", self.delivered[0])
        validator = Validator.from_config(
            from_dict({"validate_signatures": True, **self.certs.pki.certname_config()}, strict=False)
        )
        await validator.start()
        self.addCleanup(validator.stop)
        verdict = await validator.validate_async(self.delivered[0])
        self.assertTrue(verdict.ok, verdict)
        self.assertEqual(verdict.signer, "shell-host")

    async def start_proxy(self) -> tuple[str, protocol.Factory]:
        factory = protocol.Factory.forProtocol(_ConnectProxy)
        factory.requests, factory.open = [], []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")

        async def stop():
            for p in factory.open:
                p.transport.abortConnection()
            await port.stopListening()

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
        return f"http://user:s%40cret@127.0.0.1:{port.getHost().port}", factory

    @inline
    async def test_push_client_through_proxy(self):
        """
        Through an HTTP CONNECT proxy, TLS (both certificates, the relay's
        name) still runs end to end.
        """
        proxy, factory = await self.start_proxy()

        def push():
            client = push_client.PushClient(
                f"https://localhost:{self.port}/publish", *self.certs.alice, ca=self.certs.ca, proxy=proxy
            )
            try:
                return client.post(encoding.dumps_bytes(self.envelope()))
            finally:
                client.close()

        answer = await threads.deferToThread(push)
        self.assertIn("msg_id", answer)
        await wait_for(lambda: self.delivered, what="delivery")
        [head] = factory.requests
        self.assertTrue(head.startswith(b"CONNECT localhost:%d " % self.port), head)
        self.assertIn(b"Proxy-Authorization: Basic dXNlcjpzQGNyZXQ=", head)  # user:s@cret

    @inline
    async def test_fedmsg_logger_uses_https_proxy(self):
        """
        C{fedmsg-logger} follows C{https_proxy}, as curl does.
        """
        proxy, factory = await self.start_proxy()
        proc = spawn(
            self,
            [PYTHON, "-m", "fedmsg_twisted.cli.logger",
             "--relay-url", f"https://localhost:{self.port}/publish",
             "--client-cert", self.certs.alice.crt_path, "--client-key", self.certs.alice.key_path,
             "--ca", self.certs.ca, "--modname", "bodhi", "--topic", "update.comment", "--message", "via proxy"],
            env={**NO_PROXY_ENV, "https_proxy": proxy},
        )
        code = await proc.ended
        self.assertEqual(code, 0, proc.stderr)
        await wait_for(lambda: self.delivered, what="delivery")
        self.assertEqual(len(factory.requests), 1)
        self.assertEqual(self.delivered[0]["msg"], {"log": "via proxy"})

    @inline
    async def test_fedmsg_logger_subprocess(self):
        """
        C{fedmsg-logger --relay-url ...} end to end, as a user runs it.
        """
        proc = spawn(
            self,
            [PYTHON, "-m", "fedmsg_twisted.cli.logger",
             "--relay-url", f"https://localhost:{self.port}/publish",
             "--client-cert", self.certs.alice.crt_path, "--client-key", self.certs.alice.key_path,
             "--ca", self.certs.ca, "--modname", "bodhi", "--topic", "update.comment",
             "--message", "hello from behind a firewall"],
            env=NO_PROXY_ENV,
        )
        code = await proc.ended
        self.assertEqual(code, 0, proc.stderr)
        await wait_for(lambda: self.delivered, what="delivery")
        self.assertEqual(self.delivered[0]["msg"], {"log": "hello from behind a firewall"})
        self.assertEqual(self.delivered[0]["topic"], BODHI_TOPIC)

    @inline
    async def test_fedmsg_logger_subprocess_refused(self):
        """
        A refusal ends C{fedmsg-logger} with status 1 and the relay's reason.
        """
        proc = spawn(
            self,
            [PYTHON, "-m", "fedmsg_twisted.cli.logger",
             "--relay-url", f"https://localhost:{self.port}/publish",
             "--client-cert", self.certs.bob.crt_path, "--client-key", self.certs.bob.key_path,
             "--ca", self.certs.ca, "--modname", "bodhi", "--topic", "update.comment", "--message", "x"],
            env=NO_PROXY_ENV,
        )
        code = await proc.ended
        self.assertEqual(code, 1)
        self.assertIn(b"403", proc.stderr)
        self.assertIn(b"routing_policy", proc.stderr)
        await self.assert_nothing_forwarded()


class RefuseTests(PushTestCase):
    async def _refused(self, expected_status, body, **kw):
        status, answer = await self.post(body, **kw)
        self.assertEqual(status, expected_status, answer)
        if answer is not None:
            self.assertIsInstance(answer.get("error"), str)
        await self.assert_nothing_forwarded()
        return answer

    @inline
    async def test_garbage(self):
        answer = await self._refused(400, b"\xff\xfegarbage{")
        self.assertEqual(answer["reason"], "not-utf8")

    @inline
    async def test_not_json(self):
        answer = await self._refused(400, b"{not json")
        self.assertEqual(answer["reason"], "not-json")

    @inline
    async def test_json_array(self):
        await self._refused(400, b"[1, 2]")

    @inline
    async def test_envelope_without_msg(self):
        envelope = self.envelope()
        del envelope["msg"]
        await self._refused(400, encoding.dumps_bytes(envelope))

    @inline
    async def test_short_form_extra_keys(self):
        await self._refused(400, json.dumps({"topic": BODHI_TOPIC, "msg": {}, "x": 1}).encode())

    @inline
    async def test_short_form_topic_without_prefix(self):
        answer = await self._refused(400, json.dumps({"topic": "bodhi.update", "msg": {}}).encode())
        self.assertIn("modname", answer["error"])

    @inline
    async def test_cn_not_allowed(self):
        answer = await self._refused(403, encoding.dumps_bytes(self.envelope()), client="bob")
        self.assertIn(BOB, answer["error"])
        self.assertEqual(answer["reason"], "routing-policy")

    @inline
    async def test_cn_not_allowed_short_form(self):
        await self._refused(403, json.dumps({"topic": BODHI_TOPIC, "msg": {}}).encode(), client="bob")

    @inline
    async def test_wrong_content_type(self):
        await self._refused(415, encoding.dumps_bytes(self.envelope()), content_type="text/plain")

    @inline
    async def test_no_content_type(self):
        await self._refused(415, encoding.dumps_bytes(self.envelope()), content_type=None)

    @inline
    async def test_get(self):
        await self._refused(405, None, method="GET")

    @inline
    async def test_put(self):
        await self._refused(405, encoding.dumps_bytes(self.envelope()), method="PUT")

    @inline
    async def test_other_path(self):
        await self._refused(404, encoding.dumps_bytes(self.envelope()), path="/publish/x")

    @inline
    async def test_too_large_by_content_length(self):
        """
        Refused on the Content-Length header, before the body is stored.
        """
        body = encoding.dumps_bytes(self.envelope(blob="x" * (3 * self.max_body)))
        answer = await self._refused(413, body)
        self.assertEqual(answer["reason"], "too-large")

    @inline
    async def test_too_large_chunked(self):
        """
        No Content-Length: bytes are counted as they arrive.
        """
        body = encoding.dumps_bytes(self.envelope(blob="x" * (2 * self.max_body)))
        await self._refused(413, body, chunked=True)

    @inline
    async def test_chunked_within_limit_accepted(self):
        body = encoding.dumps_bytes(self.envelope(blob="x" * 2000))
        status, _ = await self.post(body, chunked=True)
        self.assertEqual(status, 202)
        await wait_for(lambda: self.subscriber.frames, what="delivery")
        self.assertEqual(self.subscriber.frames[0][1], body)

    @inline
    async def test_relay_stopped(self):
        """
        A stopped relay would drop the message: say so instead of 202.
        """
        await self.relay.stopService()
        status, answer = await self.post(encoding.dumps_bytes(self.envelope()))
        self.assertEqual((status, answer["reason"]), (503, "relay-stopped"))
        self.assertEqual(self.relay.counters.get("received"), 0)

    async def _handshake_fails(self, client, **kw):
        with self.assertRaises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            await self.post(encoding.dumps_bytes(self.envelope()), client=client, **kw)
        await self.assert_nothing_forwarded()

    @inline
    async def test_no_client_certificate(self):
        await self._handshake_fails(None)

    @inline
    async def test_no_client_certificate_tls12(self):
        await self._handshake_fails(None, tls12=True)

    @inline
    async def test_certificate_from_another_ca_tls12(self):
        await self._handshake_fails("impostor", tls12=True)

    @inline
    async def test_tls12_client_accepted(self):
        status, answer = await self.post(encoding.dumps_bytes(self.envelope()), tls12=True)
        self.assertEqual(status, 202, answer)
        await wait_for(lambda: self.delivered, what="delivery")

    @inline
    async def test_certificate_from_another_ca(self):
        """
        Same CN, wrong issuer: the handshake fails.
        """
        await self._handshake_fails("impostor")

    @inline
    async def test_server_certificate_is_not_a_client_certificate(self):
        """
        A certificate of the right CA without the clientAuth usage is refused.
        """
        await self._handshake_fails("server")

    @inline
    async def test_plain_tcp_client(self):
        """
        Plain HTTP on the TLS port gets no HTTP answer, and nothing is forwarded.
        """

        def plain() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                body = encoding.dumps_bytes(self.envelope())
                s.sendall(
                    b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                received = b""
                try:
                    while chunk := s.recv(4096):
                        received += chunk
                except ConnectionError:
                    pass
                return received

        received = await threads.deferToThread(plain)
        self.assertFalse(received.startswith(b"HTTP/"), received)
        await self.assert_nothing_forwarded()


class NitpickyTests(PushTestCase):
    nitpicky = True
    policy = {BODHI_TOPIC: [ALICE], SENTINEL_TOPIC: [ALICE]}

    @inline
    async def test_unlisted_topic_refused(self):
        status, answer = await self.post(encoding.dumps_bytes(self.envelope("org.fedoraproject.dev.koji.build")))
        self.assertEqual(status, 403)
        self.assertIn("routing_nitpicky", answer["error"])
        await self.assert_nothing_forwarded()

    @inline
    async def test_listed_topic_accepted(self):
        status, _ = await self.post(encoding.dumps_bytes(self.envelope()))
        self.assertEqual(status, 202)


class HealthTests(PushTestCase):
    @inline
    async def test_health_component(self):
        from fedmsg_twisted.health import render_metrics, status

        component = push.PushHealth(self.push)
        status_code, answer = await self.post(encoding.dumps_bytes(self.envelope()), client="bob")
        self.assertEqual(status_code, 403, answer)
        self.assertTrue(component.is_live() and component.is_ready())
        self.assertEqual(component.counters.get("refused", "403"), 1)
        self.assertEqual(component.details()["listen"], "tcp:0:interface=127.0.0.1")
        live, ready, _ = status([component])
        self.assertTrue(live and ready)
        self.assertIn("refused", render_metrics([component]))
        await self.push.stopService()
        self.assertFalse(component.is_live() or component.is_ready())
        self.assertEqual(component.gauges(), {"open_connections": 0})


class RevocationTests(PushTestCase):
    """
    With C{push_crl}, revoked client certificates are refused.
    """

    def make_config(self, **push_keys) -> Config:
        return super().make_config(push_crl=self.certs.pki.crl_path, **push_keys)

    @inline
    async def test_revoked_refused(self):
        carol = self.certs.pki.issue("carol.example.org")
        self.certs.pki.revoke("carol.example.org")
        self.certs.pki.write_crl()
        self.push.trust.refresh_files(force=True)
        status, answer = await self.post(encoding.dumps_bytes(self.envelope()), client=carol)
        self.assertEqual((status, answer["reason"]), (403, "revoked"), answer)
        self.assertIn("carol.example.org", answer["error"])
        await self.assert_nothing_forwarded()

    @inline
    async def test_not_revoked_accepted(self):
        self.certs.pki.issue("carol.example.org")
        self.certs.pki.revoke("carol.example.org")
        self.certs.pki.write_crl()
        self.push.trust.refresh_files(force=True)
        status, _ = await self.post(encoding.dumps_bytes(self.envelope()))
        self.assertEqual(status, 202)


class ExpiredCRLTests(PushTestCase):
    """
    A CRL past its nextUpdate and grace period stops all pushes (503).
    """

    base_extra = {"crl_grace_period": 0}

    def prepare_certs(self) -> None:
        self.certs.pki.write_crl(expired=True)

    def make_config(self, **push_keys) -> Config:
        return super().make_config(push_crl=self.certs.pki.crl_path, **push_keys)

    @inline
    async def test_expired_crl(self):
        status, answer = await self.post(encoding.dumps_bytes(self.envelope()))
        self.assertEqual((status, answer["reason"]), (503, "crl"), answer)
        self.assertIn("expired", answer["error"])
        self.assertEqual(self.relay.counters.get("received"), 0)


class ServerNameTests(PushTestCase):
    """
    Clients verify the relay's name.
    """

    @inline
    async def test_push_client_refuses_wrong_name(self):
        wrong = self.certs.pki.issue("relay.example.org", client=False, server=True, dns=["relay.example.org"])
        await self.push.stopService()
        self.push = push.PushService(
            self.make_config(push_certificate=wrong.crt_path, push_private_key=wrong.key_path), self.relay
        )
        self.push.startService()
        self.addCleanup(self.push.stopService)
        port = self.push.port.getHost().port

        def attempt():
            client = push_client.PushClient(
                f"https://localhost:{port}/publish", *self.certs.alice, ca=self.certs.ca
            )
            try:
                client.post(encoding.dumps_bytes(self.envelope()))
            finally:
                client.close()

        with self.assertRaises(push_client.PushClientError) as e:
            await threads.deferToThread(attempt)
        self.assertIn("cannot verify the relay's certificate", str(e.exception))
        self.assertEqual(self.relay.counters.get("received"), 0)

    @inline
    async def test_push_client_refused_certificate_message(self):
        def attempt():
            client = push_client.PushClient(
                f"https://localhost:{self.port}/publish", *self.certs.impostor, ca=self.certs.ca
            )
            try:
                client.post(encoding.dumps_bytes(self.envelope()))
            finally:
                client.close()

        with self.assertRaises(push_client.PushClientError) as e:
            await threads.deferToThread(attempt)
        self.assertIn("client certificate", str(e.exception))
        self.assertEqual(self.relay.counters.get("received"), 0)


class StartupTests(unittest.TestCase):
    """
    Bad TLS material or a taken port stop start-up with a clear sentence.
    """

    def setUp(self):
        self.certs = _PKI(self)
        self.relay = RelayService(from_dict({}))  # never started: nothing may reach it

    def config(self, **kw) -> Config:
        keys = {
            "push_listen": "tcp:0:interface=127.0.0.1",
            "push_certificate": self.certs.server.crt_path,
            "push_private_key": self.certs.server.key_path,
            "push_ca": self.certs.ca,
        }
        keys.update(kw)
        return _config({}, {k: v for k, v in keys.items() if v is not None})

    def start(self, **kw):
        svc = push.PushService(self.config(**kw), self.relay)
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def test_mismatched_key(self):
        e = self.assertRaises(ConfigError, self.start, push_private_key=self.certs.alice.key_path)
        self.assertEqual(
            str(e),
            f"push: push_private_key {self.certs.alice.key_path} does not match "
            f"push_certificate {self.certs.server.crt_path}",
        )

    def test_missing_key_file(self):
        e = self.assertRaises(ConfigError, self.start, push_private_key="/nonexistent/relay.key")
        self.assertIn("push_private_key /nonexistent/relay.key: cannot read", str(e))

    def test_key_not_configured(self):
        e = self.assertRaises(ConfigError, self.start, push_private_key=None)
        self.assertIn("'push_private_key' is not", str(e))

    def test_not_a_certificate(self):
        e = self.assertRaises(ConfigError, self.start, push_ca=self.certs.server.key_path)
        self.assertIn("push_ca", str(e))
        self.assertIn("holds no PEM certificate", str(e))

    def test_expired_certificate(self):
        old = self.certs.pki.issue("old", client=False, server=True, dns=["localhost"], expired=True)
        e = self.assertRaises(ConfigError, self.start, push_certificate=old.crt_path, push_private_key=old.key_path)
        self.assertIn("expired on", str(e))

    def test_encrypted_key(self):
        from cryptography.hazmat.primitives import serialization

        path = os.path.join(self.certs.pki.directory, "encrypted.key")
        with open(path, "wb") as f:
            f.write(
                self.certs.pki.keys["localhost"].private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        e = self.assertRaises(ConfigError, self.start, push_private_key=path)
        self.assertIn("is encrypted", str(e))

    def test_bad_crl(self):
        e = self.assertRaises(ConfigError, self.start, push_crl=self.certs.server.key_path)
        self.assertIn(f"push_crl {self.certs.server.key_path}", str(e))

    def test_port_taken(self):
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        e = self.assertRaises(push.PushError, self.start, push_listen=f"ssl:{port}:interface=127.0.0.1")
        self.assertIn(f"cannot listen on push_listen 'ssl:{port}:interface=127.0.0.1'", str(e))

    def test_ssl_endpoint_files_refused(self):
        e = self.assertRaises(ConfigError, self.start, push_listen="ssl:8443:privateKey=x.pem")
        self.assertIn("push_private_key", str(e))

    def test_bad_description(self):
        e = self.assertRaises(ConfigError, self.start, push_listen="nonsense:1:2")
        self.assertIn("not a server endpoint description", str(e))

    def test_tls_floor(self):
        """
        TLS 1.0 and 1.1 are disabled on the server's context.
        """
        from OpenSSL import SSL

        ctx = push.push_server_options(self.config()).getContext()
        options = ctx.set_options(0)  # returns the options in force
        self.assertTrue(options & SSL.OP_NO_TLSv1)
        self.assertTrue(options & SSL.OP_NO_TLSv1_1)
        required = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        self.assertEqual(ctx.get_verify_mode() & required, required)

    def test_add_push_service(self):
        from twisted.application.service import MultiService

        parent = MultiService()
        self.assertIsNone(push.add_push_service(parent, _config({}, {}), self.relay))
        self.assertEqual(list(parent), [])
        svc = push.add_push_service(parent, self.config(), self.relay)
        self.assertEqual(list(parent), [svc])
        self.assertIsInstance(svc, push.PushService)


class ChannelTests(unittest.TestCase):
    """
    Idle, slow and oversized clients (the channel driven in memory on a Clock).
    """

    def setUp(self):
        self.clock = task.Clock()
        config = _config({}, {"push_max_body": 1024})
        relay = RelayService(config)  # never started: nothing may reach it
        resource = push.PushResource(relay, config)
        self.site = push.PushSite(resource, 1024, timeout=5, reactor=self.clock)
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)

    def test_idle(self):
        self.clock.advance(4.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnecting)

    def test_trickling_client(self):
        """
        One byte a second keeps resetting the idle timer but not the request deadline.
        """
        self.channel.dataReceived(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        for _ in range(4):
            self.clock.advance(1)
            self.channel.dataReceived(b"{")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.site.counters.get("timeouts"), 1)

    def test_too_large_answered_before_body(self):
        """
        The 413 is written as soon as the headers are in.
        """
        self.channel.dataReceived(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        )
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.channel.dataReceived(b"x" * 5000)
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.channel.requests[0].content)  # the body was never stored

    def test_too_large_chunked_counted_while_receiving(self):
        """
        Without Content-Length, the 413 goes out as soon as the count passes
        the limit, before the body ends, and the excess is not stored.
        """
        self.channel.dataReceived(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):
            self.channel.dataReceived(b"200\r\n" + b"x" * 512 + b"\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertLessEqual(len(self.channel.requests[0].content.getvalue()), 1024)
        self.assertFalse(self.transport.disconnecting)  # still reading the rest of the body
        self.channel.dataReceived(b"0\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)
