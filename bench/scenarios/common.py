"""
What every benchmark worker shares: payloads, the stdin control channel,
CPU accounting and the one-line result.

Stdlib and pyzmq only: this module is imported by workers running in our
venv *and* in the real fedmsg 1.1.7 venv.

Protocol with the driver (bench/run.py), one line each way:
  - a worker prints C{READY} once its sockets exist;
  - a sender publishes I{probe} messages (topic ending C{.bench.probe}) every
    20 ms until it reads C{go} on stdin, so the driver knows every subscriber
    is attached before the measured messages go out (PUB/SUB slow joiner);
  - a receiver prints C{WARM} once it has seen a probe from every sender;
  - an intermediary (relay, forwarder) takes C{mark} (start of the measured
    window) and C{stop} (report and exit);
  - every worker ends with C{RESULT {json}}: counts, monotonic timestamps
    (CLOCK_MONOTONIC is system-wide, so they compare across processes) and
    its own CPU time (getrusage, all threads) over the measured window.
"""

from __future__ import annotations

import json
import os
import resource
import select
import sys
import time

PROBE = ".bench.probe"
TOPIC = "org.bench.dev.bench.data"
PROBE_TOPIC = "org.bench.dev.bench" + PROBE


def cpu() -> float:
    """
    CPU seconds (user + system, every thread) this process used so far.
    """
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def payload(size: int, seq: int = 0) -> dict:
    """
    A JSON C{msg} whose envelope body is about C{size} bytes: a list of
    package records (realistic nesting, not one long string).
    """
    if size <= 400:
        return {"seq": seq, "user": "alice", "package": "python-twisted", "comment": "x" * max(0, size - 190)}
    items = []
    n = 0
    budget = size - 200
    while budget > 0:
        item = {"id": n, "name": f"pkg-{n}", "version": f"1.{n}.0-{n % 7}", "arch": "x86_64", "ok": n % 3 == 0, "tags": ["a", "bb", "ccc"]}
        items.append(item)
        budget -= 100
        n += 1
    return {"seq": seq, "user": "alice", "items": items}


def envelope(msg: dict, i: int = 1, topic: str = TOPIC) -> dict:
    return {
        "topic": topic,
        "msg": msg,
        "timestamp": int(time.time()),
        "msg_id": f"2026-00000000-0000-0000-0000-{i:012d}",
        "i": i,
        "username": "bench",
    }


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def canonical(obj) -> bytes:
    """
    fedmsg's canonical JSON, with a prebuilt encoder as our encoding module does.
    """
    return _ENCODER.encode(obj).encode("ascii")


def frames(size: int, i: int = 1) -> list[bytes]:
    return [TOPIC.encode(), canonical(envelope(payload(size, i), i))]


class Bodies:
    """
    Prebuilt bodies whose C{msg_id} is made unique per message by splicing
    12 digits into the bytes (subscribers drop duplicate msg_ids, as they
    should), so a raw sender pays no JSON encoding per message.
    """

    MARK = b"-000000000000"

    def __init__(self, size: int, count: int = 64) -> None:
        self.parts = []
        for k in range(count):
            body = canonical(envelope(payload(size, k), 0))
            pre, post = body.split(self.MARK, 1)
            self.parts.append((pre + b"-", post))
        self.topic = TOPIC.encode()

    def frames(self, i: int) -> list[bytes]:
        pre, post = self.parts[i % len(self.parts)]
        return [self.topic, b"%b%012d%b" % (pre, i, post)]


_probe_seq = [0]


def probe_frames(sender: str) -> list[bytes]:
    _probe_seq[0] += 1
    env = envelope({"sender": sender}, 0, PROBE_TOPIC)
    env["msg_id"] = f"2026-probe-{sender}-{os.getpid()}-{_probe_seq[0]}"
    return [PROBE_TOPIC.encode(), canonical(env)]


HEARTBEAT = ".relay._heartbeat"


def is_probe(topic) -> bool:
    if isinstance(topic, bytes):
        return topic.endswith(PROBE.encode())
    return topic.endswith(PROBE)


def is_heartbeat(topic) -> bool:
    """
    The relay's own heartbeats (gap healing): not the benchmark's messages.
    """
    if isinstance(topic, bytes):
        return topic.endswith(HEARTBEAT.encode())
    return topic.endswith(HEARTBEAT)


class Control:
    """
    Non-blocking line reader on stdin.
    """

    def __init__(self) -> None:
        self._buf = b""
        self.eof = False

    def lines(self, timeout: float = 0.0) -> list[str]:
        if self.eof:
            return []
        r, _, _ = select.select([0], [], [], timeout)
        if not r:
            return []
        data = os.read(0, 4096)
        if not data:
            self.eof = True
            return ["stop"]
        self._buf += data
        *complete, self._buf = self._buf.split(b"\n")
        return [c.decode().strip() for c in complete if c.strip()]

    def wait_for(self, word: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
            if word in self.lines(left) or self.eof:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False


def say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def result(**kw) -> None:
    say("RESULT " + json.dumps(kw))


class Receiver:
    """
    Counts measured messages, notes first/last arrival and CPU at the end;
    optionally keeps latencies (C{msg["ts"]} is the sender's monotonic time).
    """

    def __init__(self, expected: int, senders: int = 1, latency: bool = False) -> None:
        self.expected = expected
        self.senders = senders
        self.seen_probes: set = set()
        self.count = 0
        self.t_first = self.t_last = None
        self.cpu0 = cpu()
        self.cpu1 = None
        self.latency = [] if latency else None
        self.warm = False
        self.done = False

    def probe(self, sender) -> None:
        if not self.warm:
            self.seen_probes.add(sender)
            if len(self.seen_probes) >= self.senders:
                self.warm = True
                self.cpu0 = cpu()
                say("WARM")

    def got(self, msg: dict | None = None) -> None:
        now = time.monotonic()
        if self.count == 0:
            self.t_first = now
        self.count += 1
        self.t_last = now
        if self.latency is not None and msg is not None:
            self.latency.append(now - msg["ts"])
        if self.count >= self.expected and not self.done:
            self.done = True
            self.cpu1 = cpu()

    def report(self, **extra) -> None:
        c1 = self.cpu1 if self.cpu1 is not None else cpu()
        out = dict(role="receiver", count=self.count, expected=self.expected, t_first=self.t_first,
                   t_last=self.t_last, cpu=c1 - self.cpu0, rss_kb=rss_kb(), **extra)
        if self.latency is not None:
            out["latency"] = self.latency
        result(**out)
