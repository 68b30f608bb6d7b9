# -*- test-case-name: tests.test_hub -*-
"""
The hub: many consumers, one subscriber, one reactor.

Each consumer gets its own bounded queue and handles one message at a time
(its C{consume} may return a Deferred; the next message waits for it).  A
consumer that is slow fills only its own queue: when full, its oldest
message is dropped and counted (C{consumer_dropped}), and its neighbours go
on.  A consumer that raises is logged and counted (C{consumer_errors}); the
next message is delivered as usual.

On stop, the subscriber closes first (nothing new comes in), then the queues
drain for at most C{shutdown_timeout} seconds; whatever is left is dropped
and counted (C{consumer_dropped}/C{dropped:shutdown}).
"""

from __future__ import annotations

import copy
import importlib
from collections import deque
from importlib.metadata import entry_points
from typing import Any, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from fedmsg_twisted.consumer import Consumer, ConsumerError, normalize_topics
from fedmsg_twisted.health import SubscriberHealth, TopicCounter, TrackedSubscriberService, topic_depth
from fedmsg_twisted.stats import Counters

log = Logger(namespace="fedmsg_twisted.hub")

__all__ = ["Consumer", "HubService", "HubHealth", "load_consumer", "entry_point_consumers", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "fedmsg_twisted.consumers"
DEFAULT_QUEUE_SIZE = 1000
DEFAULT_SHUTDOWN_TIMEOUT = 10.0


def _check_class(obj: Any, where: str) -> type:
    if not (isinstance(obj, type) and callable(getattr(obj, "consume", None))):
        raise ConsumerError(f"{where} is not a consumer class (a class with a consume(message) method)")
    return obj


def load_consumer(spec: str) -> type:
    """
    A consumer class from C{"module:Class"} or from an entry point name.

    @raise ConsumerError: naming what could not be found.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConsumerError(f"a consumer must be named as module:Class or an entry point name; got {spec!r}")
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ConsumerError(f"consumer {spec!r}: expected module:Class, e.g. mypkg.consumers:Bodhi")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:
            raise ConsumerError(f"consumer {spec!r}: cannot import {module_name!r}: {e!r}") from None
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ConsumerError(f"consumer {spec!r}: module {module_name!r} has no {attr!r}") from None
        return _check_class(obj, f"consumer {spec!r}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return _load_entry_point(ep)
    known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    raise ConsumerError(
        f"consumer {spec!r}: not module:Class and no {ENTRY_POINT_GROUP!r} entry point has that name "
        f"(installed: {', '.join(known) or 'none'})"
    )


def _load_entry_point(ep: Any) -> type:
    try:
        obj = ep.load()
    except Exception as e:
        raise ConsumerError(f"entry point {ep.name!r} ({ep.value}): cannot load: {e!r}") from None
    return _check_class(obj, f"entry point {ep.name!r} ({ep.value})")


def entry_point_consumers() -> list[type]:
    """
    Every consumer class registered under L{ENTRY_POINT_GROUP}.
    """
    return [_load_entry_point(ep) for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)]


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConsumerError(f"{what} must be an integer >= 1; got {value!r}")
    return value


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConsumerError(f"{what} must be a number of seconds >= 0; got {value!r}")
    return float(value)


class _Worker:
    """
    One consumer, its queue, and the message it is working on.
    """

    def __init__(self, hub: "HubService", consumer: Any, queue_size: int, validate: bool, strict: bool) -> None:
        self.hub = hub
        self.consumer = consumer
        # Duck typing: a class that is not a Consumer subclass works too.
        self.name = getattr(consumer, "name", None) or type(consumer).__name__
        topics = getattr(consumer, "topics", None)
        self.prefixes = topics() if callable(topics) else normalize_topics(getattr(consumer, "topic", "*"), self.name)
        self.size = queue_size
        self.validate = validate
        self.strict = strict
        self.queue: deque[dict] = deque()
        self.busy = False
        self._idle: list[defer.Deferred] = []

    def matches(self, topic: str) -> bool:
        if self.strict:
            return any(p == "" or p == topic for p in self.prefixes)
        return any(topic.startswith(p) for p in self.prefixes)

    def put(self, message: dict) -> None:
        if len(self.queue) >= self.size:
            self.queue.popleft()
            self.hub.counters.incr("consumer_dropped", self.name)
            n = self.hub.counters.get("consumer_dropped", self.name)
            if n == 1 or n % 1000 == 0:
                log.warn("Consumer {c} is behind: dropped {n} messages so far (queue of {size} full)", c=self.name, n=n, size=self.size)
        self.queue.append(message)
        if not self.busy:
            self._next()

    def _next(self) -> None:
        # A loop, not recursion: synchronous consumers finish at once.
        while self.queue:
            self.busy = True
            d = self._run(self.queue.popleft())
            if not d.called:
                d.addBoth(lambda _: self._next())
                return
        self.busy = False
        waiters, self._idle = self._idle, []
        for w in waiters:
            if not w.called:  # cancelled by a shutdown timeout
                w.callback(None)

    def _run(self, message: dict) -> defer.Deferred:
        if self.validate:
            d = defer.maybeDeferred(self.hub.validator.validate_async, message["body"])
            d.addCallback(self._validated, message)
        else:
            d = defer.maybeDeferred(self.consumer.consume, message)
            d.addCallback(self._consumed)
        d.addErrback(self._failed, message)
        return d

    def _validated(self, verdict: Any, message: dict) -> Any:
        if not verdict.ok:
            self.hub.counters.incr("rejected", verdict.reason or "invalid")
            log.warn(
                "Rejected {topic} for {c}: {reason} (signer {signer})",
                topic=message["topic"],
                c=self.name,
                reason=verdict.reason,
                signer=getattr(verdict, "signer", None),
            )
            return None
        d = defer.maybeDeferred(self.consumer.consume, message)
        d.addCallback(self._consumed)
        return d

    def _consumed(self, _: Any) -> None:
        self.hub.counters.incr("consumed", self.name)

    def _failed(self, failure: Any, message: dict) -> None:
        self.hub.counters.incr("consumer_errors", self.name)
        log.failure("Consumer {c} failed on {topic}", failure, LogLevel.error, c=self.name, topic=message["topic"])

    def idle(self) -> defer.Deferred:
        """
        Fires when the queue is empty and nothing is in flight.
        """
        if not self.busy and not self.queue:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def discard(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        return n


class HubService(Service):
    """
    Runs consumers on every message of the site's bus.

    @param consumers: consumer classes (called with C{(config, hub)}) or
        instances.
    @param validator: an object with C{validate_async(envelope)}; needed when
        a consumer validates signatures.
    @param stop_validator: call C{validator.stop()} when the hub stops (the
        hub made it).
    @ivar counters: C{received}, C{delivered}, C{dropped} by reason (from
        the subscriber), C{messages_in} by topic prefix, and per consumer
        C{consumed}, C{consumer_errors}, C{consumer_dropped}; C{rejected}.
    @ivar subscriber: the L{TrackedSubscriberService} feeding the hub.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        consumers: Iterable[Any],
        *,
        validator: Any = None,
        stop_validator: bool = False,
        queue_size: int | None = None,
        shutdown_timeout: float | None = None,
        endpoints: Mapping[str, Iterable[str]] | None = None,
        reactor: Any = None,
        factory: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.config = config
        self._reactor = reactor
        self.counters = Counters()
        self.validator = validator
        self._stop_validator = stop_validator
        qsize = _positive_int(
            queue_size if queue_size is not None else config.get("hub_queue_size", DEFAULT_QUEUE_SIZE),
            "hub_queue_size",
        )
        self.shutdown_timeout = _seconds(
            shutdown_timeout if shutdown_timeout is not None else config.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT),
            "shutdown_timeout",
        )
        self.workers: list[_Worker] = []
        default_validate = bool(config.get("validate_signatures", False))
        strict = bool(config.get("zmq_strict", False))
        for c in consumers:
            instance = c(config, self) if isinstance(c, type) else c
            if not callable(getattr(instance, "consume", None)):
                raise ConsumerError(f"{instance!r} has no consume(message) method")
            validate = getattr(instance, "validate_signatures", None)
            validate = default_validate if validate is None else bool(validate)
            if validate and validator is None:
                raise ConsumerError(
                    f"consumer {getattr(instance, 'name', type(instance).__name__)} validates signatures but the hub has no validator "
                    "(set the crypto keys: ca_cert_location, crypto_validate_backends, ...)"
                )
            size = getattr(instance, "queue_size", None)
            size = size if size is not None else qsize
            size = _positive_int(size, f"consumer {getattr(instance, 'name', type(instance).__name__)} queue_size")
            self.workers.append(_Worker(self, instance, size, validate, strict))
        if not self.workers:
            raise ConsumerError(
                f"no consumers: name one with --consumer module:Class or install one under the "
                f"{ENTRY_POINT_GROUP!r} entry point group"
            )
        names = [w.name for w in self.workers]
        if len(set(names)) != len(names):
            raise ConsumerError(f"consumer names must be unique; got {names}")
        prefixes = {p for w in self.workers for p in w.prefixes}
        topics = ("",) if "" in prefixes else tuple(sorted(prefixes))
        self.subscriber = TrackedSubscriberService(
            config, self._dispatch, topics, endpoints=endpoints, reactor=reactor, factory=factory
        )
        self.subscriber.counters = self.counters
        self._topics = TopicCounter(self.counters, topic_depth(config))
        self._stopping: defer.Deferred | None = None

    @property
    def last_message_at(self) -> float | None:
        return self.subscriber.last_message_at

    def startService(self) -> None:
        self.subscriber.startService()
        super().startService()
        log.info(
            "Hub running {n} consumers: {names}",
            n=len(self.workers),
            names=", ".join(f"{w.name} {list(w.prefixes)!r}" for w in self.workers),
        )

    def stopService(self) -> defer.Deferred:
        if self._stopping is not None:
            return self._stopping
        super().stopService()
        self._stopping = defer.Deferred.fromCoroutine(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self.subscriber.running:
            await self.subscriber.stopService()
        pending = sum(len(w.queue) + w.busy for w in self.workers)
        if pending:
            log.info("Draining {n} queued messages (at most {s}s)", n=pending, s=self.shutdown_timeout)
        drained = defer.DeferredList([w.idle() for w in self.workers], consumeErrors=True)
        timer = self._reactor.callLater(self.shutdown_timeout, drained.cancel)
        try:
            await drained
        except defer.CancelledError:
            pass
        finally:
            if timer.active():
                timer.cancel()
        for w in self.workers:
            left = w.discard()
            if left or w.busy:
                self.counters.incr("dropped", "shutdown", left)
                self.counters.incr("consumer_dropped", w.name, left)
                log.warn(
                    "Consumer {c} did not finish in {s}s: {n} queued messages dropped{busy}",
                    c=w.name,
                    s=self.shutdown_timeout,
                    n=left,
                    busy=" (one still in progress)" if w.busy else "",
                )
        for w in self.workers:
            stop = getattr(w.consumer, "stop", None)
            if stop is None:
                continue
            try:
                await defer.maybeDeferred(stop).addTimeout(max(self.shutdown_timeout, 0.001), self._reactor)
            except defer.TimeoutError:
                log.warn("Consumer {c} did not stop within {s}s; going on", c=w.name, s=self.shutdown_timeout)
            except Exception:
                log.failure("Consumer {c} failed to stop", c=w.name)
        if self._stop_validator and hasattr(self.validator, "stop"):
            self.validator.stop()

    # -- delivery -----------------------------------------------------------------

    def _dispatch(self, name: str, endpoint: str, topic: str, envelope: dict) -> None:
        self._topics.count("messages_in", topic)
        targets = [w for w in self.workers if w.matches(topic)]
        for i, w in enumerate(targets):
            # Each consumer gets its own copy: one that mutates cannot harm another.
            body = envelope if i == len(targets) - 1 else copy.deepcopy(envelope)
            w.put({"topic": topic, "body": body, "name": name, "endpoint": endpoint})


class HubHealth(SubscriberHealth):
    """
    The hub as a health component: its subscriber's readiness, plus queue gauges.
    """

    def __init__(self, hub: HubService, name: str = "hub", window: float = 0.0, reactor: Any = None) -> None:
        super().__init__(hub.subscriber, name, window, reactor)
        self.hub = hub

    def is_live(self) -> bool:
        return bool(self.hub.running)

    def is_ready(self) -> bool:
        return bool(self.hub.running) and super().is_ready()

    def gauges(self) -> dict[str, Any]:
        g = super().gauges()
        g["queue_depth"] = {w.name: len(w.queue) for w in self.hub.workers}
        g["in_flight"] = {w.name: int(w.busy) for w in self.hub.workers}
        return g

