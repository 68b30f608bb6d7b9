# -*- test-case-name: tests.test_fastcheck -*-
"""
A validity-only check of fedmsg frames, for the relay.

The relay forwards the original bytes, so without a validator or a sink it
needs no Python values, only the answer of L{encoding.parse_frames}.  With
C{pysimdjson} installed, L{FrameCheck.topic} gets that answer without building
the envelope (about 5 microseconds for a 10 KB body instead of 40), and only
where it is I{provably} the same answer; everything else gets C{None} and goes
to L{encoding.parse_frames}, which decides (and names the reason for a drop).
So what the relay accepts does not depend on whether pysimdjson is installed.

Why a C{topic} here means L{encoding.parse_frames} returns that topic:

  - two frames, the topic frame UTF-8 (decoded by Python), the body within
    C{max_size}, the body valid UTF-8 (Python's codec decides for non-ASCII);
  - the body starts with C{"{"}: no BOM (simdjson skips one, C{json.loads}
    refuses it), no leading whitespace (both accept it; not worth a case);
  - simdjson is a strict RFC 8259 parser, and C{json.loads} accepts all of
    RFC 8259 (plus C{NaN}/C{Infinity}, which simdjson refuses), except:
    nesting deeper than C{json.loads}'s recursion limit (simdjson allows
    1024 levels): bodies longer than L{encoding.FAST_MAX_OPENERS} with more
    than that many C{"{"} and C{"["}, strings included, are not decided here,
    the bound L{encoding} uses for orjson; integers over 4300 digits
    (C{json.loads} refuses them): simdjson refuses every integer beyond 64
    bits.  What simdjson refuses (big integers, numbers that overflow, lone
    surrogate escapes, control characters, trailing data...) is not decided
    here either;
  - duplicate keys: C{json.loads} keeps the last C{"topic"}, simdjson's
    lookup finds the first, so bodies with two C{"topic"} keys are not decided
    here; C{"msg"}'s presence does not depend on duplicates;
  - the only value compared is the envelope's C{topic}, a string decoded from
    the same escapes by both (lone surrogates refused), compared as C{str}.

C{tests.test_fastcheck} checks this against L{encoding.parse_frames} on
tricky and randomised bodies.
"""

from __future__ import annotations

from typing import Sequence

from fedmsg_twisted.encoding import FAST_MAX_OPENERS

try:
    import simdjson as _simdjson
except ImportError:  # optional: pysimdjson
    _simdjson = None

__all__ = ["AVAILABLE", "FrameCheck"]

#: Is the fast check available (pysimdjson installed)?
AVAILABLE = _simdjson is not None

# bytes.translate(None, this) keeps only "{" and "[": their count bounds the
# nesting depth (one C pass; cheaper than two bytes.count).
_ALL_BUT_OPENERS = bytes(c for c in range(256) if c not in b"{[")


class FrameCheck:
    """
    A reusable check (it owns a simdjson parser); not thread-safe.
    """

    def __init__(self, max_size: int) -> None:
        if _simdjson is None:
            raise RuntimeError("pysimdjson is not installed")
        self.max_size = max_size
        self._parser = _simdjson.Parser()

    def topic(self, frames: Sequence[bytes]) -> str | None:
        """
        The topic of C{frames} if L{encoding.parse_frames} surely accepts
        them, else C{None} (it must decide).
        """
        if len(frames) != 2:
            return None
        raw_topic, body = frames
        max_size = self.max_size
        if body[:1] != b"{" or (max_size and len(body) > max_size):
            return None
        if len(body) > FAST_MAX_OPENERS and len(body.translate(None, _ALL_BUT_OPENERS)) > FAST_MAX_OPENERS:
            return None
        try:
            topic = raw_topic.decode("utf-8")
            if not body.isascii():
                body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        try:
            doc = self._parser.parse(body)
        except RuntimeError:
            # Big integers, or a proxy into the last document still alive
            # (the parser then refuses to reuse its buffer): start afresh.
            self._parser = _simdjson.Parser()
            return None
        except Exception:
            return None
        if type(doc) is not _simdjson.Object:
            return None
        keys = list(doc.keys())
        if "msg" not in keys or keys.count("topic") > 1:
            return None
        env_topic = doc.get("topic", topic)
        if type(env_topic) is not str or env_topic != topic:
            return None
        return topic
