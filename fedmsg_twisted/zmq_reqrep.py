# -*- test-case-name: tests.test_replay -*-
"""
REQ/REP glue over txZMQ, for the replay endpoint and its client.

This and L{fedmsg_twisted.zmq} are the only modules that import txzmq
(importing it installs the default reactor), so import this module lazily:
from C{startService} or from inside a function.

txZMQ's "REP" is a ROUTER and its "REQ" a DEALER, which lets one socket have
many requests in flight; on the wire they are compatible with plain zmq REQ
and REP peers such as fedmsg's C{get_replay} and C{ReplayContext}.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import zmq
from twisted.internet import defer
from twisted.logger import Logger
from txzmq import (
    ZmqEndpoint,
    ZmqEndpointType,
    ZmqFactory,
    ZmqREPConnection,
    ZmqREQConnection,
    ZmqRequestTimeoutError,
)

__all__ = [
    "RepConnection",
    "RequestTimeout",
    "bind_rep",
    "default_factory",
    "request",
]

log = Logger(namespace="fedmsg_twisted.zmq_reqrep")

RequestTimeout = ZmqRequestTimeoutError

_factory: ZmqFactory | None = None


def default_factory() -> ZmqFactory:
    """
    The process's shared txZMQ factory: the one from L{fedmsg_twisted.zmq}
    when that module offers C{shared_factory()}, else one created here on
    first use and shut down with the reactor.
    """
    global _factory
    try:
        from fedmsg_twisted.zmq import shared_factory  # type: ignore[attr-defined]
    except ImportError:
        shared_factory = None
    if shared_factory is not None:
        return shared_factory()
    if _factory is None or _factory.context is None:
        _factory = ZmqFactory()
        _factory.registerForShutdown()
    return _factory


class RepConnection(ZmqREPConnection):
    """
    A reply socket that hands each request's frames to C{handler} and sends
    back the frames it returns (or the Deferred of them).

    Malformed envelopes (no empty delimiter frame) are counted and dropped;
    a reply for a peer that went away, or after shutdown, is dropped too.
    """

    def __init__(
        self,
        factory: ZmqFactory,
        handler: Callable[[list[bytes]], Any],
        counters: Counter[str] | None = None,
        error_reply: list[bytes] | None = None,
    ) -> None:
        self.handler = handler
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.error_reply = error_reply
        super().__init__(factory)

    def messageReceived(self, message: list[bytes]) -> None:
        try:
            i = message.index(b"")
        except ValueError:
            i = 0
        if i == 0:
            self.counters["malformed_envelope"] += 1
            log.warn("Dropped a request with no REQ envelope ({n} frames)", n=len(message))
            return
        routing, msg_id, payload = message[: i - 1], message[i - 1], message[i + 1 :]
        self._routingInfo[msg_id] = routing
        self.gotMessage(msg_id, *payload)

    def gotMessage(self, messageId: bytes, *messageParts: bytes) -> None:
        d = defer.maybeDeferred(self.handler, list(messageParts))
        d.addCallback(lambda frames: self._reply(messageId, frames))
        d.addErrback(self._failed, messageId)

    def _failed(self, f: Any, messageId: bytes) -> None:
        # A REQ peer waits for a reply forever: send error_reply if we have one.
        self.counters["handler_failed"] += 1
        log.failure("Request handler failed", f)
        if self.error_reply is not None:
            self._reply(messageId, self.error_reply)
        else:
            self._routingInfo.pop(messageId, None)

    def _reply(self, messageId: bytes, frames: list[bytes]) -> None:
        if self.socket is None:  # shut down while the handler ran
            self.counters["reply_after_close"] += 1
            return
        try:
            self.reply(messageId, *frames)
        except zmq.ZMQError as e:
            self.counters["reply_failed"] += 1
            log.warn("Could not send a reply: {error}", error=e)
        else:
            self.counters["replies"] += 1


def bind_rep(
    factory: ZmqFactory,
    address: str,
    handler: Callable[[list[bytes]], Any],
    counters: Counter[str] | None = None,
    error_reply: list[bytes] | None = None,
) -> RepConnection:
    """
    A L{RepConnection} bound to C{address}.  C{error_reply} is sent when the
    handler fails.

    @raise OSError: naming the address when it cannot be bound.
    """
    conn = RepConnection(factory, handler, counters, error_reply)
    try:
        conn.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, address)])
    except zmq.ZMQError as e:
        conn.shutdown()
        raise OSError(f"cannot bind {address}: {e}") from None
    return conn


def request(
    factory: ZmqFactory, address: str, frames: list[bytes], timeout: float
) -> defer.Deferred:
    """
    One request on a fresh connection to C{address}; fires with the reply
    frames, or fails with L{RequestTimeout} after C{timeout} seconds.  The
    socket is closed either way, without lingering.
    """
    conn = ZmqREQConnection(factory)
    conn.socket.set(zmq.LINGER, 0)
    try:
        conn.addEndpoints([ZmqEndpoint(ZmqEndpointType.connect, address)])
    except zmq.ZMQError as e:
        conn.shutdown()
        return defer.fail(OSError(f"cannot connect to {address}: {e}"))
    d = conn.sendMsg(*frames, timeout=timeout)

    def close(result: Any) -> Any:
        if conn.socket is not None:
            conn.shutdown()
        return result

    return d.addBoth(close)
