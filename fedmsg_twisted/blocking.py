# -*- test-case-name: tests.test_blocking -*-
"""
The seed's blocking API, for scripts that have no reactor.

C{publish()} and C{tail_messages()} behave as in fedmsg, on plain pyzmq, with
two fixes: a publisher waits for a subscriber to appear (an XPUB socket sees
subscriptions) instead of sleeping blindly, and an active publisher whose
relay never appears raises instead of dropping the message silently.
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import Any, Iterator, Mapping

import zmq

from fedmsg_twisted import config as _config
from fedmsg_twisted import encoding
from fedmsg_twisted.envelope import Envelopes

__all__ = ["publish", "tail_messages", "BlockingPublisher", "PublishError"]


class PublishError(RuntimeError):
    """
    The message could not be handed to the bus.
    """


def _as_config(config: Mapping[str, Any] | None) -> _config.Config:
    if config is None:
        return _config.load()
    if isinstance(config, _config.Config):
        return config
    return _config.from_dict(config, "<keyword arguments>", strict=False)


def _apply_options(sock: zmq.Socket, config: Mapping[str, Any], linger: int) -> None:
    hwm = config["high_water_mark"]
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger)
    for key, opt in (
        ("zmq_tcp_keepalive", zmq.TCP_KEEPALIVE),
        ("zmq_tcp_keepalive_cnt", zmq.TCP_KEEPALIVE_CNT),
        ("zmq_tcp_keepalive_idle", zmq.TCP_KEEPALIVE_IDLE),
        ("zmq_tcp_keepalive_intvl", zmq.TCP_KEEPALIVE_INTVL),
    ):
        if config.get(key) is not None:
            sock.setsockopt(opt, config[key])


class BlockingPublisher:
    """
    One publisher socket for a script or thread.

    @param active: connect to C{relay_inbound} (default when the config names
        no passive endpoint) rather than bind C{endpoints[name]}.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, signer: Any = None) -> None:
        self.config = cfg = _as_config(config)
        name = cfg["name"]
        self.active = cfg["active"] or name is None or name == "relay_inbound"
        self.signer = signer
        if signer is None and cfg["sign_messages"]:
            from fedmsg_twisted.crypto import Signer

            self.signer = Signer.from_config(cfg, name=name)
        self._envelopes = Envelopes(cfg)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.XPUB)
        _apply_options(self._sock, cfg, cfg["zmq_linger"])
        self._subscriptions: set[bytes] = set()
        self._started = time.monotonic()
        if self.active:
            self.address = cfg["relay_inbound"][0]
            self._sock.connect(self.address)
        else:
            self.address = self._bind_first(cfg["endpoints"].get(name, ()))

    def _bind_first(self, addresses: tuple[str, ...]) -> str:
        errors = []
        for address in addresses:
            try:
                self._sock.bind(address)
                return self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            except zmq.ZMQError as e:
                errors.append(f"{address}: {e.strerror}")
        self._sock.close(0)
        raise PublishError("could not bind any of " + "; ".join(errors or ["(no addresses)"]))

    def _read_subscriptions(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if not self._sock.poll(max(0, int(remaining * 1000)), zmq.POLLIN):
                return
            frame = self._sock.recv()
            if frame[:1] == b"\x01":
                self._subscriptions.add(frame[1:])
            elif frame[:1] == b"\x00":
                self._subscriptions.discard(frame[1:])
            if self._subscriptions:
                # Take any further subscriptions already queued, then go.
                while self._sock.poll(0, zmq.POLLIN):
                    f = self._sock.recv()
                    (self._subscriptions.add if f[:1] == b"\x01" else self._subscriptions.discard)(f[1:])
                return

    def wait_for_subscriber(self, timeout: float) -> bool:
        """
        Block until a subscriber (the relay, in active mode) has subscribed.
        """
        self._read_subscriptions(0)
        if not self._subscriptions:
            self._read_subscriptions(timeout)
        return bool(self._subscriptions)

    def publish(self, topic: str | None = None, msg: Any = None, modname: str | None = None) -> dict:
        """
        Publish one message; return the envelope sent.

        @raise PublishError: in active mode, when no relay subscribed within
            C{timeout} seconds (the message was not sent).
        """
        envelope = self._envelopes.make(topic=topic, msg=msg, modname=modname)
        if self.signer is not None:
            sign = getattr(self.signer, "sign", None) or self.signer.sign_blocking
            envelope = sign(envelope)
        return self.publish_envelope(envelope)

    def publish_envelope(self, envelope: Mapping[str, Any]) -> dict:
        body = encoding.dumps_bytes(envelope)
        if self.active:
            if not self.wait_for_subscriber(self.config["timeout"]):
                raise PublishError(
                    f"no relay is listening at {self.address} (waited {self.config['timeout']}s); "
                    "is fedmsg-relay running?"
                )
        else:
            waited = time.monotonic() - self._started
            self.wait_for_subscriber(max(0.0, self.config["post_init_sleep"] - waited))
        self._sock.send_multipart([envelope["topic"].encode("utf-8"), body])
        return dict(envelope)

    def close(self) -> None:
        """
        Close, letting zmq flush for up to C{zmq_linger} ms.
        """
        if not self._sock.closed:
            self._sock.close()


_local = threading.local()


def _publisher(config: Mapping[str, Any] | None) -> BlockingPublisher:
    pub = getattr(_local, "publisher", None)
    if pub is None:
        pub = BlockingPublisher(config)
        _local.publisher = pub
        atexit.register(pub.close)
    return pub


def publish(topic: str | None = None, msg: Any = None, modname: str | None = None, **config: Any) -> dict:
    """
    fedmsg's C{publish}: one socket per thread, made on first use from the
    config (keyword arguments, or the loaded config when none are given).
    """
    return _publisher(config or None).publish(topic=topic, msg=msg, modname=modname)


def _valid(validator: Any, envelope: dict) -> bool:
    from fedmsg_twisted.crypto import AsyncRequired

    try:
        return validator.validate(envelope).ok
    except AsyncRequired:  # gpg: no reactor here, so run it in this thread
        return validator.gpg.validate_blocking(envelope).ok


def tail_messages(topic: str = "", **config: Any) -> Iterator[tuple[str, str, str, dict]]:
    """
    Yield C{(name, endpoint, topic, msg)} for every valid message, forever.

    Unlike fedmsg, a malformed or (with C{validate_signatures}) invalid
    message is skipped instead of ending the generator.
    """
    cfg = _as_config(config or None)
    validator = None
    if cfg["validate_signatures"]:
        from fedmsg_twisted.crypto import Validator

        validator = Validator.from_config(cfg)
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    sockets: dict[zmq.Socket, tuple[str, str]] = {}
    topics = [topic] if isinstance(topic, str) else list(topic)
    endpoints = {n: a for n, a in cfg["endpoints"].items() if n != "relay_inbound"}
    if cfg["srv_endpoints"]:
        from fedmsg_twisted.discovery import resolve_srv_endpoints

        endpoints.update(resolve_srv_endpoints(cfg["srv_endpoints"], cfg["srv_nameservers"]))
    for name, addresses in endpoints.items():
        for address in addresses:
            s = ctx.socket(zmq.SUB)
            _apply_options(s, cfg, 0)
            s.setsockopt(zmq.RECONNECT_IVL, cfg["zmq_reconnect_ivl"])
            s.setsockopt(zmq.RECONNECT_IVL_MAX, cfg["zmq_reconnect_ivl_max"])
            for t in topics:
                s.setsockopt(zmq.SUBSCRIBE, t.encode("utf-8"))
            s.connect(address)
            poller.register(s, zmq.POLLIN)
            sockets[s] = (name, address)
    try:
        while True:
            for s, _ in poller.poll():
                name, address = sockets[s]
                try:
                    t, envelope = encoding.parse_frames(s.recv_multipart(), cfg["max_message_size"])
                except encoding.DecodeError:
                    continue
                if validator is not None and not _valid(validator, envelope):
                    continue
                yield name, address, t, envelope
    finally:
        for s in sockets:
            s.close(0)
