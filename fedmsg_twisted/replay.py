# -*- test-case-name: tests.test_replay -*-
"""
fedmsg's replay protocol, served from the archive, and a client for it.

The exchange is fedmsg 1.1.7's (protocol notes, section 6): the client sends
one frame, a JSON object using any of C{seq_id}, C{seq_ids},
C{seq_id_range} (inclusive), C{msg_id}, C{msg_ids}, C{time} (C{[t0, t1]},
epoch seconds, inclusive), several keys meaning "any of these"; the server
answers with one frame per matching message, in seq_id order, or with one
frame C{error: '<text>'}.  Unlike fedmsg we answer I{every} match (fedmsg's
client only ever looked at the first), C{seq_id_range} works (fedmsg's store
had a typo), an unknown key is named in the error, and bad input of any kind
(not JSON, not an object, wrong types, huge results) gets an error reply
while the endpoint keeps serving.  A request always gets a reply: fedmsg's
client waits forever otherwise.

B{Replayed bytes are the stored bytes, unchanged.}  fedmsg's store added a
C{seq_id} field to each message and re-serialised it, which broke every
signature (the field is not stripped before validation).  We never modify a
message: each reply frame is exactly the body the relay received.  So:

  - if the original envelope carried a C{seq_id} (a fedmsg publisher with a
    C{persistent_store} added it), it is kept as it was;
  - otherwise the replayed message has no C{seq_id}.  Our archive's seq_id
    (the relay's sequence) is what C{seq_id}/C{seq_ids}/C{seq_id_range}
    queries select on, but it is not written into the message.

This stays compatible with fedmsg's client: its gap detection only asks for
a replay when a I{live} message carries a C{seq_id}, and our relay forwards
bytes unchanged, so it never asks; an explicit C{get_replay()} gets valid,
verifiable messages.  One caveat: if upstream publishers stamp their own
C{seq_id} and a site lists our endpoint under the relay's name in
C{replay_endpoints}, fedmsg subscribers would ask us for I{their} numbers,
which mean nothing here; list the endpoint under a name no publisher uses.

The config keys: C{replay_endpoints[name]} (the address), C{replay_max_messages}
(default 1000: a query matching more is refused, not truncated),
C{replay_max_bytes} (default 64 MiB of reply), C{relay_bind_host}.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from fedmsg_twisted import encoding
from fedmsg_twisted.store import MirroredCounter, ResultTooLarge

__all__ = [
    "QueryError",
    "ReplayError",
    "ReplayQuery",
    "ReplayServer",
    "ReplayService",
    "ReplayTimeout",
    "error_frame",
    "catch_up",
    "get_replay",
    "parse_query",
]

log = Logger(namespace="fedmsg_twisted.replay")

NO_MATCH = "There was no match for the given query"
QUERY_KEYS = ("seq_id", "seq_ids", "seq_id_range", "msg_id", "msg_ids", "time")
#: Our extension (fedmsg clients never send these): C{"fields": "index"}
#: answers one frame C{[seq_id, msg_id]} per match instead of the message,
#: C{"topics"} keeps only topics starting with one of the given prefixes,
#: C{"limit"} answers the first matches (in seq_id order) instead of
#: refusing a query that matches too many: how subscribers page.
EXTENSION_KEYS = ("fields", "topics", "limit")
DEFAULT_MAX_MESSAGES = 1000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_QUERY_BYTES = 1024 * 1024
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class QueryError(ValueError):
    """
    A query we refuse; C{str(e)} is the text of the C{error: '...'} reply.
    """


class ReplayError(Exception):
    """
    The replay endpoint answered with an error, or not with messages.
    """


class ReplayTimeout(ReplayError):
    """
    The replay endpoint did not answer in time.
    """


def error_frame(text: str) -> bytes:
    """
    fedmsg's error reply: C{error: '<text>'}.
    """
    return f"error: '{text}'".encode("utf-8")


@dataclass(frozen=True)
class ReplayQuery:
    """
    A checked query; the fields are the archive's selectors (OR-ed).
    """

    seq_ids: tuple[int, ...] | None = None
    seq_id_range: tuple[int, int] | None = None
    msg_ids: tuple[str, ...] | None = None
    time_range: tuple[float, float] | None = None
    keys: tuple[str, ...] = field(default=())
    index: bool = False
    topics: tuple[str, ...] | None = None
    limit: int | None = None

    def selectors(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("seq_ids", self.seq_ids),
                ("seq_id_range", self.seq_id_range),
                ("msg_ids", self.msg_ids),
                ("time_range", self.time_range),
            )
            if v is not None
        }


def _ill(key: str, why: str) -> QueryError:
    return QueryError(f'Ill-format "{key}" field: {why}')


def _seq(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _ill(key, "expected an integer")
    if not _INT_MIN <= v <= _INT_MAX:
        raise _ill(key, "integer out of range")
    return v


def _list(key: str, v: Any, max_items: int) -> list:
    if not isinstance(v, list):
        raise _ill(key, "expected a list")
    if len(v) > max_items:
        raise _ill(key, f"more than {max_items} items")
    return v


def _pair(key: str, v: Any) -> tuple[Any, Any]:
    if not isinstance(v, list) or len(v) != 2:
        raise _ill(key, "expected a list of two values [low, high]")
    return v[0], v[1]


def _time(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _ill(key, "expected epoch seconds (a number)")
    try:
        f = float(v)
    except OverflowError:
        raise _ill(key, "number out of range") from None
    if not math.isfinite(f):
        raise _ill(key, "number out of range")
    return f


def parse_query(raw: bytes, max_items: int = DEFAULT_MAX_MESSAGES) -> ReplayQuery:
    """
    Check one request frame.

    @raise QueryError: with the text of the error reply.
    """
    if len(raw) > MAX_QUERY_BYTES:
        raise QueryError(f"Query is too large ({len(raw)} bytes)")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise QueryError("Query is not valid JSON") from None
    if not isinstance(value, dict):
        raise QueryError("Query must be a JSON object")
    unknown = sorted(k for k in value if k not in QUERY_KEYS and k not in EXTENSION_KEYS)
    if unknown:
        raise QueryError(f'Unsupported field: "{unknown[0]}"')
    if not any(k in value for k in QUERY_KEYS):
        raise QueryError("Empty query: give any of " + ", ".join(QUERY_KEYS))
    index, topics, limit = False, None, None
    if "fields" in value:
        if value["fields"] != "index":
            raise _ill("fields", 'only "index" is supported')
        index = True
    if "topics" in value:
        topics = []
        for t in _list("topics", value["topics"], 100):
            if not isinstance(t, str):
                raise _ill("topics", "expected a list of strings")
            topics.append(t)
    if "limit" in value:
        limit = _seq("limit", value["limit"])
        if limit < 1:
            raise _ill("limit", "must be 1 or more")
    seq_ids: list[int] = []
    msg_ids: list[str] = []
    seq_range = time_range = None
    if "seq_id" in value:
        seq_ids.append(_seq("seq_id", value["seq_id"]))
    if "seq_ids" in value:
        seq_ids += [_seq("seq_ids", x) for x in _list("seq_ids", value["seq_ids"], max_items)]
    if "seq_id_range" in value:
        lo, hi = _pair("seq_id_range", value["seq_id_range"])
        seq_range = (_seq("seq_id_range", lo), _seq("seq_id_range", hi))
        if seq_range[0] > seq_range[1]:
            raise _ill("seq_id_range", "low end above high end")
    if "msg_id" in value:
        if not isinstance(value["msg_id"], str):
            raise _ill("msg_id", "expected a string")
        msg_ids.append(value["msg_id"])
    if "msg_ids" in value:
        for x in _list("msg_ids", value["msg_ids"], max_items):
            if not isinstance(x, str):
                raise _ill("msg_ids", "expected a list of strings")
            msg_ids.append(x)
    if "time" in value:
        t0, t1 = _pair("time", value["time"])
        time_range = (_time("time", t0), _time("time", t1))
        if time_range[0] > time_range[1]:
            raise _ill("time", "start after end")
    return ReplayQuery(
        seq_ids=tuple(seq_ids) if ("seq_id" in value or "seq_ids" in value) else None,
        seq_id_range=seq_range,
        msg_ids=tuple(msg_ids) if ("msg_id" in value or "msg_ids" in value) else None,
        time_range=time_range,
        keys=tuple(sorted(value)),
        index=index,
        topics=tuple(topics) if topics is not None else None,
        limit=limit,
    )


class ReplayServer:
    """
    The replay logic, without sockets: request frames in, reply frames out.

    @param archive: an L{fedmsg_twisted.store.Archive} (anything with its C{get}).
    @param max_messages: a query matching more is refused with an error.
    @param max_bytes: a reply whose bodies add up to more is refused.
    @param max_concurrent: queries in progress beyond which new ones are
        answered "busy" instead of queueing without bound.
    @param stats: a L{fedmsg_twisted.stats.Counters} that also receives the
        counters as C{("replay", <key>)}.
    """

    def __init__(
        self,
        archive: Any,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_concurrent: int = 32,
        stats: Any = None,
    ) -> None:
        self.archive = archive
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_concurrent = max_concurrent
        self.counters: Counter[str] = MirroredCounter("replay", stats)
        self._running = 0

    def handle(self, frames: list[bytes]) -> defer.Deferred:
        """
        Answer one request; the Deferred never fails (errors become error frames).
        """
        return defer.Deferred.fromCoroutine(self._handle(frames))

    async def _handle(self, frames: list[bytes]) -> list[bytes]:
        self.counters["requests"] += 1
        if len(frames) != 1:
            return self._refuse(f"Query must be a single frame, got {len(frames)}")
        try:
            query = parse_query(frames[0], self.max_messages)
        except QueryError as e:
            return self._refuse(str(e), frames[0])
        if self._running >= self.max_concurrent:
            self.counters["busy"] += 1
            return [error_frame("Replay server is busy, try again later")]
        answer = self._extended if query.index or query.topics is not None or query.limit is not None else self._plain
        self._running += 1
        try:
            return await answer(query)
        except ResultTooLarge as e:
            return self._refuse(
                f"The reply would be too large ({e.size} bytes, limit {e.limit}); narrow the query down"
            )
        except Exception as e:
            self.counters["archive_failed"] += 1
            log.error("Replay query {keys} failed in the archive: {error}", keys=query.keys, error=e)
            return [error_frame("The archive could not answer the query")]
        finally:
            self._running -= 1

    async def _plain(self, query: ReplayQuery) -> list[bytes]:
        """
        fedmsg's queries: every match, in seq_id order, bodies unchanged.
        """
        rows = await self.archive.get(
            limit=self.max_messages + 1, max_bytes=self.max_bytes, **query.selectors()
        )
        if not rows:
            self.counters["no_match"] += 1
            return [error_frame(NO_MATCH)]
        if len(rows) > self.max_messages:
            return self._refuse(
                f"{TOO_MANY} (more than {self.max_messages}); narrow it down"
            )
        self.counters["replayed"] += len(rows)
        log.debug("Replaying {n} messages for {keys}", n=len(rows), keys=query.keys)
        return [r.body for r in rows]

    async def _extended(self, query: ReplayQuery) -> list[bytes]:
        """
        Our extension: index replies, topic prefixes, paging by C{limit}.
        """
        sel = query.selectors()
        limit = min(query.limit or self.max_messages, self.max_messages)
        index = await self.archive.index(
            topics=query.topics,
            limit=limit if query.limit is not None else limit + 1,
            **sel,
        )
        if query.limit is None and len(index) > self.max_messages:
            return self._refuse(f"{TOO_MANY} (more than {self.max_messages}); narrow it down")
        index = index[:limit]
        if not index:
            self.counters["no_match"] += 1
            return [error_frame(NO_MATCH)]
        if query.index:
            self.counters["indexed"] += len(index)
            return [encoding.dumps_bytes([seq, mid]) for seq, mid in index]
        rows = await self.archive.get(seq_ids=[seq for seq, _ in index], max_bytes=self.max_bytes)
        self.counters["replayed"] += len(rows)
        return [r.body for r in rows]

    def _refuse(self, text: str, raw: bytes = b"") -> list[bytes]:
        self.counters["refused"] += 1
        log.info("Refused a replay query: {text} (query starts {raw!r})", text=text, raw=raw[:80])
        return [error_frame(text)]


def _bind_address(address: str, bind_host: bool) -> str:
    # fedmsg binds tcp://*:<port>; relay_bind_host keeps the configured host.
    if bind_host or not address.startswith("tcp://"):
        return address
    port = urlsplit(address).port
    return f"tcp://*:{port}"


class ReplayService(service.Service):
    """
    The replay endpoint (a zmq REP socket) answering from an archive.

    Binding happens in L{startService}; a failure raises C{OSError} naming
    the address, so a misconfigured endpoint stops start-up instead of
    leaving a deaf server.
    """

    name = "replay"

    def __init__(
        self,
        archive: Any,
        address: str,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        bind_host: bool = True,
        factory: Any = None,
        stats: Any = None,
    ) -> None:
        self.address = address
        self.bind_address = _bind_address(address, bind_host)
        self.server = ReplayServer(
            archive, max_messages=max_messages, max_bytes=max_bytes, stats=stats
        )
        self.counters = self.server.counters
        self._factory = factory
        self._conn: Any = None

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        archive: Any,
        name: str | None = None,
        factory: Any = None,
        stats: Any = None,
    ) -> "ReplayService":
        """
        The endpoint C{config["replay_endpoints"][name]} (C{name} defaults to
        C{config["name"]}).

        @raise KeyError: naming the missing C{replay_endpoints} entry.
        """
        name = name or config.get("name")
        endpoints = config.get("replay_endpoints") or {}
        if name not in endpoints:
            raise KeyError(f"replay_endpoints has no entry {name!r} to bind the replay endpoint")
        return cls(
            archive,
            endpoints[name],
            max_messages=config.get("replay_max_messages", DEFAULT_MAX_MESSAGES),
            max_bytes=config.get("replay_max_bytes", DEFAULT_MAX_BYTES),
            bind_host=config.get("relay_bind_host", True),
            factory=factory,
            stats=stats,
        )

    def startService(self) -> None:
        from fedmsg_twisted import zmq_reqrep

        factory = self._factory or zmq_reqrep.default_factory()
        self._conn = zmq_reqrep.bind_rep(
            factory,
            self.bind_address,
            self.server.handle,
            self.server.counters,
            error_reply=[error_frame("Internal error in the replay server")],
        )
        super().startService()
        log.info("Replay endpoint listening on {address}", address=self.bind_address)

    def stopService(self) -> None:
        super().stopService()
        conn, self._conn = self._conn, None
        if conn is not None and conn.socket is not None:
            conn.shutdown()


async def _get_replay(address: str, query: Mapping[str, Any], timeout: float, factory: Any) -> list[dict]:
    from fedmsg_twisted import zmq_reqrep

    factory = factory or zmq_reqrep.default_factory()
    try:
        frames = await zmq_reqrep.request(
            factory, address, [encoding.dumps_bytes(dict(query))], timeout
        )
    except zmq_reqrep.RequestTimeout:
        raise ReplayTimeout(f"no reply from the replay endpoint {address} within {timeout} s") from None
    except OSError as e:
        raise ReplayError(str(e)) from None
    if len(frames) == 1 and frames[0].startswith(b"error: "):
        text = frames[0].decode("utf-8", "replace")
        if text == f"error: '{NO_MATCH}'":
            return []
        raise ReplayError(f"{address}: {text}")
    out = []
    for frame in frames:
        try:
            out.append(encoding.decode_body(frame, max_size=0))
        except encoding.DecodeError as e:
            raise ReplayError(f"{address}: a replayed frame is not a message ({e})") from None
    return out


def get_replay(
    address: str, query: Mapping[str, Any], timeout: float = 2.0, factory: Any = None
) -> defer.Deferred:
    """
    Ask the replay endpoint at C{address} for messages.

    @param query: fedmsg's query object, e.g. C{{"seq_id_range": [10, 20]}}.
    @return: Deferred firing with the decoded messages in the server's order
        (an empty list for fedmsg's "no match" error); fails with
        L{ReplayError} on any other error reply and L{ReplayTimeout} when
        there is no answer within C{timeout} seconds.
    """
    return defer.Deferred.fromCoroutine(_get_replay(address, query, timeout, factory))


TOO_MANY = "Too many messages match the query"


async def _catch_up(
    address: str, since: float, until: float, timeout: float, factory: Any, max_requests: int
) -> list[dict]:
    windows = [(float(since), float(until))]
    out: list[dict] = []
    seen: set[str] = set()
    requests = 0
    while windows:
        t0, t1 = windows.pop(0)
        requests += 1
        if requests > max_requests:
            raise ReplayError(f"{address}: catching up needed more than {max_requests} requests")
        try:
            msgs = await get_replay(address, {"time": [t0, t1]}, timeout, factory)
        except ReplayError as e:
            mid = t0 + (t1 - t0) / 2
            if TOO_MANY not in str(e) or not t0 < mid < t1:
                raise
            # Inclusive ranges that cover everything between t0 and t1.
            windows[:0] = [(t0, mid), (math.nextafter(mid, math.inf), t1)]
            continue
        for m in msgs:
            msg_id = m.get("msg_id")
            if isinstance(msg_id, str):
                if msg_id in seen:
                    continue
                seen.add(msg_id)
            out.append(m)
    return out


def catch_up(
    address: str,
    since: float,
    until: float,
    timeout: float = 2.0,
    factory: Any = None,
    max_requests: int = 64,
) -> defer.Deferred:
    """
    Every message with a timestamp in C{[since, until]}, even when there are
    more than the endpoint's C{replay_max_messages}: a window the endpoint
    refuses as too large is split in two and asked again.  Messages come in
    time-window order (and seq order within a window), each msg_id once.

    This is how a subscriber heals a gap after a reconnection: ask for the
    time since the last message it saw and drop the msg_ids it already has.

    @raise ReplayError: when a window cannot be split further, after
        C{max_requests} requests, or for any other error reply.
    """
    return defer.Deferred.fromCoroutine(
        _catch_up(address, since, until, timeout, factory, max_requests)
    )
