# -*- test-case-name: tests.test_heal -*-
"""
Gap healing: subscribers get every message they missed, once, from the
relay's archive (see docs/healing.rst).

The relay never changes a message (signatures must stay valid for fedmsg
peers), so live messages carry no sequence number.  Instead the relay
publishes a I{heartbeat}, an unsigned envelope on
C{<topic_prefix>.<environment>.relay._heartbeat} that is not archived::

    {"relay": <archive identity>, "seq": <highest committed seq_id>,
     "replay": <replay endpoint address or null>}

The relay forwards a message before it archives it, so by the time a
heartbeat says C{seq = S}, every message numbered up to S has already been
written to the outbound socket, ahead of the heartbeat.  A subscriber that
has everything up to C{known} and hears C{S > known} asks the replay
endpoint for the I{index} (seq_id, msg_id) of C{(known, S]} on its topics,
compares it with the msg_ids it delivered, fetches only the missing ones by
seq_id, delivers them in seq_id order and moves C{known} to S.  Live
messages are de-duplicated by msg_id (a bounded LRU), so a message a
publisher resent, or one healed and then received live, is delivered once.

With a state file, each msg_id is also appended to a journal
(L{AppendLog}) as soon as the application's callback has returned, so a
subscriber killed with -9 delivers again at most the message it was
processing (docs/healing.rst, "The contract across a crash").
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from fedmsg_twisted import encoding
from fedmsg_twisted.envelope import Envelopes

log = Logger(namespace="fedmsg_twisted.heal")

__all__ = [
    "AppendLog",
    "Healer",
    "RelayHeartbeat",
    "get_index",
    "heartbeat_topic",
    "is_heartbeat",
]

HEARTBEAT_SUFFIX = ".relay._heartbeat"
DEFAULT_PAGE = 500
DEFAULT_MAX = 10000
DEFAULT_DEDUP = 100000
#: Seconds C{--since} waits for a relay heartbeat before going live.
SINCE_WAIT = 10.0
#: msg_ids kept in the state file (delivered past the last saved C{known}).
STATE_DELIVERED = 10000


def heartbeat_topic(config: Mapping[str, Any]) -> str:
    return f"{config['topic_prefix']}.{config['environment']}{HEARTBEAT_SUFFIX}"


def is_heartbeat(topic: str) -> bool:
    return topic.endswith(HEARTBEAT_SUFFIX)


# -- a record that survives kill -9 ------------------------------------------------


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass  # closed by a rotation meanwhile: that one syncs it itself


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AppendLog:
    """
    An append-only file of short lines (the subscriber's journal of processed
    msg_ids, the publisher's outbox).

    Each line is written with one C{os.write} as it happens: the data is then
    in the kernel's page cache, which outlives the process, so a kill -9
    cannot lose it.  That write is a memory copy, not disk I/O; C{fsync} (for
    power loss) is what blocks, and it runs in a thread, batched: at most one
    at a time, the next one covering everything written meanwhile.

    Compaction is the owner's: L{rotate} renames the file to C{PATH.old} and
    starts an empty one; the owner writes a snapshot of its state (in a
    thread), then calls L{finish_rotation} there.  L{load} reads C{PATH.old}
    (left by a crash before the snapshot was written) and then C{PATH}.
    """

    def __init__(self, path: str, track: Any = None) -> None:
        self.path = path
        self.old = path + ".old"
        self.fd: int | None = None
        #: Lines appended since the last rotation.
        self.count = 0
        self.failed = 0
        self._track = track or (lambda d: None)
        self._syncing = False
        self._dirty = False

    def load(self) -> list[str]:
        """
        Every complete line of C{PATH.old} then C{PATH} (blocking: start-up
        only).  A line cut by a crash mid-write is dropped.
        """
        out: list[str] = []
        for p in (self.old, self.path):
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            lines = data.split(b"\n")
            for line in lines[:-1]:  # the last one is empty or cut short
                if line:
                    out.append(line.decode("utf-8", "replace"))
        return out

    def open(self) -> None:
        """
        Open for appending (blocking: start-up only); a line cut by a crash
        is terminated first so that it does not swallow the next one.
        """
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(self.fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self.fd, b"\n")

    def append(self, line: str) -> bool:
        if self.fd is None:
            return False
        try:
            os.write(self.fd, line.encode("utf-8") + b"\n")
        except OSError as e:
            self.failed += 1
            log.error("Cannot append to {path}: {error}", path=self.path, error=e)
            return False
        self.count += 1
        self._sync_soon()
        return True

    def _sync_soon(self) -> None:
        if self._syncing:
            self._dirty = True
            return
        if self.fd is None:
            return
        self._syncing = True
        d = threads.deferToThread(_fsync, self.fd)

        def done(_: Any) -> None:
            self._syncing = False
            if self._dirty:
                self._dirty = False
                self._sync_soon()

        d.addBoth(done)
        self._track(d)

    def rotate(self) -> int | None:
        """
        Start a new, empty file; the old one is now C{PATH.old}.  Returns the
        old descriptor, for L{finish_rotation}; None when a previous
        rotation did not finish (C{PATH.old} still holds lines no snapshot
        has: keep appending to the current file).
        """
        if self.fd is None or os.path.exists(self.old):
            return None
        os.rename(self.path, self.old)
        old, self.fd = self.fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.count = 0
        return old

    def sync_old(self, old_fd: int | None) -> None:
        """
        In a thread, before the snapshot is written: flush and close the old file.
        """
        if old_fd is not None:
            _fsync(old_fd)
            os.close(old_fd)

    def finish_rotation(self, old_fd: int | None) -> None:
        """
        In a thread, once the snapshot is durable: drop C{PATH.old}.
        """
        if old_fd is not None:
            os.unlink(self.old)
            _fsync_dir(self.path)

    def close(self) -> defer.Deferred:
        fd, self.fd = self.fd, None
        if fd is None:
            return defer.succeed(None)

        def flush_and_close() -> None:
            _fsync(fd)
            os.close(fd)

        d = threads.deferToThread(flush_and_close)
        self._track(d)
        return d


# -- the relay side ----------------------------------------------------------------


class RelayHeartbeat(Service):
    """
    Publishes the relay's heartbeat every C{heartbeat_interval} seconds on
    its outbound socket, once the archive is open.

    @param replay_address: the relay's replay endpoint, announced so that
        subscribers need no C{replay_endpoints} entry for it.
    """

    name = "heartbeat"

    def __init__(
        self,
        config: Mapping[str, Any],
        relay: Any,
        archive: Any,
        replay_address: str | None = None,
        clock: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: F811
        self.config = config
        self.relay = relay
        self.archive = archive
        self.replay_address = replay_address
        self.interval = float(config.get("heartbeat_interval", 1.0))
        self._clock = clock
        self._envelopes = Envelopes(config)
        self._loop: task.LoopingCall | None = None
        self.sent = 0

    def startService(self) -> None:
        super().startService()
        if self.interval <= 0:
            return
        self._loop = task.LoopingCall(self.beat)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("The relay heartbeat stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def envelope(self) -> dict | None:
        """
        The heartbeat to send now, or None while the archive is not open.
        """
        if self.archive.identity is None:
            return None
        return self._envelopes.make(
            topic="_heartbeat",
            modname="relay",
            msg={
                "relay": self.archive.identity,
                "seq": self.archive.committed_seq or 0,
                "replay": self.replay_address,
            },
        )

    def beat(self) -> None:
        env = self.envelope()
        if env is None:
            return
        frames = [env["topic"].encode("utf-8"), encoding.dumps_bytes(env)]
        if self.relay.send_control(frames):
            self.sent += 1


# -- the subscriber side -----------------------------------------------------------


class ReplayUnavailable(Exception):
    """
    The replay endpoint did not answer usefully; healing retries later.
    """


async def _request(address: str, query: Mapping[str, Any], timeout: float) -> list[bytes]:
    from fedmsg_twisted import zmq_reqrep
    from fedmsg_twisted.replay import NO_MATCH

    try:
        frames = await zmq_reqrep.request(
            zmq_reqrep.default_factory(), address, [encoding.dumps_bytes(dict(query))], timeout
        )
    except zmq_reqrep.RequestTimeout:
        raise ReplayUnavailable(f"no reply from {address} within {timeout} s") from None
    except OSError as e:
        raise ReplayUnavailable(str(e)) from None
    if len(frames) == 1 and frames[0].startswith(b"error: "):
        if frames[0] == f"error: '{NO_MATCH}'".encode():
            return []
        raise ReplayUnavailable(f"{address}: {frames[0].decode('utf-8', 'replace')}")
    return frames


def get_index(
    address: str, query: Mapping[str, Any], timeout: float = 2.0
) -> defer.Deferred:
    """
    Our replay extension: C{[(seq_id, msg_id), ...]} for C{query} (fedmsg's
    selectors plus C{topics} and C{limit}), in seq_id order.
    """

    async def run() -> list[tuple[int, str | None]]:
        out = []
        for frame in await _request(address, {**query, "fields": "index"}, timeout):
            try:
                seq, mid = json.loads(frame)
                out.append((int(seq), mid if isinstance(mid, str) else None))
            except (ValueError, TypeError):
                raise ReplayUnavailable(f"{address}: not an index frame: {frame[:80]!r}") from None
        return out

    return defer.Deferred.fromCoroutine(run())


class _LRU(OrderedDict):
    """
    The msg_ids delivered lately, at most C{size}.

    An C{OrderedDict} itself, so that C{msg_id in lru} (once or twice for
    every message received) is the C lookup, not a Python method.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = max(1, size)

    def add(self, key: str) -> None:
        if key in self:
            self.move_to_end(key)
        else:
            self.add_new(key)

    def add_new(self, key: str) -> None:
        """
        L{add} for a key known not to be here (one lookup less).
        """
        self[key] = None
        if len(self) > self.size:
            self.popitem(last=False)

    def last(self, n: int) -> list[str]:
        keys = list(self)
        return keys[-n:]


class _Relay:
    """
    What we know about one relay (one archive identity).
    """

    def __init__(self, identity: str, known: int | None) -> None:
        self.identity = identity
        self.known = known
        self.target = known
        self.replay: str | None = None
        self.name = ""
        self.endpoint = ""
        self.busy = False
        self.held: list[tuple[str, str, str, dict]] = []
        self.since_resolved = False


def _fix_host(replay: str, endpoint: str) -> str:
    # A relay announcing tcp://*:port or 0.0.0.0 means "my host".
    try:
        r, e = urlsplit(replay), urlsplit(endpoint)
    except ValueError:
        return replay
    if r.scheme == "tcp" and r.hostname in ("*", "0.0.0.0", "::") and e.hostname:
        return f"tcp://{e.hostname}:{r.port}"
    return replay


class Healer:
    """
    The subscriber's half of healing; owned by a
    L{fedmsg_twisted.subscriber.SubscriberService}.

    @param since: for C{fedmsg-tail --since}: C{("time", epoch)} or
        C{("msg_id", id)}: the first heartbeat from a relay starts the
        catch-up there instead of at the relay's current sequence.
    @ivar counters: the service's counters: C{healed}, C{duplicates},
        C{heal-skipped}, C{heal-failed}, C{held}, C{held-overflow}.
    """

    def __init__(
        self,
        service: Any,
        config: Mapping[str, Any],
        topics: Iterable[str],
        since: tuple[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.topics = [t for t in topics]
        # A page above the relay's replay_max_messages would be cut short by
        # the server and look like the end of the range.
        self.page = max(1, min(int(config.get("catchup_page", DEFAULT_PAGE)),
                               int(config.get("replay_max_messages", 1000))))
        self.max = int(config.get("catchup_max", DEFAULT_MAX))
        self.timeout = float(config.get("timeout", 2))
        self.state_file = config.get("subscriber_state_file")
        self.since = since
        #: Read once: the config is read-only, and L{check_seq} needs it
        #: for every live message.
        self.replay_endpoints: dict[str, Any] = dict(config.get("replay_endpoints") or {})
        self.delivered = _LRU(int(config.get("heal_dedup_size", DEFAULT_DEDUP)))
        self.relays: dict[str, _Relay] = {}
        self._saved: dict[str, int] = {}
        self._saving = False
        self._save_again = False
        self._tasks: set[defer.Deferred] = set()
        self._seqs: dict[tuple[str, str], int] = {}
        self._since_done = False
        self._since_timer: Any = None
        self._pre: list[tuple[str, str, str, dict]] = []
        self.stopped = False
        #: Relays catching up right now (their live messages are held).
        self._busy = 0
        #: msg_ids whose callback has returned (or whose Deferred fired):
        #: what the state file and the journal record.
        self.done = _LRU(STATE_DELIVERED)
        #: Callbacks whose Deferred has not fired yet.
        self.inflight = 0
        self._save_when_idle = False
        self.journal: AppendLog | None = None
        if self.state_file:
            self.journal = AppendLog(f"{self.state_file}.journal", track=self._track)
            self._saved = self._load()

    @property
    def counters(self) -> Any:
        # The service's, read each time: the hub replaces its subscriber's
        # counters after construction.
        return self.service.counters

    # -- state file ----------------------------------------------------------------

    def _load(self) -> dict[str, int]:
        # Read once at start-up, before the reactor has work to do.
        try:
            with open(self.state_file, "rb") as f:
                data = json.loads(f.read(1 << 20))
            relays = data.get("relays", {})
            for mid in data.get("delivered", [])[-self.delivered.size :]:
                if isinstance(mid, str):
                    self.delivered.add(mid)
                    self.done.add(mid)
            saved = {str(k): int(v) for k, v in relays.items() if isinstance(v, int)}
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError, AttributeError, TypeError) as e:
            log.error(
                "Ignoring the unreadable subscriber state file {path}: {error}",
                path=self.state_file,
                error=e,
            )
            saved = {}
        # Processed after the snapshot was written: the journal.
        try:
            for mid in self.journal.load():  # type: ignore[union-attr]
                self.delivered.add(mid)
                self.done.add(mid)
        except OSError as e:
            log.error("Ignoring the unreadable journal {path}: {error}", path=self.journal.path, error=e)  # type: ignore[union-attr]
        return saved

    def processed(self, envelope: Mapping[str, Any]) -> None:
        """
        The application's callback for this message has returned (or its
        Deferred has fired): record it, durably across a kill -9, before
        anything else happens in this process.
        """
        if self.journal is None:
            return
        mid = envelope.get("msg_id")
        if not isinstance(mid, str):
            return
        self.done.add(mid)
        self.journal.append(mid)
        if self.journal.count >= STATE_DELIVERED:
            self._save()  # compaction: a snapshot, and a fresh journal

    def callback_started(self) -> None:
        self.inflight += 1

    def callback_ended(self, envelope: Mapping[str, Any]) -> None:
        self.inflight -= 1
        self.processed(envelope)
        if self.inflight == 0 and self._save_when_idle:
            self._save_when_idle = False
            self._save()

    def _save(self) -> None:
        if not self.state_file:
            return
        if self._saving:
            self._save_again = True
            return
        self._saving = True
        data = dict(self._saved)
        if self.inflight:
            # A callback still runs: its message may lie below the relays'
            # C{known}, which must not move past it (a kill -9 now would
            # lose it).  Save C{known} once no callback is running.
            self._save_when_idle = True
        else:
            data.update({r.identity: r.known for r in self.relays.values() if r.known is not None})
        self._saved = data
        path = self.state_file
        # The msg_ids processed lately, so that a restarted subscriber does not
        # deliver again what it had delivered past its last C{known}.  They
        # include every line of the journal so far, which therefore starts
        # anew (the old one is dropped once this snapshot is durable).
        recent = self.done.last(STATE_DELIVERED)
        journal = self.journal
        old_fd = None
        if journal is not None and journal.fd is not None:
            try:
                old_fd = journal.rotate()
            except OSError as e:
                log.error("Cannot rotate {path}: {error}", path=journal.path, error=e)

        def write() -> None:
            if journal is not None:
                journal.sync_old(old_fd)
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"relays": data, "delivered": recent}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            if journal is not None:
                journal.finish_rotation(old_fd)

        def done(result: Any) -> None:
            self._saving = False
            if isinstance(result, Exception) or hasattr(result, "value"):
                self.counters.incr("state-save-failed")
                log.error("Cannot save {path}: {error}", path=path, error=getattr(result, "value", result))
            if self._save_again:
                self._save_again = False
                self._save()

        d = threads.deferToThread(write)
        d.addBoth(done)
        self._track(d)

    def _track(self, d: defer.Deferred) -> None:
        self._tasks.add(d)
        d.addBoth(lambda r: (self._tasks.discard(d), r)[1])

    def start(self, clock: Any) -> None:
        """
        With C{since}: if no relay heartbeat with a replay endpoint comes
        within C{SINCE_WAIT} seconds, say so and go live.
        """
        if self.since is not None and not self._since_done:
            self._since_timer = clock.callLater(SINCE_WAIT, self._no_backlog, "no relay heartbeat came")
        if self.journal is not None and self.journal.fd is None:
            try:
                self.journal.open()
            except OSError as e:
                self.counters.incr("state-save-failed")
                log.error("Cannot open {path}: {error}", path=self.journal.path, error=e)

    def _cancel_since_timer(self) -> None:
        if self._since_timer is not None and self._since_timer.active():
            self._since_timer.cancel()
        self._since_timer = None

    def _no_backlog(self, why: str) -> None:
        self._cancel_since_timer()
        if self._since_done or any(r.busy for r in self.relays.values()):
            return
        log.warn("Cannot print the backlog ({why}: is the relay archiving, with a replay endpoint?); going live", why=why)
        self._since_done = True
        held, self._pre = self._pre, []
        for args in held:
            self.service.deliver_live(*args)

    def stop(self) -> defer.Deferred:
        """
        Stop healing and save the state file; fires when it is written.
        """
        self._cancel_since_timer()
        self.stopped = True
        for r in self.relays.values():
            r.held.clear()
        self._save()

        async def wait() -> None:
            while self._tasks:
                await defer.DeferredList(list(self._tasks), consumeErrors=True)
            if self.journal is not None:
                await self.journal.close()

        return defer.Deferred.fromCoroutine(wait())

    # -- live messages -------------------------------------------------------------

    def live(self, name: str, endpoint: str, topic: str, envelope: dict, dedup: bool) -> bool:
        """
        Everything healing does with a live message before the application
        sees it, in one call (it runs for every message): look for a gap in
        its publisher's C{seq_id}, hold it while its relay catches up.

        @param dedup: the message is delivered right away if this returns
            True (no validator): then also drop it if it was delivered
            already (counted), else record it as delivered, as
            L{first_delivery} would.
        @return: True to deliver it now.
        """
        mid = envelope.get("msg_id") if dedup else None
        delivered = self.delivered
        if isinstance(mid, str) and mid in delivered:
            self.counters.incr("duplicates")
            return False
        if self.replay_endpoints:
            self.check_seq(name, endpoint, envelope)
        if (self._busy or (self.since is not None and not self._since_done)) and self.hold(
            name, endpoint, topic, envelope
        ):
            return False
        if isinstance(mid, str):
            delivered.add_new(mid)
        return True

    def is_duplicate(self, envelope: Mapping[str, Any]) -> bool:
        mid = envelope.get("msg_id")
        return isinstance(mid, str) and mid in self.delivered

    def first_delivery(self, envelope: Mapping[str, Any]) -> bool:
        """
        Record a delivery; False if this msg_id was delivered already.
        """
        mid = envelope.get("msg_id")
        if not isinstance(mid, str):
            return True
        if mid in self.delivered:
            self.counters.incr("duplicates")
            return False
        self.delivered.add_new(mid)
        return True

    def hold(self, name: str, endpoint: str, topic: str, envelope: dict) -> bool:
        """
        Keep a live message while this endpoint's relay is catching up, so
        the backlog comes first.  False: deliver it now.
        """
        if self.since is not None and not self._since_done:
            # --since: nothing live before the backlog.
            if len(self._pre) >= max(self.max, self.page):
                self.counters.incr("held-overflow")
                return True
            self._pre.append((name, endpoint, topic, envelope))
            self.counters.incr("held")
            return True
        for r in self.relays.values():
            if r.busy and r.endpoint == endpoint and r.name == name:
                if len(r.held) >= max(self.max, self.page):
                    # Not delivered and not recorded: its seq_id is above the
                    # catch-up's target, so the next heartbeat heals it.
                    self.counters.incr("held-overflow")
                    return True
                r.held.append((name, endpoint, topic, envelope))
                self.counters.incr("held")
                return True
        return False

    # -- publishers that number their messages (a store of their own) ----------------

    def check_seq(self, name: str, endpoint: str, envelope: Mapping[str, Any]) -> None:
        """
        A live message from a publisher that stamps C{seq_id} (before signing)
        and has C{replay_endpoints[name]}: fetch what lies between the last
        number seen from that endpoint and this one.

        Not for relays: their messages carry their publishers' numbers, which
        mean nothing to the relay's archive; relays are healed by heartbeat.
        """
        seq = envelope.get("seq_id")
        if isinstance(seq, bool) or not isinstance(seq, int):
            return
        if name == "relay_outbound" or any(r.endpoint == endpoint for r in self.relays.values()):
            return
        replay = self.replay_endpoints.get(name)
        if not replay:
            return
        key = (name, endpoint)
        prev = self._seqs.get(key)
        self._seqs[key] = seq if prev is None else max(prev, seq)
        if prev is None or seq <= prev + 1:
            return
        lo, hi = prev + 1, seq - 1
        if hi - lo + 1 > self.max:
            self.counters.incr("heal-skipped", n=hi - lo + 1 - self.max)
            log.warn(
                "Gap from {name} {ep} capped at {max} (catchup_max): skipping seq_ids {a}..{b}",
                name=name, ep=endpoint, max=self.max, a=lo, b=hi - self.max,
            )
            lo = hi - self.max + 1
        d = defer.Deferred.fromCoroutine(self._fill(name, endpoint, replay, lo, hi))
        d.addErrback(lambda f: log.failure("Healing failed unexpectedly", f))
        self._track(d)

    async def _fill(self, name: str, endpoint: str, replay: str, lo: int, hi: int) -> None:
        from twisted.internet import reactor

        relay = _Relay(f"{name}@{endpoint}", None)
        relay.replay, relay.name, relay.endpoint = replay, name, endpoint
        wanted = list(range(lo, hi + 1))
        for attempt in range(3):  # the publisher's store commits in batches
            if attempt:
                await task.deferLater(reactor, 0.5, lambda: None)
            seen: set[int] = set()
            try:
                for i in range(0, len(wanted), self.page):
                    seen |= await self._fetch(relay, wanted[i : i + self.page])
            except ReplayUnavailable as e:
                self.counters.incr("heal-failed")
                log.warn("Cannot heal seq_ids {a}..{b} from {name}: {error}", a=lo, b=hi, name=name, error=e)
                return
            wanted = [s for s in wanted if s not in seen]
            if self.stopped or not wanted:
                return
        self.counters.incr("heal-failed")
        log.warn("seq_ids {seqs} from {name} are not in its store", seqs=wanted[:20], name=name)

    # -- heartbeats ----------------------------------------------------------------

    def heartbeat(self, name: str, endpoint: str, envelope: Mapping[str, Any]) -> None:
        msg = envelope.get("msg")
        if not isinstance(msg, Mapping):
            return
        identity, seq, replay = msg.get("relay"), msg.get("seq"), msg.get("replay")
        if not isinstance(identity, str) or isinstance(seq, bool) or not isinstance(seq, int):
            self.counters.incr("dropped", "bad-heartbeat")
            return
        # The config, when it names one, wins over what the heartbeat says.
        replay = self.replay_endpoints.get(name) or replay
        if not isinstance(replay, str):
            replay = None
        if not replay:
            if self.since is not None and not self._since_done:
                self._no_backlog("the relay announces no replay endpoint")
            return  # nothing to heal from
        relay = self.relays.get(identity)
        if relay is None:
            relay = self.relays[identity] = _Relay(identity, self._saved.get(identity))
            if relay.known is None and self.since is None:
                relay.known = relay.target = seq
                self._save()
            log.info(
                "Healing from relay {id} at {ep}: it is at seq_id {seq}, we have all up to {known}",
                id=identity,
                ep=endpoint,
                seq=seq,
                known="(--since)" if relay.known is None else relay.known,
            )
        relay.replay = _fix_host(replay, endpoint)
        relay.name, relay.endpoint = name, endpoint
        if relay.known is not None and seq < relay.known:
            log.warn(
                "Relay {id} went back from seq_id {known} to {seq} (archive replaced?); following it",
                id=identity,
                known=relay.known,
                seq=seq,
            )
            relay.known = relay.target = seq
            self._save()
            return
        relay.target = max(seq, relay.target or 0)
        if not relay.busy and (relay.known is None or relay.target > relay.known):
            relay.busy = True
            self._busy += 1
            d = defer.Deferred.fromCoroutine(self._catch_up(relay))
            d.addErrback(lambda f: log.failure("Healing failed unexpectedly", f))
            self._track(d)

    async def _start_point(self, relay: _Relay) -> None:
        kind, value = self.since  # type: ignore[misc]
        if kind == "msg_id":
            index = await get_index(relay.replay, {"msg_id": value}, self.timeout)
        else:
            index = await get_index(
                relay.replay, {"time": [float(value), 1e15], "limit": 1}, self.timeout
            )
        if index:
            relay.known = index[0][0] - 1
        else:
            relay.known = relay.target
            log.warn("Nothing archived since {since!r}; going live", since=value)

    async def _catch_up(self, relay: _Relay) -> None:
        try:
            if relay.known is None:
                await self._start_point(relay)
            while not self.stopped and relay.target is not None and relay.target > relay.known:
                await self._catch_up_to(relay, relay.target)
        except ReplayUnavailable as e:
            self.counters.incr("heal-failed")
            log.warn(
                "Cannot heal from relay {id} yet (retrying at its next heartbeat): {error}",
                id=relay.identity,
                error=e,
            )
        finally:
            relay.busy = False
            self._busy -= 1
            held, relay.held = relay.held, []
            if self.since is not None and not self._since_done:
                self._since_done = True
                self._cancel_since_timer()
                held, self._pre = self._pre + held, []
            for args in held:
                if not self.stopped:
                    self.service.deliver_live(*args)

    async def _catch_up_to(self, relay: _Relay, hi: int) -> None:
        lo = relay.known
        if hi - lo > self.max:
            skipped_to = hi - self.max
            self.counters.incr("heal-skipped", n=skipped_to - lo)
            log.warn(
                "Catch-up from relay {id} capped at {max} seq_ids (catchup_max): skipping "
                "seq_ids {a}..{b} (at most {n} messages); fetch them with fedmsg-tail --since "
                "or the replay endpoint {replay} if needed",
                id=relay.identity,
                max=self.max,
                a=lo + 1,
                b=skipped_to,
                n=skipped_to - lo,
                replay=relay.replay,
            )
            lo = relay.known = skipped_to
        cursor = lo
        while cursor < hi and not self.stopped:
            index = await get_index(
                relay.replay,
                {"seq_id_range": [cursor + 1, hi], "topics": self.topics, "limit": self.page},
                self.timeout,
            )
            missing = [seq for seq, mid in index if mid is not None and mid not in self.delivered]
            if missing:
                await self._fetch(relay, missing)
            if len(index) < self.page:
                cursor = hi
            else:
                cursor = index[-1][0]
            relay.known = cursor
            self._save()

    async def _fetch(self, relay: _Relay, seqs: list[int]) -> set[int]:
        """
        Fetch and deliver these seq_ids; returns the C{seq_id} fields seen in
        the bodies (only publishers with their own store write them).
        """
        seen: set[int] = set()
        try:
            frames = await _request(relay.replay, {"seq_ids": seqs}, self.timeout)
        except ReplayUnavailable as e:
            if "too large" not in str(e):
                raise
            if len(seqs) == 1:
                self.counters.incr("heal-skipped")
                log.error(
                    "Cannot heal seq_id {seq} from relay {id}: larger than its replay_max_bytes",
                    seq=seqs[0],
                    id=relay.identity,
                )
                return set(seqs)
            # Over the server's replay_max_bytes: ask for halves, in order.
            half = len(seqs) // 2
            seen |= await self._fetch(relay, seqs[:half])
            seen |= await self._fetch(relay, seqs[half:])
            return seen
        log.info(
            "Healing {n} missed messages from relay {id} (seq_ids {a}..{b})",
            n=len(frames),
            id=relay.identity,
            a=seqs[0],
            b=seqs[-1],
        )
        for frame in frames:
            if self.stopped:
                return seen
            try:
                envelope = encoding.decode_body(frame, max_size=self.service.max_size)
            except encoding.DecodeError as e:
                self.counters.incr("dropped", e.reason)
                continue
            if isinstance(envelope.get("seq_id"), int):
                seen.add(envelope["seq_id"])
            topic = envelope.get("topic")
            if not isinstance(topic, str):
                self.counters.incr("dropped", "no-topic")
                continue
            if self.is_duplicate(envelope):
                continue
            self.counters.incr("healed")
            await self.service.deliver_healed(relay.name, relay.endpoint, topic, envelope)
        return seen
