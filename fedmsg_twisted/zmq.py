# -*- test-case-name: tests.test_zmq -*-
"""
The only module that touches txZMQ: sockets in the reactor, fedmsg framing.

Importing txzmq installs the default reactor, so this module is imported
lazily, from C{startService}, never at import time of anything a plugin or
an embedding application loads first.

What we add to txZMQ:
  - frames are always C{[topic, body]}, sent frame by frame without blocking;
  - reads drain in batches (the zmq FD is edge-triggered) and hand raw frames
    to a callback, which checks them, one message at a time or (C{batch=True})
    a list of messages per reactor turn; txZMQ's own C{gotMessage} would raise
    on a three-frame message;
  - publishers are XPUB sockets, so they I{see} subscriptions arrive: this is
    how we beat the slow-joiner problem without a fixed sleep;
  - fedmsg's socket options, with C{high_water_mark = 0} meaning unlimited as
    fedmsg documented.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import zmq as _zmq
from twisted.logger import Logger
from txzmq import ZmqConnection, ZmqEndpoint, ZmqEndpointType, ZmqFactory
from zmq.backend import Socket as _SocketBase

log = Logger(namespace="fedmsg_twisted.zmq")

__all__ = [
    "BindError",
    "shared_factory",
    "PubSocket",
    "SubSocket",
    "bind_first",
]

#: Messages read per reactor turn before yielding to other work.
READ_BATCH = 256

# Plain ints: pyzmq's enum flags cost a Flag object per call on the hot path.
_NOBLOCK = int(_zmq.NOBLOCK)
_MORE_NOBLOCK = int(_zmq.NOBLOCK | _zmq.SNDMORE)

# The hot path calls pyzmq's backend socket methods (pyzmq's Socket is a
# subclass): its Socket.send is a Python wrapper (routing ids, groups), and
# getsockopt(RCVMORE) builds an enum per call, while recv(copy=False) returns
# a Frame whose ``more`` the backend has already read.
if issubclass(_zmq.Socket, _SocketBase):
    _send, _recv = _SocketBase.send, _SocketBase.recv
else:  # pragma: no cover - a pyzmq laid out differently
    _send, _recv = _zmq.Socket.send, _zmq.Socket.recv

_factory: ZmqFactory | None = None


class BindError(RuntimeError):
    """
    None of a socket's addresses could be bound.
    """


def shared_factory(io_threads: int = 1) -> ZmqFactory:
    """
    The process's one txZMQ factory (one zmq context), made on first use.

    It is made lazily so that it never exists before twistd forks.
    """
    global _factory
    if _factory is None or _factory.context is None or _factory.context.closed:
        factory = ZmqFactory.__new__(ZmqFactory)
        factory.ioThreads = io_threads
        ZmqFactory.__init__(factory)
        factory.registerForShutdown()
        _factory = factory
    return _factory


def _options(config: Mapping[str, Any], *, linger: int, subscriber: bool) -> list[tuple[int, int]]:
    opts = [
        (_zmq.SNDHWM, config["high_water_mark"]),
        (_zmq.RCVHWM, config["high_water_mark"]),
        (_zmq.LINGER, linger),
    ]
    for key, opt in (
        ("zmq_tcp_keepalive", _zmq.TCP_KEEPALIVE),
        ("zmq_tcp_keepalive_cnt", _zmq.TCP_KEEPALIVE_CNT),
        ("zmq_tcp_keepalive_idle", _zmq.TCP_KEEPALIVE_IDLE),
        ("zmq_tcp_keepalive_intvl", _zmq.TCP_KEEPALIVE_INTVL),
    ):
        if config.get(key) is not None:
            opts.append((opt, config[key]))
    if subscriber:
        opts.append((_zmq.RECONNECT_IVL, config["zmq_reconnect_ivl"]))
        opts.append((_zmq.RECONNECT_IVL_MAX, config["zmq_reconnect_ivl_max"]))
    return opts


class _Socket(ZmqConnection):
    """
    A txZMQ connection that reads in batches and hands raw frames on.

    With C{batch=True}, C{on_frames} gets a list of messages (each a list of
    frames, in order) per read instead of one message per call.
    """

    def __init__(
        self,
        factory: ZmqFactory,
        socket_type: int,
        on_frames: Callable[[list[bytes]], None] | Callable[[list[list[bytes]]], None],
        options: Iterable[tuple[int, int]] = (),
        *,
        batch: bool = False,
    ) -> None:
        self.socketType = socket_type
        self._on_frames = on_frames
        self._batch = batch
        self._options = list(options)
        super().__init__(factory)
        for opt, value in self._options:
            self.socket.setsockopt(opt, value)

    def doRead(self) -> None:
        if self.read_scheduled is not None:
            if not self.read_scheduled.called:
                self.read_scheduled.cancel()
            self.read_scheduled = None
        if self.factory is None:  # closed
            return
        messages, drained = self._read_messages()
        on_frames = self._on_frames
        if self._batch:
            if messages:
                try:
                    on_frames(messages)
                except Exception:
                    log.failure("Unexpected error handling zmq messages on {sock!r}", sock=self)
        else:
            for frames in messages:
                if self.factory is None:  # shut down by a callback
                    return
                try:
                    on_frames(frames)
                except Exception:
                    log.failure("Unexpected error handling a zmq message on {sock!r}", sock=self)
        if not drained:
            # More may be waiting and the edge-triggered FD will not tell us again.
            self._schedule_read()

    def _read_messages(self) -> tuple[list[list[bytes]], bool]:
        """
        Up to L{READ_BATCH} waiting messages, and whether that emptied the
        socket.
        """
        sock, recv = self.socket, _recv
        messages: list[list[bytes]] = []
        append = messages.append
        for _ in range(READ_BATCH):
            try:
                frame = recv(sock, _NOBLOCK, False)
            except _zmq.Again:
                return messages, True
            # zmq hands over a multipart message whole: the rest is there.
            frames = [frame.bytes]
            while frame.more:
                frame = recv(sock, _NOBLOCK, False)
                frames.append(frame.bytes)
            append(frames)
        return messages, False

    def _schedule_read(self) -> None:
        if self.read_scheduled is None and self.factory is not None:
            self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

    def send_frames(self, frames: list[bytes]) -> bool:
        """
        Send one multipart message without blocking.

        @return: False if zmq refused it (high-water mark reached).
        """
        return not self.send_many((frames,))

    def send_many(self, messages: Iterable[list[bytes]]) -> int:
        """
        Send multipart messages in order without blocking.

        @return: how many zmq refused (high-water mark reached).
        """
        sock, send = self.socket, _send
        refused = 0
        for frames in messages:
            try:
                if len(frames) == 2:
                    # zmq takes a multipart message whole or not at all:
                    # once the first part is queued, the last one is too.
                    send(sock, frames[0], _MORE_NOBLOCK)
                    send(sock, frames[1], _NOBLOCK)
                else:
                    sock.send_multipart(frames, _NOBLOCK)
            except _zmq.Again:
                refused += 1
        if self.read_scheduled is None:
            self._schedule_read()
        return refused

    def bound_address(self) -> str:
        return self.socket.getsockopt(_zmq.LAST_ENDPOINT).decode()

    def close(self) -> None:
        """
        Close the socket; safe to call twice.
        """
        if self.factory is not None:
            self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {[e.address for e in self.endpoints]}>"


class PubSocket(_Socket):
    """
    A publisher (XPUB) that tracks which topic prefixes are subscribed.

    @ivar subscriptions: the prefixes at least one peer subscribes to.
    """

    def __init__(
        self,
        factory: ZmqFactory,
        options: Iterable[tuple[int, int]] = (),
        on_subscription: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        self.subscriptions: set[bytes] = set()
        self._on_subscription = on_subscription
        super().__init__(factory, _zmq.XPUB, self._subscription_frames, options)

    def _subscription_frames(self, frames: list[bytes]) -> None:
        frame = frames[0]
        if not frame:
            return
        prefix, subscribe = frame[1:], frame[0] == 1
        if subscribe:
            self.subscriptions.add(prefix)
        else:
            self.subscriptions.discard(prefix)
        if self._on_subscription is not None:
            self._on_subscription(prefix, subscribe)

    def has_subscriber(self, topic: bytes | None = None) -> bool:
        """
        Does any peer subscribe (to C{topic}, if given)?
        """
        if topic is None:
            return bool(self.subscriptions)
        return any(topic.startswith(p) for p in self.subscriptions)


class SubSocket(_Socket):
    """
    A subscriber (SUB) for a list of topic prefixes.
    """

    def __init__(
        self,
        factory: ZmqFactory,
        on_frames: Callable[[list[bytes]], None] | Callable[[list[list[bytes]]], None],
        topics: Iterable[str] = ("",),
        options: Iterable[tuple[int, int]] = (),
        *,
        batch: bool = False,
    ) -> None:
        super().__init__(factory, _zmq.SUB, on_frames, options, batch=batch)
        for t in topics:
            self.socket.setsockopt(_zmq.SUBSCRIBE, t.encode("utf-8"))

    def connect(self, address: str) -> None:
        self.addEndpoints([ZmqEndpoint(ZmqEndpointType.connect, address)])
        self._schedule_read()

    def bind(self, address: str) -> str:
        self.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, address)])
        self._schedule_read()
        return self.bound_address()

    def disconnect(self, address: str) -> None:
        try:
            self.socket.disconnect(address)
        except _zmq.ZMQError:
            pass
        self.endpoints = [e for e in self.endpoints if e.address != address]


def publisher_options(config: Mapping[str, Any]) -> list[tuple[int, int]]:
    return _options(config, linger=config["zmq_linger"], subscriber=False)


def subscriber_options(config: Mapping[str, Any]) -> list[tuple[int, int]]:
    return _options(config, linger=0, subscriber=True)


def _bind_address(address: str, all_interfaces: bool) -> str:
    if all_interfaces and address.startswith("tcp://"):
        return "tcp://*:" + address.rsplit(":", 1)[1]
    return address


def bind_first(sock: _Socket, addresses: Iterable[str], all_interfaces: bool = False) -> str:
    """
    Bind the first address that is free, as fedmsg does for passive sockets.

    @return: the address actually bound (with a real port for C{:*}).
    @raise BindError: naming every address and why it failed.
    """
    failures = []
    for address in addresses:
        target = _bind_address(address, all_interfaces)
        try:
            sock.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, target)])
        except _zmq.ZMQError as e:
            sock.endpoints = [e2 for e2 in sock.endpoints if e2.address != target]
            failures.append(f"{target}: {e.strerror}")
            continue
        sock._schedule_read()
        return sock.bound_address()
    raise BindError("could not bind any of " + "; ".join(failures or ["(no addresses)"]))


def bind_all(sock: _Socket, addresses: Iterable[str], all_interfaces: bool = False) -> list[str]:
    """
    Bind every address (the relay's inbound side); all or nothing.

    @raise BindError: naming the address that failed.
    """
    bound = []
    for address in addresses:
        target = _bind_address(address, all_interfaces)
        try:
            sock.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, target)])
        except _zmq.ZMQError as e:
            raise BindError(f"could not bind {target}: {e.strerror}") from None
        bound.append(sock.bound_address())
    sock._schedule_read()
    return bound


def connect(sock: _Socket, address: str) -> None:
    sock.addEndpoints([ZmqEndpoint(ZmqEndpointType.connect, address)])
    sock._schedule_read()
