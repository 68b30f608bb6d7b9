"""
Tests for L{fedmsg_twisted.web} and L{fedmsg_twisted.query}: the query API,
statistics and the event stream, over HTTP on loopback.

The archive is filled by real publishes: an active L{PublisherService}
sends to a L{RelayService}, whose sink stores into a real SQLite L{Archive}
(as C{relay_tap} wires it).  Clients are C{twisted.web.client.Agent}s.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote, urlencode

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from fedmsg_twisted import query, web
from fedmsg_twisted.config import Config, ConfigError, from_dict
from fedmsg_twisted.publisher import PublisherService
from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.store import Archive
from tests.util import free_port, tcp, wait_for


def web_config(**extra) -> Config:
    """
    A bus config for relay + active publisher, with web_* keys (not yet in
    config.KEYS, so added to the checked config directly).
    """
    cfg = from_dict(
        {
            "relay_inbound": [tcp(free_port())],
            "endpoints": {"relay_outbound": [tcp(free_port())]},
            "post_init_sleep": 5.0,
            "timeout": 5.0,
        }
    )
    values = dict(cfg)
    values.update({"web_listen": "tcp:0:interface=127.0.0.1"})
    values.update(extra)
    return Config(values, cfg.sources)


class _StreamReader(protocol.Protocol):
    """
    Collects an event stream and parses it into C{(id, event, data)}.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.events: list[tuple[str | None, str, dict]] = []
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            ev_id, ev, data_lines = None, "message", []
            for line in block.decode("utf-8").split("\n"):
                if line.startswith(":") or not line:
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    ev_id = value
                elif field == "event":
                    ev = value
                elif field == "data":
                    data_lines.append(value)
            if data_lines:
                self.events.append((ev_id, ev, json.loads("\n".join(data_lines))))

    def connectionLost(self, reason) -> None:
        self.done.callback(None)

    def messages(self) -> list[dict]:
        return [d for _, ev, d in self.events if ev == "message"]


class WebTestCase(unittest.TestCase):
    """
    Relay -> archive -> dashboard, with a publisher on the relay.
    """

    async def bus(self, **extra) -> None:
        self.cfg = web_config(**extra)
        self.archive = await self.make_archive(batch_interval=0.01)
        await self.archive.start()
        self.addCleanup(self.archive.stop)
        self.relay = RelayService(self.cfg)
        self.relay.add_sink(self.archive.add)  # what relay_tap does
        self.relay.startService()
        self.addCleanup(self.relay.stopService)
        self.web = web.DashboardService(self.cfg, self.archive, self.relay)
        self.web.startService()
        self.addCleanup(self.web.stopService)
        self.port = self.web.port.getHost().port
        self.pub = PublisherService(self.cfg.replace(active=True))
        self.pub.startService()
        self.addCleanup(self.pub.stopService)
        self.agent = Agent(reactor)
        self.published: list[dict] = []

    async def make_archive(self, **kw) -> Archive:
        """
        A SQLite archive (tests.test_web_pg runs the same tests on PostgreSQL).
        """
        return Archive(state_directory=self.mktemp(), **kw)

    async def publish(self, topic: str, msg, modname: str = "logger") -> dict:
        env = await self.pub.publish(topic=topic, modname=modname, msg=msg)
        self.published.append(env)
        return env

    async def send(self, topic: str, msg, username: str) -> dict:
        """
        Publish a whole envelope, so the test chooses its C{username}.
        """
        n = len(self.published) + 1
        env = {"i": n, "msg": msg, "msg_id": f"{time.strftime('%Y')}-{n:08d}-0000-4000-8000-0000000000ab",
               "timestamp": time.time(), "topic": topic, "username": username}
        await self.pub.publish_envelope(env)
        self.published.append(env)
        return env

    async def stored(self, n: int | None = None) -> None:
        n = len(self.published) if n is None else n
        await wait_for(lambda: self.archive.counters["stored"] >= n, what=f"{n} messages archived")

    async def get(self, path: str, method: bytes = b"GET", headers: dict | None = None):
        h = Headers({k: [v] for k, v in (headers or {}).items()})
        resp = await self.agent.request(method, f"http://127.0.0.1:{self.port}{path}".encode(), h)
        body = await readBody(resp)
        return resp.code, resp.headers, body

    async def get_json(self, path: str, expect: int = 200, **kw):
        code, headers, body = await self.get(path, **kw)
        self.assertEqual(code, expect, body)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        return json.loads(body)

    async def stream(self, path: str, headers: dict | None = None) -> _StreamReader:
        h = Headers({k: [v] for k, v in (headers or {}).items()})
        resp = await self.agent.request(b"GET", f"http://127.0.0.1:{self.port}{path}".encode(), h)
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        reader = _StreamReader()
        resp.deliverBody(reader)

        def close():
            if not reader.done.called:
                reader.transport.stopProducing()
            return reader.done

        self.addCleanup(close)
        return reader

    async def fill(self) -> None:
        """
        Six messages from four services, two users, a package and non-ASCII text.
        """
        await self.publish("log", {"log": "hello world", "agent": "ralph"})
        await self.publish("log", {"log": "caf\u00e9 au lait", "agent": "pingou"})
        await self.publish("update.comment", {"comment": {"text": "works"}, "agent": "ralph",
                                              "update": {"packages": ["nethack"]}}, modname="bodhi")
        await self.publish("receive", {"commit": {"repo": "rpms/nethack", "agent": "pingou"}}, modname="git")
        await self.publish("task.state.change", {"srpm": "kernel-6.1", "owner": "jforbes"}, modname="buildsys")
        await self.publish("log", {"log": "<script>alert(1)</script> \"quoted\""})
        await self.stored()


class RawTests(WebTestCase):
    async def test_everything_newest_first(self):
        await self.bus()
        await self.fill()
        got = await self.get_json("/raw")
        self.assertEqual(got["total"], 6)
        self.assertEqual(got["count"], 6)
        self.assertEqual(got["pages"], 1)
        # The stored envelopes, parsed, newest first (datagrepper's default).
        self.assertEqual(got["raw_messages"], list(reversed(self.published)))
        args = got["arguments"]
        self.assertEqual((args["page"], args["rows_per_page"], args["order"]), (1, 25, "desc"))
        for key in ("topics", "categories", "users", "packages", "contains", "start", "end", "delta", "meta"):
            self.assertIn(key, args)

    async def test_filters(self):
        await self.bus()
        await self.fill()
        p = self.published

        async def ids(params):
            got = await self.get_json("/raw?" + urlencode(params, doseq=True) + "&order=asc")
            self.assertEqual(got["total"], len(got["raw_messages"]))
            return [p.index(m) for m in got["raw_messages"]]

        self.assertEqual(await ids({"category": "logger"}), [0, 1, 5])
        self.assertEqual(await ids({"category": ["git", "bodhi"]}), [2, 3])
        self.assertEqual(await ids({"topic": "org.fedoraproject.dev.git.receive"}), [3])
        self.assertEqual(await ids({"topic": ["org.fedoraproject.dev.git.receive",
                                              "org.fedoraproject.dev.bodhi.update.comment"]}), [2, 3])
        # user: the usernames the text layer names (fedmsg.meta's
        # msg2usernames): here every envelope's own username, while "ralph"
        # and "pingou" are only payload fields no processor reads.
        me = p[0]["username"]
        self.assertTrue(me and all(m["username"] == me for m in p))
        self.assertEqual(await ids({"user": me}), [0, 1, 2, 3, 4, 5])
        self.assertEqual(await ids({"user": "ralph"}), [])
        self.assertEqual(await ids({"not_user": "ralph"}), [0, 1, 2, 3, 4, 5])
        self.assertEqual(await ids({"not_user": me}), [])
        self.assertEqual(await ids({"not_category": "logger"}), [2, 3, 4])
        self.assertEqual(await ids({"category": "logger", "user": me}), [0, 1, 5])
        self.assertEqual(await ids({"contains": "hello"}), [0])
        # Non-ASCII is stored \u-escaped in canonical JSON: found either way.
        self.assertEqual(await ids({"contains": "caf\u00e9"}), [1])
        self.assertEqual(await ids({"contains": '"quoted"'}), [5])
        self.assertEqual(await ids({"contains": "<script>"}), [5])
        self.assertEqual(await ids({"contains": "%"}), [])  # no LIKE wildcards
        # package: what the text layer names (msg2packages); no processor
        # here names one, so "nethack" in bodhi's payload is no match.
        self.assertEqual(await ids({"package": "nethack"}), [])
        self.assertEqual(await ids({"not_package": "nethack"}), [0, 1, 2, 3, 4, 5])
        ts = [m["timestamp"] for m in p]
        self.assertEqual(await ids({"start": ts[0], "end": ts[5]}), [0, 1, 2, 3, 4, 5])
        self.assertEqual(await ids({"start": ts[5] + 1}), [])
        self.assertEqual(await ids({"end": ts[0] - 1}), [])
        self.assertEqual(await ids({"delta": 3600}), [0, 1, 2, 3, 4, 5])
        self.assertEqual(await ids({"end": ts[0] - 100, "delta": 50}), [])

    async def test_user_and_package_are_what_the_text_layer_names(self):
        """
        C{user} and C{package} match exactly the usernames and packages the
        text layer's processors name (datagrepper's semantics, from the
        tags index), never a word that only appears somewhere in the body.
        """
        await self.bus()
        pre = "org.fedoraproject.dev."
        await self.send(pre + "debbugs.bug.report", {"bug": 1234, "source": "nethack", "package": "nethack-x11",
                                                      "title": "crashes", "sender": "Jane <jane@example.org>"}, "jane")
        await self.send(pre + "dak.upload.accepted", {"source": "kernel", "version": "6.1-1", "distribution": "unstable",
                                                       "changed_by": "nethack <ralph@example.org>"}, "ralph")
        # nethack and pingou in fields no processor reads as package or user.
        await self.send(pre + "logger.log", {"log": "nethack", "agent": "pingou", "package": "nethack",
                                             "packages": ["nethack"], "username": "pingou"}, "ralph")
        await self.send(pre + "bodhi.update.comment", {"update": {"packages": ["nethack"]}, "agent": "ralph"}, "pingou")
        await self.stored()
        p = self.published

        async def ids(params):
            got = await self.get_json("/raw?" + urlencode(params, doseq=True) + "&order=asc")
            self.assertEqual(got["total"], len(got["raw_messages"]))
            return [p.index(m) for m in got["raw_messages"]]

        self.assertEqual(await ids({"package": "nethack"}), [0])
        self.assertEqual(await ids({"package": "kernel"}), [1])
        self.assertEqual(await ids({"package": ["nethack", "kernel"]}), [0, 1])
        self.assertEqual(await ids({"package": ["nethac", "nethack-x11", "NETHACK"]}), [])
        self.assertEqual(await ids({"not_package": "nethack"}), [1, 2, 3])
        self.assertEqual(await ids({"user": "ralph"}), [1, 2])
        self.assertEqual(await ids({"user": "pingou"}), [3])
        self.assertEqual(await ids({"user": ["jane", "pingou"]}), [0, 3])
        self.assertEqual(await ids({"user": ["Jane", "ralp"]}), [])
        self.assertEqual(await ids({"not_user": "ralph"}), [0, 3])
        self.assertEqual(await ids({"not_user": ["ralph", "jane"], "not_package": "kernel"}), [3])
        self.assertEqual(await ids({"user": "ralph", "package": "kernel"}), [1])
        self.assertEqual(await ids({"user": "ralph", "not_package": "kernel"}), [2])
        self.assertEqual(await ids({"user": "ralph", "category": "logger"}), [2])
        self.assertEqual(await ids({"user": "ralph", "contains": "6.1-1"}), [1])
        # What meta= shows is what the filters match.
        got = await self.get_json("/raw?order=asc&meta=usernames&meta=packages")
        self.assertEqual(
            [(m["meta"]["usernames"], m["meta"]["packages"]) for m in got["raw_messages"]],
            [(["jane"], ["nethack"]), (["ralph"], ["kernel"]), (["ralph"], []), (["pingou"], [])],
        )

    async def test_pages(self):
        await self.bus()
        await self.fill()
        first = await self.get_json("/raw?rows_per_page=4")
        second = await self.get_json("/raw?rows_per_page=4&page=2")
        beyond = await self.get_json("/raw?rows_per_page=4&page=3")
        self.assertEqual((first["pages"], first["count"], first["total"]), (2, 4, 6))
        self.assertEqual((second["count"], beyond["count"], beyond["total"]), (2, 0, 6))
        self.assertEqual(first["raw_messages"] + second["raw_messages"], list(reversed(self.published)))
        asc = await self.get_json("/raw?rows_per_page=4&order=asc")
        self.assertEqual(asc["raw_messages"], self.published[:4])

    async def test_meta(self):
        await self.bus()
        await self.fill()
        got = await self.get_json("/raw?category=logger&meta=title&meta=subtitle&meta=link&rows_per_page=1")
        (m,) = got["raw_messages"]
        self.assertEqual(set(m["meta"]), {"title", "subtitle", "link"})
        self.assertIn("<script>", m["meta"]["subtitle"])

    async def test_bad_parameters_name_the_parameter(self):
        await self.bus(web_max_rows_per_page=50)
        cases = {
            "rows_per_page=51": "rows_per_page",
            "rows_per_page=0": "rows_per_page",
            "rows_per_page=ten": "rows_per_page",
            "page=0": "page",
            "page=-3": "page",
            "order=sideways": "order",
            "start=yesterday": "start",
            "end=nan": "end",
            "delta=-5": "delta",
            "start=100&end=50": "end",
            "meta=colour": "meta",
            "order=asc&order=desc": "order",
            "topic=%FF": "topic",
            "user=a%00b": "user",
        }
        for qs, param in cases.items():
            got = await self.get_json("/raw?" + qs, expect=400)
            self.assertEqual((got["param"], got["reason"]), (param, "bad-parameter"), qs)
            self.assertIn(param, got["error"])
        got = await self.get_json("/stats?by=colour", expect=400)
        self.assertEqual(got["param"], "by")
        got = await self.get_json("/stats?window=0", expect=400)
        self.assertEqual(got["param"], "window")
        got = await self.get_json("/events?since=abc", expect=400)
        self.assertEqual(got["param"], "since")
        got = await self.get_json("/events", headers={b"Last-Event-ID": b"x"}, expect=400)
        self.assertEqual(got["param"], "Last-Event-ID")
        self.assertEqual(self.web.counters.get("bad-request", "rows_per_page"), 3)
        # Still serving.
        self.assertEqual((await self.get_json("/raw"))["total"], 0)

    async def test_read_only(self):
        await self.bus()
        for path in ("/raw", "/id?id=x", "/stats", "/events", "/", "/static/dashboard.js"):
            for method in (b"POST", b"PUT", b"DELETE", b"PATCH"):
                code, headers, body = await self.get(path, method=method)
                self.assertEqual(code, 405, (path, method))
                self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
                self.assertEqual(json.loads(body)["reason"], "method")

    async def test_head(self):
        await self.bus()
        code, headers, body = await self.get("/raw", method=b"HEAD")
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])

    async def test_id(self):
        await self.bus()
        await self.fill()
        env = self.published[2]
        got = await self.get_json("/id?id=" + quote(env["msg_id"]))
        self.assertEqual(got, env)
        got = await self.get_json("/id?meta=link&id=" + quote(env["msg_id"]))
        self.assertEqual(set(got["meta"]), {"link"})
        missing = await self.get_json("/id?id=2026-nope", expect=404)
        self.assertEqual(missing["param"], "id")
        self.assertEqual((await self.get_json("/id", expect=400))["param"], "id")

    async def test_unknown_pages_and_static(self):
        await self.bus()
        code, headers, body = await self.get("/")
        self.assertEqual(code, 200)
        self.assertIn(b"<title>fedmsg bus</title>", body)
        csp = headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", csp)
        self.assertNotIn(b"unsafe-inline", csp)
        for name, ctype in (("dashboard.js", b"text/javascript"), ("dashboard.css", b"text/css")):
            code, headers, body = await self.get("/static/" + name)
            self.assertEqual(code, 200)
            self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(ctype))
        js = (await self.get("/static/dashboard.js"))[2]
        self.assertNotIn(b"innerHTML", js)
        await self.get_json("/static/../web.py", expect=404)
        await self.get_json("/static/nope.js", expect=404)
        await self.get_json("/nope", expect=404)

    async def test_host_names(self):
        # Bound to loopback: a DNS-rebinding page's Host name is refused.
        await self.bus()
        got = await self.get_json("/raw", headers={b"Host": b"evil.example:80"}, expect=421)
        self.assertEqual(got["reason"], "host")
        await self.get_json("/raw", headers={b"Host": f"localhost:{self.port}".encode()})
        await self.get_json("/raw", headers={b"Host": b"[::1]:8080"})

    async def test_allowed_hosts(self):
        await self.bus(web_allowed_hosts="bus.example.org, other.example.org")
        await self.get_json("/raw", headers={b"Host": b"other.example.org:8080"})
        await self.get_json("/raw", headers={b"Host": b"bus.example.org"})
        await self.get_json("/raw", headers={b"Host": b"localhost"}, expect=421)

    async def test_query_timeout(self):
        await self.bus(web_query_timeout=1e-9)
        for n in range(5000):
            self.archive.add("org.x.dev.t.e", b'{"msg": "%d"}' % n, {"msg": str(n)})
        await self.archive.flush()
        got = await self.get_json("/raw?contains=nothing-like-this", expect=503)
        self.assertEqual(got["reason"], "timeout")
        self.assertEqual(self.web.counters.get("timeouts"), 1)
        # The reader connection is usable afterwards.
        self.web.query_timeout = 30.0
        self.assertEqual((await self.get_json("/raw?contains=%224999%22"))["total"], 1)

    async def test_statement_timeout(self):
        # The bound itself, on a statement that would run for a long time.
        await self.bus()

        def work(execute):
            return execute(self.endless_sql, []).fetchone()

        with self.assertRaises(query.QueryTimeout) as cm:
            await self.archive._on_reader(query._bounded, self.archive, 0.05, work)
        self.assertIn("0.05 seconds", str(cm.exception))
        # The thread's connection still works, without the bound.
        self.assertEqual(await self.archive.count(), 0)

    endless_sql = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000)"
        " SELECT count(*) FROM n"
    )

    async def test_archive_stopped(self):
        await self.bus()
        await self.archive.stop()
        got = await self.get_json("/raw", expect=503)
        self.assertEqual(got["reason"], "archive")


class StatsTests(WebTestCase):
    async def test_counts_by(self):
        await self.bus()
        await self.fill()
        got = await self.get_json("/stats?window=3600&by=category&buckets=10")
        self.assertEqual(got["total"], 6)
        self.assertEqual(got["counts"][0], {"key": "logger", "count": 3})
        self.assertEqual({c["key"]: c["count"] for c in got["counts"]}, {"logger": 3, "bodhi": 1, "git": 1, "buildsys": 1})
        self.assertEqual(len(got["series"]), 10)
        self.assertEqual(sum(got["series"]), 6)
        self.assertEqual(got["bucket"], 360.0)
        agents = await self.get_json("/stats?by=agent")
        self.assertEqual({c["key"]: c["count"] for c in agents["counts"]}, {"ralph": 2, "pingou": 1, None: 3})
        await self.assertStatsMatchFilter("user")
        topics = await self.get_json("/stats?by=topic&limit=1")
        self.assertEqual(topics["counts"], [{"key": "org.fedoraproject.dev.logger.log", "count": 3}])

    async def assertStatsMatchFilter(self, by: str) -> list:
        """
        /stats?by=user (or package) counts the tags /raw?user= searches:
        every count is what that filter finds.
        """
        got = await self.get_json(f"/stats?by={by}")
        self.assertTrue(got["counts"], by)
        for c in got["counts"]:
            found = await self.get_json(f"/raw?{by}={c['key']}")
            self.assertEqual(c["count"], found["total"], (by, c))
        return got["counts"]

    async def test_counts_by_user_and_package(self):
        """
        Users and packages are counted from what the text layer names (a
        message once for each), not from words elsewhere in the body.
        """
        await self.bus()
        pre = "org.fedoraproject.dev."
        await self.send(pre + "debbugs.bug.report", {"bug": 1234, "source": "nethack", "package": "nethack-x11",
                                                      "title": "crashes", "sender": "Jane <jane@example.org>"}, "jane")
        await self.send(pre + "dak.upload.accepted", {"source": "kernel", "version": "6.1-1", "distribution": "unstable",
                                                       "changed_by": "Ralph <ralph@example.org>"}, "ralph")
        await self.send(pre + "dak.upload.accepted", {"source": "kernel", "version": "6.1-2", "distribution": "unstable",
                                                       "changed_by": "Ralph <ralph@example.org>"}, "ralph")
        await self.send(pre + "logger.log", {"log": "nethack", "packages": ["nethack"]}, "pingou")
        await self.stored()
        packages = await self.assertStatsMatchFilter("package")
        self.assertEqual(packages, [{"key": "kernel", "count": 2}, {"key": "nethack", "count": 1}])
        await self.assertStatsMatchFilter("user")
        got = await self.get_json("/stats?by=package&limit=1")
        self.assertEqual((got["total"], got["counts"]), (4, [{"key": "kernel", "count": 2}]))

    async def test_windows(self):
        # An archive on a clock we move: messages received at known times.
        now = 1_000_000.0
        clock = task.Clock()
        archive = await self.make_archive(clock=clock)
        await archive.start()
        self.addCleanup(archive.stop)
        for age, cat in ((7000, "old"), (3000, "a"), (1000, "a"), (10, "b")):
            clock.advance(now - age - clock.seconds())
            archive.add(f"org.x.dev.{cat}.e", b'{"msg": 1}', {"msg": 1})
            await archive.flush()
        q = query.parse_stats({b"window": [b"3600"], b"buckets": [b"4"]})
        got = await query.stats(archive, q, now)
        self.assertEqual((got["start"], got["end"], got["total"]), (now - 3600, now, 3))
        self.assertEqual({c["key"]: c["count"] for c in got["counts"]}, {"a": 2, "b": 1})
        # Buckets of 900 s: ages 3000 (bucket 0), 1000 (bucket 2), 10 (bucket 3).
        self.assertEqual(got["series"], [1, 0, 1, 1])
        got = await query.stats(archive, query.parse_stats({b"window": [b"86400"]}), now)
        self.assertEqual(got["total"], 4)
        # The service's "now" comes from its clock.
        svc = web.DashboardService(web_config(), archive, clock=clock)
        self.assertEqual(svc.now(), now - 10)


class EventTests(WebTestCase):
    async def test_backlog_then_live(self):
        await self.bus()
        await self.fill()
        reader = await self.stream("/events?backlog=2")
        await wait_for(lambda: len(reader.messages()) == 2, what="backlog")
        ids = [int(i) for i, ev, _ in reader.events if ev == "message"]
        self.assertEqual(ids, [5, 6])
        last = reader.messages()[-1]
        self.assertEqual(last["topic"], "org.fedoraproject.dev.logger.log")
        self.assertIn("<script>", last["subtitle"])  # data as is; the page shows it as text
        env = await self.publish("update.comment", {"comment": {"text": "live one"}}, modname="bodhi")
        await wait_for(lambda: len(reader.messages()) == 3, what="live message")
        live = reader.messages()[-1]
        self.assertEqual((live["seq_id"], live["msg_id"], live["category"]), (7, env["msg_id"], "bodhi"))
        for key in ("title", "subtitle", "link", "topic", "timestamp"):
            self.assertIn(key, live)

    async def test_reconnect_replays_what_was_missed(self):
        await self.bus()
        await self.fill()
        reader = await self.stream("/events", headers={b"Last-Event-ID": b"2"})
        await wait_for(lambda: len(reader.messages()) == 4, what="replay after 2")
        self.assertEqual([m["seq_id"] for m in reader.messages()], [3, 4, 5, 6])
        # Last-Event-ID wins over ?since= (EventSource keeps the URL it started with).
        reader = await self.stream("/events?since=0", headers={b"Last-Event-ID": b"5"})
        await wait_for(lambda: len(reader.messages()) == 1, what="replay after 5")
        self.assertEqual(reader.messages()[0]["seq_id"], 6)
        # A position from another (reset) archive: from now on.
        reader = await self.stream("/events?since=999")
        await self.publish("log", {"log": "after reset"})
        await wait_for(lambda: reader.messages(), what="live after a bad position")
        self.assertEqual([m["seq_id"] for m in reader.messages()], [7])

    async def test_replay_is_bounded(self):
        await self.bus(web_max_replay=3)
        await self.fill()
        reader = await self.stream("/events?since=1")
        await wait_for(lambda: len(reader.messages()) == 3, what="bounded replay")
        (gap,) = [(i, d) for i, ev, d in reader.events if ev == "gap"]
        self.assertEqual(gap[1], {"after": 1, "resumed_at": 4, "max_replay": 3})
        self.assertEqual([m["seq_id"] for m in reader.messages()], [4, 5, 6])

    async def test_filters(self):
        await self.bus()
        reader = await self.stream("/events?topic=org.fedoraproject.dev.git&category=git")
        other = await self.stream("/events?topic=org.fedoraproject.dev.gi")
        await self.fill()
        await self.publish("log", {"log": "last"})
        everything = await self.stream("/events?since=0")
        await wait_for(lambda: len(everything.messages()) == 7, what="all")
        await wait_for(lambda: reader.messages(), what="git message")
        self.assertEqual([m["category"] for m in reader.messages()], ["git"])
        self.assertEqual(other.messages(), [])  # prefixes end at a dot

    async def test_no_loss_across_a_busy_reconnect(self):
        # Messages arriving while a client replays reach it exactly once, in order.
        await self.bus()
        await self.fill()
        readers = []
        for i in range(4):
            readers.append(await self.stream(f"/events?since={i}"))
            await self.publish("log", {"log": f"during {i}"})
        await self.stored()
        for i, r in enumerate(readers):
            await wait_for(lambda r=r: r.messages() and r.messages()[-1]["seq_id"] == 10, what="all live")
            self.assertEqual([m["seq_id"] for m in r.messages()], list(range(i + 1, 11)))

    async def test_slow_client_is_cut_off_and_catches_up(self):
        await self.bus(web_client_buffer=3)
        reader = await self.stream("/events")
        await wait_for(lambda: any(c.live for c in self.web.clients), what="stream live")
        (client,) = self.web.clients
        # What the transport does when its buffer is full and the peer does not read.
        client.pauseProducing()
        for n in range(5):
            await self.publish("log", {"log": f"unread {n}"})
        await reader.done
        self.assertEqual(self.web.counters.get("slow-clients"), 1)
        self.assertEqual(self.web.clients, set())
        got = [m["seq_id"] for m in reader.messages()]
        self.assertTrue(got and got == list(range(1, len(got) + 1)), got)
        # Reconnecting where it stopped, it gets the rest from the archive.
        again = await self.stream("/events", headers={b"Last-Event-ID": str(got[-1]).encode()})
        await wait_for(lambda: again.messages() and again.messages()[-1]["seq_id"] == 5, what="the rest")
        self.assertEqual(got + [m["seq_id"] for m in again.messages()], [1, 2, 3, 4, 5])

    async def test_replay_over_missing_seq_ids_is_not_a_gap(self):
        await self.bus()
        await self.fill()
        # Pruned or skipped seq_ids: fewer rows than the cap means nothing was left out.
        await self.archive._on_writer(
            lambda: self.archive._writer().execute("DELETE FROM fedmsg_archive WHERE seq_id IN (2, 3)")
        )
        reader = await self.stream("/events?since=1")
        await wait_for(lambda: len(reader.messages()) == 3, what="replay")
        self.assertEqual([ev for _, ev, _ in reader.events], ["message"] * 3)
        self.assertEqual([m["seq_id"] for m in reader.messages()], [4, 5, 6])

    async def test_head_opens_no_stream(self):
        await self.bus()
        code, headers, body = await self.get("/events", method=b"HEAD")
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(self.web.clients, set())
        self.assertEqual(self.web.counters.get("events-opened"), 0)

    async def test_live_without_the_poll_when_the_archive_is_slow(self):
        # The poll loop is off (an hour): only the relay's wake-ups deliver,
        # and the first one comes before a slow write has committed.
        await self.bus(web_poll_interval=3600)
        reader = await self.stream("/events")
        await wait_for(lambda: any(c.live for c in self.web.clients), what="stream live")
        busy = self.archive._on_writer(time.sleep, 0.2)  # a slow disk, say
        await self.publish("log", {"log": "slow"})
        await wait_for(lambda: reader.messages(), what="the message after a slow write")
        await busy
        self.assertEqual([m["seq_id"] for m in reader.messages()], [1])

    async def test_too_many_clients(self):
        await self.bus(web_max_clients=1)
        await self.stream("/events")
        got = await self.get_json("/events", expect=503)
        self.assertEqual(got["reason"], "busy")

    async def test_stop_closes_streams(self):
        await self.bus()
        reader = await self.stream("/events")
        await wait_for(lambda: self.web.clients, what="client registered")
        await self.web.stopService()
        await reader.done
        self.assertEqual(self.web.clients, set())


class WiringTests(WebTestCase):
    async def test_as_relay_tap_wires_it(self):
        # What relay_tap does: archive, relay with the archive as a sink, then the dashboard.
        from twisted.application.service import MultiService

        from fedmsg_twisted.store import ArchiveService

        cfg = web_config(state_directory=self.mktemp())
        top = MultiService()
        archive = Archive.from_config(cfg)
        ArchiveService(archive).setServiceParent(top)
        relay = RelayService(cfg)
        relay.add_sink(archive.add)
        relay.setServiceParent(top)
        svc = web.add_dashboard(top, cfg, archive, relay)
        self.assertIsInstance(svc, web.DashboardService)
        top.startService()
        self.addCleanup(top.stopService)
        await top.getServiceNamed("archive").started
        self.archive, self.web, self.port = archive, svc, svc.port.getHost().port
        self.agent = Agent(reactor)
        self.pub = PublisherService(cfg.replace(active=True))
        self.pub.startService()
        self.addCleanup(self.pub.stopService)
        self.published = []
        reader = await self.stream("/events")
        await wait_for(lambda: any(c.live for c in svc.clients), what="stream live")
        env = await self.publish("log", {"log": "wired"})
        await wait_for(lambda: reader.messages(), what="live event")
        self.assertEqual(reader.messages()[0]["msg_id"], env["msg_id"])
        self.assertEqual((await self.get_json("/raw"))["raw_messages"], [env])


class ListenTests(unittest.TestCase):
    def test_descriptions(self):
        d = web.listen_description
        self.assertEqual(d("8080"), ("tcp:8080:interface=127.0.0.1", False, True))
        self.assertEqual(d("tcp:8080"), ("tcp:8080:interface=127.0.0.1", False, True))
        self.assertEqual(d("tcp6:8080"), ("tcp6:8080:interface=\\:\\:1", False, True))
        self.assertEqual(d("tcp6:80:interface=\\:\\:"), ("tcp6:80:interface=\\:\\:", False, False))
        self.assertEqual(d("ssl:8443"), ("tcp:8443:interface=127.0.0.1", True, True))
        self.assertEqual(d("tcp:80:interface=0.0.0.0"), ("tcp:80:interface=0.0.0.0", False, False))
        self.assertEqual(d("unix:/run/bus.sock"), ("unix:/run/bus.sock", False, False))
        with self.assertRaises(ConfigError) as cm:
            d("ssl:8443:privateKey=k.pem")
        self.assertIn("web_certificate", str(cm.exception))

    def test_off_unless_configured(self):
        from twisted.application.service import MultiService

        parent = MultiService()
        self.assertIsNone(web.add_dashboard(parent, web_config(web_listen=None), None, None))
        self.assertEqual(list(parent), [])
        svc = web.add_dashboard(parent, web_config(), None, None)
        self.assertEqual(list(parent), [svc])

    def test_bad_listen(self):
        svc = web.DashboardService(web_config(web_listen="carrier-pigeon:9"), None)
        with self.assertRaises(ConfigError) as cm:
            svc.startService()
        self.assertIn("web_listen", str(cm.exception))

    def test_port_taken(self):
        from twisted.internet import reactor as r

        port = r.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        svc = web.DashboardService(web_config(web_listen=f"tcp:{port.getHost().port}"), None)
        with self.assertRaises(web.WebError) as cm:
            svc.startService()
        self.assertIn("cannot listen", str(cm.exception))


class TLSTests(WebTestCase):
    async def test_https(self):
        import ssl
        import http.client

        from twisted.internet import threads

        from tests.certs import make_pki

        pki = make_pki(self.mktemp())
        crt, key = pki.issue("localhost", client=False, server=True, dns=["localhost"], ips=["127.0.0.1"])
        await self.bus(web_listen="ssl:0", web_certificate=crt, web_private_key=key)
        await self.publish("log", {"log": "over tls"})
        await self.stored()

        def fetch():
            ctx = ssl.create_default_context(cafile=pki.ca_cert_path)
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)
            try:
                conn.request("GET", "/raw")
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read())
            finally:
                conn.close()

        status, got = await threads.deferToThread(fetch)
        self.assertEqual((status, got["total"]), (200, 1))

    def test_bad_tls_material(self):
        from tests.certs import make_pki

        pki = make_pki(self.mktemp())
        crt, key = pki.issue("localhost", client=False, server=True)
        other_crt, _ = pki.issue("other", client=False, server=True, fresh_key=True)
        with self.assertRaises(ConfigError) as cm:
            web.tls_options({"web_certificate": crt})
        self.assertIn("web_private_key", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            web.tls_options({"web_certificate": other_crt, "web_private_key": key})
        self.assertIn("does not match", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            web.tls_options({"web_certificate": key, "web_private_key": key})
        self.assertIn("no PEM certificate", str(cm.exception))
