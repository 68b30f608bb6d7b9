# -*- test-case-name: tests.test_envelope -*-
"""
Building fedmsg envelopes: the topic, the msg_id, the per-process counter.

These are fedmsg 1.1.7's rules, kept exactly, because consumers parse topics
(C{topic.split('.')[3]} is the service) and archives key on C{msg_id}.
"""

from __future__ import annotations

import getpass
import inspect
import itertools
import os
import threading
import time
from typing import Any, Callable, Mapping

__all__ = ["build_topic", "new_msg_id", "uuid4_text", "Envelopes", "guess_calling_module"]


def guess_calling_module(default: str = "__main__") -> str:
    """
    The top-level package of the first caller outside this project, as
    fedmsg guesses a modname when none is given.
    """
    for frame in inspect.stack()[1:]:
        mod = frame.frame.f_globals.get("__name__", "")
        top = mod.split(".")[0]
        if top and top not in ("fedmsg_twisted", "twisted", "txzmq"):
            return top
    return default


def build_topic(topic_prefix: str, environment: str, modname: str, topic: str) -> str:
    """
    C{PREFIX.ENV.MODNAME.TOPIC}, with fedmsg's bypass: a C{modname.topic}
    that already starts with the prefix is used as it is.
    """
    t = f"{modname}.{topic}"
    if not t.startswith(topic_prefix):
        t = f"{topic_prefix}.{environment}.{t}"
    return t


# The RFC 4122 variant nibble of a uuid4: "10" and two random bits.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


# os.urandom in 4 KiB draws rather than one system call per msg_id: a pool
# per thread (no two threads share bytes), emptied in a forked child (which
# must not repeat its parent's ids).
_POOL_BYTES = 4096
_pools = threading.local()
os.register_at_fork(after_in_child=lambda: _pools.__dict__.clear())


def _random16() -> bytes:
    pools = _pools
    try:
        pool, pos = pools.pool, pools.pos
    except AttributeError:
        pool, pos = b"", 0
    if pos >= len(pool):
        pool, pos = os.urandom(_POOL_BYTES), 0
        pools.pool = pool
    pools.pos = pos + 16
    return pool[pos : pos + 16]


def uuid4_text(urandom: Callable[[int], bytes] | None = None) -> str:
    """
    C{str(uuid.uuid4())}, without building a L{uuid.UUID}: 16 random bytes
    from C{os.urandom} (or C{urandom}) in the canonical lowercase form, with
    the version nibble set to 4 and the variant bits to RFC 4122 ("10"), as
    C{uuid.uuid4} does.
    """
    h = (_random16() if urandom is None else urandom(16)).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# (second, year): localtime is the same for the whole of one second, since
# UTC offsets are whole seconds.  One tuple, replaced whole (thread-safe).
_year_cache: tuple[int, int] = (-1, 0)


def _year(now: float) -> int:
    global _year_cache
    second = int(now // 1)
    cached = _year_cache
    if cached[0] == second:
        return cached[1]
    year = time.localtime(second).tm_year
    _year_cache = (second, year)
    return year


def new_msg_id(now: Callable[[], float] = time.time) -> str:
    """
    C{YEAR-uuid4}, the year from the local clock as fedmsg does.
    """
    return f"{_year(now())}-{uuid4_text()}"


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "unknown"


class Envelopes:
    """
    Makes envelopes for one publisher, owning its C{i} counter.

    @ivar config: the L{fedmsg_twisted.config.Config} giving prefix and environment.
    """

    def __init__(self, config: Mapping[str, Any], now: Callable[[], float] = time.time) -> None:
        self.config = config
        self._now = now
        self._counter = itertools.count(1)
        self._username = _username()
        # Full topics by (topic, modname); the config is read-only.  Not
        # used without a modname, which is guessed from the caller each time.
        self._topics: dict[tuple[str | None, str], str] = {}

    def topic(self, topic: str | None, modname: str | None) -> str:
        if modname:
            key = (topic, modname)
            full = self._topics.get(key)
            if full is None:
                if len(self._topics) >= 4096:
                    self._topics.clear()
                full = self._topics[key] = build_topic(
                    self.config["topic_prefix"],
                    self.config["environment"],
                    modname,
                    topic or "unspecified",
                )
            return full
        return build_topic(
            self.config["topic_prefix"],
            self.config["environment"],
            modname or guess_calling_module(),
            topic or "unspecified",
        )

    def make(self, topic: str | None = None, msg: Any = None, modname: str | None = None) -> dict[str, Any]:
        """
        A new unsigned envelope, exactly the fields fedmsg 1.1.7 sends.
        """
        now = self._now()
        return {
            "topic": self.topic(topic, modname),
            "msg": msg or {},
            "timestamp": int(now),
            "msg_id": f"{_year(now)}-{uuid4_text()}",
            "i": next(self._counter),
            "username": self._username,
        }
