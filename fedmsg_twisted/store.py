# -*- test-case-name: tests.test_store -*-
"""
The message archive: what datanommer did, embedded in the relay.

Every message is kept as the exact body bytes that arrived (so signatures stay
valid when it is replayed) plus a few parsed fields to query on.  The archive
numbers messages with its own C{seq_id}, which is the relay's sequence.

Storage is SQLite by default (C{<state_directory>/archive.sqlite}) or
PostgreSQL when C{archive_url} is a C{postgresql://user@host:port/db} URL;
both use the same schema.  All database work runs off the reactor thread:
writes go to one writer thread that commits one transaction per batch
(every C{batch_interval} seconds or C{batch_size} messages, whichever comes
first); reads run on a small pool of reader threads.

Failure policy, because the archive sits on the relay's forwarding path:

  - L{Archive.add} never raises and its Deferred never fails.  It fires with
    a L{Stored} (an C{int}, the seq_id) or with L{None} when the message could
    not be stored (disk full, read-only file, database down, queue full,
    archive stopped).  Failures are counted in L{Archive.counters} and logged
    loudly (rate-limited), so the caller may ignore the result entirely.
  - A file that is not a usable SQLite database is refused at
    L{Archive.start} with an L{ArchiveError} naming the file.  A read-only
    file is not refused: replay can still be served from it, and every write
    is counted as failed.

Schema version 2 adds C{fedmsg_archive_tags}: the usernames and packages
the text layer (L{fedmsg_twisted.text}, fedmsg.meta's C{msg2usernames} and
C{msg2packages}) finds in each message, written by the writer thread in the
message's own transaction, so datagrepper's C{user} and C{package} filters
are exact index lookups.  A version-1 archive is upgraded in place at start:
the table and indexes are created at once, tags for the rows already stored
are filled in the background, in chunks on the writer thread, and the
version becomes 2 when that is done (see L{Archive.when_indexed}).

Sequence numbers only grow.  SQLite (C{AUTOINCREMENT}) never reuses them, even
after pruning.  A duplicate C{msg_id} is stored once; adding it again fires
with the seq_id already stored, flagged C{duplicate}.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = [
    "MirroredCounter",
    "Archive",
    "ArchiveError",
    "ArchiveService",
    "ResultTooLarge",
    "Row",
    "Stored",
    "category_of",
]

log = Logger(namespace="fedmsg_twisted.store")

SCHEMA_VERSION = 2
#: Versions L{Archive.start} opens (1 is upgraded in place when writable).
_KNOWN_VERSIONS = ("1", "2")
#: Most tags of one kind kept for one message, and the longest tag indexed.
#: A longer value is left out rather than cut, so it never matches a prefix.
MAX_TAGS = 50
MAX_TAG_LENGTH = 200
_BACKFILL_CHUNK = 500
DEFAULT_FILENAME = "archive.sqlite"
_PRUNE_CHUNK = 5000
_LOG_EVERY = 60.0  # seconds between repeated "still failing" log lines


class MirroredCounter(Counter):
    """
    A C{Counter} that also adds every change to a shared
    L{fedmsg_twisted.stats.Counters} as C{(name, key)}, so the numbers tests
    read here are the ones C{/metrics} shows.
    """

    def __init__(self, name: str, stats: Any = None) -> None:
        super().__init__()
        self._name = name
        self._stats = stats

    def __setitem__(self, key: str, value: int) -> None:
        delta = value - self.get(key, 0)
        super().__setitem__(key, value)
        if self._stats is not None and delta:
            self._stats.incr(self._name, key, delta)


class ArchiveError(Exception):
    """
    The archive cannot be used at all (corrupt file, unreachable database).
    The message names the file or the URL (without its password).
    """


class ResultTooLarge(ArchiveError):
    """
    A query whose bodies add up to more than the caller's C{max_bytes}.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the result is {size} bytes, more than {limit}")
        self.size = size
        self.limit = limit


class Stored(int):
    """
    The seq_id a message is stored under.  An C{int}; C{duplicate} is true
    when the msg_id was already archived and this is the earlier seq_id.
    """

    duplicate: bool

    def __new__(cls, seq_id: int, duplicate: bool = False) -> "Stored":
        self = super().__new__(cls, seq_id)
        self.duplicate = duplicate
        return self

    def __repr__(self) -> str:
        return f"Stored({int(self)}{', duplicate=True' if self.duplicate else ''})"


@dataclass(frozen=True)
class Row:
    """
    One archived message.

    @ivar body: the message bytes exactly as received.
    @ivar timestamp: the envelope's C{timestamp} (epoch seconds), if numeric.
    @ivar received: when the archive accepted it (epoch seconds, our clock).
    @ivar category: topic token 3 (C{org.fedoraproject.prod.B{bodhi}.update}).
    """

    seq_id: int
    msg_id: str | None
    topic: str
    timestamp: float | None
    username: str | None
    agent: str | None
    category: str | None
    received: float
    body: bytes


ROW_COLUMNS = "seq_id, msg_id, topic, timestamp, username, agent, category, received, body"


def row_from_db(r: Sequence[Any]) -> Row:
    """
    A L{Row} from a database row selected as C{ROW_COLUMNS}.
    """
    return Row(
        seq_id=r[0],
        msg_id=r[1],
        topic=r[2],
        timestamp=r[3],
        username=r[4],
        agent=r[5],
        category=r[6],
        received=r[7],
        body=bytes(r[8]),
    )


def category_of(topic: str) -> str | None:
    """
    The fourth dot-separated token of a topic (fedmsg's "modname"), or None.
    """
    parts = topic.split(".")
    return parts[3] if len(parts) > 3 and parts[3] else None


def _clean_text(v: Any) -> str | None:
    # Text that both SQLite and PostgreSQL accept: no NUL, no lone surrogates.
    if not isinstance(v, str):
        return None
    if "\x00" in v:
        v = v.replace("\x00", "\ufffd")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        v = v.encode("utf-8", "replace").decode("utf-8")
    return v


def _clean_number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    if not math.isfinite(f) or abs(f) > 1e15:
        return None
    return f


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _tag_ddl(seq_type: str) -> list[str]:
    """
    Schema version 2's additions, for either dialect (all idempotent).  The
    unique index is the one user/package queries use; the one on seq_id
    serves pruning (and PostgreSQL's cascade).
    """
    return [
        "CREATE TABLE IF NOT EXISTS fedmsg_archive_tags ("
        f" seq_id {seq_type} NOT NULL REFERENCES fedmsg_archive (seq_id) ON DELETE CASCADE,"
        " kind TEXT NOT NULL, value TEXT NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS fedmsg_archive_tags_kind_value"
        " ON fedmsg_archive_tags (kind, value, seq_id)",
        "CREATE INDEX IF NOT EXISTS fedmsg_archive_tags_seq ON fedmsg_archive_tags (seq_id)",
        "CREATE INDEX IF NOT EXISTS fedmsg_archive_topic ON fedmsg_archive (topic)",
        "CREATE INDEX IF NOT EXISTS fedmsg_archive_category ON fedmsg_archive (category)",
    ]


def _check_schema_version(row: Any, where: str) -> None:
    """
    Refuse an archive whose C{schema_version} row (or its absence) is not
    one this code knows.
    """
    if row is None or row[0] not in _KNOWN_VERSIONS:
        raise ArchiveError(
            f"{where}: archive schema version {row and row[0]!r} is not {' or '.join(_KNOWN_VERSIONS)}"
        )


def _bounded_tags(values: Any) -> list[str]:
    """
    What a processor returned as at most L{MAX_TAGS} clean, sorted strings.
    """
    if isinstance(values, str):
        values = (values,)
    try:
        items = list(values or ())
    except TypeError:
        return []
    out = set()
    for v in items:
        v = _clean_text(v)
        if v and len(v) <= MAX_TAG_LENGTH:
            out.add(v)
    return sorted(out)[:MAX_TAGS]


# --- backends -----------------------------------------------------------------
# A backend knows its SQL dialect and how to connect.  All its methods run in
# a database thread, never in the reactor thread.


class _Backend:
    name: str
    placeholder = "?"
    length = "length"  # the SQL function giving a BLOB's size in bytes

    def describe(self) -> str:
        raise NotImplementedError

    def connect(self, writer: bool) -> Any:
        raise NotImplementedError

    def init_schema(self, conn: Any) -> bool:
        """Create the tables; return whether the database is writable."""
        raise NotImplementedError

    def begin(self, conn: Any) -> None:
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def in_clause(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({','.join('?' * len(values))})", list(values)


class _ReadOnly(Exception):
    """The SQLite file can be read only through a read-only connection."""


class _SQLite(_Backend):
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        # Set when the file can only be read: a WAL database in a directory
        # we cannot write needs SQLite's "immutable" read-only mode.
        self.read_only = False

    def describe(self) -> str:
        return self.path

    def connect(self, writer: bool) -> sqlite3.Connection:
        directory = os.path.dirname(self.path) or "."
        if writer and not os.path.isdir(directory):
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                raise ArchiveError(
                    f"{directory}: cannot create the archive's state directory: {e.strerror}"
                ) from None
        if not writer and not os.path.exists(self.path):
            raise ArchiveError(f"{self.path}: archive file does not exist")
        target, uri = self.path, False
        if self.read_only:
            target, uri = f"file:{quote(os.path.abspath(self.path))}?mode=ro&immutable=1", True
        try:
            conn = sqlite3.connect(
                target, timeout=10.0, isolation_level=None, check_same_thread=False, uri=uri
            )
            conn.execute("PRAGMA busy_timeout = 10000")
        except sqlite3.Error as e:
            raise ArchiveError(f"{self.path}: cannot open the archive: {e}") from None
        return conn

    def init_schema(self, conn: sqlite3.Connection) -> bool:
        try:
            # Reading the schema is what detects a file that is not a database.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='fedmsg_archive'"
            ).fetchone()
        except sqlite3.OperationalError as e:
            if self.read_only or (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF not in (
                sqlite3.SQLITE_READONLY,
                sqlite3.SQLITE_CANTOPEN,
            ):
                raise ArchiveError(f"{self.path}: not a usable SQLite archive: {e}") from None
            raise _ReadOnly() from None
        except sqlite3.DatabaseError as e:
            raise ArchiveError(f"{self.path}: not a usable SQLite archive: {e}") from None
        if self.read_only:
            self._check_version(conn)
            return False
        writable = True
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                writable = False
            conn.execute("PRAGMA synchronous = NORMAL")
            if not exists:
                conn.executescript(
                    """
                    BEGIN;
                    CREATE TABLE IF NOT EXISTS fedmsg_archive (
                        seq_id INTEGER PRIMARY KEY AUTOINCREMENT,
                        msg_id TEXT UNIQUE,
                        topic TEXT NOT NULL,
                        timestamp REAL,
                        username TEXT,
                        agent TEXT,
                        category TEXT,
                        received REAL NOT NULL,
                        body BLOB NOT NULL
                    );
                    CREATE INDEX IF NOT EXISTS fedmsg_archive_timestamp ON fedmsg_archive (timestamp);
                    CREATE INDEX IF NOT EXISTS fedmsg_archive_received ON fedmsg_archive (received);
                    CREATE TABLE IF NOT EXISTS fedmsg_archive_meta (key TEXT PRIMARY KEY, value TEXT);
                    INSERT OR IGNORE INTO fedmsg_archive_meta VALUES ('schema_version', '2');
                    COMMIT;
                    """
                )
            # Version 2's additions; on a version-1 file this is the upgrade
            # (L{Archive} then fills the tags of the rows already there).
            conn.execute("BEGIN IMMEDIATE")
            for statement in _tag_ddl("INTEGER"):
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if conn.in_transaction:
                conn.rollback()
            if not exists:
                raise ArchiveError(f"{self.path}: cannot create the archive tables: {e}") from None
            writable = False
        except sqlite3.DatabaseError as e:
            raise ArchiveError(f"{self.path}: not a usable SQLite archive: {e}") from None
        self._check_version(conn)
        if writable:
            writable = not conn.execute("PRAGMA query_only").fetchone()[0] and os.access(
                self.path, os.W_OK, effective_ids=os.access in os.supports_effective_ids
            )
        return writable

    def _check_version(self, conn: Any) -> None:
        try:
            row = conn.execute(
                "SELECT value FROM fedmsg_archive_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as e:
            raise ArchiveError(f"{self.path}: not a usable SQLite archive: {e}") from None
        _check_schema_version(row, self.path)

    def begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")


class _Postgres(_Backend):
    name = "postgresql"
    placeholder = "%s"
    length = "octet_length"

    def __init__(self, url: str) -> None:
        self.url = url

    def describe(self) -> str:
        return _redact(self.url)

    def connect(self, writer: bool) -> Any:
        try:
            import psycopg
        except ImportError:
            raise ArchiveError(
                f"{self.describe()}: PostgreSQL archives need psycopg 3 "
                '(pip install "psycopg[binary]")'
            ) from None
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise ArchiveError(f"{self.describe()}: cannot connect: {e}") from None

    def init_schema(self, conn: Any) -> bool:
        import psycopg

        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(4242000001)")
                conn.execute(
                    """
                    CREATE TABLE IF NOT EXISTS fedmsg_archive (
                        seq_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                        msg_id TEXT UNIQUE,
                        topic TEXT NOT NULL,
                        timestamp DOUBLE PRECISION,
                        username TEXT,
                        agent TEXT,
                        category TEXT,
                        received DOUBLE PRECISION NOT NULL,
                        body BYTEA NOT NULL
                    )
                    """
                )
                conn.execute(
                    "CREATE INDEX IF NOT EXISTS fedmsg_archive_timestamp ON fedmsg_archive (timestamp)"
                )
                conn.execute(
                    "CREATE INDEX IF NOT EXISTS fedmsg_archive_received ON fedmsg_archive (received)"
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS fedmsg_archive_meta (key TEXT PRIMARY KEY, value TEXT)"
                )
                conn.execute(
                    "INSERT INTO fedmsg_archive_meta VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
                for statement in _tag_ddl("BIGINT"):
                    conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM fedmsg_archive_meta WHERE key = 'schema_version'"
            ).fetchone()
        except psycopg.Error as e:
            raise ArchiveError(f"{self.describe()}: cannot create the archive tables: {e}") from None
        _check_schema_version(row, self.describe())
        return True

    def in_clause(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")


def _backend_for(url: str) -> _Backend:
    if url.startswith(("postgresql://", "postgres://")):
        return _Postgres(url)
    if url.startswith("sqlite:///"):
        return _SQLite(url[len("sqlite://"):])
    if url.startswith("sqlite:"):
        return _SQLite(url[len("sqlite:"):])
    if "://" in url:
        raise ArchiveError(
            f"{url}: unsupported archive URL (use a file path, sqlite:///path or postgresql://...)"
        )
    return _SQLite(url)


# --- the archive ----------------------------------------------------------------


@dataclass
class _Pending:
    msg_id: str | None
    topic: str
    timestamp: float | None
    username: str | None
    agent: str | None
    category: str | None
    received: float
    body: bytes
    d: defer.Deferred
    seq_id: int | None = None
    #: The parsed envelope, for the tags (computed in the writer thread).
    envelope: Mapping[str, Any] | None = None


class Archive:
    """
    The message archive (see the module docstring for the failure policy).

    @param url: a SQLite path (or C{sqlite:///path}) or a C{postgresql://} URL;
        L{None} means C{<state_directory>/archive.sqlite}.
    @param state_directory: where the default SQLite file lives.
    @param retention_days: prune messages received longer ago than this
        (L{None} or 0: keep forever).
    @param retention_count: keep at most this many messages (L{None} or 0: no limit).
    @param prune_interval: seconds between prunes (the first runs at start).
    @param max_pending: messages waiting for the writer beyond which L{add}
        refuses (fires L{None}) instead of growing without bound.
    @param reactor: the reactor that runs the database threads' callbacks.
    @param clock: the clock for batching, pruning and C{received}
        (default: the reactor).
    @param stats: a L{fedmsg_twisted.stats.Counters} that also receives the
        counters, as C{("archive", "stored"|"duplicates"|"failed"|"dropped"|
        "batches"|"pruned"|"prune_failed"|"backfilled"|"backfill_failed")}.
    @param text: the L{fedmsg_twisted.text.TextLayer} whose processors name a
        message's users and packages (default: one built from C{text_config},
        in the writer thread, when first needed).
    @param text_config: the config for that default text layer
        (C{topic_prefix}, processors' own keys).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        state_directory: str | None = None,
        batch_interval: float = 0.05,
        batch_size: int = 500,
        retention_days: float | None = None,
        retention_count: int | None = None,
        prune_interval: float = 600.0,
        max_pending: int = 100_000,
        readers: int = 2,
        reactor: Any = None,
        clock: Any = None,
        stats: Any = None,
        text: Any = None,
        text_config: Mapping[str, Any] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if url is None:
            if state_directory is None:
                raise ArchiveError("the archive needs archive_url or state_directory")
            url = os.path.join(state_directory, DEFAULT_FILENAME)
        self._backend = _backend_for(url)
        self.url = self._backend.describe()
        self.batch_interval = batch_interval
        self.batch_size = batch_size
        self.retention_days = retention_days or None
        self.retention_count = retention_count or None
        self.prune_interval = prune_interval
        self.max_pending = max_pending
        self._readers = readers
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self.counters: Counter[str] = MirroredCounter("archive", stats)
        self.writable = False
        self.running = False
        self._starting = False
        self._pending: list[_Pending] = []
        self._flush_call: Any = None
        self._inflight: set[defer.Deferred] = set()
        self._writer_pool: ThreadPool | None = None
        self._reader_pool: ThreadPool | None = None
        self._writer_conn: Any = None
        self._reader_conns: list[Any] = []
        self._local = threading.local()
        self._prune_loop: task.LoopingCall | None = None
        self._failing_since: float | None = None
        self._last_fail_log = 0.0
        self._fails_unlogged = 0
        #: A name for this archive that survives restarts (a uuid kept in
        #: the meta table), so subscribers can tell one relay's sequence
        #: from another's.  Set by L{start}.
        self.identity: str | None = None
        #: The highest seq_id known to be committed (L{None}: empty archive).
        self.committed_seq: int | None = None
        self._text = text
        self._text_config = text_config
        #: Whether the tags table exists (False only for a read-only
        #: version-1 archive), and whether every stored row has its tags.
        self.has_tags = False
        self.indexed = False
        self._index_waiters: list[defer.Deferred] = []
        self._backfill: defer.Deferred | None = None

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], reactor: Any = None, stats: Any = None
    ) -> "Archive":
        """
        An archive set up from the config keys C{archive_url},
        C{state_directory}, C{archive_retention_days}, C{archive_retention_count},
        C{archive_prune_interval}, C{archive_batch_interval}, C{archive_batch_size},
        C{archive_max_pending}.
        """
        return cls(
            config.get("archive_url") or None,
            state_directory=config.get("state_directory") or None,
            retention_days=config.get("archive_retention_days") or None,
            retention_count=config.get("archive_retention_count") or None,
            prune_interval=config.get("archive_prune_interval", 600.0),
            batch_interval=config.get("archive_batch_interval", 0.05),
            batch_size=config.get("archive_batch_size", 500),
            max_pending=config.get("archive_max_pending", 100_000),
            reactor=reactor,
            stats=stats,
            text_config=config,
        )

    def __repr__(self) -> str:
        return f"<Archive {self.url}>"

    # -- life cycle --------------------------------------------------------------

    def _pool(self, name: str, maxthreads: int) -> ThreadPool:
        pool = ThreadPool(minthreads=0, maxthreads=maxthreads, name=name)
        pool.start()
        return pool

    def start(self) -> defer.Deferred:
        """
        Open the database and create the schema.  Fires when ready; fails
        with L{ArchiveError} if the archive cannot be used at all.
        """
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self.running or self._starting:
            return
        # Messages added while the database opens wait in the queue, so a
        # relay may start forwarding (and archiving) at once.
        self._starting = True
        self._writer_pool = self._pool("fedmsg-archive-writer", 1)
        self._reader_pool = self._pool("fedmsg-archive-reader", self._readers)
        try:
            self.writable, latest, self.identity, version = await self._on_writer(self._open_writer)
        except BaseException as e:
            self._starting = False
            waiting, self._pending = self._pending, []
            if waiting:
                self.counters["dropped"] += len(waiting)
                self._report_failure(len(waiting), f"the archive could not be opened: {e}")
            for p in waiting:
                p.d.callback(None)
            self._release_waiters()
            await self._close_pools()
            raise
        self._starting = False
        self.running = True
        if latest is not None:
            self.committed_seq = max(latest, self.committed_seq or 0)
        if not self.writable:
            log.critical(
                "Archive {url} is read-only: messages will not be archived "
                "(replay still serves what it holds)",
                url=self.url,
            )
        log.info("Archive {url} open, latest seq_id {seq}", url=self.url, seq=latest)
        if self.writable and (self.retention_days or self.retention_count):
            self._prune_loop = task.LoopingCall(self._prune_quietly)
            self._prune_loop.clock = self._clock
            self._prune_loop.start(self.prune_interval, now=True)
        if self._pending:
            self._flush()
        if version == str(SCHEMA_VERSION):
            self._set_indexed()
        elif self.writable:
            self._backfill = defer.Deferred.fromCoroutine(self._run_backfill())
        else:
            self._release_waiters()  # read-only version 1: never complete

    def _open_writer(self) -> tuple[bool, int | None, str, str]:
        conn = self._backend.connect(writer=True)
        try:
            writable = self._backend.init_schema(conn)
            (latest,) = conn.execute("SELECT max(seq_id) FROM fedmsg_archive").fetchone()
            identity = self._identity(conn, writable)
            version = self._meta(conn, "schema_version")
            self.has_tags = self._tags_table_exists(conn)
            if version != str(SCHEMA_VERSION) and writable:
                self._begin_upgrade(conn, latest)
        except _ReadOnly:
            conn.close()
            self._backend.read_only = True  # type: ignore[attr-defined]
            return self._open_writer()
        except BaseException:
            conn.close()
            raise
        self._writer_conn = conn
        return writable, latest, identity, version

    def _meta(self, conn: Any, key: str) -> str | None:
        row = conn.execute(
            self._backend.sql("SELECT value FROM fedmsg_archive_meta WHERE key = ?"), (key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _tags_table_exists(self, conn: Any) -> bool:
        if self._backend.name == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='fedmsg_archive_tags'"
        else:
            sql = "SELECT to_regclass('fedmsg_archive_tags') IS NOT NULL"
        row = conn.execute(sql).fetchone()
        return bool(row and row[0])

    def _begin_upgrade(self, conn: Any, latest: int | None) -> None:
        """
        Version 1 to 2: the tables exist now (L{_Backend.init_schema}); note
        which rows predate the tags, once, so a restart resumes the backfill.
        Rows written from now on get their tags as they are stored.
        """
        b = self._backend
        b.begin(conn)
        try:
            insert = b.sql(
                "INSERT INTO fedmsg_archive_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
            )
            conn.execute(insert, ("tags_backfill_upto", str(latest or 0)))
            conn.execute(insert, ("tags_backfill_done", "0"))
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                pass
            raise
        log.info("Archive {url}: upgrading schema version 1 to 2 (user/package tags)", url=self.url)

    async def _run_backfill(self) -> None:
        # One chunk per writer-thread job, so batches of new messages are
        # written in between and the relay never waits for the upgrade.
        total = 0
        try:
            while self.running:
                n = await self._on_writer(self._backfill_chunk)
                if n is None:
                    self._set_indexed()
                    log.info("Archive {url}: tags filled for {n} earlier messages; schema version 2",
                             url=self.url, n=total)
                    return
                total += n
                self.counters["backfilled"] += n
        except Exception:
            self.counters["backfill_failed"] += 1
            log.failure("Archive {url}: filling in tags failed; will resume at next start", url=self.url)
        finally:
            self._backfill = None
            self._release_waiters()

    def _backfill_chunk(self) -> int | None:
        """
        Tags for the next chunk of version-1 rows: how many rows, or None
        when there are no more and the version is now 2.
        """
        b = self._backend
        conn = self._writer()
        b.begin(conn)
        try:
            upto, done = self._meta(conn, "tags_backfill_upto"), self._meta(conn, "tags_backfill_done")
            if upto is None or done is None:  # another process sharing it finished
                conn.execute("COMMIT")
                return None
            rows = conn.execute(
                b.sql(
                    "SELECT seq_id, topic, body FROM fedmsg_archive WHERE seq_id > ? AND seq_id <= ?"
                    f" ORDER BY seq_id LIMIT {_BACKFILL_CHUNK}"
                ),
                (int(done), int(upto)),
            ).fetchall()
            update = b.sql("UPDATE fedmsg_archive_meta SET value = ? WHERE key = ?")
            if rows:
                tags = []
                for seq, topic, body in rows:
                    try:
                        env = json.loads(bytes(body))
                    except ValueError:
                        env = None
                    tags += [(seq, k, v) for k, v in self._tags_for(topic, env)]
                self._insert_tags(conn, tags)
                conn.execute(update, (str(rows[-1][0]), "tags_backfill_done"))
            else:
                conn.execute(update, (str(SCHEMA_VERSION), "schema_version"))
                conn.execute(
                    b.sql("DELETE FROM fedmsg_archive_meta WHERE key IN (?, ?)"),
                    ("tags_backfill_upto", "tags_backfill_done"),
                )
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                pass
            raise
        return len(rows) if rows else None

    def _set_indexed(self) -> None:
        self.indexed = True
        self._release_waiters()

    def _release_waiters(self) -> None:
        waiters, self._index_waiters = self._index_waiters, []
        for d in waiters:
            d.callback(self.indexed)

    def when_indexed(self) -> defer.Deferred:
        """
        Fires with True once every stored message has its user/package tags
        (at once for a version-2 archive; after the backfill for one being
        upgraded), or with False if it is not running (or stops, or is
        read-only) before that.
        """
        if self.indexed:
            return defer.succeed(True)
        if not self._starting and (not self.running or self._backfill is None):
            return defer.succeed(False)
        d: defer.Deferred = defer.Deferred()
        self._index_waiters.append(d)
        return d

    # -- tags ----------------------------------------------------------------------

    def _text_layer(self) -> Any:
        if self._text is None:
            from fedmsg_twisted.text import TextLayer

            self._text = TextLayer(self._text_config or {})
        return self._text

    def _tags_for(self, topic: str, envelope: Any) -> list[tuple[str, str]]:
        """
        C{(kind, value)} for a message: the text layer's usernames and
        packages, bounded.  Runs in the writer thread; never raises.
        """
        if not isinstance(envelope, Mapping):
            return []
        msg = envelope if isinstance(envelope.get("topic"), str) else dict(envelope, topic=topic)
        try:
            p = self._text_layer().processor_for(msg)
        except Exception:
            log.failure("Archive {url}: no text processor for {topic}", url=self.url, topic=topic)
            return []
        out: list[tuple[str, str]] = []
        for kind, method in (("user", "usernames"), ("package", "packages")):
            try:
                values = getattr(p, method)(msg)
            except Exception as e:
                # As fedmsg.meta: a processor meeting an older payload shape.
                log.debug("{p!r}.{method} failed on {topic}: {e!r}", p=p, method=method, topic=topic, e=e)
                continue
            out += [(kind, v) for v in _bounded_tags(values)]
        return out

    def _insert_tags(self, conn: Any, tags: list[tuple[int, str, str]]) -> None:
        if tags:
            conn.cursor().executemany(
                self._backend.sql(
                    "INSERT INTO fedmsg_archive_tags (seq_id, kind, value) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING"
                ),
                tags,
            )

    def _identity(self, conn: Any, writable: bool) -> str:
        b = self._backend
        select = b.sql("SELECT value FROM fedmsg_archive_meta WHERE key = ?")
        row = conn.execute(select, ("archive_id",)).fetchone()
        if row is None and writable:
            try:
                b.begin(conn)
                conn.execute(
                    b.sql(
                        "INSERT INTO fedmsg_archive_meta (key, value) VALUES (?, ?)"
                        " ON CONFLICT (key) DO NOTHING"
                    ),
                    ("archive_id", uuid.uuid4().hex),
                )
                conn.execute("COMMIT")
            except Exception:
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
            row = conn.execute(select, ("archive_id",)).fetchone()
        if row is None:
            # A read-only archive that never had one: derive it from the
            # location, which is stable too.
            return uuid.uuid5(uuid.NAMESPACE_URL, self.url).hex
        return str(row[0])

    def stop(self) -> defer.Deferred:
        """
        Write what is pending, stop pruning, close the database.  Idempotent.
        """
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self._prune_loop is not None and self._prune_loop.running:
            self._prune_loop.stop()
        self._prune_loop = None
        self._flush()
        while self._inflight:
            await defer.DeferredList(list(self._inflight), consumeErrors=True)
        if self._backfill is not None:
            await self._backfill  # stops after the chunk in progress
        self._release_waiters()
        await self._on_writer(self._close_writer)
        await self._close_pools()

    def _close_writer(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    async def _close_pools(self) -> None:
        pools = [p for p in (self._writer_pool, self._reader_pool) if p is not None]
        conns, self._reader_conns = self._reader_conns, []
        self._writer_pool = self._reader_pool = None
        self._local = threading.local()

        def close() -> None:
            # Joining idle threads and closing connections is quick, but
            # still not the reactor's job.
            for p in pools:
                p.stop()
            for conn in conns:
                try:
                    conn.close()
                except Exception:
                    pass

        await threads.deferToThread(close)

    def _on_writer(self, f: Callable[..., Any], *a: Any) -> defer.Deferred:
        assert self._writer_pool is not None
        return threads.deferToThreadPool(self._reactor, self._writer_pool, f, *a)

    def _on_reader(self, f: Callable[..., Any], *a: Any) -> defer.Deferred:
        if self._reader_pool is None:
            return defer.fail(ArchiveError(f"{self.url}: archive is not running"))
        return threads.deferToThreadPool(self._reactor, self._reader_pool, f, *a)

    # -- writing -----------------------------------------------------------------

    def add(
        self, topic: str, body: bytes, envelope: Mapping[str, Any], seq_id: int | None = None
    ) -> defer.Deferred:
        """
        Archive one message.

        C{seq_id}: store under this number instead of the next one (a
        publisher's own store numbers its messages before signing them).

        @param topic: the topic frame (decoded).
        @param body: the body bytes exactly as received; this is what replay returns.
        @param envelope: the decoded body, for the indexed fields.
        @return: a Deferred that never fails.  It fires with a L{Stored}
            seq_id, or with L{None} when the message could not be archived
            (counted in C{counters["failed"]}, C{["dropped"]} or C{["invalid"]},
            and logged).
        """
        if not (self.running or self._starting):
            self.counters["dropped"] += 1
            self._report_failure(1, "the archive is not running")
            return defer.succeed(None)
        if len(self._pending) >= self.max_pending:
            self.counters["dropped"] += 1
            self._report_failure(1, f"{len(self._pending)} messages already wait for the database")
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        try:
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"body must be bytes, not {type(body).__name__}")
            if not isinstance(envelope, Mapping):
                envelope = {}
            msg = envelope.get("msg")
            agent = msg.get("agent") if isinstance(msg, Mapping) else None
            topic_text = _clean_text(topic) or ""
            pending = _Pending(
                msg_id=_clean_text(envelope.get("msg_id")),
                topic=topic_text,
                timestamp=_clean_number(envelope.get("timestamp")),
                username=_clean_text(envelope.get("username")),
                agent=_clean_text(agent),
                category=category_of(topic_text),
                received=self._clock.seconds(),
                body=bytes(body),
                d=d,
                seq_id=None if seq_id is None else int(seq_id),
                envelope=envelope,
            )
        except Exception as e:
            # A caller's bug must not break its forwarding path either.
            self.counters["invalid"] += 1
            log.error("Archive {url}: refused a message: {error}", url=self.url, error=e)
            return defer.succeed(None)
        self._pending.append(pending)
        if self._starting:
            pass  # flushed once the database is open
        elif len(self._pending) >= self.batch_size:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(self.batch_interval, self._flush)
        return d

    def flush(self) -> defer.Deferred:
        """
        Write what is pending now; fires when every batch so far is written.
        """
        self._flush()
        return defer.DeferredList(list(self._inflight), consumeErrors=True).addCallback(
            lambda _: None
        )

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        d = self._on_writer(self._write_batch, batch)
        self._inflight.add(d)

        def done(result: Any) -> None:
            self._inflight.discard(d)
            if isinstance(result, Failure):
                err = result.value
                self.counters["failed"] += len(batch)
                self._report_failure(len(batch), f"{type(err).__name__}: {err}")
                for p in batch:
                    p.d.callback(None)
                return
            self.counters["batches"] += 1
            if self._failing_since is not None:
                log.warn(
                    "Archive {url} is storing messages again after {failed} failures",
                    url=self.url,
                    failed=self.counters["failed"],
                )
                self._failing_since = None
            if result:
                self.committed_seq = max(max(result), self.committed_seq or 0)
            for p, stored in zip(batch, result):
                self.counters["duplicates" if stored.duplicate else "stored"] += 1
                p.d.callback(stored)

        d.addBoth(done)

    def _report_failure(self, count: int, why: str) -> None:
        now = self._clock.seconds()
        self._fails_unlogged += count
        if self._failing_since is None or now - self._last_fail_log >= _LOG_EVERY:
            if self._failing_since is None:
                self._failing_since = now
            log.critical(
                "ARCHIVE FAILURE: {url} could not store {count} message(s): {why}. "
                "Forwarding continues; failed={failed} dropped={dropped} so far",
                url=self.url,
                count=self._fails_unlogged,
                why=why,
                failed=self.counters["failed"],
                dropped=self.counters["dropped"],
            )
            self._last_fail_log = now
            self._fails_unlogged = 0

    def _writer(self) -> Any:
        if self._writer_conn is None or getattr(self._writer_conn, "closed", False):
            self._writer_conn = self._backend.connect(writer=True)
        return self._writer_conn

    def _write_batch(self, batch: list[_Pending]) -> list[Stored]:
        b = self._backend
        conn = self._writer()
        ids = list({p.msg_id for p in batch if p.msg_id is not None})
        known: dict[str, int] = {}
        # Worked out before the transaction, so the write lock is held only
        # for the inserts.
        tags_of = [self._tags_for(p.topic, p.envelope) if self.has_tags else [] for p in batch]
        tags: list[tuple[int, str, str]] = []
        b.begin(conn)
        try:
            for i in range(0, len(ids), 500):
                where, params = b.in_clause("msg_id", ids[i : i + 500])
                for seq, mid in conn.execute(
                    b.sql(f"SELECT seq_id, msg_id FROM fedmsg_archive WHERE {where}"), params
                ).fetchall():
                    known[mid] = seq
            out: list[Stored] = []
            insert = b.sql(
                "INSERT INTO fedmsg_archive (msg_id, topic, timestamp, username, agent, category,"
                " received, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (msg_id) DO NOTHING RETURNING seq_id"
            )
            explicit = b.sql(
                "INSERT INTO fedmsg_archive (seq_id, msg_id, topic, timestamp, username, agent,"
                " category, received, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING seq_id"
            )
            lookup = b.sql("SELECT seq_id FROM fedmsg_archive WHERE msg_id = ?")
            for p, p_tags in zip(batch, tags_of):
                if p.msg_id is not None and p.msg_id in known:
                    out.append(Stored(known[p.msg_id], duplicate=True))
                    continue
                values = (p.msg_id, p.topic, p.timestamp, p.username, p.agent, p.category, p.received, p.body)
                row = None
                if p.seq_id is not None:
                    row = conn.execute(explicit, (p.seq_id, *values)).fetchone()
                    if row is None and (
                        p.msg_id is None or conn.execute(lookup, (p.msg_id,)).fetchone() is None
                    ):
                        # The number is taken by another message: two
                        # publishers share a store.  Keep the message anyway.
                        log.warn("Archive {url}: seq_id {seq} already taken; stored under a new one",
                                 url=self.url, seq=p.seq_id)
                        row = conn.execute(insert, values).fetchone()
                else:
                    row = conn.execute(insert, values).fetchone()
                if row is None:
                    # Another writer sharing the database stored it meanwhile.
                    (seq,) = conn.execute(lookup, (p.msg_id,)).fetchone()
                    known[p.msg_id] = seq  # type: ignore[index]
                    out.append(Stored(seq, duplicate=True))
                    continue
                (seq,) = row
                if p.msg_id is not None:
                    known[p.msg_id] = seq
                tags += [(seq, kind, value) for kind, value in p_tags]
                out.append(Stored(seq))
            self._insert_tags(conn, tags)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                pass
            raise
        return out

    # -- retention ---------------------------------------------------------------

    def prune(self) -> defer.Deferred:
        """
        Apply the retention limits now; fires with the number of rows deleted.
        Deletes in chunks so writers are never held up for long.
        """
        return defer.Deferred.fromCoroutine(self._prune())

    async def _prune(self) -> int:
        total = 0
        now = self._clock.seconds()
        if self.retention_days:
            cutoff = now - self.retention_days * 86400
            while self.running:
                n = await self._on_writer(
                    self._delete_chunk, "received < ?", (cutoff,)
                )
                total += n
                if n < _PRUNE_CHUNK:
                    break
        if self.retention_count:
            keep = int(self.retention_count)
            while self.running:
                n = await self._on_writer(self._delete_over_count, keep)
                total += n
                if n < _PRUNE_CHUNK:
                    break
        self.counters["pruned"] += total
        if total:
            log.info("Archive {url}: pruned {n} messages", url=self.url, n=total)
        return total

    def _delete_chunk(self, where: str, params: tuple) -> int:
        b = self._backend
        conn = self._writer()
        chunk = f"SELECT seq_id FROM fedmsg_archive WHERE {where} ORDER BY seq_id LIMIT {_PRUNE_CHUNK}"
        b.begin(conn)
        try:
            if self.has_tags:
                # The same chunk: nothing else deletes within the transaction.
                conn.execute(b.sql(f"DELETE FROM fedmsg_archive_tags WHERE seq_id IN ({chunk})"), params)
            cur = conn.execute(b.sql(f"DELETE FROM fedmsg_archive WHERE seq_id IN ({chunk})"), params)
            n = cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                pass
            raise
        return max(n, 0)

    def _delete_over_count(self, keep: int) -> int:
        b = self._backend
        row = self._writer().execute(
            b.sql("SELECT seq_id FROM fedmsg_archive ORDER BY seq_id DESC LIMIT 1 OFFSET ?"),
            (keep,),
        ).fetchone()
        if row is None:
            return 0
        return self._delete_chunk("seq_id <= ?", (row[0],))

    def _prune_quietly(self) -> defer.Deferred:
        # A LoopingCall stops for good on an error; pruning must not.
        def failed(f: Any) -> None:
            self.counters["prune_failed"] += 1
            log.failure("Archive {url}: pruning failed", f, url=self.url)

        return self.prune().addErrback(failed)

    # -- reading -----------------------------------------------------------------

    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(conn, "closed", False):
            conn = self._backend.connect(writer=False)
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    def _selectors(
        self,
        seq_ids: Iterable[int] | None,
        seq_id_range: tuple[int, int] | None,
        msg_ids: Iterable[str] | None,
        time_range: tuple[float, float] | None,
    ) -> tuple[list[str], list[Any]]:
        """
        The SQL clauses (to be OR-ed) and parameters for replay's selectors;
        an empty list of ids selects nothing.
        """
        b = self._backend
        clauses: list[str] = []
        params: list[Any] = []
        for column, values, cast in (("seq_id", seq_ids, int), ("msg_id", msg_ids, str)):
            if values is None:
                continue
            items = [cast(v) for v in values]
            if items:
                c, p = b.in_clause(column, items)
                clauses.append(c)
                params += p
            else:
                clauses.append("1 = 0")
        if seq_id_range is not None:
            clauses.append("seq_id BETWEEN ? AND ?")
            params += [int(seq_id_range[0]), int(seq_id_range[1])]
        if time_range is not None:
            clauses.append("timestamp BETWEEN ? AND ?")
            params += [float(time_range[0]), float(time_range[1])]
        return clauses, params

    def get(
        self,
        *,
        seq_ids: Iterable[int] | None = None,
        seq_id_range: tuple[int, int] | None = None,
        msg_ids: Iterable[str] | None = None,
        time_range: tuple[float, float] | None = None,
        since_seq: int | None = None,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> defer.Deferred:
        """
        Archived messages matching I{any} of the given selectors (they are
        OR-ed, as in fedmsg's replay), in seq_id order, at most C{limit}.
        Ranges are inclusive; C{since_seq} selects seq_ids greater than it.
        No selector at all selects everything.

        @param max_bytes: if the bodies would add up to more, fail with
            L{ResultTooLarge} without loading them (sizes are checked first).
        @return: Deferred firing with a list of L{Row}.
        """
        clauses, params = self._selectors(seq_ids, seq_id_range, msg_ids, time_range)
        if since_seq is not None:
            clauses.append("seq_id > ?")
            params.append(int(since_seq))
        where = ""
        if clauses:
            where = " WHERE " + " OR ".join(f"({c})" for c in clauses)
        where += " ORDER BY seq_id"
        if limit is not None:
            where += " LIMIT ?"
            params.append(int(limit))
        return self._on_reader(self._select, where, params, max_bytes)

    def _select(self, where: str, params: list[Any], max_bytes: int | None) -> list[Row]:
        b = self._backend
        conn = self._reader()
        if max_bytes is not None:
            sizes = conn.execute(
                b.sql(f"SELECT seq_id, {b.length}(body) FROM fedmsg_archive{where}"), params
            ).fetchall()
            total = sum(n for _, n in sizes)
            if total > max_bytes:
                raise ResultTooLarge(total, max_bytes)
            if not sizes:
                return []
            clause, params = b.in_clause("seq_id", [seq for seq, _ in sizes])
            where = f" WHERE {clause} ORDER BY seq_id"
        rows = conn.execute(b.sql(f"SELECT {ROW_COLUMNS} FROM fedmsg_archive{where}"), params).fetchall()
        return [row_from_db(r) for r in rows]

    def index(
        self,
        *,
        seq_ids: Iterable[int] | None = None,
        seq_id_range: tuple[int, int] | None = None,
        msg_ids: Iterable[str] | None = None,
        time_range: tuple[float, float] | None = None,
        topics: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> defer.Deferred:
        """
        C{(seq_id, msg_id)} of the messages matching any of the selectors
        (OR-ed) and, when C{topics} is given, whose topic starts with one of
        those prefixes; in seq_id order, at most C{limit}.  No bodies: this is
        what a subscriber compares with what it already has.
        """
        b = self._backend
        clauses, params = self._selectors(seq_ids, seq_id_range, msg_ids, time_range)
        where = " OR ".join(f"({c})" for c in clauses) or "1 = 1"
        prefixes = [str(t) for t in (topics or ())]
        if prefixes and "" not in prefixes:
            where = f"({where}) AND (" + " OR ".join(
                "substr(topic, 1, ?) = ?" for _ in prefixes
            ) + ")"
            for t in prefixes:
                params += [len(t), t]
        sql = f"SELECT seq_id, msg_id FROM fedmsg_archive WHERE {where} ORDER BY seq_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))

        def select() -> list[tuple[int, str | None]]:
            return [(r[0], r[1]) for r in self._reader().execute(b.sql(sql), params).fetchall()]

        return self._on_reader(select)

    def latest_seq(self) -> defer.Deferred:
        """
        The highest seq_id stored, or L{None} when the archive is empty.
        """
        return self._on_reader(self._latest)

    def _latest(self) -> int | None:
        row = self._reader().execute("SELECT max(seq_id) FROM fedmsg_archive").fetchone()
        return row[0] if row else None

    def count(self) -> defer.Deferred:
        """
        How many messages the archive holds.
        """
        return self._on_reader(
            lambda: self._reader().execute("SELECT count(*) FROM fedmsg_archive").fetchone()[0]
        )


class ArchiveService(service.Service):
    """
    An L{Archive} as a service.

    twistd ignores what C{startService} returns, so a failure to open is
    logged loudly and kept: C{error} holds the L{ArchiveError}, and
    C{started} (a Deferred that never fails) fires with True once the
    archive is open or False when it could not be.  Meanwhile C{add} refuses
    (fires None, counted), so a relay keeps forwarding either way.
    """

    name = "archive"

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.started: defer.Deferred | None = None
        self.error: BaseException | None = None

    def startService(self) -> None:
        super().startService()

        def failed(f: Failure) -> bool:
            self.error = f.value
            log.critical(
                "ARCHIVE FAILURE: {url} cannot be used, nothing will be archived: {error}",
                url=self.archive.url,
                error=f.value,
            )
            return False

        self.started = self.archive.start().addCallbacks(lambda _: True, failed)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.archive.stop()
