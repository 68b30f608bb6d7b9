# -*- test-case-name: tests.test_web -*-
"""
The bus you can see: a read-only web API on the relay's archive
(datagrepper's C{/raw} and C{/id}), statistics, and a live dashboard fed by
Server-Sent Events, all in the relay's own reactor.

    GET /                 the dashboard (static files from fedmsg_twisted/static)
    GET /raw?...          messages, datagrepper-compatible
    GET /id?id=MSG_ID     one message
    GET /stats?window=3600&by=category&buckets=60
    GET /events           text/event-stream; C{id:} is the archive seq_id

Live events come from the archive, not from the relay: the service follows
the archive's seq_ids (woken by the relay's sink, and by a poll), so an
event id always names a stored message and a client reconnecting with
C{Last-Event-ID} gets exactly what it missed, replayed from the archive.

Safe by default: off unless C{web_listen} is set; a TCP listener without
C{interface=} binds 127.0.0.1; while bound to loopback only loopback host
names are served (no DNS rebinding); no CORS; the page sets a strict
Content-Security-Policy and puts message text in the DOM as text only.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections import OrderedDict
from importlib import resources
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet import defer, endpoints, interfaces, task
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from fedmsg_twisted import query
from fedmsg_twisted.config import ConfigError
from fedmsg_twisted.stats import Counters
from fedmsg_twisted.store import ArchiveError, Row

log = Logger(namespace="fedmsg_twisted.web")

__all__ = ["DashboardService", "WebError", "add_dashboard", "build_resource"]

DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_KEEPALIVE = 15.0
DEFAULT_MAX_CLIENTS = 100
DEFAULT_REPLAY = 1000
DEFAULT_BACKLOG = 50
#: Events queued for a client that does not read before we close it (it
#: reconnects with Last-Event-ID and catches up from the archive).
DEFAULT_CLIENT_BUFFER = 2000
_TAIL_CHUNK = 500
_WAKE_TRIES = 10
_TEXT_CACHE = 2000

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]", "ip6-localhost"}

_STATIC_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "png": "image/png",
    "svg": "image/svg+xml",
}

#: Only our own files, no inline script or style, nothing embedded elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class WebError(RuntimeError):
    """
    The web endpoint cannot start (port taken, bad TLS material).
    """


# -- HTTP plumbing ---------------------------------------------------------------


def _security_headers(request: Any) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Frame-Options", b"DENY")


def _json(request: Any, code: int, obj: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    _security_headers(request)
    body = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _error(request: Any, code: int, message: str, reason: str, **extra: Any) -> bytes:
    return _json(request, code, {"error": message, "reason": reason, **extra})


class _GetOnly(resource.Resource):
    """
    A resource that answers GET (and HEAD) only: the API never changes anything.
    """

    isLeaf = True

    def render(self, request: Any) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _error(request, 405, f"{request.method.decode('latin-1')} is not allowed: the API is read-only", "method")
        return self.render_GET(request)

    def render_GET(self, request: Any) -> Any:  # pragma: no cover - subclasses
        raise NotImplementedError


class _Deferring(_GetOnly):
    """
    A JSON resource whose answer comes from a Deferred; archive errors and
    timeouts become 503, bad parameters 400, nothing leaks a traceback.
    """

    def __init__(self, web: "DashboardService") -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Any) -> Any:
        try:
            d = self.answer(request)
        except query.QueryError as e:
            self.web.counters.incr("bad-request", e.param)
            return _error(request, 400, str(e), "bad-parameter", param=e.param)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def ok(result: tuple[int, Any]) -> None:
            if gone:
                return
            code, obj = result
            request.write(_json(request, code, obj))
            request.finish()

        def failed(f: Failure) -> None:
            if gone:
                return
            if f.check(query.QueryTimeout):
                self.web.counters.incr("timeouts")
                body = _error(request, 503, str(f.value), "timeout")
            elif f.check(ArchiveError):
                body = _error(request, 503, f"the archive is not available: {f.value}", "archive")
            else:
                log.failure("web: {uri} failed", f, uri=request.uri)
                self.web.counters.incr("errors")
                body = _error(request, 500, "internal error (logged)", "internal")
            request.write(body)
            request.finish()

        d.addCallbacks(ok, failed)
        d.addErrback(lambda f: log.failure("web: answering {uri}", f, uri=request.uri))
        return server.NOT_DONE_YET

    def answer(self, request: Any) -> defer.Deferred:
        raise NotImplementedError


class RawResource(_Deferring):
    """
    C{/raw}: datagrepper's query (see L{query.parse_raw}).
    """

    def answer(self, request: Any) -> defer.Deferred:
        q = query.parse_raw(request.args, self.web.now(), self.web.max_rows)
        d = query.raw(self.web.archive, q, self.web.query_timeout)

        def shape(result: tuple[int, list[Row]]) -> tuple[int, dict]:
            total, rows = result
            messages = query.envelopes(rows)
            if q.meta:
                for env in messages:
                    env["meta"] = self.web.meta(env, q.meta)
            return 200, {
                "raw_messages": messages,
                "count": len(messages),
                "pages": int(math.ceil(total / q.rows_per_page)),
                "total": total,
                "arguments": q.arguments(),
            }

        return d.addCallback(shape)


class IdResource(_Deferring):
    """
    C{/id?id=MSG_ID}: one message, or 404.
    """

    def answer(self, request: Any) -> defer.Deferred:
        msg_id = query.param_one(request.args, "id")
        if not msg_id:
            raise query.QueryError("id", "give the msg_id of the message (id=...)")
        meta = query.param_values(request.args, "meta")
        for m in meta:
            if m not in query.META_FIELDS:
                raise query.QueryError("meta", f"{m[:40]!r} is not one of {', '.join(query.META_FIELDS)}")

        def shape(row: Row | None) -> tuple[int, dict]:
            if row is None:
                return 404, {"error": f"id: no message with msg_id {msg_id[:200]!r}", "reason": "not-found", "param": "id"}
            (env,) = query.envelopes([row])
            if meta:
                env["meta"] = self.web.meta(env, meta)
            return 200, env

        return query.by_msg_id(self.web.archive, msg_id, self.web.query_timeout).addCallback(shape)


class StatsResource(_Deferring):
    """
    C{/stats}: counts by category, topic or user over a window.
    """

    def answer(self, request: Any) -> defer.Deferred:
        q = query.parse_stats(request.args)
        d = query.stats(self.web.archive, q, self.web.now(), self.web.query_timeout)
        return d.addCallback(lambda result: (200, result))


class StaticResource(_GetOnly):
    """
    One file shipped in C{fedmsg_twisted/static}, read once.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.body = resources.files("fedmsg_twisted").joinpath("static", name).read_bytes()
        self.content_type = _STATIC_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream").encode()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Content-Security-Policy", CSP.encode())
        request.setHeader(b"Cache-Control", b"no-cache")
        _security_headers(request)
        return self.body


class _NotFound(_GetOnly):
    def render_GET(self, request: Any) -> bytes:
        return _error(request, 404, "no such page (try /raw, /id, /stats, /events or /)", "not-found")


class _BadHost(_GetOnly):
    def render(self, request: Any) -> bytes:
        return _error(request, 421, "this server does not answer for that Host name (see web_allowed_hosts)", "host")


class _Root(resource.Resource):
    """
    Routes by the first path segment and refuses unknown Host names.
    """

    def __init__(self, web: "DashboardService", children: Mapping[bytes, resource.Resource]) -> None:
        super().__init__()
        self.web = web
        self.routes = dict(children)
        self.static = {}
        for name in ("dashboard.js", "dashboard.css"):
            self.static[name.encode()] = StaticResource(name)
        self.index = StaticResource("index.html")

    def getChildWithDefault(self, path: bytes, request: Any) -> resource.Resource:
        if not self.web.host_allowed(request.getHeader(b"host")):
            self.web.counters.incr("bad-host")
            return _BadHost()
        if path == b"":
            return self.index
        if path == b"static":
            name = request.postpath[0] if request.postpath else b""
            request.postpath = []
            return self.static.get(name) or _NotFound()
        return self.routes.get(path) or _NotFound()

    def render(self, request: Any) -> Any:
        return self.getChildWithDefault(b"", request).render(request)


# -- live events -------------------------------------------------------------------


def sse_event(seq_id: int, data: Mapping[str, Any], event: str | None = None) -> bytes:
    """
    One Server-Sent Event; JSON has no raw newlines, so C{data:} is one line.
    """
    head = f"id: {seq_id}\n"
    if event:
        head += f"event: {event}\n"
    return (head + "data: " + json.dumps(data, ensure_ascii=True, separators=(",", ":")) + "\n\n").encode("ascii")


def _safe_link(link: Any) -> str | None:
    # Only web links: a "javascript:" URL in a message must never become a link.
    if isinstance(link, str) and link.lower().startswith(("https://", "http://")):
        return link
    return None


@implementer(interfaces.IPushProducer)
class _Client:
    """
    One open C{/events} stream.  C{cursor} is the last seq_id it was sent
    (or skipped by its filter); it gets live rows once C{live}.
    """

    def __init__(self, request: Any, cursor: int, topics: list[str], categories: list[str]) -> None:
        self.request = request
        self.transport = request.channel.transport
        self.cursor = cursor
        self.topics = topics
        self.categories = categories
        self.live = False
        self.paused = False
        self.unread = 0
        self.closed = False

    def wants(self, row: Row) -> bool:
        if self.topics and not any(row.topic == t or row.topic.startswith(t if t.endswith(".") else t + ".") for t in self.topics):
            return False
        if self.categories and row.category not in self.categories:
            return False
        return True

    def send(self, row: Row, event: bytes) -> None:
        if row.seq_id <= self.cursor or self.closed:
            return
        self.cursor = row.seq_id
        if self.wants(row):
            self.write(event)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.paused:
            self.unread += 1
        self.request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.unread = 0

    def stopProducing(self) -> None:
        self.closed = True


class EventsResource(_GetOnly):
    """
    C{/events}: Server-Sent Events.

    Parameters: C{since=SEQ} (or the C{Last-Event-ID} header, which wins)
    replays what came after that seq_id, at most C{web_max_replay}; without
    either, the last C{backlog} messages (default 50).  C{topic} (repeatable,
    a prefix at a dot boundary) and C{category} filter server-side.
    """

    def __init__(self, web: "DashboardService") -> None:
        super().__init__()
        self.web = web

    def render_GET(self, request: Any) -> Any:
        web = self.web
        if not web.running:
            return _error(request, 503, "the dashboard is stopping", "stopped")
        if len(web.clients) >= web.max_clients:
            web.counters.incr("events-refused", "too-many-clients")
            request.setHeader(b"Retry-After", b"10")
            return _error(request, 503, f"too many event streams open ({web.max_clients})", "busy")
        try:
            since = self._since(request)
            backlog = query.param_int(request.args, "backlog", DEFAULT_BACKLOG, 0, web.max_replay)
            topics = query.param_values(request.args, "topic")
            categories = query.param_values(request.args, "category")
        except query.QueryError as e:
            return _error(request, 400, str(e), "bad-parameter", param=e.param)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        _security_headers(request)
        if request.method == b"HEAD":
            return b""
        client = _Client(request, since if since is not None else 0, topics, categories)
        web.clients.add(client)
        how = "backlog" if since is None else ("last-event-id" if request.getHeader(b"last-event-id") else "since")
        web.counters.incr("events-opened", how)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: web.forget(client))
        # Tell the browser how long to wait before reconnecting, and open the stream.
        request.write(b"retry: 2000\n: fedmsg-twisted\n\n")
        web.replay(client, since, backlog)
        return server.NOT_DONE_YET

    def _since(self, request: Any) -> int | None:
        header = request.getHeader(b"last-event-id")
        name, value = "Last-Event-ID", header.decode("latin-1") if header else None
        if not header:
            name, value = "since", query.param_one(request.args, "since")
        if not value:
            return None
        try:
            n = int(value.strip())
        except ValueError:
            raise query.QueryError(name, f"{value[:40]!r} is not a seq_id") from None
        if n < 0:
            raise query.QueryError(name, "must be at least 0")
        return n


# -- endpoint ----------------------------------------------------------------------


def listen_description(description: str) -> tuple[str, bool, bool]:
    """
    Normalise C{web_listen}: a bare port is TCP; TCP without C{interface=}
    binds 127.0.0.1 (C{tcp6}: ::1); C{ssl:} means TCP with TLS from
    C{web_certificate}/C{web_private_key}.

    @return: C{(plain endpoint description, tls, loopback only)}.
    """
    desc = description.strip()
    if desc.isdigit():
        desc = "tcp:" + desc
    tls = desc.startswith("ssl:")
    if tls:
        for k in ("privateKey=", "certKey=", "extraCertChain=", "caCertsDir=", "sslmethod=", "dhParameters="):
            if k in desc:
                raise ConfigError(
                    f"web: web_listen {description!r}: give TLS files with web_certificate and "
                    f"web_private_key, not {k[:-1]!r}"
                )
        desc = "tcp:" + desc[4:]
    kind = desc.split(":", 1)[0]
    loopback = False
    if kind in ("tcp", "tcp6"):
        if "interface=" not in desc:
            desc += ":interface=" + ("\\:\\:1" if kind == "tcp6" else "127.0.0.1")
        # Colons inside a value are escaped with a backslash.
        match = re.search(r"interface=((?:\\.|[^:])*)", desc)
        iface = re.sub(r"\\(.)", r"\1", match.group(1)) if match else ""
        loopback = iface in ("::1", "localhost") or iface.startswith("127.")
    return desc, tls, loopback


def tls_options(config: Mapping[str, Any], now: datetime.datetime | None = None) -> CertificateOptions:
    """
    Server TLS (1.2 at least) from C{web_certificate} (leaf first, then any
    chain) and C{web_private_key}.  No client certificate: the API is read-only.

    @raise ConfigError: naming the key and the file that is wrong.
    """
    from fedmsg_twisted import tls

    key, chain = tls.load_key_and_chain(
        config, "web", "web_certificate", "web_private_key", "web_listen uses ssl: but {key} is not set", now
    )
    options = CertificateOptions(
        privateKey=key, certificate=chain[0], extraCertChain=chain[1:], raiseMinimumTo=TLSVersion.TLSv1_2
    )
    try:
        options.getContext()
    except Exception as e:
        raise ConfigError(f"web: cannot build the TLS context from web_certificate, web_private_key: {e!r}") from None
    return options


# -- the service -------------------------------------------------------------------


class DashboardService(Service):
    """
    Serves the API, the statistics and the live dashboard on C{web_listen}.

    @param archive: a started (or starting) L{fedmsg_twisted.store.Archive}.
    @param relay: the L{fedmsg_twisted.relay.RelayService} whose sink wakes
        the live feed up at once; L{None} works too (the poll alone).
    @param text: a L{fedmsg_twisted.text.TextLayer} (default: one from C{config}).
    @param clock: what "now" is for time windows (default: the reactor).
    @ivar port: the listening port once started.
    @ivar counters: C{events-opened} (by how it started: backlog, since,
        last-event-id), C{events-closed}, C{events-broadcast}, C{events-replayed},
        C{slow-clients}, C{bad-request} by parameter, C{timeouts}, C{errors}.
    """

    name = "web"

    def __init__(
        self,
        config: Mapping[str, Any],
        archive: Any,
        relay: Any = None,
        reactor: Any = None,
        *,
        text: Any = None,
        clock: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self._clock = clock if clock is not None else reactor
        self.config = config
        self.archive = archive
        self.relay = relay
        self._reactor = reactor
        self.listen = config.get("web_listen")
        self.max_rows = int(config.get("web_max_rows_per_page", query.MAX_ROWS_PER_PAGE))
        self.query_timeout = float(config.get("web_query_timeout", query.DEFAULT_TIMEOUT))
        self.poll_interval = float(config.get("web_poll_interval", DEFAULT_POLL_INTERVAL))
        self.keepalive = float(config.get("web_keepalive", DEFAULT_KEEPALIVE))
        self.max_clients = int(config.get("web_max_clients", DEFAULT_MAX_CLIENTS))
        self.max_replay = int(config.get("web_max_replay", DEFAULT_REPLAY))
        self.client_buffer = int(config.get("web_client_buffer", DEFAULT_CLIENT_BUFFER))
        allowed = config.get("web_allowed_hosts")
        if isinstance(allowed, str):
            allowed = allowed.replace(",", " ").split()
        self.allowed_hosts: set[str] | None = {h.strip().lower() for h in allowed} if allowed else None
        if self.max_rows < 1:
            raise ConfigError("web: web_max_rows_per_page must be at least 1")
        self._text = text
        self.counters = Counters()
        self.clients: set[_Client] = set()
        self.latest: int | None = None  # highest seq_id the live feed has sent
        self.port: Any = None
        self.site: server.Site | None = None
        self._loopback_only = False
        self._sink_added = False
        self._polling = False
        self._again = False
        self._wake_call: Any = None
        self._wake_tries = 0
        self._poll_loop: task.LoopingCall | None = None
        self._keepalive_loop: task.LoopingCall | None = None
        self._texts: OrderedDict[int, dict] = OrderedDict()
        self.resource = build_resource(self)

    # -- helpers the resources use -----------------------------------------------

    def now(self) -> float:
        return self._clock.seconds()

    @property
    def text(self) -> Any:
        if self._text is None:
            from fedmsg_twisted.text import TextLayer

            self._text = TextLayer(self.config)
        return self._text

    def meta(self, env: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
        """
        datagrepper's C{meta=} fields from the text layer.
        """
        try:
            t = self.text.text(env)
        except Exception:
            t = None
        out: dict[str, Any] = {}
        for f in fields:
            if t is None:
                out[f] = None
            elif f in ("usernames", "packages"):
                out[f] = sorted(getattr(t, f))
            elif f in ("title", "subtitle", "link"):
                out[f] = getattr(t, f)
            else:
                out[f] = None
        return out

    def host_allowed(self, host: bytes | None) -> bool:
        if self.allowed_hosts is None and not self._loopback_only:
            return True
        if not host:
            return False
        name = host.decode("latin-1").strip().lower()
        if name.startswith("["):
            name = name.split("]", 1)[0] + "]"
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        allowed = self.allowed_hosts if self.allowed_hosts is not None else _LOOPBACK_NAMES
        return name in allowed or name.strip("[]") in allowed

    def event_for(self, row: Row) -> bytes:
        """
        The SSE bytes for one row: the text layer's words, rendered once.
        """
        data = self._texts.get(row.seq_id)
        if data is None:
            (env,) = query.envelopes([row])
            try:
                t = self.text.text(env if isinstance(env.get("topic"), str) else dict(env, topic=row.topic))
                title, subtitle, link = t.title, t.subtitle, _safe_link(t.link)
            except Exception:
                log.failure("web: text layer failed on seq_id {seq}", seq=row.seq_id)
                title, subtitle, link = row.topic, "(no text)", None
            data = {
                "seq_id": row.seq_id,
                "msg_id": row.msg_id,
                "topic": row.topic,
                "category": row.category,
                "username": row.username,
                "agent": row.agent,
                "timestamp": row.timestamp,
                "received": row.received,
                "title": title,
                "subtitle": subtitle,
                "link": link,
            }
            self._texts[row.seq_id] = data
            while len(self._texts) > _TEXT_CACHE:
                self._texts.popitem(last=False)
        return sse_event(row.seq_id, data)

    # -- life cycle -------------------------------------------------------------------

    def startService(self) -> None:
        if not self.listen:
            raise ConfigError("web: 'web_listen' is not set")
        desc, tls, self._loopback_only = listen_description(self.listen)
        try:
            endpoint = endpoints.serverFromString(self._reactor, desc)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(
                f"web: web_listen {self.listen!r} is not a server endpoint description "
                f"like 'tcp:8080:interface=127.0.0.1': {e}"
            ) from None
        site = self.site = server.Site(self.resource, reactor=self._reactor)
        site.displayTracebacks = False
        factory: Any = TLSMemoryBIOFactory(tls_options(self.config), False, site) if tls else site
        result: list[Any] = []
        endpoint.listen(factory).addBoth(result.append)
        if not result:
            raise WebError(f"web: web_listen {self.listen!r} did not start listening at once")
        if isinstance(result[0], Failure):
            raise WebError(f"web: cannot listen on web_listen {self.listen!r}: {result[0].getErrorMessage()}")
        self.port = result[0]
        if self.relay is not None and not self._sink_added:
            self.relay.add_sink(self._relay_saw)
            self._sink_added = True
        super().startService()
        self._poll_loop = task.LoopingCall(self._poll_if_watched)
        self._poll_loop.clock = self._reactor
        self._poll_loop.start(self.poll_interval, now=False)
        if self.keepalive:
            self._keepalive_loop = task.LoopingCall(self._ping)
            self._keepalive_loop.clock = self._reactor
            self._keepalive_loop.start(self.keepalive, now=False)
        log.info(
            "Dashboard and API on {scheme}://{address}",
            scheme="https" if tls else "http",
            address=self.port.getHost(),
        )

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for loop in (self._poll_loop, self._keepalive_loop):
            if loop is not None and loop.running:
                loop.stop()
        self._poll_loop = self._keepalive_loop = None
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        self._wake_call = None
        for client in list(self.clients):
            self._close(client)
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)

    # -- the live feed ------------------------------------------------------------------

    def _relay_saw(self, topic: str, body: bytes, envelope: Any) -> None:
        # The archive writes in batches: look once its batch has had time to commit.
        if not self.running or not self.clients:
            return
        self._wake_tries = 0
        self._schedule_wake()

    def _schedule_wake(self) -> None:
        if self._wake_call is None or not self._wake_call.active():
            delay = float(getattr(self.archive, "batch_interval", 0.05) or 0) + 0.05
            self._wake_call = self._reactor.callLater(delay, self._wake)

    def _wake(self) -> None:
        # A batch still being written shows nothing yet: look again a few
        # times (a message refused by the archive never shows; the poll
        # loop covers the rest).
        def found(n: int | None) -> None:
            if n == 0 and self._wake_tries < _WAKE_TRIES and self.running and self.clients:
                self._wake_tries += 1
                self._schedule_wake()

        self.poll().addCallback(found)

    def _poll_if_watched(self) -> None:
        if self.clients:
            self.poll()

    def _ping(self) -> None:
        for client in list(self.clients):
            client.write(b": keepalive\n\n")

    def poll(self) -> defer.Deferred:
        """
        Send every client what the archive stored since the last poll.
        """
        if self._polling:
            self._again = True
            return defer.succeed(None)
        return defer.Deferred.fromCoroutine(self._poll())

    async def _poll(self) -> int:
        self._polling = True
        sent = 0
        try:
            while self.running:
                self._again = False
                if self.latest is None:
                    break  # the first client's replay sets where the feed starts
                rows = await query.tail(self.archive, self.latest, _TAIL_CHUNK, self.query_timeout)
                self.broadcast(rows)
                sent += len(rows)
                if len(rows) < _TAIL_CHUNK and not self._again:
                    break
        except Exception as e:
            self.counters.incr("poll-failed")
            log.warn("web: reading the archive for live events failed: {e}", e=e)
        finally:
            self._polling = False
        return sent

    def broadcast(self, rows: list[Row]) -> None:
        for row in rows:
            if self.latest is not None and row.seq_id <= self.latest:
                continue
            self.latest = row.seq_id
            event = self.event_for(row)
            for client in list(self.clients):
                # A client still replaying catches up from the archive itself.
                if client.live:
                    client.send(row, event)
                    self._check_slow(client)
            self.counters.incr("events-broadcast")

    def _check_slow(self, client: _Client) -> None:
        if client.unread > self.client_buffer:
            # It reconnects with Last-Event-ID and reads the rest from the archive.
            self.counters.incr("slow-clients")
            self._close(client)

    def replay(self, client: _Client, since: int | None, backlog: int) -> defer.Deferred:
        """
        Send a new client what came after C{since} (at most C{max_replay},
        the most recent ones, with a C{gap} event if that is not all), or
        the last C{backlog} messages; then put it live.
        """
        return defer.Deferred.fromCoroutine(self._replay(client, since, backlog))

    async def _replay(self, client: _Client, since: int | None, backlog: int) -> None:
        try:
            count = backlog if since is None else self.max_replay
            latest, rows = await query.recent(self.archive, count, since, self.query_timeout)
            if since is None or since > latest:
                # No position, or one from another (reset) archive: start at the end.
                client.cursor = latest
            if rows:
                client.cursor = rows[0].seq_id - 1
                # seq_ids may skip numbers (pruning, PostgreSQL identities):
                # only a full replay can have left messages out.
                if since is not None and len(rows) >= count and since < client.cursor:
                    client.write(
                        sse_event(
                            since,
                            {"after": since, "resumed_at": rows[0].seq_id, "max_replay": self.max_replay},
                            "gap",
                        )
                    )
                    self.counters.incr("gaps")
            sent = self._send_all(client, rows)
            # Catch up with the live feed from the archive; no await between
            # the last check and going live, so nothing falls in between.
            while self.latest is not None and client.cursor < self.latest and not client.closed:
                more = await query.tail(self.archive, client.cursor, _TAIL_CHUNK, self.query_timeout)
                if not more:
                    break
                sent += self._send_all(client, more)
        except Exception as e:
            log.warn("web: replay for an event stream failed: {e}", e=e)
            self.counters.incr("replay-failed")
            client.write(sse_event(client.cursor, {"error": "replay failed, reconnecting"}, "error"))
            self._close(client)
            return
        if client.closed:
            return
        client.live = True
        if self.latest is None:
            self.latest = client.cursor
        self.counters.incr("events-replayed", "", sent)
        self.poll()

    def _send_all(self, client: _Client, rows: list[Row]) -> int:
        for row in rows:
            client.send(row, self.event_for(row))
        return len(rows)

    def forget(self, client: _Client) -> None:
        if client in self.clients:
            self.clients.discard(client)
            client.closed = True
            self.counters.incr("events-closed")

    def _close(self, client: _Client) -> None:
        self.forget(client)
        try:
            client.request.unregisterProducer()
        except Exception:
            pass
        if not client.request.finished:
            try:
                client.request.finish()
            except Exception:
                pass
        client.transport.loseConnection()


def build_resource(web: DashboardService) -> resource.Resource:
    """
    The resource tree (also usable under another Site).
    """
    return _Root(
        web,
        {
            b"raw": RawResource(web),
            b"id": IdResource(web),
            b"stats": StatsResource(web),
            b"events": EventsResource(web),
        },
    )


def add_dashboard(
    parent: Any, config: Mapping[str, Any], archive: Any, relay: Any = None, reactor: Any = None
) -> DashboardService | None:
    """
    Add a L{DashboardService} to C{parent} if C{web_listen} is set (the one
    line C{relay_tap} needs, after the archive and the relay).
    """
    if not config.get("web_listen"):
        return None
    svc = DashboardService(config, archive, relay, reactor)
    svc.setServiceParent(parent)
    return svc
