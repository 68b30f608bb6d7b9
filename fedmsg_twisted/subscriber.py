# -*- test-case-name: tests.test_subscriber -*-
"""
The subscriber service: connect to every endpoint, hand each valid message to
the application.

One SUB socket per address (as fedmsg does), so every message is known to come
from one C{(name, endpoint)}.  Frames are checked before anything else sees
them: a garbled or malicious message is dropped, counted by reason and logged,
and the next one is delivered.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from fedmsg_twisted import encoding, heal
from fedmsg_twisted.stats import Counters

log = Logger(namespace="fedmsg_twisted.subscriber")

__all__ = ["SubscriberService", "subscription_endpoints"]

Callback = Callable[[str, str, str, dict], Any]

_HEARTBEAT_SUFFIX = heal.HEARTBEAT_SUFFIX


def subscription_endpoints(config: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """
    Every C{(name, addresses)} a subscriber connects to: C{endpoints} without
    C{relay_inbound}, which is where publishers send, not where they listen.
    """
    return {n: tuple(a) for n, a in config["endpoints"].items() if n != "relay_inbound"}


class SubscriberService(Service):
    """
    Calls C{callback(name, endpoint, topic, msg)} for every message received.

    @param topics: topic prefixes to subscribe to (C{""} = everything).
    @param validator: a L{fedmsg_twisted.crypto.Validator} (or any object
        with C{validate_async(envelope)} returning a Deferred of a verdict
        with C{ok}, C{reason}, C{signer}); invalid messages are dropped and
        counted.  Made from the config when C{validate_signatures} is on.
    @param endpoints: C{{name: [address, ...]}}; defaults to the config's.
    @ivar counters: C{received}, C{delivered}, C{dropped} by reason,
        C{rejected} by reason, C{callback-errors}.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        callback: Callback,
        topics: str | Iterable[str] = ("",),
        *,
        validator: Any = None,
        endpoints: Mapping[str, Iterable[str]] | None = None,
        reactor: Any = None,
        factory: Any = None,
        since: tuple[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.callback = callback
        self.topics = (topics,) if isinstance(topics, str) else tuple(topics) or ("",)
        self.validator = validator
        self._endpoints = {
            n: tuple(a) for n, a in (endpoints if endpoints is not None else subscription_endpoints(config)).items()
        }
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self._reactor = reactor
        self._factory = factory
        self._sockets: dict[tuple[str, str], Any] = {}
        self._max_size = config["max_message_size"]
        self._pending: defer.Deferred | None = None
        self.counters = Counters()
        self.last_message_at: float | None = None
        self.max_size = self._max_size
        # Read once (the config is read-only), not for every message:
        # with zmq_strict, the exact topics delivered (None: any).
        self._strict_topics: frozenset[str] | None = (
            frozenset(self.topics) if config["zmq_strict"] and "" not in self.topics else None
        )
        #: Gap healing from relay archives (L{fedmsg_twisted.heal}), unless
        #: the config's C{heal} is off.
        self.healer: Any = None
        if config.get("heal", True):
            from fedmsg_twisted.heal import Healer

            self.healer = Healer(self, config, self.topics, since=since)
        self._socket_topics = self.topics
        if self.healer is not None:
            from fedmsg_twisted.heal import heartbeat_topic

            hb = heartbeat_topic(config)
            if not any(hb.startswith(t) for t in self.topics):
                self._socket_topics = self.topics + (hb,)

    # -- IService -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.validator is None and self.config["validate_signatures"]:
            from fedmsg_twisted.crypto import Validator

            self.validator = Validator.from_config(self.config)
        if self.validator is not None and hasattr(self.validator, "start"):
            self.validator.start().addErrback(
                lambda f: log.failure("Could not load the CA or CRL", f)
            )
        if self.healer is not None:
            self.healer.start(self._reactor)
        for name, addresses in self._endpoints.items():
            for address in addresses:
                self._connect(name, address)
        log.info(
            "Subscribed to {topics!r} on {n} endpoints",
            topics=self.topics,
            n=len(self._sockets),
        )

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self.validator is not None and hasattr(self.validator, "stop"):
            self.validator.stop()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        waits = []
        if self.healer is not None:
            waits.append(self.healer.stop())
        pending, self._pending = self._pending, None
        if pending is not None:
            waits.append(pending)
        if not waits:
            return defer.succeed(None)
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- endpoints that change at run time (DNS discovery) -----------------------

    def add_endpoint(self, name: str, address: str) -> None:
        self._endpoints[name] = tuple(dict.fromkeys(self._endpoints.get(name, ()) + (address,)))
        if self.running:
            self._connect(name, address)

    def remove_endpoint(self, name: str, address: str) -> None:
        self._endpoints[name] = tuple(a for a in self._endpoints.get(name, ()) if a != address)
        sock = self._sockets.pop((name, address), None)
        if sock is not None:
            sock.close()

    def endpoints(self) -> dict[str, tuple[str, ...]]:
        return dict(self._endpoints)

    def _new_socket(self, name: str, address: str) -> Any:
        """
        A SUB socket (not connected yet) that hands what it reads from
        C{address} to L{frames_received}, subscribed to our topics plus the
        relay heartbeats gap healing needs.
        """
        from fedmsg_twisted import zmq as fzmq

        return fzmq.SubSocket(
            self._factory or fzmq.shared_factory(self.config["io_threads"]),
            partial(self.frames_received, name, address),  # no Python frame of its own
            self._socket_topics,
            fzmq.subscriber_options(self.config),
        )

    def _connect(self, name: str, address: str) -> None:
        if (name, address) in self._sockets:
            return
        sock = self._new_socket(name, address)
        try:
            sock.connect(address)
        except Exception as e:
            sock.close()
            self.counters.incr("connect-errors")
            log.error("Cannot connect to {name} at {address}: {error}", name=name, address=address, error=e)
            return
        self._sockets[(name, address)] = sock

    # -- receiving --------------------------------------------------------------

    def check_frames(
        self, name: str, endpoint: str, frames: list[bytes], counters: Counters | None = None
    ) -> tuple[str, dict] | None:
        """
        Count one raw zmq message and check it: C{(topic, envelope)}, or
        None when it is malformed (then counted by reason and logged).

        @param counters: where to count (default: this subscriber's).
        """
        counters = counters if counters is not None else self.counters
        counters.incr("received")
        try:
            return encoding.parse_frames(frames, self._max_size)
        except encoding.DecodeError as e:
            counters.incr("dropped", e.reason)
            log.warn(
                "Dropped a malformed message from {name} {endpoint}: {reason} ({detail})",
                name=name,
                endpoint=endpoint,
                reason=e.reason,
                detail=e.detail[:200],
            )
            return None

    def frames_received(self, name: str, endpoint: str, frames: list[bytes]) -> None:
        """
        Check one raw zmq message and deliver it.  Never raises.

        This runs for every message: what it needs is read once in
        C{__init__}, healing is one call (L{heal.Healer.live}).
        """
        checked = self.check_frames(name, endpoint, frames)
        if checked is None:
            return
        topic, envelope = checked
        if topic.endswith(_HEARTBEAT_SUFFIX):  # heal.is_heartbeat, inline
            # The relay's own signal, never the application's.
            self.counters.incr("heartbeats")
            if self.healer is not None:
                self.healer.heartbeat(name, endpoint, envelope)
            return
        if self._strict_topics is not None and topic not in self._strict_topics:
            self.counters.incr("dropped", "not-subscribed")
            return
        self.last_message_at = self._reactor.seconds()
        if self.validator is None and self._pending is None:
            # Delivered now (only validation makes it wait): the healer
            # drops a duplicate and records the delivery in the same call.
            if self.healer is None or self.healer.live(name, endpoint, topic, envelope, True):
                self._call(name, endpoint, topic, envelope)
            return
        # With a validator, a forged copy of a delivered message must still
        # be rejected (and counted as such): dedup after validation.
        if self.healer is None or self.healer.live(name, endpoint, topic, envelope, False):
            self.deliver_live(name, endpoint, topic, envelope)

    def deliver_live(self, name: str, endpoint: str, topic: str, envelope: dict) -> None:
        """
        Validate and deliver one message, in order of arrival.
        """
        if self._pending is None:
            if self.validator is None:
                self._deliver(name, endpoint, topic, envelope)
                return
            # x509 validates synchronously (one RSA verify): no Deferred.
            verdict = self._validate_now(envelope)
            if verdict is not None:
                self._after_validation(verdict, name, endpoint, topic, envelope)
                return
        # Validation runs in a thread (gpg), or earlier messages still wait
        # for theirs: chain, so that delivery keeps the order of arrival.
        d = self._pending if self._pending is not None else defer.succeed(None)
        d.addCallback(lambda _: self._validate(envelope))
        d.addCallback(self._after_validation, name, endpoint, topic, envelope)
        d.addErrback(lambda f: log.failure("Validation failed unexpectedly", f))
        self._pending = d

        def done(result: Any, d: defer.Deferred = d) -> Any:
            if self._pending is d:
                self._pending = None
            return result

        d.addBoth(done)

    def deliver_healed(self, name: str, endpoint: str, topic: str, envelope: dict) -> defer.Deferred:
        """
        Validate and deliver a message fetched from an archive; fires once
        it has been handed to the application (or rejected).
        """
        if self._strict_topics is not None and topic not in self._strict_topics:
            return defer.succeed(None)
        verdict = self._validate_now(envelope) if self.validator is not None else None
        if self.validator is None or verdict is not None:
            self._after_validation(verdict, name, endpoint, topic, envelope)
            return defer.succeed(None)
        d = defer.maybeDeferred(self._validate, envelope)
        d.addCallback(self._after_validation, name, endpoint, topic, envelope)
        d.addErrback(lambda f: log.failure("Validation failed unexpectedly", f))
        return d

    def _validate_now(self, envelope: dict) -> Any:
        """
        The verdict, if it can be had without waiting; else None.
        """
        validate = getattr(self.validator, "validate", None)
        if validate is None:
            return None
        try:
            return validate(envelope)
        except TypeError:  # crypto.AsyncRequired: gpg must run in a thread
            return None

    def _validate(self, envelope: dict) -> Any:
        if self.validator is None:
            return None
        return self.validator.validate_async(envelope)

    def _after_validation(self, verdict: Any, name: str, endpoint: str, topic: str, envelope: dict) -> None:
        if verdict is not None and not verdict.ok:
            self.counters.incr("rejected", verdict.reason or "invalid")
            log.warn(
                "Rejected {topic} from {name}: {reason} (signer {signer})",
                topic=topic,
                name=name,
                reason=verdict.reason,
                signer=getattr(verdict, "signer", None),
            )
            return
        self._deliver(name, endpoint, topic, envelope)

    def _deliver(self, name: str, endpoint: str, topic: str, envelope: dict) -> None:
        if self.healer is not None and not self.healer.first_delivery(envelope):
            return
        self._call(name, endpoint, topic, envelope)

    def _call(self, name: str, endpoint: str, topic: str, envelope: dict) -> None:
        """
        Hand a message (no duplicate: checked and recorded) to the application.
        """
        self.counters.incr("delivered")
        healer = self.healer
        try:
            result = self.callback(name, endpoint, topic, envelope)
        except Exception:
            self.counters.incr("callback-errors")
            log.failure("Message callback raised for {topic}", topic=topic)
            if healer is not None:
                healer.processed(envelope)  # it is not delivered again either
            return
        # "is not None" first: Deferred's isinstance goes through ABCMeta.
        if result is not None and isinstance(result, defer.Deferred):
            # Recorded once the callback's work is done (docs/healing.rst:
            # at least once across a kill -9, never lost).
            if healer is not None:
                healer.callback_started()
            result.addErrback(self._callback_failed, topic)
            if healer is not None:
                result.addBoth(lambda _: healer.callback_ended(envelope))
        elif healer is not None and healer.journal is not None:  # else processed() does nothing
            healer.processed(envelope)

    def _callback_failed(self, failure: Any, topic: str) -> None:
        self.counters.incr("callback-errors")
        log.failure("Message callback failed for {topic}", failure, topic=topic)
