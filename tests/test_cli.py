"""
fedmsg-logger, fedmsg-tail and twistd fedmsg-relay as a user runs them:
real processes, real sockets.
"""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from fedmsg_twisted import config
from fedmsg_twisted.cli import tail as tail_cli
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.subscriber import SubscriberService
from tests.util import PYTHON, free_port, sleep, spawn, tcp, wait_for

TWISTD = os.path.join(os.path.dirname(PYTHON), "twistd")


class CLITestCase(unittest.TestCase):
    def setUp(self):
        self.inbound, self.outbound = tcp(free_port()), tcp(free_port())
        self.config_path = os.path.abspath(self.mktemp())
        self.state = os.path.abspath(self.mktemp())
        with open(self.config_path, "w") as f:
            f.write(f'relay_inbound = ["{self.inbound}"]\ntimeout = 5\nstate_directory = "{self.state}"\n'
                    f'[endpoints]\nrelay_outbound = ["{self.outbound}"]\n')
        self.cfg = config.load(self.config_path)

    def prepend_config(self, text):
        with open(self.config_path) as f:
            old = f.read()
        with open(self.config_path, "w") as f:
            f.write(text + old)

    def start(self, service):
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def relay_and_subscriber(self):
        relay = self.start(RelayService(self.cfg))
        got = []
        self.start(SubscriberService(self.cfg, lambda *a: got.append(a)))
        return relay, got

    def logger(self, *args, stdin=None):
        argv = [PYTHON, "-m", "fedmsg_twisted.cli.logger", "--config", self.config_path, *args]
        if stdin is not None:
            argv = ["/bin/sh", "-c", 'printf "%s" "$0" | "$@"', stdin, *argv]
        return spawn(self, argv)


class LoggerTests(CLITestCase):
    async def test_lines_from_stdin(self):
        relay, got = self.relay_and_subscriber()
        proc = self.logger(stdin="first\n\nsecond line\n")
        self.assertEqual(await proc.ended, 0, proc.stderr)
        await wait_for(lambda: len(got) == 2, what="two messages")
        self.assertEqual([g[3]["msg"] for g in got], [{"log": "first"}, {"log": "second line"}])
        self.assertEqual(got[0][2], "org.fedoraproject.dev.logger.log")

    async def test_message_modname_topic(self):
        relay, got = self.relay_and_subscriber()
        proc = self.logger("--message", "hi", "--modname", "git", "--topic", "receive")
        self.assertEqual(await proc.ended, 0, proc.stderr)
        await wait_for(lambda: got, what="message")
        self.assertEqual(got[0][2], "org.fedoraproject.dev.git.receive")
        self.assertEqual(got[0][3]["msg"], {"log": "hi"})

    async def test_json_input_from_stdin(self):
        relay, got = self.relay_and_subscriber()
        proc = self.logger("--json-input", stdin='{"a": [1, 2.5],\n "b": "\u00e9"}')
        self.assertEqual(await proc.ended, 0, proc.stderr)
        await wait_for(lambda: got, what="message")
        self.assertEqual(got[0][3]["msg"], {"a": [1, 2.5], "b": "\u00e9"})

    async def test_invalid_json_fails_and_sends_nothing(self):
        relay, got = self.relay_and_subscriber()
        proc = self.logger("--json-input", "--message", "{not json")
        self.assertEqual(await proc.ended, 1)
        self.assertIn(b"not valid JSON", proc.stderr)
        self.assertEqual(relay.counters.get("received"), 0)

    async def test_no_relay_is_an_error(self):
        proc = self.logger("--message", "lost?", "--timeout", "0.3")
        self.assertEqual(await proc.ended, 1)
        self.assertIn(b"no relay is listening at " + self.inbound.encode(), proc.stderr)

    async def test_bad_config_is_named(self):
        self.prepend_config("bogus_key = 1\n")
        proc = self.logger("--message", "x")
        self.assertEqual(await proc.ended, 2)
        self.assertIn(b"unknown key 'bogus_key'", proc.stderr)
        self.assertIn(self.config_path.encode(), proc.stderr)

    async def test_bad_flag(self):
        proc = self.logger("--high-water-mark", "many")
        self.assertEqual(await proc.ended, 2)
        self.assertIn(b"--high-water-mark: invalid int value", proc.stderr)


class TailTests(CLITestCase):
    def tail(self, *args):
        return spawn(self, [PYTHON, "-m", "fedmsg_twisted.cli.tail", "--config", self.config_path, *args])

    async def publish_when_subscribed(self, relay, *messages):
        from fedmsg_twisted.publisher import PublisherService

        await wait_for(relay.has_subscriber, what="fedmsg-tail to subscribe")
        pub = self.start(PublisherService(self.cfg.replace(active=True)))
        for topic, msg in messages:
            await pub.publish(topic=topic, modname="svc", msg=msg)

    async def test_json_count(self):
        relay = self.start(RelayService(self.cfg))
        proc = self.tail("--json", "--count", "2")
        await self.publish_when_subscribed(relay, ("a", {"n": 1}), ("b", {"n": "\u00e9"}), ("c", {"n": 3}))
        self.assertEqual(await proc.ended, 0, proc.stderr)
        lines = [line for line in proc.lines if line]
        self.assertEqual(len(lines), 2)
        self.assertEqual(json.loads(lines[1])["msg"], {"n": "\u00e9"})
        self.assertIn("\\u00e9", lines[1])  # canonical, ASCII-only

    async def test_topic_include_exclude_query(self):
        relay = self.start(RelayService(self.cfg))
        proc = self.tail("--topic", "org.fedoraproject.dev.svc", "--exclude", r"\.skip$",
                         "--include", r"\.(keep|skip)$", "--query", "msg.v,topic", "--count", "1")
        await self.publish_when_subscribed(
            relay, ("other", {"v": 0}), ("skip", {"v": 1}), ("keep", {"v": "yes"})
        )
        self.assertEqual(await proc.ended, 0, proc.stderr)
        self.assertEqual([line for line in proc.lines if line], ["yes, org.fedoraproject.dev.svc.keep"])

    async def test_pretty_strips_credentials(self):
        relay = self.start(RelayService(self.cfg))
        proc = self.tail("--pretty", "--count", "1")
        await self.publish_when_subscribed(relay, ("a", {"k": "v"}))
        self.assertEqual(await proc.ended, 0, proc.stderr)
        shown = json.loads("\n".join(proc.lines))
        self.assertEqual(shown["msg"], {"k": "v"})
        self.assertIsInstance(shown["timestamp"], str)

    async def test_garbage_does_not_stop_the_tail(self):
        from fedmsg_twisted import zmq as fzmq

        port = free_port()
        with open(self.config_path, "w") as f:
            f.write(f'[endpoints]\nsvc = ["{tcp(port)}"]\n')
        raw = fzmq.PubSocket(fzmq.shared_factory(), options=[(fzmq._zmq.LINGER, 0)])
        self.addCleanup(raw.close)
        fzmq.bind_first(raw, [tcp(port)])
        proc = self.tail("--json", "--count", "1")
        await wait_for(raw.has_subscriber, what="fedmsg-tail to subscribe")
        for frames in ([b"one"], [b"a.b", b"\xff"], [b"a.b", b"nope"], [b"a.b", b"[1]"], [b"a", b"b", b"c"]):
            raw.send_frames(frames)
        raw.send_frames([b"a.b", b'{"msg":{"ok":1},"topic":"a.b"}'])
        self.assertEqual(await proc.ended, 0, proc.stderr)
        self.assertEqual([json.loads(line)["msg"] for line in proc.lines if line], [{"ok": 1}])

    async def test_bad_regexp(self):
        proc = self.tail("--include", "(")
        self.assertEqual(await proc.ended, 2)
        self.assertIn(b"--include: invalid regular expression", proc.stderr)

    async def test_bad_count(self):
        proc = self.tail("--count", "0")
        self.assertEqual(await proc.ended, 2)
        self.assertIn(b"--count must be 1 or more", proc.stderr)


class FormattingTests(unittest.TestCase):
    def test_query_paths(self):
        msg = {"msg": {"a": [{"b": 1}]}, "topic": "t"}
        self.assertEqual(tail_cli.query(msg, "msg.a.0.b"), 1)
        self.assertIsNone(tail_cli.query(msg, "msg.nope"))

    def test_colourise_keeps_text(self):
        text = json.dumps({"a": "x", "b": 1.5, "c": None}, indent=2)
        coloured = tail_cli.colourise(text)
        self.assertNotEqual(coloured, text)
        self.assertEqual(json.loads(coloured.replace("\x1b[34m", "").replace("\x1b[32m", "").replace("\x1b[33m", "").replace("\x1b[35m", "").replace("\x1b[0m", "")), json.loads(text))


class RelayPluginTests(CLITestCase):
    def twistd(self, *args):
        return spawn(self, [TWISTD, "-n", "--pidfile=", *args])

    async def test_listed_in_twistd_help(self):
        proc = spawn(self, [TWISTD, "--help"])
        await proc.ended
        self.assertIn("fedmsg-relay", "\n".join(proc.lines))

    async def test_runs_and_forwards(self):
        proc = self.twistd("fedmsg-relay", "--config", self.config_path)
        got = []
        self.start(SubscriberService(self.cfg, lambda *a: got.append(a)))
        await wait_for(lambda: any("Relay forwarding" in line for line in proc.lines), what="relay start-up")
        # Our subscriber may still be in zmq's reconnect back-off when the
        # relay comes up: what it misses is lost (PUB/SUB), so send until one
        # arrives.  Each send is checked: the logger confirms the relay took it.
        for attempt in range(20):
            logger = self.logger("--message", "via twistd")
            self.assertEqual(await logger.ended, 0, logger.stderr)
            if got:
                break
            await sleep(0.2)
        await wait_for(lambda: got, what="message through twistd fedmsg-relay")
        self.assertEqual(got[0][3]["msg"], {"log": "via twistd"})
        self.assertIsNone(proc.exit_code)

    async def test_address_taken_is_a_clear_error(self):
        self.start(RelayService(self.cfg))
        proc = self.twistd("fedmsg-relay", "--config", self.config_path)
        code = await proc.ended
        self.assertNotEqual(code, 0)
        # twistd -n sends stderr to its log on stdout.
        out = "\n".join(proc.lines) + proc.stderr.decode()
        self.assertIn("fedmsg-relay: cannot start: could not bind any of " + self.outbound, out)
        self.assertIn("Address already in use", out)

    async def test_bad_config_is_a_clear_error(self):
        self.prepend_config('environment = "production"\n')
        proc = self.twistd("fedmsg-relay", "--config", self.config_path)
        code = await proc.ended
        self.assertNotEqual(code, 0)
        out = proc.stderr + "\n".join(proc.lines).encode()
        self.assertIn(b"'environment' must be one of", out)


class RelayPushPluginTests(CLITestCase):
    """
    The HTTPS push endpoint as an operator turns it on: keys in the config
    file of C{twistd fedmsg-relay}, a firewalled service using
    C{fedmsg-logger --relay-url}.
    """

    async def test_push_through_twistd_relay(self):
        from tests.certs import make_pki

        pki = make_pki(os.path.abspath(self.mktemp()))
        server_crt, server_key = pki.issue("localhost", client=False, server=True, dns=["localhost"], ips=["127.0.0.1"], name="server")
        client_crt, client_key = pki.issue("mentors.example.org", name="client")
        port = free_port()
        self.prepend_config(
            f'push_listen = "tcp:{port}:interface=127.0.0.1"\npush_certificate = "{server_crt}"\n'
            f'push_private_key = "{server_key}"\npush_ca = "{pki.ca_cert_path}"\n'
        )
        proc = spawn(self, [TWISTD, "-n", "--pidfile=", "fedmsg-relay", "--config", self.config_path])
        got = []
        self.start(SubscriberService(self.cfg, lambda *a: got.append(a)))
        await wait_for(lambda: any("Relay forwarding" in line for line in proc.lines), what="relay start-up")
        for attempt in range(20):
            logger = self.logger("--relay-url", f"https://localhost:{port}/publish", "--client-cert", client_crt,
                                 "--client-key", client_key, "--ca", pki.ca_cert_path, "--message", "pushed")
            code = await logger.ended
            if code == 0 and got:
                break
            await sleep(0.2)
        self.assertEqual(code, 0, logger.stderr)
        await wait_for(lambda: got, what="the pushed message")
        self.assertEqual(got[0][3]["msg"], {"log": "pushed"})
        # Without a client certificate: refused, nothing more on the bus.
        before = len(got)
        refused = self.logger("--relay-url", f"https://localhost:{port}/publish", "--ca", pki.ca_cert_path, "--message", "x")
        self.assertEqual(await refused.ended, 1)
        await sleep(0.3)
        self.assertEqual(len(got), before)


class RelayArchivePluginTests(CLITestCase):
    """
    twistd fedmsg-relay with its archive, replay endpoint and dashboard.
    """

    async def test_archive_replay_and_query_api(self):
        from twisted.internet import reactor
        from twisted.web.client import Agent, readBody

        from fedmsg_twisted.replay import get_replay

        replay, web, health = tcp(free_port()), free_port(), free_port()
        self.prepend_config(f'web_listen = "tcp:{web}"\nhealth_listen = "tcp:{health}:interface=127.0.0.1"\n')
        with open(self.config_path, "a") as f:
            f.write(f'[replay_endpoints]\nrelay_outbound = "{replay}"\n')
        proc = spawn(self, [TWISTD, "-n", "--pidfile=", "fedmsg-relay", "--config", self.config_path])
        await wait_for(lambda: any("Relay forwarding" in line for line in proc.lines), what="relay start-up")
        for text in ("first", "second"):
            logger = self.logger("--message", text)
            self.assertEqual(await logger.ended, 0, logger.stderr)
        messages = []
        for attempt in range(50):  # the archive commits in batches
            messages = await get_replay(replay, {"seq_id_range": [1, 10]}, timeout=5)
            if len(messages) == 2:
                break
            await sleep(0.1)
        self.assertEqual([m["msg"]["log"] for m in messages], ["first", "second"])
        self.assertTrue(os.path.exists(os.path.join(self.state, "archive.sqlite")))
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{web}/raw?order=asc".encode())
        body = json.loads(await readBody(response))
        self.assertEqual(response.code, 200)
        self.assertEqual([m["msg"]["log"] for m in body["raw_messages"]], ["first", "second"])
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{health}/ready".encode())
        self.assertEqual(response.code, 200)
        await readBody(response)
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{health}/metrics".encode())
        metrics = (await readBody(response)).decode()
        self.assertRegex(metrics, r'fedmsg_forwarded(_total)?\{component="relay"\} 2')

    async def test_corrupt_archive_is_a_clear_error_at_start(self):
        os.makedirs(self.state)
        with open(os.path.join(self.state, "archive.sqlite"), "wb") as f:
            f.write(b"this is not a database" * 100)
        proc = spawn(self, [TWISTD, "-n", "--pidfile=", "fedmsg-relay", "--config", self.config_path])
        code = await proc.ended
        self.assertNotEqual(code, 0)
        out = "\n".join(proc.lines) + proc.stderr.decode()
        self.assertIn("fedmsg-relay: cannot start:", out)
        self.assertIn("archive.sqlite: not a usable SQLite archive", out)
