# -*- test-case-name: tests.test_mailbridge -*-
"""
The mail bridge: Debian's mail (debbugs, dak) in, bus messages out.

Two intakes feed one L{MailBridge}:
  - L{MaildirWatcher} watches C{new/} of a Maildir with inotify and also
    takes what is already there at start-up (and rescans now and then, so a
    missed event or a failed publish is retried);
  - L{SMTPFactory} speaks SMTP and LMTP (after C{LHLO}) on loopback so the
    MTA can deliver list mail straight in.

A mail is acknowledged (moved to C{cur/}, or answered C{250}) only after the
publisher has handed its message to the bus and its key (Message-ID, else a
hash of the bytes) is recorded in the state directory; a mail whose key is
already recorded is acknowledged without publishing again.  So a crash
before the publish leaves the mail to be taken again, and a crash after it
leaves a record that stops a second publish.

Mail that cannot become a message goes to a quarantine Maildir with an
C{X-Fedmsg-Quarantine-Reason} header, a log line and a counter; the next mail
goes through.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections import OrderedDict
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.mail import smtp
from zope.interface import implementer

from fedmsg_twisted import mailparse
from fedmsg_twisted.stats import Counters

__all__ = [
    "MailBridge",
    "DedupRecord",
    "Quarantine",
    "MaildirWatcher",
    "BridgeSMTP",
    "SMTPFactory",
    "DEFAULT_MAX_MAIL_SIZE",
]

log = Logger(namespace="fedmsg_twisted.mailbridge")

#: Bytes of one mail above which it is quarantined unread.
DEFAULT_MAX_MAIL_SIZE = 10 * 1024 * 1024

#: Keys kept in the dedup record (older ones are forgotten at compaction).
DEFAULT_DEDUP_KEEP = 50000

PUBLISHED = "published"
DUPLICATE = "duplicate"
IGNORED = "ignored"
QUARANTINED = "quarantined"


def mail_key(raw: bytes) -> str:
    """
    What identifies a mail across deliveries: its Message-ID (and
    Resent-Message-ID, see L{mailparse.dedup_key}), else its hash.
    """
    mid = mailparse.dedup_key(raw)
    if mid:
        return "mid:" + mid
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class DedupRecord:
    """
    The keys of mail already published, in an append-only file.

    L{add} writes and flushes in the caller's thread so the record is in the
    kernel in the same reactor turn the publish was confirmed in; a process
    crash right after cannot lose it.  L{sync} (fsync, in a thread) makes it
    survive power loss too, and runs before a mail is acknowledged.
    """

    def __init__(self, path: str, keep: int = DEFAULT_DEDUP_KEEP) -> None:
        self.path = path
        self.keep = keep
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._file = None

    def open(self) -> None:
        """
        Load the record, compact it if it grew past twice C{keep}, open for append.
        """
        lines: list[str] = []
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8", errors="replace") as f:
                lines = [line.rstrip("\n") for line in f if line.strip()]
        for key in lines[-self.keep:]:
            self._keys[key] = None
        if len(lines) > 2 * self.keep:
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(k + "\n" for k in self._keys)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        key = " ".join(key.split())
        self._keys[key] = None
        while len(self._keys) > self.keep:
            self._keys.popitem(last=False)
        if self._file is not None:
            self._file.write(key + "\n")
            self._file.flush()

    def sync(self) -> None:
        f = self._file
        if f is not None:
            try:
                os.fsync(f.fileno())
            except (OSError, ValueError):
                pass


def _ensure_maildir(path: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


_seq = [0]


def unique_name() -> str:
    """
    A Maildir file name: time, pid and a counter, host.
    """
    _seq[0] += 1
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{time.time():.6f}.P{os.getpid()}Q{_seq[0]}.{host}"


class Quarantine:
    """
    A Maildir holding the mail that could not be published, each with its reason.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def ensure(self) -> None:
        _ensure_maildir(self.path)

    def store(self, raw: bytes, reason: str) -> str:
        """
        Deliver C{raw} with a reason header (blocking: call in a thread).
        """
        reason = " ".join(reason.encode("ascii", "backslashreplace").decode("ascii").split())[:900]
        name = unique_name()
        tmp = os.path.join(self.path, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(b"X-Fedmsg-Quarantine-Reason: " + reason.encode("ascii") + b"\n")
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        final = os.path.join(self.path, "new", name)
        os.rename(tmp, final)
        return final

    def store_file(self, path: str) -> str:
        """
        Move a mail file in unread (for mail too large to read); the reason is in the log line.
        """
        name = unique_name() + ",oversize"
        final = os.path.join(self.path, "new", name)
        try:
            os.rename(path, final)
        except OSError:
            import shutil

            shutil.copyfile(path, final)
            os.unlink(path)
        return final


class MailBridge(MultiService):
    """
    Parses mail, publishes it once, records it, quarantines what is bad.

    @ivar counters: C{mail} by disposition (published, duplicate, ignored,
        quarantined, failed) and C{quarantined} by reason.
    """

    def __init__(
        self,
        publisher: Any,
        state_dir: str,
        *,
        quarantine_dir: str | None = None,
        max_mail_size: int = DEFAULT_MAX_MAIL_SIZE,
        max_body: int = mailparse.DEFAULT_MAX_BODY,
        dedup_keep: int = DEFAULT_DEDUP_KEEP,
        drain_timeout: float = 5.0,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self._reactor = reactor
        self.publisher = publisher
        self.state_dir = state_dir
        self.quarantine = Quarantine(quarantine_dir or os.path.join(state_dir, "quarantine"))
        self.record = DedupRecord(os.path.join(state_dir, "published.log"), keep=dedup_keep)
        self.max_mail_size = max_mail_size
        self.max_body = max_body
        self.drain_timeout = drain_timeout
        self.counters = Counters()
        self._inflight: dict[str, defer.Deferred] = {}
        self._pending: set[defer.Deferred] = set()

    def startService(self) -> None:
        # Small local files read once at start-up, before any mail is taken.
        os.makedirs(self.state_dir, exist_ok=True)
        self.quarantine.ensure()
        self.record.open()
        super().startService()

    async def _stop(self) -> None:
        await super().stopService()
        if self._pending:
            d = defer.DeferredList(list(self._pending), consumeErrors=True)
            d.addTimeout(self.drain_timeout, self._reactor)
            try:
                await d
            except defer.TimeoutError:
                log.warn("Mail bridge stopped with {n} mail(s) in flight; they stay unacknowledged",
                         n=len(self._pending))
        self.record.close()

    def stopService(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._stop())

    # -- the one way in ------------------------------------------------------------

    def ingest(self, raw: bytes, origin: str = "") -> defer.Deferred:
        """
        Take one mail.

        @return: a Deferred firing with the disposition (C{"published"},
            C{"duplicate"}, C{"ignored"}, C{"quarantined"}) once it is safe to
            acknowledge the mail, or failing when the publish failed (do not
            acknowledge: deliver again later).
        """
        key = mail_key(raw)
        if key in self._inflight:
            # The same mail through two recipients or two intakes at once.
            d = defer.Deferred()
            self._inflight[key].addBoth(self._chain_duplicate, d)
            return d
        d = defer.Deferred.fromCoroutine(self._ingest(raw, key, origin))
        self._inflight[key] = d
        self._pending.add(d)

        def done(result):
            self._inflight.pop(key, None)
            self._pending.discard(d)
            return result

        d.addBoth(done)
        return d

    def _chain_duplicate(self, result, d: defer.Deferred):
        if isinstance(result, Failure):
            d.errback(result)
        else:
            self.counters.incr("mail", DUPLICATE if result == PUBLISHED else result)
            d.callback(DUPLICATE if result == PUBLISHED else result)
        return result

    async def _ingest(self, raw: bytes, key: str, origin: str) -> str:
        log.info("Took mail {key} ({size} bytes) from {origin}", key=key, size=len(raw), origin=origin)
        if key in self.record:
            self.counters.incr("mail", DUPLICATE)
            log.info("Mail {key} from {origin} was already published; acknowledged again",
                     key=key, origin=origin)
            return DUPLICATE
        if len(raw) > self.max_mail_size:
            await self.to_quarantine(raw[: self.max_mail_size], "too-large",
                                     f"mail of {len(raw)} bytes, limit {self.max_mail_size} (truncated copy)",
                                     origin)
            return QUARANTINED
        try:
            parsed = await threads.deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), mailparse.parse, raw, self.max_body)
        except mailparse.QuarantineError as e:
            await self.to_quarantine(raw, e.reason, e.detail, origin)
            return QUARANTINED
        except mailparse.Ignored as e:
            self.counters.incr("mail", IGNORED)
            log.info("Mail {key} from {origin} ignored: {reason}", key=key, origin=origin, reason=e.reason)
            return IGNORED
        except Exception as e:  # a parser bug must not stop the bridge either
            await self.to_quarantine(raw, "parser-error", f"{type(e).__name__}: {e}", origin)
            return QUARANTINED
        try:
            await defer.maybeDeferred(
                self.publisher.publish, topic=parsed.topic, msg=parsed.msg, modname=parsed.modname)
        except Exception as e:
            self.counters.incr("mail", "failed")
            log.warn("Publishing mail {key} from {origin} failed ({error}); it stays unacknowledged",
                     key=key, origin=origin, error=e)
            raise
        self.record.add(key)
        await threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.record.sync)
        self.counters.incr("mail", PUBLISHED)
        log.info("Published {modname}.{topic} for mail {key} from {origin}",
                 modname=parsed.modname, topic=parsed.topic, key=key, origin=origin)
        return PUBLISHED

    async def to_quarantine(self, raw: bytes, reason: str, detail: str, origin: str) -> None:
        path = await threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self.quarantine.store, raw,
            f"{reason}: {detail}" if detail else reason)
        self._quarantined(reason, detail, origin, path)

    def _quarantined(self, reason: str, detail: str, origin: str, path: str) -> None:
        self.counters.incr("mail", QUARANTINED)
        self.counters.incr("quarantined", reason)
        log.warn("Quarantined mail from {origin} as {path}: {reason} ({detail})",
                 origin=origin, path=path, reason=reason, detail=detail)


# --- Maildir intake -----------------------------------------------------------------


class MaildirWatcher(Service):
    """
    Feeds the bridge from a Maildir's C{new/}, one mail at a time, in name order.

    Handled mail moves to C{cur/} (flag C{S}); quarantined mail leaves the
    Maildir for the quarantine; mail whose publish failed stays in C{new/}
    until the next rescan.
    """

    def __init__(self, bridge: MailBridge, path: str, *, rescan_interval: float = 60.0,
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self._reactor = reactor
        self.bridge = bridge
        self.path = path
        self.rescan_interval = rescan_interval
        self._notifier = None
        self._queue: list[str] = []
        self._queued: set[str] = set()
        self._worker: defer.Deferred | None = None
        self._rescan_call = None
        self._stopping = False

    def startService(self) -> None:
        from twisted.internet import inotify
        from twisted.python.filepath import FilePath

        _ensure_maildir(self.path)
        super().startService()
        self._stopping = False
        self._notifier = inotify.INotify(reactor=self._reactor)
        self._notifier.startReading()
        self._notifier.watch(FilePath(os.path.join(self.path, "new")),
                             mask=inotify.IN_MOVED_TO | inotify.IN_CLOSE_WRITE,
                             callbacks=[self._notified])
        self.rescan()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self._stopping = True
        if self._rescan_call is not None and self._rescan_call.active():
            self._rescan_call.cancel()
        self._rescan_call = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        self._queue.clear()
        self._queued.clear()
        worker = self._worker
        if worker is None:
            return defer.succeed(None)
        # Wait for the mail in hand, but not for ever: a publish that never
        # confirms leaves its mail in new/ for the next start.
        d: defer.Deferred = defer.Deferred()

        def finished(result):
            if not d.called:
                d.callback(None)
            return result

        worker.addBoth(finished)
        d.addTimeout(self.bridge.drain_timeout, self._reactor)
        d.addErrback(lambda f: log.warn("Stopped with mail {path} in hand; it stays in new/", path=self.path))
        return d

    def _notified(self, ignored, filepath, mask) -> None:
        self._enqueue(os.fsdecode(filepath.basename()))

    def _enqueue(self, name: str) -> None:
        if self._stopping or name.startswith(".") or name in self._queued:
            return
        self._queued.add(name)
        self._queue.append(name)
        if self._worker is None:
            self._worker = defer.Deferred.fromCoroutine(self._work())

            def done(_):
                self._worker = None

            self._worker.addBoth(done)

    def rescan(self) -> defer.Deferred:
        """
        Queue every mail in C{new/} (start-up, and every C{rescan_interval}).
        """
        if self._rescan_call is not None and self._rescan_call.active():
            self._rescan_call.cancel()
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                      lambda: sorted(os.listdir(os.path.join(self.path, "new"))))

        def got(names):
            for name in names:
                self._enqueue(name)

        def failed(f):
            log.failure("Cannot list {path}", f, path=self.path)

        def again(_):
            if not self._stopping and self.rescan_interval:
                self._rescan_call = self._reactor.callLater(self.rescan_interval, self.rescan)

        d.addCallbacks(got, failed)
        d.addBoth(again)
        return d

    async def _work(self) -> None:
        while self._queue and not self._stopping:
            name = self._queue.pop(0)
            try:
                await self._one(name)
            except Exception as e:
                log.warn("Mail {name} stays in new/: {error}", name=name, error=e)
            finally:
                self._queued.discard(name)

    def _read(self, path: str) -> tuple[int, bytes | None] | None:
        """
        C{None} if gone, C{(size, None)} if too large to read, else C{(size, bytes)}.
        """
        try:
            size = os.stat(path).st_size
            if size > self.bridge.max_mail_size:
                return size, None
            with open(path, "rb") as f:
                return size, f.read()
        except FileNotFoundError:
            return None

    async def _one(self, name: str) -> None:
        pool = self._reactor.getThreadPool()
        src = os.path.join(self.path, "new", name)
        got = await threads.deferToThreadPool(self._reactor, pool, self._read, src)
        if got is None:
            return  # already taken (a rescan raced an event)
        size, raw = got
        if raw is None:
            path = await threads.deferToThreadPool(
                self._reactor, pool, self.bridge.quarantine.store_file, src)
            self.bridge._quarantined("too-large", f"mail of {size} bytes, limit {self.bridge.max_mail_size}",
                                     f"maildir:{name}", path)
            return
        disposition = await self.bridge.ingest(raw, f"maildir:{name}")
        if disposition == QUARANTINED:
            await threads.deferToThreadPool(self._reactor, pool, os.unlink, src)
        else:
            base = name.split(":2,")[0]
            dst = os.path.join(self.path, "cur", base + ":2,S")
            await threads.deferToThreadPool(self._reactor, pool, os.rename, src, dst)


# --- SMTP / LMTP intake ---------------------------------------------------------------


@implementer(smtp.IMessage)
class _BridgeMessage:
    """
    One mail being received for one recipient; bounded in memory.
    """

    def __init__(self, bridge: MailBridge, peer: str) -> None:
        self.bridge = bridge
        self.peer = peer
        self.lines: list[bytes] = []
        self.size = 0
        self.oversize = False

    def lineReceived(self, line: bytes) -> None:
        self.size += len(line) + 1
        if self.size > self.bridge.max_mail_size:
            self.oversize = True
            return
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        raw = b"\n".join(self.lines) + b"\n"
        self.lines = []
        origin = f"smtp:{self.peer}"
        if self.oversize:
            return defer.Deferred.fromCoroutine(self._too_large(raw, origin))
        return self.bridge.ingest(raw, origin)

    async def _too_large(self, raw: bytes, origin: str) -> str:
        await self.bridge.to_quarantine(
            raw, "too-large", f"mail of {self.size} bytes, limit {self.bridge.max_mail_size} (truncated copy)",
            origin)
        return QUARANTINED

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class _Delivery:
    """
    Accepts any sender and recipient: the listener is for the local MTA only.
    """

    def __init__(self, bridge: MailBridge, peer: str) -> None:
        self.bridge = bridge
        self.peer = peer

    def receivedHeader(self, helo, origin, recipients):
        # None: every recipient's copy keeps the same bytes, so one mail is one key.
        return None

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user) -> Callable[[], _BridgeMessage]:
        return lambda: _BridgeMessage(self.bridge, self.peer)


class BridgeSMTP(smtp.ESMTP):
    """
    ESMTP, and LMTP after C{LHLO}: one reply per recipient after the data.

    The reply is sent only once the mail is published (or deduplicated,
    ignored, quarantined); a failed publish answers C{451} so the MTA retries.
    """

    MAX_LENGTH = 1024 * 1024
    noisy = False
    lmtp = False

    def extensions(self):
        ext = super().extensions()
        ext[b"8BITMIME"] = None
        ext[b"PIPELINING"] = None
        ext[b"SIZE"] = [str(self.factory.bridge.max_mail_size).encode()]
        return ext

    def do_LHLO(self, rest):
        self.lmtp = True
        self.do_EHLO(rest)

    def _messageHandled(self, resultList):
        replies = []
        for success, result in resultList:
            if success:
                replies.append((250, b"2.0.0 Ok: " + str(result).encode("ascii")))
            else:
                replies.append((451, b"4.3.0 Not published, try again later"))
        if not self.lmtp:
            failed = [r for r in replies if r[0] != 250]
            replies = failed[:1] or replies[:1]
        for code, text in replies:
            self.sendCode(code, text)


class SMTPFactory(smtp.SMTPFactory):
    """
    Builds L{BridgeSMTP} protocols delivering into one L{MailBridge}.
    """

    protocol = BridgeSMTP
    timeout = 300

    def __init__(self, bridge: MailBridge) -> None:
        super().__init__()
        self.bridge = bridge

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        p.factory = self
        p.timeout = self.timeout
        peer = getattr(addr, "host", str(addr))
        p.delivery = _Delivery(self.bridge, f"{peer}:{getattr(addr, 'port', '')}")
        return p
