# -*- test-case-name: tests.test_hub -*-
"""
What a hub consumer is: a small class with topics and a C{consume} method.

A fedmsg consumer ports over by changing its base class::

    from fedmsg_twisted.consumer import Consumer

    class Bodhi(Consumer):
        topic = "org.fedoraproject.prod.bodhi.*"

        def consume(self, message):
            log.info("{t}", t=message["topic"])   # message["body"] is the envelope

Register it under the C{fedmsg_twisted.consumers} entry point group, or name it
with C{twistd fedmsg-hub --consumer mypkg.mod:Bodhi}.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["Consumer", "ConsumerError", "normalize_topics"]


class ConsumerError(ValueError):
    """
    A consumer class that cannot be used (bad topic, bad settings).
    """


def normalize_topics(topic: Any, owner: str = "consumer") -> tuple[str, ...]:
    """
    fedmsg-style topics to zmq prefixes: C{"a.b.*"} -> C{"a.b."}, C{"*"} -> C{""}.

    zmq subscriptions are prefixes, so a C{*} is only allowed at the end.
    """
    if isinstance(topic, str):
        topics = [topic]
    elif isinstance(topic, (list, tuple)) and all(isinstance(t, str) for t in topic):
        topics = list(topic)
    else:
        raise ConsumerError(f"{owner}: topic must be a string or a list of strings; got {topic!r}")
    if not topics:
        raise ConsumerError(f"{owner}: topic is an empty list (use '*' for everything)")
    out = []
    for t in topics:
        prefix = t.rstrip("*")
        if "*" in prefix:
            raise ConsumerError(
                f"{owner}: topic {t!r} has a '*' before its end; zmq subscribes by prefix, "
                "so only a trailing '*' is allowed"
            )
        out.append(prefix)
    return tuple(dict.fromkeys(out))


class Consumer:
    """
    Base class of hub consumers.

    @cvar topic: a topic prefix or a list of them; a trailing C{*} is
        stripped (fedmsg style), C{"*"} means everything.
    @cvar validate_signatures: drop messages whose signature does not
        validate before C{consume} sees them; L{None} = the config's
        C{validate_signatures}.
    @cvar queue_size: messages held for this consumer while it is busy;
        when full, the oldest is dropped and counted.  L{None} = the hub's
        default (C{hub_queue_size}).
    @ivar config: the hub's L{fedmsg_twisted.config.Config}.
    @ivar hub: the L{fedmsg_twisted.hub.HubService} running it (its C{config},
        C{counters}).
    """

    topic: str | list[str] = "*"
    validate_signatures: bool | None = None
    queue_size: int | None = None

    def __init__(self, config: Mapping[str, Any], hub: Any = None) -> None:
        self.config = config
        self.hub = hub

    @property
    def name(self) -> str:
        """
        The label in logs and metrics; the class name by default.
        """
        return type(self).__name__

    def topics(self) -> tuple[str, ...]:
        return normalize_topics(self.topic, self.name)

    def consume(self, message: dict[str, Any]) -> Any:
        """
        Handle one message: C{{"topic": str, "body": envelope, "name": str,
        "endpoint": str}}.  May return a Deferred; the next message for this
        consumer waits until it fires.  An exception is logged and counted and
        the next message is delivered.

        Blocking work (files, databases, subprocesses) belongs in a thread
        (C{deferToThread}): the hub's one reactor serves every consumer.
        """
        raise NotImplementedError(f"{self.name} must define consume(message)")

    def stop(self) -> Any:
        """
        Called once when the hub stops, after the queue is drained; may
        return a Deferred.
        """
        return None
