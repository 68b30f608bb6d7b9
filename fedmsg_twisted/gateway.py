# -*- test-case-name: tests.test_gateway -*-
"""
The gateway: a site's bus, republished on one public address.

It subscribes to the site's endpoints (the relay, passive publishers) and
sends every message it receives, I{byte for byte} (so signatures still
verify outside), on its own PUB socket.  Outsiders connect only to that
socket; it is one-way (a PUB accepts nothing but subscriptions), so they
never reach an internal service.

Unlike fedmsg's gateway it checks each message before passing it on
(frames, size, JSON envelope: garbage from a broken internal publisher is
dropped and counted, not exported), has its own high-water mark
(C{gateway_high_water_mark}: a slow outside subscriber costs bounded memory;
past the mark zmq drops messages for that subscriber alone, silently: zmq
does not report them, so they cannot be counted), and can export only some topics
(C{gateway_topics}: an allow-list of prefixes, enforced both as the zmq
subscription and again on each message).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from fedmsg_twisted.heal import is_heartbeat
from fedmsg_twisted.health import SubscriberHealth, TopicCounter, TrackedSubscriberService, topic_depth
from fedmsg_twisted.stats import Counters

log = Logger(namespace="fedmsg_twisted.gateway")

__all__ = ["GatewayService", "GatewayHealth", "GatewayError", "gateway_settings"]

DEFAULT_BIND = "tcp://127.0.0.1:9940"
DEFAULT_HIGH_WATER_MARK = 10000


class GatewayError(ValueError):
    """
    A gateway setting that cannot be used.
    """


def _check_bind(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise GatewayError(f"gateway_bind must be a zmq address like tcp://0.0.0.0:9940; got {value!r}")
    return value


def _check_hwm(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GatewayError(f"gateway_high_water_mark must be an integer >= 0 (0 = unlimited); got {value!r}")
    return value


def _check_topics(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise GatewayError(f"gateway_topics must be a list of topic prefixes; got {value!r}")
    for t in value:
        if "*" in t.rstrip("*"):
            raise GatewayError(f"gateway_topics entry {t!r}: only a trailing '*' is allowed (topics match by prefix)")
    return tuple(dict.fromkeys(t.rstrip("*") for t in value))


def gateway_settings(
    config: Mapping[str, Any],
    bind: str | None = None,
    high_water_mark: int | None = None,
    topics: Iterable[str] | None = None,
) -> tuple[str, int, tuple[str, ...]]:
    """
    The gateway's checked settings: arguments first, then the config, then
    fedmsg's keys (C{fedmsg.consumers.gateway.port} / C{.high_water_mark}).

    @raise GatewayError: naming the key and the problem.
    """
    if bind is None:
        bind = config.get("gateway_bind")
    if bind is None and config.get("fedmsg.consumers.gateway.port") is not None:
        port = config.get("fedmsg.consumers.gateway.port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise GatewayError(f"fedmsg.consumers.gateway.port must be a TCP port number; got {port!r}")
        bind = f"tcp://*:{port}"
    if high_water_mark is None:
        high_water_mark = config.get("gateway_high_water_mark", config.get("fedmsg.consumers.gateway.high_water_mark"))
    if topics is None:
        topics = config.get("gateway_topics", ())
    return (
        _check_bind(bind if bind is not None else DEFAULT_BIND),
        _check_hwm(high_water_mark if high_water_mark is not None else DEFAULT_HIGH_WATER_MARK),
        _check_topics(topics),
    )


class _GatewaySubscriber(TrackedSubscriberService):
    def __init__(self, gateway: "GatewayService", *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gateway = gateway

    def frames_received(self, name: str, endpoint: str, frames: list[bytes]) -> None:
        self.gateway.frames_received(name, endpoint, frames)


class GatewayService(Service):
    """
    Subscribes to the site and republishes the original frames on C{bind}.

    @ivar counters: C{received}, C{forwarded}, C{dropped} by reason
        (malformed ones, C{not-allowed}, C{high-water-mark}, C{stopped}),
        C{messages_in}/C{messages_out} by topic prefix.
    @ivar address: the public address bound (with the real port).
    @ivar subscriber: the L{TrackedSubscriberService} reading the site.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        bind: str | None = None,
        high_water_mark: int | None = None,
        topics: Iterable[str] | None = None,
        endpoints: Mapping[str, Iterable[str]] | None = None,
        reactor: Any = None,
        factory: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.config = config
        self.bind, self.high_water_mark, self.topics = gateway_settings(config, bind, high_water_mark, topics)
        self._reactor = reactor
        self._factory = factory
        self._max_size = config["max_message_size"]
        self._pub: Any = None
        self.address: str | None = None
        self.counters = Counters()
        self.last_message_at: float | None = None
        self.subscriber = _GatewaySubscriber(
            self, config, lambda *a: None, self.topics or ("",), endpoints=endpoints, reactor=reactor, factory=factory
        )
        self.subscriber.counters = self.counters
        self._topic_counter = TopicCounter(self.counters, topic_depth(config))
        mine = self.bind.replace("*", "127.0.0.1")
        for name, addrs in self.subscriber.endpoints().items():
            if self.bind in addrs or mine in addrs:
                raise GatewayError(
                    f"gateway_bind {self.bind} is also endpoints[{name!r}]: the gateway would subscribe to itself"
                )

    def startService(self) -> None:
        from fedmsg_twisted import zmq as fzmq

        factory = self._factory or fzmq.shared_factory(self.config["io_threads"])
        options = [
            (o, v) for o, v in fzmq.publisher_options(self.config) if o not in (fzmq._zmq.SNDHWM, fzmq._zmq.RCVHWM)
        ]
        options += [(fzmq._zmq.SNDHWM, self.high_water_mark), (fzmq._zmq.RCVHWM, self.high_water_mark)]
        # Outside subscribers come and go; never hold the process on close.
        options = [(o, v) for o, v in options if o != fzmq._zmq.LINGER] + [(fzmq._zmq.LINGER, 0)]
        pub = fzmq.PubSocket(factory, options=options)
        try:
            self.address = fzmq.bind_first(pub, [self.bind])
        except Exception:
            pub.close()
            raise
        self._pub = pub
        try:
            self.subscriber.startService()
        except Exception:
            pub.close()
            self._pub = None
            raise
        super().startService()
        log.info(
            "Gateway republishing {topics} from {n} endpoints on {address} (high-water mark {hwm})",
            topics=", ".join(self.topics) or "every topic",
            n=sum(len(a) for a in self.subscriber.endpoints().values()),
            address=self.address,
            hwm=self.high_water_mark,
        )

    def stopService(self) -> defer.Deferred:
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        d = self.subscriber.stopService() if self.subscriber.running else defer.succeed(None)

        def close(result: Any) -> Any:
            if self._pub is not None:
                self._pub.close()
                self._pub = None
            return result

        return d.addBoth(close)

    def allowed(self, topic: str) -> bool:
        return not self.topics or any(topic.startswith(t) for t in self.topics)

    def frames_received(self, name: str, endpoint: str, frames: list[bytes]) -> None:
        """
        Check one message and forward its original frames.  Never raises.
        """
        checked = self.subscriber.check_frames(name, endpoint, frames, self.counters)
        if checked is None:
            return
        topic, _ = checked
        if is_heartbeat(topic):
            # An internal relay's heartbeat names its internal replay
            # endpoint: outsiders must not see it.  It still shows that the
            # upstream is alive.
            self.last_message_at = self.subscriber.last_message_at = self._reactor.seconds()
            self.counters.incr("dropped", "internal-heartbeat")
            return
        if not self.allowed(topic):
            self.counters.incr("dropped", "not-allowed")
            return
        now = self._reactor.seconds()
        self.last_message_at = self.subscriber.last_message_at = now
        self._topic_counter.count("messages_in", topic)
        if self._pub is None:
            self.counters.incr("dropped", "stopped")
            return
        if self._pub.send_frames(frames):
            self.counters.incr("forwarded")
            self._topic_counter.count("messages_out", topic)
        else:
            self.counters.incr("dropped", "high-water-mark")

    def outside_subscriptions(self) -> int:
        """
        How many distinct prefixes outside subscribers ask for right now.
        """
        return len(self._pub.subscriptions) if self._pub is not None else 0


class GatewayHealth(SubscriberHealth):
    """
    The gateway as a health component: public socket bound and the site's
    subscriber ready.
    """

    def __init__(self, gateway: GatewayService, name: str = "gateway", window: float = 0.0, reactor: Any = None) -> None:
        super().__init__(gateway.subscriber, name, window, reactor)
        self.gateway = gateway

    def is_live(self) -> bool:
        return bool(self.gateway.running)

    def is_ready(self) -> bool:
        return bool(self.gateway.running and self.gateway.address) and super().is_ready()

    def gauges(self) -> dict[str, Any]:
        g = super().gauges()
        g["outside_subscriptions"] = self.gateway.outside_subscriptions()
        return g

    def details(self) -> dict[str, Any]:
        d = super().details()
        d["public"] = self.gateway.address
        d["topics"] = list(self.gateway.topics)
        return d
