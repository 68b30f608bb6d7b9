# -*- test-case-name: tests.test_publisher -*-
"""
The publisher service: what an application adds to its MultiService to put
messages on the bus.

Two modes, as in fedmsg:
  - I{passive} (default): bind the first free address of C{endpoints[name]}
    and let subscribers connect;
  - I{active} (C{active = true}): connect to the relay's C{relay_inbound}.

The slow joiner
===============
A zmq PUB socket drops every message published before a subscriber has
finished subscribing.  fedmsg slept C{post_init_sleep} seconds after start and
hoped.  Our publisher socket is an XPUB, which I{sees} subscriptions arrive,
so we hold messages until the first subscription arrives, and only as a last
resort until C{post_init_sleep} has passed.  A publisher whose subscriber is
already there pays no delay at all; one whose subscriber is late loses nothing
as long as it joins within C{post_init_sleep}.

In active mode the one subscriber is the relay, and it matters more: while the
relay's subscription is absent (not started yet, restarting) messages are held
in a bounded queue (C{publish_queue_size}) and released when it comes back.
"""

from __future__ import annotations

import json
import os
import socket
from collections import OrderedDict, deque
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from fedmsg_twisted import encoding
from fedmsg_twisted.envelope import Envelopes
from fedmsg_twisted.stats import Counters

log = Logger(namespace="fedmsg_twisted.publisher")

__all__ = ["PublisherService", "PublishError", "default_name"]

#: Messages held while no subscriber (the relay, in active mode) is present.
DEFAULT_QUEUE_SIZE = 10000


class PublishError(RuntimeError):
    """
    A message could not be handed to the bus.
    """


def default_name(config: Mapping[str, Any]) -> str | None:
    """
    The service name a publisher binds under, if the config gives one.
    """
    return config.get("name")


class PublisherService(Service):
    """
    Publishes fedmsg envelopes from reactor code.

    @ivar counters: C{published}, C{held}, C{dropped} by reason.
    @ivar address: the address bound (passive) or connected to (active).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        name: str | None = None,
        signer: Any = None,
        reactor: Any = None,
        factory: Any = None,
        store: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.config = config
        #: An open L{fedmsg_twisted.store.Archive} this publisher keeps what
        #: it sends in (serve it with a ReplayService under our name): every
        #: envelope gets the store's next C{seq_id} I{before} it is signed.
        self.store = store
        self._next_seq: int | None = None
        self.name = name if name is not None else default_name(config)
        self.active = bool(config["active"]) or self.name is None or self.name == "relay_inbound"
        self.signer = signer
        self._reactor = reactor
        self._factory = factory
        self._envelopes = Envelopes(config)
        self._queue: deque[tuple[list[bytes], defer.Deferred, dict]] = deque()
        self._queue_size = int(config.get("publish_queue_size", DEFAULT_QUEUE_SIZE))
        self._socket = None
        self._startup_timer = None
        self._released = False
        self.counters = Counters()
        self.address: str | None = None
        # Resending what a dying relay lost (docs/healing.rst): messages sent
        # and not yet seen in the relay's archive, oldest first.
        window = int(config.get("publish_resend_window", 10000))
        replay = (config.get("replay_endpoints") or {}).get("relay_outbound")
        self._resend_window = window if (self.active and window and replay) else 0
        self._replay = replay if self._resend_window else None
        self._unacked: OrderedDict[str, list] = OrderedDict()
        self._generation = 0
        self._lost_relay = False
        self._subscribed_before = False
        self._resend_due = False
        self._reconcile_loop: Any = None
        self._reconciling: defer.Deferred | None = None
        # The on-disk outbox (publish_outbox): what publish() accepted and
        # the archive has not confirmed, surviving a kill -9 of this process.
        self._outbox_path = config.get("publish_outbox") or None
        self._outbox: Any = None
        self._outbox_live: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._outbox_compacting = False
        self._outbox_tasks: set[defer.Deferred] = set()

    # -- IService -------------------------------------------------------------

    def startService(self) -> None:
        from fedmsg_twisted import zmq as fzmq

        if self.signer is None and self.config["sign_messages"]:
            from fedmsg_twisted.crypto import Signer

            # Raises a ConfigError naming the missing certificate now, at
            # start-up, rather than at the first publish.
            self.signer = Signer.from_config(self.config, name=self.name, reactor=self._reactor)

        factory = self._factory or fzmq.shared_factory(self.config["io_threads"])
        sock = fzmq.PubSocket(
            factory,
            options=fzmq.publisher_options(self.config),
            on_subscription=self._subscription_changed,
        )
        if self._replay is not None:
            # Report every subscription, repeated ones too: a relay that
            # reconnects subscribes again, and that is how we notice it.
            sock.socket.setsockopt(fzmq._zmq.XPUB_VERBOSE, 1)
        try:
            if self.active:
                self.address = self.config["relay_inbound"][0]
                fzmq.connect(sock, self.address)
            else:
                addresses = self.config["endpoints"].get(self.name)
                if not addresses:
                    raise fzmq.BindError(f"endpoints has no entry {self.name!r} to bind")
                self.address = fzmq.bind_first(
                    sock, addresses, not self.config["relay_bind_host"]
                )
        except Exception:
            sock.close()
            raise
        self._socket = sock
        if self._outbox_path:
            if self._replay is None:
                log.warn(
                    "publish_outbox is ignored: it needs active = true, "
                    "replay_endpoints.relay_outbound and publish_resend_window > 0"
                )
            else:
                try:
                    self._open_outbox()
                except OSError as e:
                    sock.close()
                    self._socket = None
                    raise PublishError(f"cannot open publish_outbox {self._outbox_path!r}: {e}") from None
        super().startService()
        self._released = False
        self._startup_timer = self._reactor.callLater(
            self.config["post_init_sleep"], self._startup_wait_over
        )
        if self._replay is not None:
            from twisted.internet import task

            self._reconcile_loop = task.LoopingCall(self._reconcile)
            self._reconcile_loop.clock = self._reactor
            interval = float(self.config.get("heartbeat_interval", 1.0)) or 1.0
            self._reconcile_loop.start(interval, now=False)
        log.info(
            "Publisher {mode} {address} (name {name})",
            mode="connected to" if self.active else "bound to",
            address=self.address,
            name=self.name,
        )

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._startup_timer is not None and self._startup_timer.active():
            self._startup_timer.cancel()
        self._startup_timer = None
        # Whatever is still held has been waiting for a subscriber that never
        # came; sending it into a socket that closes loses it all the same.
        while self._queue:
            _, d, envelope = self._queue.popleft()
            self.counters.incr("dropped", "stopped")
            self._outbox_forget_envelope(envelope)
            d.errback(PublishError("publisher stopped before a subscriber joined"))
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._reconcile_loop is not None and self._reconcile_loop.running:
            self._reconcile_loop.stop()
        self._reconcile_loop = None
        if self._unacked:
            log.info(
                "Publisher stopped with {n} messages not yet confirmed by the relay's archive{kept}",
                n=len(self._unacked),
                kept=" (kept in the outbox, resent at the next start)" if self._outbox else "",
            )
        waits = list(self._outbox_tasks)
        if self._reconciling is not None:
            waits.append(self._reconciling)
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None

            async def close_outbox() -> None:
                # Let a compaction finish first: it closes the old file itself.
                while self._outbox_tasks:
                    await defer.DeferredList(list(self._outbox_tasks), consumeErrors=True)
                await outbox.close()

            waits.append(defer.Deferred.fromCoroutine(close_outbox()))
        if waits:
            return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)
        return defer.succeed(None)

    # -- the on-disk outbox --------------------------------------------------------

    def _open_outbox(self) -> None:
        """
        Load what a previous process left unconfirmed (to resend once the
        relay is there and its archive says it lacks them), then open the
        outbox for appending.  Blocking file I/O, at start-up only.
        """
        from fedmsg_twisted.heal import AppendLog

        path = self._outbox_path
        self._outbox_live.clear()
        outbox = AppendLog(path, track=self._track_outbox)
        lines: list[str] = []
        try:
            with open(path + ".snap", "rb") as f:
                lines += [x.decode("utf-8") for x in f.read().split(b"\n") if x]
        except FileNotFoundError:
            pass
        lines += outbox.load()
        for line in lines:
            kind, _, rest = line.partition(" ")
            try:
                if kind == "A":
                    mid, topic, body = json.loads(rest)
                    self._outbox_live[str(mid)] = (str(topic), str(body))
                elif kind == "D":
                    self._outbox_live.pop(rest, None)
            except (ValueError, TypeError):
                self.counters.incr("dropped", "outbox-garbled")
                log.error("Skipping a garbled line of the outbox {path}: {line!r}", path=path, line=line[:80])
        outbox.open()
        self._outbox = outbox
        for mid, (topic, body) in self._outbox_live.items():
            self._unacked[mid] = [[topic.encode("utf-8"), body.encode("utf-8")], -1]
            self.counters.incr("outbox-loaded")
        while len(self._unacked) > self._resend_window:
            mid, _ = self._unacked.popitem(last=False)
            self._outbox_forget(mid)
            self.counters.incr("unconfirmed-evicted")
        if self._unacked:
            self._resend_due = True
            log.info(
                "{n} messages from the outbox {path} are not confirmed by the relay's archive: "
                "resending those it lacks once it is there",
                n=len(self._unacked),
                path=path,
            )

    def _track_outbox(self, d: defer.Deferred) -> None:
        self._outbox_tasks.add(d)
        d.addBoth(lambda r: (self._outbox_tasks.discard(d), r)[1])

    def _outbox_keep(self, frames: list[bytes], envelope: Any) -> None:
        if self._outbox is None or not isinstance(envelope, Mapping):
            return
        mid = envelope.get("msg_id")
        if not isinstance(mid, str) or mid in self._outbox_live:
            return
        try:
            entry = (frames[0].decode("utf-8"), frames[1].decode("utf-8"))
        except (UnicodeDecodeError, IndexError):
            self.counters.incr("outbox-skipped")
            return
        if self._outbox.append("A " + json.dumps([mid, entry[0], entry[1]], separators=(",", ":"))):
            self._outbox_live[mid] = entry

    def _outbox_forget(self, mid: Any) -> None:
        if self._outbox is None or not isinstance(mid, str):
            return
        if self._outbox_live.pop(mid, None) is None:
            return
        self._outbox.append("D " + mid)
        if self._outbox.count > max(1000, 4 * len(self._outbox_live)):
            self._compact_outbox()

    def _compact_outbox(self) -> None:
        """
        Start a fresh outbox file: a snapshot of what is still unconfirmed
        (written in a thread) replaces everything appended before it.
        """
        outbox = self._outbox
        if self._outbox_compacting or outbox is None:
            return
        try:
            old_fd = outbox.rotate()
        except OSError as e:
            log.error("Cannot rotate {path}: {error}", path=outbox.path, error=e)
            return
        if old_fd is None:
            return
        self._outbox_compacting = True
        snap = "".join(
            "A " + json.dumps([mid, t, b], separators=(",", ":")) + "\n"
            for mid, (t, b) in self._outbox_live.items()
        )
        path = outbox.path + ".snap"

        def write() -> None:
            outbox.sync_old(old_fd)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(snap)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)
            outbox.finish_rotation(old_fd)

        def done(result: Any) -> None:
            self._outbox_compacting = False
            if hasattr(result, "value"):
                self.counters.incr("outbox-failed")
                log.error("Cannot compact the outbox {path}: {error}", path=outbox.path, error=result.value)

        from twisted.internet import threads

        d = threads.deferToThread(write)
        d.addBoth(done)
        self._track_outbox(d)

    # -- publishing -------------------------------------------------------------

    def publish(
        self, topic: str | None = None, msg: Any = None, modname: str | None = None
    ) -> defer.Deferred:
        """
        Build, sign (if configured) and send one message.

        @return: a Deferred firing with the envelope once zmq has it, or
            failing with L{PublishError}.
        """
        envelope = self._envelopes.make(topic=topic, msg=msg, modname=modname)
        if self.store is not None:
            if not self.store.running:
                return defer.fail(PublishError("the publisher's store is not open yet"))
            if self._next_seq is None:
                self._next_seq = (self.store.committed_seq or 0) + 1
            envelope["seq_id"] = self._next_seq
            self._next_seq += 1
        if self.signer is None:
            return self.publish_envelope(envelope)
        sign_encoded = getattr(self.signer, "sign_encoded", None)
        if sign_encoded is not None:
            # x509: sign and get the wire body from one canonical encoding.
            try:
                signed, body = sign_encoded(envelope)
            except (TypeError, ValueError) as e:
                return defer.fail(PublishError(f"message is not JSON-serialisable: {e}"))
            return self._send_encoded(signed, body)
        d = defer.maybeDeferred(self._sign, envelope)
        d.addCallback(self.publish_envelope)
        return d

    def _sign(self, envelope: dict) -> Any:
        sign = getattr(self.signer, "sign", None)
        if sign is not None:  # x509: fast, synchronous
            return sign(envelope)
        return self.signer.sign_async(envelope)  # gpg: in a thread

    def publish_envelope(self, envelope: Mapping[str, Any]) -> defer.Deferred:
        """
        Send an envelope that is already complete (and maybe signed).
        """
        try:
            body = encoding.dumps_bytes(envelope)
        except (TypeError, ValueError) as e:
            return defer.fail(PublishError(f"message is not JSON-serialisable: {e}"))
        return self._send_encoded(envelope, body)

    def _send_encoded(self, envelope: Mapping[str, Any], body: bytes) -> defer.Deferred:
        seq = envelope.get("seq_id")
        if self.store is not None and isinstance(seq, int) and not isinstance(seq, bool):
            # Stored before it is sent, so a subscriber that sees the next
            # number and asks for this one finds it (once the batch commits).
            self.store.add(envelope["topic"], body, envelope, seq_id=seq)
        return self.publish_frames([envelope["topic"].encode("utf-8"), body], envelope)

    def publish_frames(self, frames: list[bytes], envelope: Any = None) -> defer.Deferred:
        """
        Send raw C{[topic, body]} frames (the relay and gateway forward bytes).
        """
        if self._socket is None:
            return defer.fail(PublishError("publisher is not running"))
        # In the outbox before zmq or the queue has it: a kill -9 from here
        # on cannot lose it.
        if self._outbox is not None:
            self._outbox_keep(frames, envelope)
        if self._must_hold():
            return self._hold(frames, envelope)
        if self._socket.send_frames(frames):
            self.counters.incr("published")
            if self._replay is not None:
                self._sent(frames, envelope)
            return defer.succeed(envelope)
        self.counters.incr("dropped", "high-water-mark")
        self._outbox_forget_envelope(envelope)
        return defer.fail(PublishError("zmq high-water mark reached; message dropped"))

    def _outbox_forget_envelope(self, envelope: Any) -> None:
        # The caller is told it failed: nothing to resend later.
        if isinstance(envelope, Mapping):
            self._outbox_forget(envelope.get("msg_id"))

    # -- holding while no subscriber is there ------------------------------------

    def _must_hold(self) -> bool:
        if self._queue:
            return True  # keep order behind what is already held
        if self._socket.has_subscriber():
            return False
        # Passive: only the start-up window.  Active: the relay must be there.
        return self.active or not self._released

    def _hold(self, frames: list[bytes], envelope: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if len(self._queue) >= self._queue_size:
            _, old, old_env = self._queue.popleft()
            self.counters.incr("dropped", "queue-full")
            self._outbox_forget_envelope(old_env)
            old.errback(PublishError("publish queue full while waiting for a subscriber"))
        self._queue.append((frames, d, envelope))
        self.counters.incr("held")
        return d

    def _flush(self) -> None:
        while self._queue and self._socket is not None:
            frames, d, envelope = self._queue.popleft()
            if self._socket.send_frames(frames):
                self.counters.incr("published")
                self._sent(frames, envelope)
                d.callback(envelope)
            else:
                self.counters.incr("dropped", "high-water-mark")
                self._outbox_forget_envelope(envelope)
                d.errback(PublishError("zmq high-water mark reached; message dropped"))

    def _subscription_changed(self, prefix: bytes, subscribed: bool) -> None:
        if subscribed:
            self._released = True
            # Let zmq finish attaching the pipe before the burst goes out.
            self._reactor.callLater(0, self._flush)
            if self._lost_relay:
                self._lost_relay = False
                self._resend_due = True
            elif self._replay is not None and self._subscribed_before:
                # XPUB_VERBOSE: the relay subscribed again on the same pipe,
                # so it reconnected (restarted) and what it had not archived
                # may be lost.  zmq kept the pipe, so we saw no unsubscribe.
                log.info("Relay {address} reconnected; checking what it archived", address=self.address)
                self._generation += 1
                self._resend_due = True
            self._subscribed_before = True
        elif self.active and not self._socket.has_subscriber():
            log.warn("Relay {address} went away; holding messages until it is back", address=self.address)
            # What was sent before now may have died with the relay.
            self._generation += 1
            self._lost_relay = True

    # -- resending what the relay's archive does not have -------------------------

    def _sent(self, frames: list[bytes], envelope: Any) -> None:
        if self._replay is None or not isinstance(envelope, Mapping):
            return
        mid = envelope.get("msg_id")
        if not isinstance(mid, str):
            return
        self._unacked[mid] = [frames, self._generation]
        if len(self._unacked) > self._resend_window:
            old, _ = self._unacked.popitem(last=False)
            self._outbox_forget(old)
            self.counters.incr("unconfirmed-evicted")

    def _reconcile(self) -> None:
        if self._reconciling is not None or not self._unacked or self._socket is None:
            return
        if self._lost_relay:
            return  # nobody to ask; try again once the relay is back
        d = defer.Deferred.fromCoroutine(self._reconcile_once())
        d.addErrback(lambda f: log.failure("Checking sent messages against the archive failed", f))
        self._reconciling = d

        def done(_: Any) -> None:
            self._reconciling = None

        d.addBoth(done)

    async def _reconcile_once(self) -> None:
        from fedmsg_twisted.heal import ReplayUnavailable, get_index

        resend = self._resend_due
        generation = self._generation
        ids = list(self._unacked)
        try:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                index = await get_index(self._replay, {"msg_ids": chunk}, self.config["timeout"])
                for _, mid in index:
                    if self._unacked.pop(mid, None) is not None:
                        self.counters.incr("confirmed")
                        self._outbox_forget(mid)
        except ReplayUnavailable as e:
            log.debug("Cannot confirm sent messages yet: {error}", error=e)
            return
        if not resend or self._socket is None or self._lost_relay:
            return
        if not self._socket.has_subscriber():
            return  # nobody to send to yet (outbox at start-up): next round
        self._resend_due = False
        checked = set(ids)
        lost = [(mid, e) for mid, e in self._unacked.items() if e[1] < generation and mid in checked]
        if lost:
            log.warn(
                "Resending {n} messages the relay {address} lost when it went away",
                n=len(lost),
                address=self.address,
            )
        for mid, entry in lost:
            if self._socket.send_frames(entry[0]):
                entry[1] = generation
                self.counters.incr("resent")
            else:
                self.counters.incr("dropped", "high-water-mark")

    def _startup_wait_over(self) -> None:
        self._startup_timer = None
        self._released = True
        if self.active:
            if self._queue:
                log.warn(
                    "No relay at {address} after {s}s; holding {n} messages until it subscribes",
                    address=self.address,
                    s=self.config["post_init_sleep"],
                    n=len(self._queue),
                )
            return
        if self._queue:
            log.info(
                "No subscriber after {s}s; sending {n} held messages anyway",
                s=self.config["post_init_sleep"],
                n=len(self._queue),
            )
        self._flush()

    def has_subscriber(self) -> bool:
        return self._socket is not None and self._socket.has_subscriber()


def hostname() -> str:
    return socket.gethostname().split(".")[0]
