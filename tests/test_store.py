"""
Tests for L{fedmsg_twisted.store}: real SQLite files and a real PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from fedmsg_twisted import encoding
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


class SQLiteArchiveTests(_ArchiveTests, unittest.TestCase):
    async def make_archive(self, **kw) -> Archive:
        if not hasattr(self, "_dir"):
            self._dir = self.mktemp()
        return Archive(state_directory=self._dir, **kw)

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
