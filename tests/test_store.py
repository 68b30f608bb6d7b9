"""
Tests for L{fedmsg_twisted.store}: real SQLite files and a real PostgreSQL.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from fedmsg_twisted import encoding, store
from fedmsg_twisted.config import from_dict
from fedmsg_twisted.stats import Counters
from fedmsg_twisted.store import Archive, ArchiveError, ArchiveService, ResultTooLarge, Row, Stored, category_of
from tests import pgserver
from tests.util import sleep

pgserver.ensure_template()  # blocking initdb, once, before the reactor runs


def envelope(n: int, topic: str = "org.example.dev.bodhi.update.comment", **extra) -> dict:
    env = {
        "i": n,
        "msg": {"n": n, "agent": "alice", "text": "h\u00e9llo \u2603"},
        "msg_id": f"2026-{n:08d}-0000-4000-8000-000000000000",
        "timestamp": 1795800000 + n,
        "topic": topic,
        "username": "apache",
    }
    env.update(extra)
    return env


def body(env: dict) -> bytes:
    return encoding.dumps_bytes(env)


class _ArchiveTests:
    """
    Behaviour every backend must have.  Subclasses provide L{make_archive}.
    """

    async def make_archive(self, **kw) -> Archive:
        raise NotImplementedError

    async def started(self, **kw) -> Archive:
        archive = await self.make_archive(**kw)
        await archive.start()
        self.addCleanup(archive.stop)
        return archive

    async def add_many(self, archive: Archive, envs: list[dict]) -> list:
        ds = [archive.add(e["topic"], body(e), e) for e in envs]
        return await defer.gatherResults(ds)

    @defer.inlineCallbacks
    def test_roundtrip(self):
        """
        Bodies come back byte for byte, with the parsed fields and seq_ids
        from 1 in order of C{add}.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        envs = [envelope(n) for n in range(1, 4)]
        # A body with a signature-like field and odd spacing: never re-encoded.
        raw3 = b'{"msg_id": "2026-odd", "topic": "a.b.c.d", "timestamp": 5}'
        seqs = yield defer.Deferred.fromCoroutine(self.add_many(archive, envs))
        s4 = yield archive.add("a.b.c.d", raw3, encoding.loads(raw3))
        self.assertEqual(seqs, [1, 2, 3])
        self.assertIsInstance(seqs[0], Stored)
        self.assertFalse(seqs[0].duplicate)
        self.assertEqual(s4, 4)
        rows = yield archive.get()
        self.assertEqual([r.seq_id for r in rows], [1, 2, 3, 4])
        self.assertEqual(rows[0].body, body(envs[0]))
        self.assertEqual(rows[3].body, raw3)
        self.assertIsInstance(rows[0], Row)
        self.assertEqual(rows[0].msg_id, envs[0]["msg_id"])
        self.assertEqual(rows[0].topic, "org.example.dev.bodhi.update.comment")
        self.assertEqual(rows[0].category, "bodhi")
        self.assertEqual(rows[0].username, "apache")
        self.assertEqual(rows[0].agent, "alice")
        self.assertEqual(rows[0].timestamp, 1795800001)
        self.assertEqual(rows[3].category, "d")
        self.assertIsNone(rows[3].username)
        latest = yield archive.latest_seq()
        self.assertEqual(latest, 4)

    @defer.inlineCallbacks
    def test_empty(self):
        archive = yield defer.Deferred.fromCoroutine(self.started())
        self.assertIsNone((yield archive.latest_seq()))
        self.assertEqual((yield archive.get()), [])

    @defer.inlineCallbacks
    def test_duplicate_msg_id(self):
        """
        A msg_id is stored once: within a batch and across batches, the
        duplicate resolves to the first seq_id, flagged duplicate.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        e1, e2 = envelope(1), envelope(2)
        seqs = yield defer.Deferred.fromCoroutine(self.add_many(archive, [e1, e2, e1]))
        self.assertEqual(seqs, [1, 2, 1])
        self.assertEqual([s.duplicate for s in seqs], [False, False, True])
        again = yield archive.add(e2["topic"], body(e2), e2)
        self.assertEqual((again, again.duplicate), (2, True))
        third = yield archive.add(envelope(3)["topic"], body(envelope(3)), envelope(3))
        self.assertEqual(third, 3)  # no gap left by the duplicates
        self.assertEqual((yield archive.count()), 3)
        self.assertEqual(archive.counters["duplicates"], 2)
        self.assertEqual(archive.counters["stored"], 3)

    @defer.inlineCallbacks
    def test_stats(self):
        """
        The counters also go to a shared L{Counters} under "archive".
        """
        stats = Counters()
        archive = yield defer.Deferred.fromCoroutine(self.started(stats=stats))
        e = envelope(1)
        yield defer.Deferred.fromCoroutine(self.add_many(archive, [e, e]))
        self.assertEqual(stats.get("archive", "stored"), 1)
        self.assertEqual(stats.get("archive", "duplicates"), 1)

    @defer.inlineCallbacks
    def test_no_msg_id(self):
        """
        Messages without a (string) msg_id are all kept.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        e = {"topic": "x.y", "msg": {}}
        a = yield archive.add("x.y", b'{"msg":{},"topic":"x.y"}', e)
        b = yield archive.add("x.y", b'{"msg":{},"topic":"x.y"}', {"msg_id": 7})
        self.assertEqual((a, b), (1, 2))

    @defer.inlineCallbacks
    def test_hostile_fields(self):
        """
        NUL characters, lone surrogates, huge or non-finite numbers and
        non-dict envelopes are stored without failing the batch.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        bad = {
            "msg_id": "id\x00nul",
            "timestamp": 10**400,
            "username": "\ud800x",
            "msg": {"agent": ["not", "text"]},
        }
        good = envelope(1)
        seqs = yield defer.Deferred.fromCoroutine(
            self.add_many(archive, [bad | {"topic": "t.\x00"}, good])
        )
        wrong = yield archive.add("a.b", "not bytes", {})  # a caller's bug: refused, not raised
        self.assertIsNone(wrong)
        self.assertEqual(archive.counters["invalid"], 1)
        nan = yield archive.add("a.b", b"[]", [1, 2])  # not an object
        inf = yield archive.add("a.b", b"{}", {"timestamp": float("inf")})
        self.assertEqual(list(seqs) + [nan, inf], [1, 2, 3, 4])
        rows = yield archive.get(seq_ids=[1])
        self.assertEqual(rows[0].msg_id, "id\ufffdnul")
        self.assertIsNone(rows[0].timestamp)
        self.assertIsNone(rows[0].agent)
        self.assertEqual(archive.counters["failed"], 0)

    @defer.inlineCallbacks
    def test_batching(self):
        """
        Messages added in one go are committed in batches of C{batch_size}.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started(batch_size=50))
        envs = [envelope(n) for n in range(1, 121)]
        seqs = yield defer.Deferred.fromCoroutine(self.add_many(archive, envs))
        self.assertEqual(seqs, list(range(1, 121)))
        self.assertEqual(archive.counters["batches"], 3)

    @defer.inlineCallbacks
    def test_queries(self):
        """
        Selectors are OR-ed, results come in seq order, C{limit} caps them.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        envs = [envelope(n) for n in range(1, 11)]
        yield defer.Deferred.fromCoroutine(self.add_many(archive, envs))

        def seqs(**kw):
            return archive.get(**kw).addCallback(lambda rows: [r.seq_id for r in rows])

        self.assertEqual((yield seqs(seq_ids=[7, 2, 99])), [2, 7])
        self.assertEqual((yield seqs(seq_ids=[])), [])
        self.assertEqual((yield seqs(seq_id_range=(3, 5))), [3, 4, 5])
        self.assertEqual((yield seqs(msg_ids=[envs[8]["msg_id"], "nope"])), [9])
        # timestamps are 1795800000 + n, inclusive both ends
        self.assertEqual((yield seqs(time_range=(1795800004, 1795800006))), [4, 5, 6])
        self.assertEqual((yield seqs(since_seq=8)), [9, 10])
        self.assertEqual(
            (yield seqs(seq_ids=[10], seq_id_range=(1, 2), msg_ids=[envs[4]["msg_id"]])),
            [1, 2, 5, 10],
        )
        self.assertEqual((yield seqs(since_seq=0, limit=3)), [1, 2, 3])
        # max_bytes: sizes are checked before the bodies are loaded.
        size = len(body(envs[0]))
        self.assertEqual((yield seqs(seq_id_range=(1, 3), max_bytes=3 * size)), [1, 2, 3])
        self.assertEqual((yield seqs(seq_ids=[], max_bytes=10)), [])
        e = yield self.assertFailure(archive.get(seq_id_range=(1, 3), max_bytes=3 * size - 1), ResultTooLarge)
        self.assertEqual((e.size, e.limit), (3 * size, 3 * size - 1))

    @defer.inlineCallbacks
    def test_retention_count(self):
        """
        Count retention keeps the newest N; seq_ids are never reused after.
        """
        archive = yield defer.Deferred.fromCoroutine(
            self.started(retention_count=3, prune_interval=3600)
        )
        yield defer.Deferred.fromCoroutine(self.add_many(archive, [envelope(n) for n in range(1, 8)]))
        deleted = yield archive.prune()
        self.assertEqual(deleted, 4)
        self.assertEqual([r.seq_id for r in (yield archive.get())], [5, 6, 7])
        self.assertEqual((yield archive.prune()), 0)
        # Delete everything, then add: the sequence goes on.
        archive.retention_count = None
        archive.retention_days = 1e-9
        yield archive.prune()
        self.assertEqual((yield archive.count()), 0)
        nxt = yield archive.add("a.b.c.d", body(envelope(50)), envelope(50))
        self.assertEqual(nxt, 8)
        self.assertEqual(archive.counters["pruned"], 7)

    @defer.inlineCallbacks
    def test_retention_age(self):
        """
        Age retention uses the archive's clock (received time), and the
        periodic prune runs on that clock.
        """
        clock = task.Clock()
        clock.advance(1_000_000)
        archive = yield defer.Deferred.fromCoroutine(
            self.started(clock=clock, retention_days=1, prune_interval=3600)
        )
        old = [archive.add("a.b.c.d", body(envelope(n)), envelope(n)) for n in (1, 2)]
        yield archive.flush()
        yield defer.gatherResults(old)
        clock.advance(86400 - 10)  # the old ones are now 1 day - 10 s old
        new = [archive.add("a.b.c.d", body(envelope(n)), envelope(n)) for n in (3, 4)]
        yield archive.flush()
        yield defer.gatherResults(new)
        clock.advance(20)  # old: 1 day + 10 s; the loop fires (interval 3600 passed)
        yield archive.flush()
        for _ in range(100):
            if archive.counters["pruned"] == 2:
                break
            yield sleep(0.02)
        self.assertEqual(archive.counters["pruned"], 2)
        self.assertEqual([r.seq_id for r in (yield archive.get())], [3, 4])

    @defer.inlineCallbacks
    def test_stop_flushes_and_refuses(self):
        """
        Stopping writes what is pending; afterwards C{add} fires None and counts it.
        """
        archive = yield defer.Deferred.fromCoroutine(self.make_archive(batch_interval=3600))
        yield archive.start()
        pending = archive.add("a.b.c.d", body(envelope(1)), envelope(1))
        yield archive.stop()
        self.assertEqual((yield pending), 1)
        late = yield archive.add("a.b.c.d", body(envelope(2)), envelope(2))
        self.assertIsNone(late)
        self.assertEqual(archive.counters["dropped"], 1)
        yield archive.stop()  # idempotent
        # Reopen: the data is there, the sequence continues.
        again = yield defer.Deferred.fromCoroutine(self.started())
        self.assertEqual((yield again.latest_seq()), 1)
        self.assertEqual((yield again.add("a.b.c.d", body(envelope(3)), envelope(3))), 2)

    @defer.inlineCallbacks
    def test_add_while_starting(self):
        """
        Messages added while the database opens are kept and stored once it is.
        """
        archive = yield defer.Deferred.fromCoroutine(self.make_archive())
        started = archive.start()
        self.addCleanup(archive.stop)
        early = [archive.add("a.b.c.d", body(envelope(n)), envelope(n)) for n in (1, 2)]
        self.assertFalse(archive.running)
        yield started
        self.assertEqual((yield defer.gatherResults(early)), [1, 2])
        self.assertEqual(archive.counters["dropped"], 0)

    @defer.inlineCallbacks
    def test_queue_limit(self):
        """
        Beyond C{max_pending} waiting messages, C{add} refuses instead of growing.
        """
        archive = yield defer.Deferred.fromCoroutine(
            self.started(batch_interval=3600, batch_size=10_000, max_pending=2)
        )
        ds = [archive.add("a.b.c.d", body(envelope(n)), envelope(n)) for n in (1, 2, 3)]
        self.assertIsNone((yield ds[2]))
        yield archive.flush()
        self.assertEqual((yield defer.gatherResults(ds[:2])), [1, 2])
        self.assertEqual(archive.counters["dropped"], 1)

    # -- schema version 2: user/package tags ----------------------------------------

    async def tags(self, archive: Archive) -> list[tuple]:
        def read():
            return sorted(
                tuple(r)
                for r in archive._reader().execute(
                    "SELECT seq_id, kind, value FROM fedmsg_archive_tags"
                ).fetchall()
            )

        return await archive._on_reader(read)

    async def schema_meta(self, archive: Archive) -> dict:
        def read():
            return dict(archive._reader().execute("SELECT key, value FROM fedmsg_archive_meta").fetchall())

        return await archive._on_reader(read)

    @defer.inlineCallbacks
    def test_tags_are_what_the_text_layer_names(self):
        """
        Each stored message gets the usernames and packages of the text
        layer's processor for it, written with the message; a duplicate
        adds none.  A package in a payload no processor reads is no tag.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        self.assertTrue((yield archive.when_indexed()))
        envs = [
            envelope(1, "org.debian.dev.debbugs.bug.report", username="jane",
                     msg={"bug": 7, "source": "nethack", "package": "nethack-x11", "title": "crash"}),
            envelope(2, "org.debian.dev.dak.upload.accepted", username="ralph",
                     msg={"source": "kernel", "version": "6.1-1", "maintainer": "nethack"}),
            envelope(3, "org.example.dev.logger.log", username="pingou",
                     msg={"log": "hi", "agent": "alice", "package": "nethack"}),
            envelope(4, "org.example.dev.bodhi.update.comment", username=None,
                     msg={"update": {"packages": ["nethack"]}, "agent": "alice"}),
        ]
        yield defer.Deferred.fromCoroutine(self.add_many(archive, envs))
        dup = yield archive.add(envs[0]["topic"], body(envs[0]), envs[0])
        self.assertTrue(dup.duplicate)
        self.assertEqual(
            (yield defer.Deferred.fromCoroutine(self.tags(archive))),
            [(1, "package", "nethack"), (1, "user", "jane"), (2, "package", "kernel"),
             (2, "user", "ralph"), (3, "user", "pingou")],
        )

    @defer.inlineCallbacks
    def test_tags_are_bounded_and_processor_errors_harmless(self):
        """
        At most C{MAX_TAGS} of a kind per message; a value longer than
        C{MAX_TAG_LENGTH} is left out (never cut to a prefix); a processor
        that raises costs its tags, not the message.
        """
        from fedmsg_twisted.text import Processor, TextLayer

        class Crowd(Processor):
            name = "crowd"

            def usernames(self, msg):
                return {f"user{i:03d}" for i in range(80)} | {"x" * (store.MAX_TAG_LENGTH + 1), "", 5}

            def packages(self, msg):
                return "single"  # a string, not a set: one package

        class Broken(Processor):
            name = "broken"

            def usernames(self, msg):
                raise KeyError("agent")

            packages = usernames

        layer = TextLayer({}, processors=[Crowd, Broken])
        archive = yield defer.Deferred.fromCoroutine(self.started(text=layer))
        yield defer.Deferred.fromCoroutine(self.add_many(archive, [
            envelope(1, "org.example.dev.crowd.x"), envelope(2, "org.example.dev.broken.x"),
        ]))
        tags = yield defer.Deferred.fromCoroutine(self.tags(archive))
        users = [v for s, k, v in tags if k == "user"]
        self.assertEqual(users, [f"user{i:03d}" for i in range(store.MAX_TAGS)])
        self.assertEqual([t for t in tags if t[1] == "package"], [(1, "package", "single")])
        self.assertNotIn(2, {t[0] for t in tags})
        self.assertEqual((yield archive.count()), 2)

    @defer.inlineCallbacks
    def test_pruning_removes_tags(self):
        archive = yield defer.Deferred.fromCoroutine(
            self.started(retention_count=1, prune_interval=3600)
        )
        envs = [envelope(n, "org.example.dev.logger.log", username=f"u{n}") for n in (1, 2, 3)]
        yield defer.Deferred.fromCoroutine(self.add_many(archive, envs))
        self.assertEqual(len((yield defer.Deferred.fromCoroutine(self.tags(archive)))), 3)
        self.assertEqual((yield archive.prune()), 2)
        self.assertEqual((yield defer.Deferred.fromCoroutine(self.tags(archive))), [(3, "user", "u3")])

    V1_ROWS = [
        envelope(1, "org.debian.dev.debbugs.bug.report", username="jane",
                 msg={"bug": 7, "source": "nethack", "title": "crash"}),
        envelope(2, "org.example.dev.logger.log", username="ralph", msg={"log": "nethack"}),
        envelope(3, "org.example.dev.bodhi.update.comment", username="pingou",
                 msg={"update": {"packages": ["nethack"]}}),
        envelope(4, "org.debian.dev.dak.upload.accepted", username="ralph", msg={"source": "kernel"}),
        envelope(5, "org.example.dev.logger.log", username="jane", msg={"log": "x"}),
    ]

    async def write_v1(self, envs: list[dict]) -> None:
        raise NotImplementedError

    @defer.inlineCallbacks
    def test_upgrades_a_version_1_archive(self):
        """
        A version-1 archive (written here with the version-1 DDL) is opened,
        its rows get their tags in the background, in chunks, while new
        messages are stored; then it is version 2 and user/package queries
        are exact.  Reopened, it is indexed at once.
        """
        from fedmsg_twisted import query

        self.patch(store, "_BACKFILL_CHUNK", 2)  # three chunks for five rows
        yield defer.Deferred.fromCoroutine(self.write_v1(self.V1_ROWS))
        archive = yield defer.Deferred.fromCoroutine(self.started())
        self.assertTrue(archive.has_tags)
        new = envelope(6, "org.example.dev.logger.log", username="ralph", msg={"log": "new"})
        self.assertEqual((yield archive.add(new["topic"], body(new), new)), 6)
        self.assertTrue((yield archive.when_indexed()))
        self.assertEqual(archive.counters["backfilled"], 5)
        self.assertEqual(
            (yield defer.Deferred.fromCoroutine(self.tags(archive))),
            [(1, "package", "nethack"), (1, "user", "jane"), (2, "user", "ralph"),
             (3, "user", "pingou"), (4, "package", "kernel"), (4, "user", "ralph"),
             (5, "user", "jane"), (6, "user", "ralph")],
        )
        meta = yield defer.Deferred.fromCoroutine(self.schema_meta(archive))
        self.assertEqual(meta["schema_version"], "2")
        self.assertFalse({"tags_backfill_upto", "tags_backfill_done"} & set(meta))

        async def ids(**kw):
            total, rows = await query.raw(archive, query.RawQuery(order="asc", **kw))
            self.assertEqual(total, len(rows))
            return [r.seq_id for r in rows]

        q = lambda **kw: defer.Deferred.fromCoroutine(ids(**kw))  # noqa: E731
        self.assertEqual((yield q(packages=["nethack"])), [1])
        self.assertEqual((yield q(users=["ralph"])), [2, 4, 6])
        self.assertEqual((yield q(users=["ralph"], not_packages=["kernel"])), [2, 6])
        self.assertEqual((yield q(not_users=["ralph", "jane"])), [3])
        yield archive.stop()
        again = yield defer.Deferred.fromCoroutine(self.started())
        self.assertTrue(again.indexed)
        self.assertEqual(again.counters["backfilled"], 0)
        self.assertEqual((yield again.latest_seq()), 6)

    @defer.inlineCallbacks
    def test_upgrade_resumes_after_a_stop(self):
        """
        Stopped halfway through the backfill, the archive is still version 1
        and the next start finishes the job without doing it twice.
        """
        self.patch(store, "_BACKFILL_CHUNK", 2)
        yield defer.Deferred.fromCoroutine(self.write_v1(self.V1_ROWS))
        archive = yield defer.Deferred.fromCoroutine(self.make_archive())
        yield archive.start()
        yield archive.stop()  # after the chunk in progress, if any
        self.assertLess(archive.counters["backfilled"], 5)
        self.assertFalse((yield archive.when_indexed()))
        again = yield defer.Deferred.fromCoroutine(self.started())
        self.assertTrue((yield again.when_indexed()))
        self.assertEqual(archive.counters["backfilled"] + again.counters["backfilled"], 5)
        self.assertEqual(len((yield defer.Deferred.fromCoroutine(self.tags(again)))), 7)


class SQLiteArchiveTests(_ArchiveTests, unittest.TestCase):
    async def make_archive(self, **kw) -> Archive:
        if not hasattr(self, "_dir"):
            self._dir = self.mktemp()
        return Archive(state_directory=self._dir, **kw)

    V1_DDL = """
        CREATE TABLE fedmsg_archive (
            seq_id INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT UNIQUE, topic TEXT NOT NULL,
            timestamp REAL, username TEXT, agent TEXT, category TEXT, received REAL NOT NULL,
            body BLOB NOT NULL
        );
        CREATE INDEX fedmsg_archive_timestamp ON fedmsg_archive (timestamp);
        CREATE INDEX fedmsg_archive_received ON fedmsg_archive (received);
        CREATE TABLE fedmsg_archive_meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO fedmsg_archive_meta VALUES ('schema_version', '1');
        INSERT INTO fedmsg_archive_meta VALUES ('archive_id', 'v1archive');
    """

    async def write_v1(self, envs: list[dict]) -> None:
        if not hasattr(self, "_dir"):
            self._dir = self.mktemp()
        os.makedirs(self._dir)
        conn = sqlite3.connect(os.path.join(self._dir, "archive.sqlite"))
        with conn:
            conn.executescript(self.V1_DDL)
            for e in envs:
                conn.execute(
                    "INSERT INTO fedmsg_archive (msg_id, topic, timestamp, username, agent, category,"
                    " received, body) VALUES (?, ?, ?, ?, NULL, ?, ?, ?)",
                    (e["msg_id"], e["topic"], e["timestamp"], e["username"], category_of(e["topic"]),
                     e["timestamp"], body(e)),
                )
        conn.close()

    @defer.inlineCallbacks
    def test_default_location(self):
        """
        Without a URL the archive is C{<state_directory>/archive.sqlite},
        created with its directory.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        self.assertTrue(os.path.isfile(os.path.join(self._dir, "archive.sqlite")))
        self.assertTrue(archive.writable)

    @defer.inlineCallbacks
    def test_url_forms(self):
        d = self.mktemp()
        os.mkdir(d)
        for url in (os.path.join(d, "a.db"), "sqlite:///" + os.path.abspath(os.path.join(d, "b.db"))):
            archive = Archive(url)
            yield archive.start()
            yield archive.add("a.b.c.d", b"{}", {})
            yield archive.stop()
        self.assertTrue(os.path.exists(os.path.join(d, "a.db")))
        self.assertTrue(os.path.exists(os.path.join(d, "b.db")))
        self.assertRaises(ArchiveError, Archive, "mysql://x/y")

    def test_from_config(self):
        # These keys are not in config.KEYS yet: the archive reads them with get().
        cfg = dict(
            from_dict({}), state_directory="/srv/state", archive_retention_days=30,
            archive_retention_count=1000,
        )
        archive = Archive.from_config(cfg)
        self.assertEqual(archive.url, "/srv/state/archive.sqlite")
        self.assertEqual((archive.retention_days, archive.retention_count), (30, 1000))
        archive = Archive.from_config(dict(cfg, archive_url="postgresql://u:secret@h:5/db"))
        self.assertEqual(archive.url, "postgresql://u:***@h:5/db")

    @defer.inlineCallbacks
    def test_corrupt_file(self):
        """
        A file that is not a SQLite database is refused at start, naming the file.
        """
        d = self.mktemp()
        os.mkdir(d)
        path = os.path.join(d, "archive.sqlite")
        with open(path, "wb") as f:
            f.write(b"this is not a database, just garbage\n" * 200)
        archive = Archive(path)
        exc = yield self.assertFailure(archive.start(), ArchiveError)
        self.assertIn(path, str(exc))
        self.assertIn("not a usable SQLite archive", str(exc))
        self.assertFalse(archive.running)
        # What was added while it tried to open is refused, not lost silently.
        archive2 = Archive(path)
        started = archive2.start()
        waiting = archive2.add("a.b", b"{}", {})
        yield self.assertFailure(started, ArchiveError)
        self.assertIsNone((yield waiting))
        self.assertEqual(archive2.counters["dropped"], 1)
        # And the caller's add() is still safe.
        self.assertIsNone((yield archive.add("a.b", b"{}", {})))

    @defer.inlineCallbacks
    def test_truncated_database(self):
        """
        A real archive whose pages were damaged is refused too.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        yield defer.Deferred.fromCoroutine(self.add_many(archive, [envelope(n) for n in range(1, 50)]))
        yield archive.stop()
        path = os.path.join(self._dir, "archive.sqlite")
        with open(path, "r+b") as f:
            f.seek(0)
            f.write(b"\x00" * 100)  # wipe the header
        exc = yield self.assertFailure(Archive(path).start(), ArchiveError)
        self.assertIn(path, str(exc))

    @defer.inlineCallbacks
    def test_unwritable_directory(self):
        """
        A state directory that cannot be created is a clear error.
        """
        base = self.mktemp()
        with open(base, "w") as f:
            f.write("a file, not a directory")
        exc = yield self.assertFailure(
            Archive(state_directory=os.path.join(base, "sub")).start(), ArchiveError
        )
        self.assertIn("state directory", str(exc))

    @defer.inlineCallbacks
    def test_read_only(self):
        """
        A read-only archive starts (replay can still read it); every add()
        fires None, is counted and logged loudly, and never raises.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        yield archive.add("a.b.c.d", body(envelope(1)), envelope(1))
        yield archive.stop()
        path = os.path.join(self._dir, "archive.sqlite")
        os.chmod(path, 0o444)
        os.chmod(self._dir, 0o555)
        self.addCleanup(os.chmod, self._dir, 0o755)
        if os.geteuid() == 0:
            # Root ignores file modes: act as nobody while the test runs so
            # the kernel really refuses the writes.
            os.chmod(os.path.dirname(os.path.abspath(self._dir)), 0o755)
            _ensure_traversable(os.path.abspath(self._dir))
            os.seteuid(65534)
            self.addCleanup(os.seteuid, 0)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        ro = Archive(path)
        yield ro.start()
        self.addCleanup(ro.stop)
        self.assertFalse(ro.writable)
        results = yield defer.gatherResults(
            [ro.add("a.b.c.d", body(envelope(n)), envelope(n)) for n in (2, 3)]
        )
        self.assertEqual(results, [None, None])
        self.assertEqual(ro.counters["failed"], 2)
        rows = yield ro.get()
        self.assertEqual([r.seq_id for r in rows], [1])
        loud = [e for e in events if "ARCHIVE FAILURE" in e.get("log_format", "")]
        self.assertTrue(loud, "no loud log line for the failed writes")
        self.assertEqual(loud[0]["log_level"].name, "critical")

    @defer.inlineCallbacks
    def test_read_only_version_1(self):
        """
        A version-1 archive that cannot be written is served as it is
        (replay works) and is not upgraded; user/package queries are then
        refused with an error naming the parameter, other queries work.
        """
        from fedmsg_twisted import query

        yield defer.Deferred.fromCoroutine(self.write_v1(self.V1_ROWS))
        path = os.path.join(self._dir, "archive.sqlite")
        os.chmod(path, 0o444)
        os.chmod(self._dir, 0o555)
        self.addCleanup(os.chmod, self._dir, 0o755)
        if os.geteuid() == 0:
            os.chmod(os.path.dirname(os.path.abspath(self._dir)), 0o755)
            _ensure_traversable(os.path.abspath(self._dir))
            os.seteuid(65534)
            self.addCleanup(os.seteuid, 0)
        ro = Archive(path)
        yield ro.start()
        self.addCleanup(ro.stop)
        self.assertFalse(ro.writable)
        self.assertFalse(ro.has_tags)
        self.assertFalse((yield ro.when_indexed()))
        self.assertEqual([r.seq_id for r in (yield ro.get())], [1, 2, 3, 4, 5])
        for kw, param in (({"users": ["ralph"]}, "user"), ({"not_packages": ["kernel"]}, "not_package")):
            e = self.assertRaises(query.QueryError, query.raw, ro, query.RawQuery(**kw))
            self.assertEqual(e.param, param)
        total, rows = yield query.raw(ro, query.RawQuery(categories=["logger"]))
        self.assertEqual(total, 2)

    @defer.inlineCallbacks
    def test_disk_full(self):
        """
        A full disk: add() fires None and counts; once space is back it stores again.
        """
        mnt = _small_tmpfs(self)
        archive = Archive(os.path.join(mnt, "archive.sqlite"), batch_size=20)
        yield archive.start()
        self.addCleanup(archive.stop)
        filler = os.path.join(mnt, "filler")
        _fill(filler)
        results = []
        for n in range(30):
            e = envelope(n + 1)
            results.append(archive.add("a.b.c.d", os.urandom(16384), e))
        results = yield defer.gatherResults(results)
        self.assertIn(None, results)
        self.assertGreater(archive.counters["failed"], 0)
        os.unlink(filler)
        e = envelope(99)
        again = yield archive.add("a.b.c.d", body(e), e)
        self.assertIsInstance(again, Stored)


class ArchiveServiceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_lifecycle(self):
        svc = ArchiveService(Archive(state_directory=self.mktemp()))
        svc.startService()
        self.assertTrue((yield svc.started))
        self.assertEqual((yield svc.archive.add("a.b.c.d", b"{}", {"msg_id": "x"})), 1)
        yield svc.stopService()
        self.assertFalse(svc.archive.running)
        yield svc.stopService()  # twice is fine

    @defer.inlineCallbacks
    def test_corrupt(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"garbage" * 1000)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        svc = ArchiveService(Archive(path))
        svc.startService()
        self.assertFalse((yield svc.started))
        self.assertIsInstance(svc.error, ArchiveError)
        self.assertIn(path, str(svc.error))
        self.assertIsNone((yield svc.archive.add("a.b", b"{}", {})))
        self.assertTrue([e for e in events if e.get("log_level") and e["log_level"].name == "critical"])
        yield svc.stopService()


class HelperTests(unittest.TestCase):
    def test_category(self):
        self.assertEqual(category_of("org.fedoraproject.prod.bodhi.update"), "bodhi")
        self.assertIsNone(category_of("a.b.c"))


def _ensure_traversable(path: str) -> None:
    # Let an unprivileged euid reach a directory inside the trial temp dir.
    while path not in ("/", ""):
        mode = os.stat(path).st_mode & 0o7777
        os.chmod(path, mode | 0o111)
        path = os.path.dirname(path)


def _small_tmpfs(testcase) -> str:
    """
    A 1 MiB tmpfs, so the disk really fills up.  Needs mount rights; skips
    (with the reason) where the test runner has none.
    """
    mnt = tempfile.mkdtemp(prefix="fedmsg-full-")
    testcase.addCleanup(os.rmdir, mnt)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], capture_output=True
    )
    if r.returncode != 0:
        raise unittest.SkipTest(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    testcase.addCleanup(subprocess.run, ["umount", "-l", mnt], capture_output=True)
    return mnt


def _fill(path: str) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


class PostgresArchiveTests(_ArchiveTests, unittest.TestCase):
    """
    The same behaviour against a real PostgreSQL server.
    """

    async def make_archive(self, **kw) -> Archive:
        if not hasattr(self, "_pg"):
            self._pg = await pgserver.start_server(self)
        return Archive(self._pg.url, **kw)

    async def write_v1(self, envs: list[dict]) -> None:
        from twisted.internet import threads

        if not hasattr(self, "_pg"):
            self._pg = await pgserver.start_server(self)

        def write() -> None:
            import psycopg

            with psycopg.connect(self._pg.url) as conn:
                conn.execute(
                    "CREATE TABLE fedmsg_archive ("
                    " seq_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, msg_id TEXT UNIQUE,"
                    " topic TEXT NOT NULL, timestamp DOUBLE PRECISION, username TEXT, agent TEXT,"
                    " category TEXT, received DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL)"
                )
                conn.execute("CREATE INDEX fedmsg_archive_timestamp ON fedmsg_archive (timestamp)")
                conn.execute("CREATE INDEX fedmsg_archive_received ON fedmsg_archive (received)")
                conn.execute("CREATE TABLE fedmsg_archive_meta (key TEXT PRIMARY KEY, value TEXT)")
                conn.execute("INSERT INTO fedmsg_archive_meta VALUES ('schema_version', '1')")
                for e in envs:
                    conn.execute(
                        "INSERT INTO fedmsg_archive (msg_id, topic, timestamp, username, agent,"
                        " category, received, body) VALUES (%s, %s, %s, %s, NULL, %s, %s, %s)",
                        (e["msg_id"], e["topic"], e["timestamp"], e["username"],
                         category_of(e["topic"]), e["timestamp"], body(e)),
                    )

        await threads.deferToThread(write)

    @defer.inlineCallbacks
    def test_bad_url(self):
        """
        An unreachable server is a clear error naming the URL, password hidden.
        """
        from tests.util import free_port

        pgserver.require()
        archive = Archive(f"postgresql://fedmsg:hunter2@127.0.0.1:{free_port()}/postgres")
        exc = yield self.assertFailure(archive.start(), ArchiveError)
        self.assertIn("postgresql://fedmsg:***@127.0.0.1", str(exc))
        self.assertNotIn("hunter2", str(exc))

    @defer.inlineCallbacks
    def test_server_goes_away(self):
        """
        The database server stopping makes add() fire None (counted), never
        raise; when it is back, writer and readers reconnect on their own.
        """
        archive = yield defer.Deferred.fromCoroutine(self.started())
        self.assertEqual((yield archive.add("a.b.c.d", body(envelope(1)), envelope(1))), 1)
        self.assertEqual((yield archive.latest_seq()), 1)
        yield defer.Deferred.fromCoroutine(self._pg.stop(graceful=True))
        lost = yield archive.add("a.b.c.d", body(envelope(2)), envelope(2))
        self.assertIsNone(lost)
        self.assertEqual(archive.counters["failed"], 1)
        yield self.assertFailure(archive.latest_seq(), Exception)
        yield defer.Deferred.fromCoroutine(self._pg.start())
        back = yield archive.add("a.b.c.d", body(envelope(3)), envelope(3))
        self.assertEqual(back, 2)
        self.assertEqual([r.msg_id for r in (yield archive.get())], [envelope(1)["msg_id"], envelope(3)["msg_id"]])
