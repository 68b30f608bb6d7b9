# -*- test-case-name: tests.test_health -*-
"""
Health and numbers over HTTP: C{/live}, C{/ready} and a Prometheus C{/metrics}.

A daemon of ours is I{live} while its services run, and I{ready} only when it
really does its job:

  - the relay: its inbound (SUB) and outbound (PUB) sockets are bound;
  - a subscriber (gateway, hub, bot): at least one endpoint is I{connected}
    (the TCP connection to a publisher is up, so zmq has sent it our
    subscriptions: zmq re-sends them on every reconnect), and, when
    C{health_ready_window} is set, a message arrived within that many seconds;
  - a publisher: its socket is bound or connected and a subscriber's
    subscription has been seen (in active mode: the relay is there).

A quiet bus cannot be told from a dead one by silence alone, so silence does
not make a subscriber unready by default (C{health_ready_window = 0}): the
connection state is the signal.  On a bus that is never quiet for long (or
where a publisher sends heartbeats), set the window and silence becomes a
failure too, which catches a publisher that is connected but stuck.

Metric names are C{fedmsg_<counter>_total} and C{fedmsg_<gauge>} with a
C{component} label; topics are cut to their first tokens (L{TopicCounter}) so
the number of series stays bounded whatever publishers send.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Iterable, Mapping, Protocol, Sequence

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from fedmsg_twisted.stats import Counters
from fedmsg_twisted.subscriber import SubscriberService

log = Logger(namespace="fedmsg_twisted.health")

__all__ = [
    "HealthService",
    "HealthError",
    "Component",
    "RelayHealth",
    "SubscriberHealth",
    "PublisherHealth",
    "TopicCounter",
    "TrackedSubscriberService",
    "check_listen",
    "check_window",
    "topic_depth",
    "render_metrics",
]

#: Distinct topic labels per counter before new ones are counted as "other".
MAX_TOPIC_LABELS = 200

#: The Prometheus label name used for a counter's (or gauge's) one label.
LABEL_NAMES = {
    "dropped": "reason",
    "rejected": "reason",
    "received": "source",
    "messages_in": "topic",
    "messages_out": "topic",
    "consumed": "consumer",
    "consumer_errors": "consumer",
    "consumer_dropped": "consumer",
    "queue_depth": "consumer",
    "in_flight": "consumer",
    "endpoint_connected": "endpoint",
    # Other modules' counters (replay and archive mirror theirs as one family).
    "replay": "event",
    "archive": "event",
    "sent": "network",
    "filtered": "network",
    "invalid": "reason",
    "refused": "status",
    "bad-request": "param",
    "events-opened": "how",
    "events-refused": "reason",
}


class HealthError(ValueError):
    """
    A health setting that cannot be used.
    """


class Component(Protocol):
    """
    What L{HealthService} reports on.  C{details()} is optional.
    """

    name: str
    counters: Counters

    def is_live(self) -> bool: ...

    def is_ready(self) -> bool: ...

    def gauges(self) -> Mapping[str, Any]: ...


# -- config checks ------------------------------------------------------------


def check_listen(value: Any, reactor: Any = None) -> str | None:
    """
    Check C{health_listen}: None (off) or a Twisted server endpoint string.

    @raise HealthError: naming the problem.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise HealthError(
            f"health_listen must be a server endpoint string like 'tcp:9941:interface=127.0.0.1'; got {value!r}"
        )
    from twisted.internet import endpoints

    try:
        # Parsing only: no reactor is needed (nor installed) to check the string.
        endpoints.serverFromString(reactor if reactor is not None else object(), value)
    except Exception as e:  # ValueError, KeyError, TypeError from the parser
        raise HealthError(
            f"health_listen {value!r} is not a Twisted server endpoint string "
            f"(e.g. 'tcp:9941:interface=127.0.0.1'): {e}"
        ) from None
    return value


def check_window(value: Any, key: str = "health_ready_window") -> float:
    """
    Check a number of seconds >= 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise HealthError(f"{key} must be a number of seconds >= 0; got {value!r}")
    return float(value)


def topic_depth(config: Mapping[str, Any]) -> int:
    """
    How many topic tokens a metric label keeps: C{topic_prefix} plus
    environment and service (C{org.fedoraproject.prod.bodhi}), unless
    C{metrics_topic_depth} says otherwise.
    """
    depth = config.get("metrics_topic_depth", 0)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise HealthError(f"metrics_topic_depth must be an integer >= 0 (0 = automatic); got {depth!r}")
    if depth:
        return depth
    return len(str(config.get("topic_prefix", "org.fedoraproject")).split(".")) + 2


class TopicCounter:
    """
    Counts messages per topic prefix, with a bounded number of labels.
    """

    def __init__(self, counters: Counters, depth: int, limit: int = MAX_TOPIC_LABELS) -> None:
        self.counters = counters
        self.depth = depth
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def label(self, name: str, topic: str) -> str:
        prefix = ".".join(topic.split(".")[: self.depth])
        seen = self._seen.setdefault(name, set())
        if prefix not in seen:
            if len(seen) >= self.limit:
                return "other"
            seen.add(prefix)
        return prefix

    def count(self, name: str, topic: str) -> None:
        self.counters.incr(name, self.label(name, topic))


# -- subscribers that know whether they are connected ----------------------------

_monitor_ids = itertools.count()


class TrackedSubscriberService(SubscriberService):
    """
    A L{SubscriberService} that knows which endpoints are connected right now.

    zmq's C{connect} never fails and never says when the peer goes away; a
    socket monitor does (C{EVENT_CONNECTED}/C{EVENT_DISCONNECTED}).  The
    monitor is attached before C{connect} so no event is missed.

    @ivar connected: C{{(name, address): bool}}.
    """

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._monitors: dict[tuple[str, str], Any] = {}
        self.connected: dict[tuple[str, str], bool] = {}

    def _connect(self, name: str, address: str) -> None:
        import zmq as _zmq
        from zmq.utils.monitor import parse_monitor_message

        from fedmsg_twisted import zmq as fzmq

        key = (name, address)
        if key in self._sockets:
            return
        factory = self._factory or fzmq.shared_factory(self.config["io_threads"])
        sock = self._new_socket(name, address)
        inproc = f"inproc://fedmsg-twisted-monitor-{next(_monitor_ids)}"

        def on_event(frames: list[bytes]) -> None:
            event = parse_monitor_message(frames)["event"]
            if event == _zmq.EVENT_CONNECTED:
                self._set_connected(key, True)
            elif event in (_zmq.EVENT_DISCONNECTED, _zmq.EVENT_MONITOR_STOPPED):
                self._set_connected(key, False)

        try:
            sock.socket.monitor(inproc, _zmq.EVENT_CONNECTED | _zmq.EVENT_DISCONNECTED)
            mon = fzmq._Socket(factory, _zmq.PAIR, on_event, [(_zmq.LINGER, 0)])
            fzmq.connect(mon, inproc)
        except Exception as e:
            try:
                sock.socket.disable_monitor()
            except Exception:
                pass
            sock.close()
            self.counters.incr("connect-errors")
            log.error("Cannot monitor {name} at {address}: {error}", name=name, address=address, error=e)
            return
        try:
            sock.connect(address)
        except Exception as e:
            sock.socket.disable_monitor()
            sock.close()
            mon.close()
            self.counters.incr("connect-errors")
            log.error("Cannot connect to {name} at {address}: {error}", name=name, address=address, error=e)
            return
        self._sockets[key] = sock
        self._monitors[key] = mon
        self.connected.setdefault(key, False)

    def _set_connected(self, key: tuple[str, str], up: bool) -> None:
        if key not in self._sockets:
            return
        was = self.connected.get(key)
        self.connected[key] = up
        if was != up:
            self.counters.incr("connections" if up else "disconnections")
            log.info(
                "{state} {name} at {address}",
                state="Connected to" if up else "Lost",
                name=key[0],
                address=key[1],
            )

    def _disable_monitor(self, key: tuple[str, str]) -> None:
        # libzmq sends monitor events from its I/O thread with a blocking
        # send: an event for a monitor whose reader is gone (the socket
        # closing after our PAIR) would hang that thread, and with it every
        # zmq connection of the process.  So: stop the events first, then
        # close the socket, then the reader.
        sock = self._sockets.get(key)
        if sock is not None and sock.factory is not None:
            try:
                sock.socket.disable_monitor()
            except Exception:
                pass

    def _close_monitor(self, key: tuple[str, str]) -> None:
        mon = self._monitors.pop(key, None)
        self.connected.pop(key, None)
        if mon is not None:
            mon.close()

    def remove_endpoint(self, name: str, address: str) -> None:
        self._disable_monitor((name, address))
        super().remove_endpoint(name, address)
        self._close_monitor((name, address))

    def stopService(self) -> defer.Deferred:
        for key in list(self._monitors):
            self._disable_monitor(key)
        d = super().stopService()
        for key in list(self._monitors):
            self._close_monitor(key)
        return d

    def connected_count(self) -> int:
        return sum(1 for up in self.connected.values() if up)


# -- adapters -------------------------------------------------------------------


def _seconds(reactor: Any) -> float:
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    return reactor.seconds()


class RelayHealth:
    """
    The relay as a health component: ready when both sides are bound.

    Counts forwarded messages per topic prefix through a relay sink.
    """

    def __init__(self, relay: Any, name: str = "relay", depth: int | None = None, reactor: Any = None) -> None:
        self.relay = relay
        self.name = name
        self.counters = relay.counters
        self._reactor = reactor
        self._topics = TopicCounter(relay.counters, depth if depth is not None else topic_depth(relay.config))
        relay.add_sink(lambda topic, body, envelope: self._topics.count("messages_out", topic))

    def is_live(self) -> bool:
        return bool(self.relay.running)

    def is_ready(self) -> bool:
        return bool(self.relay.running and self.relay.inbound and self.relay.outbound)

    def gauges(self) -> dict[str, Any]:
        g: dict[str, Any] = {"inbound_bound": len(self.relay.inbound) if self.relay.running else 0}
        if self.relay.last_message_at is not None:
            g["last_message_age_seconds"] = max(0.0, _seconds(self._reactor) - self.relay.last_message_at)
        return g

    def details(self) -> dict[str, Any]:
        return {"inbound": list(self.relay.inbound), "outbound": self.relay.outbound}


class SubscriberHealth:
    """
    A subscriber as a health component.

    Ready when running, connected to at least one endpoint (if the service
    is a L{TrackedSubscriberService}; otherwise: has sockets) and, if
    C{window} > 0, a message arrived within C{window} seconds.
    """

    def __init__(self, subscriber: Any, name: str = "subscriber", window: float = 0.0, reactor: Any = None) -> None:
        self.subscriber = subscriber
        self.name = name
        self.window = check_window(window)
        self.counters = subscriber.counters
        self._reactor = reactor

    def is_live(self) -> bool:
        return bool(self.subscriber.running)

    def _connected(self) -> bool:
        count = getattr(self.subscriber, "connected_count", None)
        if count is not None:
            return count() > 0
        return bool(getattr(self.subscriber, "_sockets", None))

    def _recent(self) -> bool:
        if not self.window:
            return True
        last = self.subscriber.last_message_at
        return last is not None and _seconds(self._reactor) - last <= self.window

    def is_ready(self) -> bool:
        return bool(self.subscriber.running and self._connected() and self._recent())

    def gauges(self) -> dict[str, Any]:
        g: dict[str, Any] = {}
        connected = getattr(self.subscriber, "connected", None)
        if connected is not None:
            g["endpoint_connected"] = {addr: int(up) for (_, addr), up in connected.items()}
        last = self.subscriber.last_message_at
        if last is not None:
            g["last_message_age_seconds"] = max(0.0, _seconds(self._reactor) - last)
        return g

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = {"connected": self._connected(), "recent": self._recent(), "window": self.window}
        connected = getattr(self.subscriber, "connected", None)
        if connected is not None:
            d["endpoints"] = {addr: up for (_, addr), up in connected.items()}
        return d


class PublisherHealth:
    """
    A publisher as a health component: ready once a subscriber is there.
    """

    def __init__(self, publisher: Any, name: str = "publisher") -> None:
        self.publisher = publisher
        self.name = name
        self.counters = publisher.counters

    def is_live(self) -> bool:
        return bool(self.publisher.running)

    def is_ready(self) -> bool:
        return bool(self.publisher.running and self.publisher.address and self.publisher.has_subscriber())

    def gauges(self) -> dict[str, Any]:
        return {"has_subscriber": int(self.is_ready())}

    def details(self) -> dict[str, Any]:
        return {"address": self.publisher.address, "active": self.publisher.active}


# -- rendering ------------------------------------------------------------------

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    return _NAME_RE.sub("_", name).strip("_").lower()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs) + "}"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render_metrics(components: Iterable[Any]) -> str:
    """
    The Prometheus text exposition (version 0.0.4) of every component.
    """
    families: dict[str, tuple[str, list[str]]] = {}

    def add(family: str, kind: str, labels: Sequence[tuple[str, str]], value: Any) -> None:
        families.setdefault(family, (kind, []))[1].append(f"{family}{_labels(labels)} {_number(value)}")

    for c in components:
        comp = ("component", c.name)
        add("fedmsg_up", "gauge", [comp], _safe(c.is_live, False))
        add("fedmsg_ready", "gauge", [comp], _safe(c.is_ready, False))
        for name, label, value in c.counters.items():
            labels = [comp]
            if label:
                labels.append((LABEL_NAMES.get(name, "label"), label))
            add(f"fedmsg_{_metric_name(name)}_total", "counter", labels, value)
        for name, value in (_safe(c.gauges, {}) or {}).items():
            family = f"fedmsg_{_metric_name(name)}"
            if isinstance(value, Mapping):
                for label, v in sorted(value.items()):
                    add(family, "gauge", [comp, (LABEL_NAMES.get(name, "label"), label)], v)
            else:
                add(family, "gauge", [comp], value)
    out = []
    for family in sorted(families):
        kind, samples = families[family]
        out.append(f"# TYPE {family} {kind}")
        out.extend(samples)
    return "\n".join(out) + "\n"


def _safe(f: Any, default: Any) -> Any:
    # One broken component must not take the whole endpoint down.
    try:
        return f()
    except Exception:
        log.failure("Health check {f!r} raised", f=f)
        return default


def status(components: Iterable[Any], only: Iterable[str] = ()) -> tuple[bool, bool, dict[str, Any]]:
    """
    C{(live, ready, report)} for the components (or only those named).
    """
    wanted = set(only)
    report: dict[str, Any] = {}
    for c in components:
        if wanted and c.name not in wanted:
            continue
        entry = {"live": bool(_safe(c.is_live, False)), "ready": bool(_safe(c.is_ready, False))}
        details = getattr(c, "details", None)
        if details is not None:
            entry["details"] = _safe(details, {})
        report[c.name] = entry
    missing = wanted - set(report)
    for name in sorted(missing):
        report[name] = {"live": False, "ready": False, "error": "no such component"}
    live = bool(report) and all(e["live"] for e in report.values())
    ready = bool(report) and all(e["ready"] for e in report.values())
    return live, ready, report


# -- HTTP ---------------------------------------------------------------------


class _HealthResource(resource.Resource):
    isLeaf = True

    def __init__(self, components: Sequence[Any]) -> None:
        super().__init__()
        self.components = components

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"Cache-Control", b"no-store")
        path = request.path
        if path not in (b"/live", b"/ready", b"/metrics"):
            return self._text(request, 404, "not found: try /live, /ready or /metrics\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return self._text(request, 405, "method not allowed: use GET\n")
        if path == b"/metrics":
            request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
            return render_metrics(self.components).encode("utf-8")
        only = [v.decode("utf-8", "replace") for v in request.args.get(b"component", [])]
        live, ready, report = status(self.components, only)
        ok = live if path == b"/live" else ready
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"Content-Type", b"application/json")
        body = {"live": live, "ready": ready, "components": report}
        return (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")

    @staticmethod
    def _text(request: server.Request, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return text.encode("utf-8")


class _QuietSite(server.Site):
    # Monitoring polls every few seconds; an access log line each time is noise.
    def log(self, request: Any) -> None:
        pass


class HealthService(Service):
    """
    Serves C{/live}, C{/ready} and C{/metrics} for C{components}.

    @param listen: a Twisted server endpoint string (C{health_listen}).
    @param components: objects with C{name}, C{is_live()}, C{is_ready()},
        C{counters} and C{gauges()} (optionally C{details()}).
    @ivar port: the listening port once started (C{port.getHost().port}).
    """

    name = "health"

    def __init__(self, listen: str, components: Iterable[Any], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.listen = check_listen(listen, reactor)
        self.components = list(components)
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise HealthError(f"health component names must be unique; got {names}")
        self._reactor = reactor
        self.port: Any = None

    def add(self, component: Any) -> None:
        self.components.append(component)

    def startService(self) -> None:
        from twisted.internet import endpoints

        endpoint = endpoints.serverFromString(self._reactor, self.listen)
        site = _QuietSite(_HealthResource(self.components))
        site.noisy = False
        result: list[Any] = []
        endpoint.listen(site).addBoth(result.append)
        if not result:
            # TCP and UNIX endpoints listen synchronously; anything else we wait for.
            raise HealthError(f"health endpoint {self.listen!r} did not start listening at once")
        if not isinstance(result[0], Exception) and hasattr(result[0], "getHost"):
            self.port = result[0]
        else:
            failure = result[0]
            raise HealthError(f"cannot listen on {self.listen!r} for health checks: {failure.getErrorMessage()}")
        super().startService()
        host = self.port.getHost()
        log.info("Health endpoints on {host}:{port} (/live /ready /metrics)", host=getattr(host, "host", host), port=getattr(host, "port", ""))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


def health_settings(config: Mapping[str, Any], listen: str | None = None, window: Any = None) -> tuple[str | None, float]:
    """
    C{(health_listen, health_ready_window)}: flags first, then the config.

    @raise HealthError: naming the key and the problem.
    """
    if listen is None:
        listen = config.get("health_listen")
    if window is None:
        window = config.get("health_ready_window", 0.0)
    return check_listen(listen), check_window(window)
