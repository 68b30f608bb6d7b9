# -*- test-case-name: tests.test_encoding -*-
"""
The bytes of a fedmsg message.

fedmsg signs the canonical JSON of an envelope, so every peer on the bus must
produce exactly the same bytes for the same dict: keys sorted, no spaces,
non-ASCII escaped as lowercase C{\\uXXXX}, floats in Python's shortest repr.
That is precisely C{json.dumps(sort_keys=True, separators=(",", ":"))}, so
the standard library is the reference, pinned by test vectors.

C{orjson}, when it is installed (the C{speed} extra), encodes about ten times
and decodes two to three times faster, and encoding and decoding are most of
the cost of publishing, relaying, subscribing and validating.  It is used
only where its answer provably equals the standard library's: identical bytes
when encoding (see L{_fast_dumps}), identical values when decoding (see
L{_fast_loads}).  Everything else goes to the standard library, so the bytes
we send, what we accept and what it decodes to do not depend on whether
orjson is installed.
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import re
import time
import uuid
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # optional: the "speed" extra
    _orjson = None

__all__ = [
    "DecodeError",
    "dumps",
    "dumps_bytes",
    "loads",
    "decode_body",
    "pretty_dumps",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FAST_DECODER",
]

#: The name of the fast decoder in use for bodies, or None (stdlib only).
FAST_DECODER = "orjson" if _orjson is not None else None

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


class DecodeError(ValueError):
    """
    A message body that is not a fedmsg envelope.

    @ivar reason: a short machine-friendly reason, used as a counter label.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _default(obj: Any) -> Any:
    # The same extras fedmsg.encoding's encoder knows about.
    if hasattr(obj, "__json__"):
        return obj.__json__()
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return time.mktime(obj.timetuple())
    if isinstance(obj, time.struct_time):
        return time.mktime(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    # Two more than fedmsg knows, as orjson encodes them natively: the
    # canonical bytes must not depend on which encoder ran.
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_default
)


def dumps(obj: Any) -> str:
    """
    Encode C{obj} as fedmsg's canonical JSON text (the form that is signed).
    """
    return dumps_bytes(obj).decode("ascii")


def dumps_bytes(obj: Any) -> bytes:
    """
    Encode C{obj} as the canonical JSON bytes sent as the second frame.
    """
    if _orjson is not None and type(obj) in _CONTAINERS:
        fast = _fast_dumps(obj)
        if fast is not None:
            return fast
    return _encoder.encode(obj).encode("ascii")


# Only containers are worth the fast encoder's checks; a lone string or
# number is quicker through the standard library.
_CONTAINERS = frozenset((dict, list, tuple))

if _orjson is not None:
    _FAST_DUMPS_OPTIONS = (
        _orjson.OPT_SORT_KEYS
        | _orjson.OPT_PASSTHROUGH_SUBCLASS
        | _orjson.OPT_PASSTHROUGH_DATETIME
        | _orjson.OPT_PASSTHROUGH_DATACLASS
    )

#: A number's mantissa right before an C{e-}: inside a container a number
#: follows C{[}, C{:} or C{,}.  (At most 19 characters: sign, 17 digits, dot.)
_MANTISSA_BEFORE = re.compile(rb"[\[:,]-?[0-9]+(?:\.[0-9]+)?\Z")
# (For two-letter needles re's literal search is twice as fast as bytes.find.)
_E_MINUS = re.compile(rb"e-")
_NULL = re.compile(rb"null")


def _has_small_float(out: bytes) -> bool:
    """
    Whether orjson's output holds a float below 1e-4, which it writes as
    C{0.00001} or C{2.5e-7} where Python writes C{1e-05} and C{2.5e-07}.
    Every other finite float it writes as Python's C{repr} does (checked on
    millions of floats by the tests).  Only the places where C{e-} or
    C{0.0000} occur are looked at, so text such as a msg_id's C{...3e-...}
    stays on the fast path.
    """
    m = _E_MINUS.search(out)
    while m is not None:
        i = m.start()
        if _MANTISSA_BEFORE.search(out, max(0, i - 24), i):
            return True
        m = _E_MINUS.search(out, i + 2)
    i = out.find(b"0.0000")
    while i != -1:
        j = i - 1 if i > 0 and out[i - 1] == 0x2D else i  # a minus sign
        if j > 0 and out[j - 1] in b"[:,":
            return True
        i = out.find(b"0.0000", i + 6)
    return False


def _refuse(obj: Any) -> Any:
    raise TypeError("not for the fast encoder")


def _fast_dumps(obj: Any) -> bytes | None:
    """
    orjson's canonical bytes for C{obj}, or None when the standard library
    must encode it.

    With C{OPT_SORT_KEYS} and no spaces, orjson's output is
    C{json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)}'s
    for plain data (dicts with string keys, lists, tuples, strings, 64-bit
    integers, floats, booleans, None; UUIDs and enums as L{_default} encodes
    them) except in four ways, each detected here and left to the standard
    library:
      - non-ASCII text (orjson writes UTF-8, we escape it): the output is not
        ASCII;
      - DEL, which we escape as C{\\u007f}: a 0x7f byte in the output;
      - floats below 1e-4, written differently: L{_has_small_float};
      - NaN and infinities, which orjson writes as C{null}: looked for in the
        value only when the output has a C{null}.
    Everything else orjson cannot encode or hands to C{default} (subclasses,
    datetimes, dataclasses, sets, objects with C{__json__}, big integers,
    non-string keys, deep nesting) raises, and the standard library decides.
    """
    try:
        out = _orjson.dumps(obj, default=_refuse, option=_FAST_DUMPS_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    if not out.isascii() or b"\x7f" in out:
        return None
    if _has_small_float(out):
        return None
    if _NULL.search(out) and _has_non_finite(obj):
        return None
    return out


def _has_non_finite(obj: Any) -> bool:
    """
    Whether C{obj} (plain data, as L{_fast_dumps} accepted it) holds a NaN or
    an infinity anywhere.
    """
    todo = [obj]
    while todo:
        o = todo.pop()
        t = type(o)
        if t is dict:
            todo.extend(o.values())
        elif t is list or t is tuple:
            todo.extend(o)
        elif t is float:
            if not math.isfinite(o):
                return True
        elif isinstance(o, enum.Enum):
            todo.append(o.value)
        elif isinstance(o, float) and not math.isfinite(o):
            return True  # a float-valued enum member
    return False


def loads(text: str | bytes) -> Any:
    """
    Decode JSON text, as fedmsg does (plain C{json.loads}).
    """
    return json.loads(text)


def decode_body(
    body: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> dict[str, Any]:
    """
    Decode a wire body into an envelope dict, or raise L{DecodeError}.

    The checks run cheapest first so garbage costs little: size, UTF-8, JSON,
    then the shape of an envelope.
    """
    if max_size and len(body) > max_size:
        raise DecodeError("too-large", f"{len(body)} bytes > limit {max_size}")
    # orjson checks UTF-8 as strictly as Python's codec, so the text is only
    # needed when the standard library decides.
    value = _fast_loads(body) if _orjson is not None else _NO_VALUE
    if value is _NO_VALUE:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("not-utf8", str(e)) from None
        try:
            value = json.loads(text)
        except ValueError as e:
            raise DecodeError("not-json", str(e)) from None
        except RecursionError:
            raise DecodeError("too-deep", "JSON nested deeper than the decoder's recursion limit") from None
    if type(value) is not dict:
        raise DecodeError("not-an-object", f"JSON {type(value).__name__}, not an object")
    return value


_NO_VALUE = object()

# One pass over the body maps digits to "0", "{" and "[" to "{", the rest to
# a space; then two C searches tell whether orjson's result can be trusted.
_SCAN_TABLE = bytes(
    0x30 if 0x30 <= c <= 0x39 else 0x7B if c in (0x7B, 0x5B) else 0x20 for c in range(256)
)
#: orjson turns integers beyond 64 bits into floats (json.loads keeps them
#: exact); every integer of at most 18 digits fits, so a body with no run of
#: 19 digits (anywhere, strings included) has none.
_LONG_DIGITS = b"0" * 19
#: json.loads recurses once per nesting level and fails (RecursionError) near
#: the interpreter's recursion limit, orjson at 1024 levels: bodies that might
#: nest this deep (counting every "{" and "[", strings included) use json.loads.
FAST_MAX_OPENERS = 256


def _fast_loads(body: bytes) -> Any:
    """
    orjson's value for C{body}, or C{_NO_VALUE} when C{json.loads} must decide.

    orjson differs from C{json.loads} in what it refuses (NaN, Infinity,
    numbers that overflow to infinity, lone surrogate escapes, nesting of 1024
    levels or more: all fall back to C{json.loads} on the exception), in big
    integers (it returns floats: excluded by the digit scan) and in how deep it
    nests (excluded by the bracket count).  Everything else decodes to equal
    values of the same types, floats included (both round correctly), which
    C{tests.test_speedups} checks on a large randomised corpus.
    """
    scan = body.translate(_SCAN_TABLE)
    if _LONG_DIGITS in scan or (len(body) > FAST_MAX_OPENERS and scan.count(b"{") > FAST_MAX_OPENERS):
        return _NO_VALUE
    try:
        return _orjson.loads(body)
    except _orjson.JSONDecodeError:  # also for bytes that are not UTF-8
        return _NO_VALUE


def pretty_dumps(obj: Any) -> str:
    """
    A human-readable form for display only: indented, keys sorted, Unicode kept.
    """
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_default)


def parse_frames(
    frames: list[bytes], max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> tuple[str, dict[str, Any]]:
    """
    Check a received zmq message and return C{(topic, envelope)}.

    A fedmsg message is exactly two frames, C{[topic, json]}; the JSON is an
    object whose C{topic} (when present) equals the first frame and which has a
    C{msg}.  Anything else raises L{DecodeError}.
    """
    if len(frames) != 2:
        raise DecodeError("bad-frames", f"{len(frames)} frames, expected 2")
    raw_topic, body = frames
    try:
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError("not-utf8", f"topic frame: {e}") from None
    envelope = decode_body(body, max_size)
    if "msg" not in envelope:
        raise DecodeError("not-an-envelope", "no 'msg' field")
    env_topic = envelope.get("topic", topic)
    if env_topic != topic:
        raise DecodeError(
            "topic-mismatch", f"frame topic {topic!r} != envelope topic {env_topic!r}"
        )
    return topic, envelope
