# -*- test-case-name: tests.test_bus,tests.test_fastcheck -*-
"""
The relay: many publishers in, one stream out.

Active publishers (fedmsg-logger, services behind a firewall) connect to the
relay's inbound SUB sockets; subscribers connect to its outbound PUB.  Unlike
fedmsg's relay, which re-serialised every body, we forward the I{original
bytes}: a signature that was valid going in is valid coming out, byte for byte.

Every message is checked before it goes out (frames, size, JSON envelope; with
C{relay_validate}, the signature): garbage is dropped, counted and logged, and
the relay keeps going.  When nothing needs the envelope (no validation, no
sink), L{fastcheck} vouches for what it provably accepts without building it
and everything else is checked in full, so what is forwarded is the same
either way.  Extra inbound sources (the HTTPS push endpoint) call
L{RelayService.inject}; extra outbound sinks (the archive) register with
L{RelayService.add_sink}.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from fedmsg_twisted import encoding, fastcheck
from fedmsg_twisted.stats import Counters

log = Logger(namespace="fedmsg_twisted.relay")

#: The relay's own heartbeat topic ends so (L{fedmsg_twisted.heal}).
HEARTBEAT_SUFFIX = ".relay._heartbeat"

__all__ = ["RelayService"]

Sink = Callable[[str, bytes, dict], Any]


class RelayService(Service):
    """
    Binds C{relay_inbound} (SUB) and C{endpoints["relay_outbound"]} (PUB) and
    forwards what is valid, unchanged.

    @ivar counters: C{received}, C{forwarded}, C{dropped} by reason,
        C{rejected} by reason.
    @ivar inbound: the addresses bound for publishers.
    @ivar outbound: the address bound for subscribers.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        validator: Any = None,
        reactor: Any = None,
        factory: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.config = config
        self.validator = validator
        self._reactor = reactor
        self._factory = factory
        self._in = None
        self._out = None
        self._sinks: list[Sink] = []
        self._max_size = config["max_message_size"]
        # Read once: looked at for every message (the config is read-only).
        self._relay_validate = bool(config["relay_validate"])
        # Without a validator or a sink nothing needs the envelope, only the
        # verdict (fedmsg_twisted.fastcheck): see _inbound_batch.
        self._fast_check = fastcheck.FrameCheck(self._max_size).topic if fastcheck.AVAILABLE else None
        self.counters = Counters()
        self.inbound: list[str] = []
        self.outbound: str | None = None
        self.last_message_at: float | None = None

    def startService(self) -> None:
        from fedmsg_twisted import zmq as fzmq

        if self.validator is None and self.config["relay_validate"]:
            from fedmsg_twisted.crypto import Validator

            self.validator = Validator.from_config(self.config)
        outbound = self.config["endpoints"].get("relay_outbound")
        if not outbound:
            raise fzmq.BindError("endpoints has no 'relay_outbound' addresses for the relay to bind")
        factory = self._factory or fzmq.shared_factory(self.config["io_threads"])
        all_ifaces = not self.config["relay_bind_host"]
        out = fzmq.PubSocket(factory, options=outbound_options(self.config))
        inn = fzmq.SubSocket(
            factory, self._inbound_batch, ("",), fzmq.subscriber_options(self.config), batch=True
        )
        try:
            self.outbound = fzmq.bind_first(out, outbound, all_ifaces)
            self.inbound = fzmq.bind_all(inn, self.config["relay_inbound"], all_ifaces)
        except Exception:
            out.close()
            inn.close()
            raise
        self._out, self._in = out, inn
        super().startService()
        log.info(
            "Relay forwarding {inbound} -> {outbound}",
            inbound=", ".join(self.inbound),
            outbound=self.outbound,
        )

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for sock in (self._in, self._out):
            if sock is not None:
                sock.close()
        self._in = self._out = None
        return defer.succeed(None)

    def has_subscriber(self) -> bool:
        """
        Is any subscriber connected to the outbound side?
        """
        return self._out is not None and self._out.has_subscriber()

    def send_control(self, frames: list[bytes]) -> bool:
        """
        Send frames the relay makes itself (its heartbeat) on the outbound
        side: not counted as forwarded, not given to the sinks (not archived).

        @return: False when not running or zmq refused it.
        """
        if self._out is None:
            return False
        return self._out.send_frames(frames)

    def add_sink(self, sink: Sink) -> None:
        """
        Call C{sink(topic, body, envelope)} for every message forwarded.
        """
        self._sinks.append(sink)

    # -- the forwarding path -------------------------------------------------------

    def _inbound_batch(self, batch: list[list[bytes]]) -> None:
        # The hot path: the messages read from the inbound socket in one
        # reactor turn, handled in order.  Those the fast check vouches for
        # are counted and sent together; any other message is flushed
        # behind what came before it and goes the full way (_inbound_frames).
        check = self._fast_check
        if check is None or self._sinks or self._out is None or self._validating():
            for frames in batch:
                self._inbound_frames(frames)
            return
        ok: list[list[bytes]] = []
        for frames in batch:
            topic = check(frames)
            if topic is not None and not topic.endswith(HEARTBEAT_SUFFIX):
                ok.append(frames)
                continue
            if ok:
                self._forward_checked(ok)
                ok = []
            self._inbound_frames(frames)
        if ok:
            self._forward_checked(ok)

    def _forward_checked(self, messages: list[list[bytes]]) -> None:
        # Checked messages, no sink, no validation, a running outbound
        # socket (_inbound_batch made sure): what _parse and _forward would
        # count for each, counted once.
        self.counters.incr("received", "zmq", len(messages))
        self.last_message_at = self._reactor.seconds()
        self._send(messages)

    def _send(self, messages: list[list[bytes]]) -> None:
        # Out they go, counted as forwarded or dropped at the high-water mark.
        assert self._out is not None
        n = len(messages)
        refused = self._out.send_many(messages)
        if refused < n:
            self.counters.incr("forwarded", n=n - refused)
        if refused:
            self.counters.incr("dropped", "high-water-mark", refused)

    def _inbound_frames(self, frames: list[bytes]) -> None:
        # One message the full way: no Deferred unless validation needs one.
        try:
            topic, envelope = self._parse(frames, "zmq")
        except encoding.DecodeError:
            return
        if self.validator is not None and self._relay_validate:
            d = defer.maybeDeferred(self.validator.validate_async, envelope)
            d.addCallback(self._validated, topic, frames, envelope)
            d.addErrback(lambda f: f.trap(Rejected))
        else:
            self._forward(topic, frames, envelope)

    def inject(self, frames: list[bytes], source: str = "push") -> defer.Deferred:
        """
        Check one message from another source and forward it.

        @return: a Deferred firing with the envelope once forwarded, or
            failing with L{encoding.DecodeError} or L{Rejected}.
        """
        try:
            topic, envelope = self._parse(frames, source)
        except encoding.DecodeError as e:
            return defer.fail(e)
        if not self._validating():
            return defer.succeed(self._forward(topic, frames, envelope))
        d = defer.maybeDeferred(self.validator.validate_async, envelope)
        d.addCallback(self._validated, topic, frames, envelope)
        return d

    def _validating(self) -> bool:
        return self.validator is not None and self._relay_validate

    def _check(self, frames: list[bytes], source: str) -> tuple[str, dict] | None:
        try:
            return self._parse(frames, source)
        except encoding.DecodeError:
            return None

    def _parse(self, frames: list[bytes], source: str) -> tuple[str, dict]:
        self.counters.incr("received", source)
        try:
            topic, envelope = encoding.parse_frames(frames, self._max_size)
        except encoding.DecodeError as e:
            self.counters.incr("dropped", e.reason)
            log.warn(
                "Dropped a malformed message from {source}: {reason} ({detail})",
                source=source,
                reason=e.reason,
                detail=e.detail[:200],
            )
            raise
        if topic.endswith(HEARTBEAT_SUFFIX):
            # Only the relay itself speaks on its heartbeat topic: a forged
            # heartbeat could send subscribers to another replay endpoint.
            self.counters.incr("dropped", "reserved-topic")
            log.warn("Dropped a message from {source} on the relay's heartbeat topic {topic}",
                     source=source, topic=topic[:200])
            raise encoding.DecodeError("reserved-topic", topic[:200])
        self.last_message_at = self._reactor.seconds()
        return topic, envelope

    def _validated(self, verdict: Any, topic: str, frames: list[bytes], envelope: dict) -> dict:
        if not verdict.ok:
            self.counters.incr("rejected", verdict.reason or "invalid")
            log.warn(
                "Rejected {topic} at the door: {reason} (signer {signer})",
                topic=topic,
                reason=verdict.reason,
                signer=verdict.signer,
            )
            raise Rejected(verdict.reason or "invalid", verdict)
        return self._forward(topic, frames, envelope)

    def _forward(self, topic: str, frames: list[bytes], envelope: dict) -> dict:
        if self._out is None:
            self.counters.incr("dropped", "stopped")
            return envelope
        self._send([frames])
        for sink in self._sinks:
            try:
                sink(topic, frames[1], envelope)
            except Exception:
                self.counters.incr("sink-errors")
                log.failure("A relay sink failed for {topic}", topic=topic)
        return envelope


def outbound_options(config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """
    The outbound socket's options: C{relay_high_water_mark} (messages queued
    per subscriber before zmq drops for that subscriber; 0 = unlimited)
    instead of C{high_water_mark}, so a stalled subscriber costs bounded
    memory; what it misses is healed from the archive.
    """
    import zmq as _zmq

    from fedmsg_twisted import zmq as fzmq

    hwm = config.get("relay_high_water_mark", DEFAULT_OUTBOUND_HWM)
    return [
        (opt, hwm) if opt == _zmq.SNDHWM else (opt, v)
        for opt, v in fzmq.publisher_options(config)
    ]


#: Messages queued for one subscriber at most (relay_high_water_mark).
DEFAULT_OUTBOUND_HWM = 10000


class Rejected(Exception):
    """
    A message refused by validation; C{reason} is the counter label.
    """

    def __init__(self, reason: str, verdict: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.verdict = verdict
