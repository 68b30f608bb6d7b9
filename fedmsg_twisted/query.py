# -*- test-case-name: tests.test_web -*-
"""
Read-only queries on the archive for the web API: datagrepper's C{/raw} and
C{/id}, counts for statistics, and the tail the live dashboard follows.

Everything here runs on the archive's reader threads and is bounded: a page
holds at most C{max_rows} messages, and every statement is cut off after
C{timeout} seconds (SQLite: a progress handler; PostgreSQL: a transaction-local
C{statement_timeout}), so one expensive filter cannot tie up a reader thread.

What is indexed: C{seq_id} (the order of arrival), C{timestamp},
C{received}, C{topic} and C{category}; C{user} and C{package} are exact
lookups in C{fedmsg_archive_tags}, the usernames and packages the text layer
(fedmsg.meta's C{msg2usernames}/C{msg2packages}) found in each message when
it was stored.  C{contains} searches the stored body bytes (not indexed).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from fedmsg_twisted.store import ROW_COLUMNS, Row, row_from_db

log = Logger(namespace="fedmsg_twisted.query")

__all__ = [
    "QueryError",
    "QueryTimeout",
    "RawQuery",
    "StatsQuery",
    "parse_raw",
    "parse_stats",
    "raw",
    "by_msg_id",
    "stats",
    "tail",
    "recent",
    "DEFAULT_ROWS_PER_PAGE",
    "MAX_ROWS_PER_PAGE",
]

DEFAULT_ROWS_PER_PAGE = 25  # datagrepper's default
MAX_ROWS_PER_PAGE = 100  # datagrepper's cap
DEFAULT_TIMEOUT = 5.0
#: Longest statistics window, and most buckets in a series.
MAX_WINDOW = 366 * 86400
MAX_BUCKETS = 1000
#: Deepest page we serve: OFFSET costs as much as reading the rows skipped.
MAX_OFFSET = 1_000_000
#: Most values one repeatable parameter may take.
MAX_VALUES = 50


#: C{by=} names for statistics counted from a column of the archive.
STATS_COLUMNS: Mapping[str, str] = {
    "category": "category",
    "topic": "topic",
    "agent": "agent",
    "username": "username",
}
#: C{by=} names counted from the user/package tags, the index C{/raw?user=}
#: and C{?package=} search (a message counts once for each of its tags).
STATS_TAGS: Mapping[str, str] = {"user": "user", "package": "package"}
STATS_BY = (*STATS_COLUMNS, *STATS_TAGS)


class QueryError(ValueError):
    """
    A parameter is wrong; C{param} names it (HTTP 400).
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class QueryTimeout(Exception):
    """
    A statement ran longer than the query timeout (HTTP 503).
    """


# -- parameters ------------------------------------------------------------------


def param_values(args: Mapping[bytes, Sequence[bytes]], name: str) -> list[str]:
    """
    Every non-empty value of a repeatable parameter (C{request.args}).
    """
    out = []
    for raw in args.get(name.encode("ascii"), ()):
        try:
            v = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryError(name, "is not UTF-8") from None
        if "\x00" in v:
            raise QueryError(name, "contains a NUL character")
        v = v if name == "contains" else v.strip()
        if v:
            out.append(v)
    if len(out) > MAX_VALUES:
        raise QueryError(name, f"at most {MAX_VALUES} values")
    return out


def param_one(args: Mapping[bytes, Sequence[bytes]], name: str) -> str | None:
    """
    A parameter given at most once, or L{None}.
    """
    values = args.get(name.encode("ascii"), ())
    if not values:
        return None
    if len(values) > 1:
        raise QueryError(name, "give it once")
    try:
        v = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise QueryError(name, "is not UTF-8") from None
    return v or None


def param_number(args: Mapping[bytes, Sequence[bytes]], name: str, *, minimum: float | None = None) -> float | None:
    v = param_one(args, name)
    if v is None:
        return None
    try:
        f = float(v)
    except ValueError:
        raise QueryError(name, f"{v[:40]!r} is not a number") from None
    if not math.isfinite(f) or abs(f) > 1e13:
        raise QueryError(name, f"{v[:40]!r} is out of range")
    if minimum is not None and f < minimum:
        raise QueryError(name, f"must be at least {minimum:g}")
    return f


def param_int(
    args: Mapping[bytes, Sequence[bytes]], name: str, default: int, minimum: int, maximum: int
) -> int:
    v = param_one(args, name)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        raise QueryError(name, f"{v[:40]!r} is not an integer") from None
    if n < minimum:
        raise QueryError(name, f"must be at least {minimum}")
    if n > maximum:
        raise QueryError(name, f"must be at most {maximum}")
    return n


@dataclass
class RawQuery:
    """
    A parsed C{/raw} request.  Values of one parameter are OR-ed, different
    parameters AND-ed, as in datagrepper.  C{start}/C{end} bound the
    envelope C{timestamp}.
    """

    topics: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    contains: list[str] = field(default_factory=list)
    not_topics: list[str] = field(default_factory=list)
    not_categories: list[str] = field(default_factory=list)
    not_users: list[str] = field(default_factory=list)
    not_packages: list[str] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    delta: float | None = None
    page: int = 1
    rows_per_page: int = DEFAULT_ROWS_PER_PAGE
    order: str = "desc"
    meta: list[str] = field(default_factory=list)

    def arguments(self) -> dict[str, Any]:
        """
        The query as datagrepper echoes it back in C{arguments}.
        """
        return {
            "topics": self.topics,
            "categories": self.categories,
            "users": self.users,
            "packages": self.packages,
            "contains": self.contains,
            "not_topics": self.not_topics,
            "not_categories": self.not_categories,
            "not_users": self.not_users,
            "not_packages": self.not_packages,
            "start": self.start,
            "end": self.end,
            "delta": self.delta,
            "page": self.page,
            "rows_per_page": self.rows_per_page,
            "order": self.order,
            "meta": self.meta,
            "grouped": False,
        }


META_FIELDS = ("title", "subtitle", "link", "usernames", "packages", "icon", "secondary_icon")


def parse_raw(
    args: Mapping[bytes, Sequence[bytes]],
    now: float,
    max_rows: int = MAX_ROWS_PER_PAGE,
) -> RawQuery:
    """
    Check C{/raw} parameters (twisted.web's C{request.args}).

    Time range, as datagrepper: C{start} and C{end} are epoch seconds;
    C{delta} alone means the last C{delta} seconds; with C{start} it sets the
    end, with C{end} the start; with both, it is ignored.

    @raise QueryError: naming the first bad parameter.
    """
    q = RawQuery(
        topics=param_values(args, "topic"),
        categories=param_values(args, "category"),
        users=param_values(args, "user"),
        packages=param_values(args, "package"),
        contains=param_values(args, "contains"),
        not_topics=param_values(args, "not_topic"),
        not_categories=param_values(args, "not_category"),
        not_users=param_values(args, "not_user"),
        not_packages=param_values(args, "not_package"),
        meta=param_values(args, "meta"),
    )
    for m in q.meta:
        if m not in META_FIELDS:
            raise QueryError("meta", f"{m[:40]!r} is not one of {', '.join(META_FIELDS)}")
    start = param_number(args, "start", minimum=0)
    end = param_number(args, "end", minimum=0)
    delta = param_number(args, "delta", minimum=0)
    if delta is not None:
        if start is None and end is None:
            start, end = now - delta, now
        elif start is None:
            start = end - delta  # type: ignore[operator]
        elif end is None:
            end = start + delta
    if start is not None and end is not None and end < start:
        raise QueryError("end", "is before start")
    q.start, q.end, q.delta = start, end, delta
    q.rows_per_page = param_int(args, "rows_per_page", min(DEFAULT_ROWS_PER_PAGE, max_rows), 1, max_rows)
    q.page = param_int(args, "page", 1, 1, MAX_OFFSET // q.rows_per_page + 1)
    order = param_one(args, "order") or "desc"
    if order not in ("asc", "desc"):
        raise QueryError("order", f"{order[:20]!r} is not 'asc' or 'desc'")
    q.order = order
    return q


@dataclass
class StatsQuery:
    """
    A parsed C{/stats} request: counts of messages I{received} in the last
    C{window} seconds, grouped C{by} a column, and a series of C{buckets}
    totals.
    """

    window: float = 3600.0
    by: str = "category"
    limit: int = 20
    buckets: int = 60


def parse_stats(args: Mapping[bytes, Sequence[bytes]]) -> StatsQuery:
    """
    Check C{/stats} parameters.

    @raise QueryError: naming the first bad parameter.
    """
    window = param_number(args, "window", minimum=1)
    if window is not None and window > MAX_WINDOW:
        raise QueryError("window", f"must be at most {MAX_WINDOW} seconds")
    by = param_one(args, "by") or "category"
    if by not in STATS_BY:
        raise QueryError("by", f"{by[:40]!r} is not one of {', '.join(STATS_BY)}")
    return StatsQuery(
        window=window if window is not None else 3600.0,
        by=by,
        limit=param_int(args, "limit", 20, 1, 1000),
        buckets=param_int(args, "buckets", 60, 1, MAX_BUCKETS),
    )


# -- SQL ---------------------------------------------------------------------------


def _json_forms(text: str) -> list[bytes]:
    """
    How C{text} may appear in a stored body: as UTF-8, and as JSON writes it
    with C{ensure_ascii} (fedmsg's canonical form escapes non-ASCII).
    """
    forms = [text.encode("utf-8")]
    escaped = json.dumps(text)[1:-1].encode("ascii")
    if escaped not in forms:
        forms.append(escaped)
    return forms


class _Sql:
    """
    Builds a WHERE clause with C{?} placeholders for one backend dialect.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.clauses: list[str] = []
        self.params: list[Any] = []

    def body_has(self, needle: bytes) -> str:
        self.params.append(needle)
        if self.backend == "sqlite":
            return "instr(body, ?) > 0"
        return "position(? in body) > 0"

    def any_of(self, column: str, values: list[str], negate: bool = False) -> None:
        if not values:
            return
        self.params.extend(values)
        op = "NOT IN" if negate else "IN"
        clause = f"{column} {op} ({','.join('?' * len(values))})"
        if negate:
            clause = f"({column} IS NULL OR {clause})"
        self.clauses.append(clause)

    def tagged(self, kind: str, values: list[str], negate: bool = False) -> None:
        """
        Messages with (or, negated, without) any of these C{kind} tags.

        C{seq_id IN (...)} rather than a correlated C{EXISTS}: SQLite then
        starts from the tags index instead of scanning the archive.  The
        negation has to look at every row anyway; C{NOT EXISTS} is what
        PostgreSQL plans as an anti-join.
        """
        if not values:
            return
        marks = ",".join("?" * len(values))
        self.params.append(kind)
        self.params.extend(values)
        tags = f"fedmsg_archive_tags t WHERE t.kind = ? AND t.value IN ({marks})"
        if negate:
            self.clauses.append(
                f"NOT EXISTS (SELECT 1 FROM {tags} AND t.seq_id = fedmsg_archive.seq_id)"
            )
        else:
            self.clauses.append(f"seq_id IN (SELECT t.seq_id FROM {tags})")

    def users(self, values: list[str], negate: bool = False) -> None:
        self.tagged("user", values, negate)

    def packages(self, values: list[str], negate: bool = False) -> None:
        self.tagged("package", values, negate)

    def where(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def _where(q: RawQuery, backend: str, has_tags: bool = True) -> _Sql:
    if not has_tags:
        for name, values in (("user", q.users), ("package", q.packages),
                             ("not_user", q.not_users), ("not_package", q.not_packages)):
            if values:
                raise QueryError(name, "this archive has no user/package index "
                                       "(a read-only archive of schema version 1)")
    s = _Sql(backend)
    s.any_of("topic", q.topics)
    s.any_of("category", q.categories)
    s.users(q.users)
    s.packages(q.packages)
    for text in q.contains:
        s.clauses.append("(" + " OR ".join(s.body_has(f) for f in _json_forms(text)) + ")")
    s.any_of("topic", q.not_topics, negate=True)
    s.any_of("category", q.not_categories, negate=True)
    s.users(q.not_users, negate=True)
    s.packages(q.not_packages, negate=True)
    if q.start is not None:
        s.clauses.append("timestamp >= ?")
        s.params.append(q.start)
    if q.end is not None:
        s.clauses.append("timestamp <= ?")
        s.params.append(q.end)
    return s





def _bounded(archive: Any, timeout: float, work: Callable[[Callable[[str, Sequence[Any]], Any]], Any]) -> Any:
    """
    Run C{work(execute)} in a reader thread with every statement cut off
    after C{timeout} seconds; C{execute(sql, params)} takes C{?} placeholders.
    """
    conn = archive._reader()
    backend = archive._backend
    if backend.name == "sqlite":
        deadline = time.monotonic() + timeout
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
        try:
            return work(lambda sql, params: conn.execute(backend.sql(sql), list(params)))
        except sqlite3.OperationalError as e:
            if "interrupt" in str(e):
                raise QueryTimeout(f"the query ran longer than {timeout:g} seconds") from None
            raise
        finally:
            conn.set_progress_handler(None, 0)
    import psycopg

    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}")
            return work(lambda sql, params: conn.execute(backend.sql(sql), list(params)))
    except psycopg.errors.QueryCanceled:
        raise QueryTimeout(f"the query ran longer than {timeout:g} seconds") from None


def raw(archive: Any, q: RawQuery, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred:
    """
    One page of messages matching C{q}, in arrival (seq_id) order.

    @return: Deferred firing with C{(total, [Row, ...])}.
    @raise QueryError: at once, for C{user}/C{package} filters on an archive
        without the tags table (a read-only version-1 archive).
    """
    s = _where(q, archive._backend.name, getattr(archive, "has_tags", True))
    order = "DESC" if q.order == "desc" else "ASC"
    offset = (q.page - 1) * q.rows_per_page

    def work(execute: Callable[..., Any]) -> tuple[int, list[Row]]:
        (total,) = execute(f"SELECT count(*) FROM fedmsg_archive{s.where()}", s.params).fetchone()
        rows: list[Row] = []
        if offset < total:
            rows = [
                row_from_db(r)
                for r in execute(
                    f"SELECT {ROW_COLUMNS} FROM fedmsg_archive{s.where()}"
                    f" ORDER BY seq_id {order} LIMIT ? OFFSET ?",
                    s.params + [q.rows_per_page, offset],
                ).fetchall()
            ]
        return int(total), rows

    return archive._on_reader(_bounded, archive, timeout, work)


def by_msg_id(archive: Any, msg_id: str, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred:
    """
    The L{Row} stored under C{msg_id}, or L{None}.
    """

    def work(execute: Callable[..., Any]) -> Row | None:
        r = execute(f"SELECT {ROW_COLUMNS} FROM fedmsg_archive WHERE msg_id = ?", [msg_id]).fetchone()
        return row_from_db(r) if r else None

    return archive._on_reader(_bounded, archive, timeout, work)


def tail(archive: Any, since_seq: int, limit: int, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred:
    """
    Up to C{limit} rows after C{since_seq}, oldest first: what the live
    dashboard sends next.
    """

    def work(execute: Callable[..., Any]) -> list[Row]:
        return [
            row_from_db(r)
            for r in execute(
                f"SELECT {ROW_COLUMNS} FROM fedmsg_archive WHERE seq_id > ? ORDER BY seq_id LIMIT ?",
                [int(since_seq), int(limit)],
            ).fetchall()
        ]

    return archive._on_reader(_bounded, archive, timeout, work)


def recent(
    archive: Any, count: int, since: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> defer.Deferred:
    """
    The last C{count} rows (after C{since}, if given), oldest first, and the
    highest seq_id in the archive (0 when empty), read together.

    @return: Deferred firing with C{(latest_seq, [Row, ...])}.
    """

    def work(execute: Callable[..., Any]) -> tuple[int, list[Row]]:
        (latest,) = execute("SELECT max(seq_id) FROM fedmsg_archive", []).fetchone()
        rows = [
            row_from_db(r)
            for r in execute(
                f"SELECT {ROW_COLUMNS} FROM fedmsg_archive WHERE seq_id > ? ORDER BY seq_id DESC LIMIT ?",
                [int(since or 0), int(count)],
            ).fetchall()
        ]
        rows.reverse()
        latest = max([int(latest or 0)] + [r.seq_id for r in rows])
        return latest, rows

    return archive._on_reader(_bounded, archive, timeout, work)


def stats(archive: Any, q: StatsQuery, now: float, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred:
    """
    Counts of messages received in C{[now - window, now]}.

    @return: Deferred firing with a dict: C{window}, C{by}, C{start}, C{end},
        C{total}, C{counts} (C{[{"key", "count"}]}, most first, at most
        C{limit}, a missing value as C{null}), C{bucket} (seconds) and
        C{series} (C{buckets} totals, oldest first).
    """
    kind = STATS_TAGS.get(q.by)
    if kind is not None and not getattr(archive, "has_tags", True):
        raise QueryError("by", "this archive has no user/package index (a read-only archive of schema version 1)")
    start = now - q.window
    width = q.window / q.buckets
    backend = archive._backend.name
    if backend == "sqlite":
        bucket_expr = "CAST((received - ?) / ? AS INTEGER)"
    else:
        bucket_expr = "CAST(floor((received - ?) / ?) AS BIGINT)"

    def work(execute: Callable[..., Any]) -> dict[str, Any]:
        rng = "received >= ? AND received <= ?"
        if kind is None:
            column = STATS_COLUMNS[q.by]
            counts = execute(
                f"SELECT {column}, count(*) AS n FROM fedmsg_archive WHERE {rng}"
                f" GROUP BY {column} ORDER BY n DESC, {column} LIMIT ?",
                [start, now, q.limit],
            ).fetchall()
        else:
            counts = execute(
                "SELECT t.value, count(*) AS n FROM fedmsg_archive_tags t"
                " JOIN fedmsg_archive a ON a.seq_id = t.seq_id"
                " WHERE t.kind = ? AND a.received >= ? AND a.received <= ?"
                " GROUP BY t.value ORDER BY n DESC, t.value LIMIT ?",
                [kind, start, now, q.limit],
            ).fetchall()
        series = [0] * q.buckets
        total = 0
        for b, n in execute(
            f"SELECT {bucket_expr} AS b, count(*) FROM fedmsg_archive WHERE {rng} GROUP BY b",
            [start, width, start, now],
        ).fetchall():
            total += n
            series[min(max(int(b), 0), q.buckets - 1)] += n
        return {
            "window": q.window,
            "by": q.by,
            "start": start,
            "end": now,
            "total": total,
            "counts": [{"key": k, "count": n} for k, n in counts],
            "bucket": width,
            "series": series,
        }

    return archive._on_reader(_bounded, archive, timeout, work)


def envelopes(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """
    The stored bodies, parsed; a body that is not a JSON object (never
    stored by the relay, but an archive may be shared) becomes a stub.
    """
    out = []
    for r in rows:
        try:
            env = json.loads(r.body)
        except ValueError:
            env = None
        if not isinstance(env, dict):
            env = {"topic": r.topic, "msg_id": r.msg_id, "timestamp": r.timestamp, "msg": None}
        out.append(env)
    return out
