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
import time
import uuid
from typing import Any, Callable, Mapping

__all__ = ["build_topic", "new_msg_id", "Envelopes", "guess_calling_module"]


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


def new_msg_id(now: Callable[[], float] = time.time) -> str:
    """
    C{YEAR-uuid4}, the year from the local clock as fedmsg does.
    """
    return f"{time.localtime(now()).tm_year}-{uuid.uuid4()}"


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

    def topic(self, topic: str | None, modname: str | None) -> str:
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
            "msg_id": f"{time.localtime(now).tm_year}-{uuid.uuid4()}",
            "i": next(self._counter),
            "username": self._username,
        }
