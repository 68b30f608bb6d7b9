"""
fedmsg-check against a real health endpoint, a dead port and servers that
answer garbage; run as a child process, as monitoring runs it.
"""

from __future__ import annotations

from twisted.internet import protocol, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from fedmsg_twisted import config
from fedmsg_twisted.cli import check
from fedmsg_twisted.health import HealthService, RelayHealth
from fedmsg_twisted.relay import RelayService
from tests.util import PYTHON, free_port, spawn, tcp


def run_check(testcase, *args):
    return spawn(testcase, [PYTHON, "-c", "from fedmsg_twisted.cli.check import run; run()", *args])


class Fixed(resource.Resource):
    isLeaf = True

    def __init__(self, code, body, content_type=b"application/json"):
        super().__init__()
        self.code, self.body, self.content_type = code, body, content_type

    def render_GET(self, request):
        request.setResponseCode(self.code)
        request.setHeader(b"Content-Type", self.content_type)
        return self.body


class Babble(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff garbage\r\n\r\n")
        self.transport.loseConnection()


class CheckTestCase(unittest.TestCase):
    def listen(self, factory) -> str:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    def http(self, code, body, content_type=b"application/json") -> str:
        site = server.Site(Fixed(code, body, content_type))
        site.noisy = False
        return self.listen(site)

    async def check(self, *args):
        proc = run_check(self, *args)
        code = await proc.ended
        return code, "\n".join(proc.lines), proc.stderr.decode()


class CheckRelayTests(CheckTestCase):
    async def test_relay_ready_then_not(self):
        cfg = config.from_dict({"relay_inbound": [tcp(free_port())], "endpoints": {"relay_outbound": [tcp(free_port())]}})
        relay = RelayService(cfg)
        health = HealthService("tcp:0:interface=127.0.0.1", [RelayHealth(relay)])
        health.startService()
        self.addCleanup(health.stopService)
        url = f"http://127.0.0.1:{health.port.getHost().port}"
        relay.startService()
        self.addCleanup(relay.stopService)
        code, out, err = await self.check("--url", url, "--component", "relay")
        self.assertEqual((code, out, err), (0, "relay: ready", ""))
        code, out, _ = await self.check("--url", url + "/")
        self.assertEqual((code, out), (0, "relay: ready"))
        code, out, _ = await self.check("--url", url, "-c", "relay", "-c", "hub")
        self.assertEqual(code, 1)
        self.assertIn("hub: no such component (known: relay)", out)
        await relay.stopService()
        code, out, _ = await self.check("--url", url, "--component", "relay")
        self.assertEqual((code, out), (1, "relay: NOT READY (not live)"))
        code, out, _ = await self.check("--url", url, "--json")
        self.assertEqual(code, 1)
        self.assertIn('"ready": false', out)


class CheckBadAnswersTests(CheckTestCase):
    async def test_connection_refused(self):
        code, out, err = await self.check("--url", f"http://127.0.0.1:{free_port()}")
        self.assertEqual(code, 2)
        self.assertIn("connection refused", err)
        self.assertNotIn("Traceback", err)

    async def test_not_json(self):
        url = self.http(200, b"<html>hello</html>", b"text/html")
        code, _, err = await self.check("--url", url)
        self.assertEqual(code, 2)
        self.assertIn("the body is not JSON", err)

    async def test_json_but_not_a_report(self):
        for body in (b"[1, 2]", b'{"ready": "yes", "components": {}}', b'{"ready": true, "components": {"a": 1}}'):
            url = self.http(200, body)
            code, _, err = await self.check("--url", url)
            self.assertEqual(code, 2, body)
            self.assertIn("not a fedmsg-twisted health report", err)

    async def test_http_error(self):
        url = self.http(404, b"no")
        code, _, err = await self.check("--url", url)
        self.assertEqual(code, 2)
        self.assertIn("HTTP 404", err)

    async def test_not_http_at_all(self):
        factory = protocol.Factory.forProtocol(Babble)
        factory.noisy = False
        url = self.listen(factory)
        code, _, err = await self.check("--url", url)
        self.assertEqual(code, 2)
        self.assertIn("broken HTTP answer", err)
        self.assertNotIn("Traceback", err)

    async def test_503_report_is_read(self):
        url = self.http(503, b'{"ready": false, "live": true, "components": {"hub": {"live": true, "ready": false}}}')
        code, out, _ = await self.check("--url", url)
        self.assertEqual((code, out), (1, "hub: NOT READY"))

    async def test_bad_arguments(self):
        code, _, err = await self.check("--url", "ftp://x")
        self.assertEqual(code, 2)
        self.assertIn("--url must be an http(s) URL", err)
        code, _, err = await self.check("--timeout", "0")
        self.assertEqual(code, 2)
        code, _, err = await self.check("--nope")
        self.assertEqual(code, 2)
        self.assertIn("unrecognized arguments", err)


class EvaluateTests(unittest.TestCase):
    def test_empty_report_is_not_ready(self):
        self.assertEqual(check.evaluate({"ready": False, "components": {}}, []), (1, ["no components reported"]))

    def test_ready_url(self):
        self.assertEqual(check.ready_url("http://h:1"), "http://h:1/ready")
        self.assertEqual(check.ready_url("http://h:1/base/"), "http://h:1/base/ready")
        self.assertEqual(check.ready_url("http://h:1/ready"), "http://h:1/ready")
