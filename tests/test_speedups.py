"""
The fast paths give exactly what the slow ones give.

Decoding and encoding may use orjson (L{fedmsg_twisted.encoding._fast_loads},
L{fedmsg_twisted.encoding._fast_dumps}); these tests compare them with the
standard library on large randomised corpora, strictly: same acceptance, same
types, same float bits, same key order, same bytes.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import time
import uuid

from twisted.trial import unittest

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the randomised corpus tests still run without it
    class _Anything:
        def __getattr__(self, name):
            return lambda *a, **k: None

    st = HealthCheck = _Anything()

    def settings(*a, **k):
        return lambda f: f

    def given(*a, **k):
        def skipped(f):
            f.skip = "hypothesis is not installed"
            return f

        return skipped

from fedmsg_twisted import encoding, envelope

_SETTINGS = settings(
    max_examples=1500, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def strict_same(a, b) -> bool:
    """
    Equal values of identical types; floats by their bits, dicts in order.
    Iterative, for deeply nested values.
    """
    todo = [(a, b)]
    while todo:
        a, b = todo.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, float):
            if repr(a) != repr(b) or math.copysign(1.0, a) != math.copysign(1.0, b):
                return False
        elif isinstance(a, dict):
            if list(a) != list(b):
                return False
            todo.extend((a[k], b[k]) for k in a)
        elif isinstance(a, list):
            if len(a) != len(b):
                return False
            todo.extend(zip(a, b))
        elif a != b:
            return False
    return True


def reference_decode_body(body: bytes, max_size: int = encoding.DEFAULT_MAX_MESSAGE_SIZE):
    """
    decode_body as it was, stdlib only: the behaviour the fast path must keep.
    """
    if max_size and len(body) > max_size:
        return ("error", "too-large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return ("error", "not-utf8")
    try:
        value = json.loads(text)
    except ValueError:
        return ("error", "not-json")
    except RecursionError:
        return ("error", "too-deep")
    if not isinstance(value, dict):
        return ("error", "not-an-object")
    return ("ok", value)


def actual_decode_body(body: bytes):
    try:
        return ("ok", encoding.decode_body(body))
    except encoding.DecodeError as e:
        return ("error", e.reason)


def reference_parse_frames(topic: bytes, body: bytes):
    """
    parse_frames' rules on top of the stdlib-only reference decode.
    """
    status, value = reference_decode_body(body)
    if status == "error":
        return (status, value)
    if not isinstance(value, dict):
        return ("error", "not-an-object")
    if "msg" not in value:
        return ("error", "not-an-envelope")
    if value.get("topic", topic.decode()) != topic.decode():
        return ("error", "topic-mismatch")
    return ("ok", value)


def actual_parse_frames(topic: bytes, body: bytes):
    try:
        return ("ok", encoding.parse_frames([topic, body])[1])
    except encoding.DecodeError as e:
        return ("error", e.reason)


class FastDecodeMixin:
    def assertSameDecode(self, text: str) -> None:
        """
        The fast decoder, when it answers at all, answers as json.loads does;
        and decode_body as a whole behaves as the stdlib-only reference.
        """
        body = text.encode("utf-8", "surrogatepass")
        expected = reference_decode_body(body)
        actual = actual_decode_body(body)
        self.assertEqual(expected[0], actual[0], f"{text[:200]!r}: {expected} vs {actual}")
        if expected[0] == "ok":
            self.assertTrue(strict_same(expected[1], actual[1]), f"{text[:200]!r}: {expected[1]!r} vs {actual[1]!r}")
        else:
            self.assertEqual(expected[1], actual[1])
        # parse_frames takes the fast path on its own.
        for topic in (b"t", b"org.x.dev.y"):
            expected = reference_parse_frames(topic, body)
            actual = actual_parse_frames(topic, body)
            self.assertEqual(expected[0], actual[0], f"{text[:200]!r}: {expected} vs {actual}")
            if expected[0] == "ok":
                self.assertTrue(strict_same(expected[1], actual[1]), text[:200])
            else:
                self.assertEqual(expected[1], actual[1], text[:200])
        if encoding._orjson is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return  # not a possible body: decode_body refused it as not-utf8
            fast = encoding._fast_loads(body)
            if fast is not encoding._NO_VALUE:
                self.assertTrue(strict_same(json.loads(text), fast), text[:200])


# --- strategies -------------------------------------------------------------------

_number_text = st.from_regex(
    re.compile(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,4})?"), fullmatch=True
)
_floats = st.floats(allow_nan=True, allow_infinity=True)
_ints = st.one_of(
    st.integers(min_value=-(2**63) - 5, max_value=2**64 + 5),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
)
_texts = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=30)
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), _ints, _floats, _texts),
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(_texts, children, max_size=6),
    ),
    max_leaves=40,
)


def _dump_variants(value) -> list[str]:
    return [
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True),
        json.dumps(value, ensure_ascii=False, indent=1),
    ]


class FastDecodeTests(FastDecodeMixin, unittest.TestCase):
    """
    decode_body with the fast decoder (when installed) against json.loads.
    """

    def test_decoderChoice(self) -> None:
        """
        FAST_DECODER names orjson exactly when it is importable.
        """
        try:
            import orjson  # noqa: F401
        except ImportError:
            self.assertIsNone(encoding.FAST_DECODER)
        else:
            self.assertEqual(encoding.FAST_DECODER, "orjson")

    def test_edgeCases(self) -> None:
        """
        The known differences between orjson and json.loads all end up with
        json.loads' answer.
        """
        cases = [
            "18446744073709551616", "18446744073709551615", "-9223372036854775809",
            "-9223372036854775808", "123456789012345678901234567890", "1e400", "-1e400",
            "1e-400", "-0", "-0.0", "0.0", "1E5", "1e+5", "NaN", "-Infinity", "Infinity",
            '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '{"a":1,"a":2,"b":3}',
            '{"b":1,"a":2,"b":3}', "\ufeff{}", " {} ", "{}\n", "[1,]", "01", "1.", ".5", "+1",
            '"\x01"', '"\x7f"', '"\\u0000"', '"\\/"', '"\\x"', "1e5000", "2.2250738585072011e-308",
            "4.9e-324", "5e-325", "9007199254740993", "1.7976931348623157e309", "0e0", "-0e-0",
            '{"a":1} x', '"\u2028"', "1 2", '{"\\ud800":1}', "", " ", "nul", "true", "[]",
            '{"a":"\\ud800\\udc00"}', '{"a":"\\uD834\\uDD1E"}', "-", "1e", "1e+", "[-]",
            '{"a":NaN}', '{"x":[1,2,{"y":null}]}', "\t{\r\n}\t",
        ]
        for c in cases:
            self.assertSameDecode(c)
            self.assertSameDecode('{"msg":' + c + "}")
            self.assertSameDecode('{"msg":[' + c + "]}")

    def test_invalidUtf8(self) -> None:
        """
        Bodies that are not UTF-8 (overlong forms, surrogates, code points
        beyond U+10FFFF, truncated or stray sequences, Latin-1) are refused
        as not-utf8 whichever decoder looks first.
        """
        bad = [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80",
               b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xff", b"\xfe", b"\x80", b"\xbf",
               b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xe9t\xe9", b"\xc3\x28"]
        for seq in bad:
            for body in (b'{"msg":"' + seq + b'"}', b'{"msg":1,"' + seq + b'":2}', b'{"msg":1}' + seq):
                self.assertEqual(reference_decode_body(body), ("error", "not-utf8"), body)
                self.assertEqual(actual_decode_body(body), ("error", "not-utf8"), body)

    def test_bigIntegersStayIntegers(self) -> None:
        """
        orjson would make integers beyond 64 bits floats; we never do.
        """
        for n in (2**64, 2**64 + 1, -(2**63) - 1, 10**19, 10**50, -(10**30)):
            body = json.dumps({"msg": {"n": n}}).encode()
            got = encoding.decode_body(body)["msg"]["n"]
            self.assertIs(type(got), int)
            self.assertEqual(got, n)

    def test_nestingLimits(self) -> None:
        """
        Deep nesting decodes as json.loads does, and nesting json.loads cannot
        handle is a counted DecodeError, not a RecursionError.
        """
        for depth in (10, 100, 255, 256, 257, 300, 500, 1024, 1025, 5000, 100000):
            self.assertSameDecode('{"msg":' + "[" * depth + "]" * depth + "}")
        e = self.assertRaises(encoding.DecodeError, encoding.decode_body,
                              b'{"msg":' + b"[" * 100000 + b"]" * 100000 + b"}")
        self.assertEqual(e.reason, "too-deep")

    @_SETTINGS
    @given(_json_values)
    def test_randomDocuments(self, value) -> None:
        """
        Random JSON values of every type, as canonical and as indented text,
        and as the msg of an envelope.
        """
        for text in _dump_variants(value) + _dump_variants({"msg": value, "topic": "t"}):
            self.assertSameDecode(text)

    @_SETTINGS
    @given(_json_values, st.integers(min_value=0, max_value=10**6), st.sampled_from(
        list(string.printable) + ["\\u", "\\ud800", "\u00e9", "\\", '"', "{", "[", "]", "}", ",", ":", "e", "E",
                                  "-", "+", ".", "0", "9", "NaN", "\x00", "\x1f"]))
    def test_mutatedDocuments(self, value, where, what) -> None:
        """
        Valid documents with one character inserted, replaced or deleted:
        accepted and refused exactly as json.loads does.
        """
        text = json.dumps({"msg": value})
        i = where % (len(text) + 1)
        for mutated in (text[:i] + what + text[i:], text[:i] + what + text[i + 1:], text[:i] + text[i + 1:]):
            self.assertSameDecode(mutated)

    @_SETTINGS
    @given(_number_text)
    def test_numberLiterals(self, literal) -> None:
        """
        Every shape of JSON number literal, up to 31 digits and 4-digit exponents.
        """
        self.assertSameDecode(literal)
        self.assertSameDecode('{"msg":' + literal + "}")
        self.assertSameDecode('{"msg":[' + literal + "," + literal + "]}")

    def test_floatCorpus(self) -> None:
        """
        20,000 random floats of all magnitudes (as repr, truncated, padded
        with digits past double precision, and as random bit patterns).
        """
        rng = random.Random(7)
        parts = []
        for _ in range(20000):
            kind = rng.randrange(4)
            if kind == 0:
                f = float(f"{rng.uniform(-1, 1):.17f}e{rng.randint(-330, 310)}")
                lit = repr(f)
            elif kind == 1:
                f = struct_float(rng.getrandbits(64))
                lit = repr(f)
            elif kind == 2:
                digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 18)))
                lit = f"{rng.choice(['', '-'])}{int(digits)}.{rng.randint(0, 10**rng.randint(1, 25))}e{rng.randint(-340, 320)}"
            else:
                lit = f"{rng.randint(-10**18 + 1, 10**18 - 1)}"
            if lit in ("nan", "inf", "-inf"):
                lit = "0.5"
            parts.append(lit)
        for i in range(0, len(parts), 100):
            chunk = parts[i:i + 100]
            self.assertSameDecode('{"msg":[' + ",".join(chunk) + "]}")


def reference_dumps(obj):
    """
    The canonical bytes from the standard library alone (fedmsg's encoder
    plus the two types L{encoding._default} adds), or the exception type.
    """
    try:
        return encoding._encoder.encode(obj).encode("ascii")
    except (TypeError, ValueError, RecursionError) as e:
        return type(e)


def actual_dumps(obj):
    try:
        return encoding.dumps_bytes(obj)
    except (TypeError, ValueError, RecursionError) as e:
        return type(e)


_KEY_CHARS = st.sampled_from(["a", "b", "A", "_", "é", "\x7f", "\x00", "\x1f", "\n", '"', "\\", "/",
                              "\u2028", "\U0001f600", "\ud800", "0", "e", "-", " "])
_keys = st.one_of(_texts, st.lists(_KEY_CHARS, max_size=4).map("".join))
_small_floats = st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False)
_encodable = st.recursive(
    st.one_of(st.none(), st.booleans(), _ints, _floats, _small_floats, _texts, st.lists(_KEY_CHARS, max_size=5).map("".join)),
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(_keys, children, max_size=6),
    ),
    max_leaves=40,
)


class FastEncodeTests(unittest.TestCase):
    """
    encoding.dumps_bytes with orjson (when installed) gives exactly the
    standard library's canonical bytes, or the standard library's error.
    """

    def assertSameEncode(self, obj) -> None:
        expected = reference_dumps(obj)
        actual = actual_dumps(obj)
        self.assertEqual(expected, actual, repr(obj)[:300])
        if isinstance(expected, bytes):
            self.assertEqual(encoding.dumps(obj), expected.decode("ascii"))

    def test_fastPathIsTaken(self) -> None:
        """
        Plain envelopes (ASCII, integers, ordinary floats, nulls) take the
        fast path when orjson is installed: the speed-up is real, not only
        the fallback.
        """
        if encoding._orjson is None:
            raise unittest.SkipTest("orjson is not installed (the speed extra)")
        env = {"topic": "org.x.prod.a.b", "msg": {"n": [1, -2, 3.25, 1e20, None, True], "s": "re-run e-mail"},
               "i": 1, "msg_id": "2026-abc", "timestamp": 1700000000, "username": None}
        fast = encoding._fast_dumps(env)
        self.assertIsNotNone(fast)
        self.assertEqual(fast, reference_dumps(env))

    def test_differencesFallBack(self) -> None:
        """
        Everything orjson writes differently ends up with the standard
        library's bytes: non-ASCII, DEL, small floats, NaN and infinities
        (also inside enums), big integers, non-string keys, subclasses,
        datetimes, sets, objects with __json__, tuples, deep nesting, cycles.
        """
        import collections
        import dataclasses
        import datetime
        import enum

        class Colour(enum.Enum):
            RED = 1
            PAIR = (1, "é")
            NOT_A_NUMBER = float("nan")

        class Level(enum.IntEnum):
            HIGH = 7

        class Kind(str, enum.Enum):
            BUG = "bug"

        class Weird(float, enum.Enum):
            TINY = 1e-7
            HUGE = float("inf")

        class Text(str):
            pass

        class Number(int):
            pass

        class Mapping(dict):
            pass

        class Items(list):
            pass

        class Ratio(float):
            pass

        @dataclasses.dataclass
        class Point:
            x: int

        class Jsonable:
            def __json__(self):
                return {"b": 1e-9, "a": "x"}

        Pair = collections.namedtuple("Pair", "a b")
        loop: list = []
        loop.append(loop)
        deep: list = []
        for _ in range(300):
            deep = [deep]
        cases = [
            "é", "\x7f", "a\x7fb", {"\x7f": 1}, {"é": 1}, "\U0001f600", "\ud800", "\x00\x1f\n\t\"\\/",
            1e-5, 1.5e-7, 0.0001, 0.00009999, 5e-324, -1e-300, 1e16, 1e22, -0.0, 0.0, 1e-4, 123.0,
            float("nan"), float("inf"), -float("inf"), [None, float("nan")], {"a": None, "b": float("inf")},
            2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30,
            {1: "a"}, {None: 1, "b": 2}, {True: 1}, {1.5: 1}, {Text("k"): 1},
            Text("s"), Number(3), Mapping(b=1, a=2), Items([2, 1]), Ratio(1.5), collections.OrderedDict(b=1, a=2),
            Colour.RED, Colour.PAIR, Colour.NOT_A_NUMBER, [Colour.NOT_A_NUMBER, None], Level.HIGH, Kind.BUG,
            {"k": Kind.BUG}, Weird.TINY, [Weird.HUGE, None],
            uuid.UUID("12345678-1234-5678-1234-567812345678"), {uuid.uuid4().hex: uuid.uuid4()},
            datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2), time.localtime(0),
            {1, 2}, frozenset(["a"]), Point(1), Jsonable(), Pair(1, 2), (1, (2, [3])), b"bytes",
            deep, loop, object(), 1 + 2j,
        ]
        for case in cases:
            self.assertSameEncode(case)
            self.assertSameEncode({"msg": case, "topic": "t"})
            self.assertSameEncode([case, "null"])

    def test_uuidsAndEnums(self) -> None:
        """
        UUIDs encode as their canonical text and enums as their value, with
        or without orjson (fedmsg's encoder refused them).
        """
        import enum

        class Colour(enum.Enum):
            RED = "red"

        u = uuid.UUID("12345678-1234-5678-1234-567812345678")
        self.assertEqual(encoding.dumps({"u": u, "c": Colour.RED}),
                         '{"c":"red","u":"12345678-1234-5678-1234-567812345678"}')
        self.assertEqual(encoding._encoder.encode({"u": u, "c": Colour.RED}),
                         '{"c":"red","u":"12345678-1234-5678-1234-567812345678"}')

    def test_floatSweep(self) -> None:
        """
        Floats of every magnitude (1e-330 to 1e308, round decimals and random
        bit patterns): the same text as repr, through whichever path.
        """
        rng = random.Random(11)
        values = []
        for e in range(-330, 309):
            for m in (1.0, 1.5, 2.5, 9.999999, 1.2345678901234567, 5.0):
                try:
                    values.append(float(f"{m}e{e}"))
                except OverflowError:
                    pass
        values += [struct_float(rng.getrandbits(64)) for _ in range(20000)]
        values += [rng.randint(-10**6, 10**6) / rng.choice([1, 10, 100, 10**4, 10**7]) for _ in range(5000)]
        values += [10 ** rng.uniform(-12, 25) for _ in range(5000)]
        for i in range(0, len(values), 50):
            chunk = values[i:i + 50]
            self.assertSameEncode({"msg": chunk})
            for v in chunk[:5]:
                self.assertSameEncode(v)

    def test_asciiEscapes(self) -> None:
        """
        Every code point below 0x100 alone and inside text, as a value and
        as a key.
        """
        for c in range(0x100):
            ch = chr(c)
            self.assertSameEncode({ch: ch, "k" + ch + "k": ["x" + ch + "y"]})

    def test_keyOrder(self) -> None:
        """
        Keys that sort differently by byte, by code point and by UTF-16 all
        come out in the standard library's order.
        """
        keys = ["", "a", "A", "a\x00", "ab", "b", "_", "~", "\x7f", "é", "\uffff", "\U0001f600", "\ue000", "Z"]
        for n in range(1, len(keys) + 1):
            self.assertSameEncode({k: i for i, k in enumerate(keys[:n])})
        self.assertSameEncode(dict(zip(reversed(keys), range(len(keys)))))

    @_SETTINGS
    @given(_encodable)
    def test_randomValues(self, value) -> None:
        """
        Random values of every type, alone and as the msg of an envelope.
        """
        self.assertSameEncode(value)
        self.assertSameEncode({"topic": "org.x.dev.y", "msg": value, "i": 1, "username": None})


def struct_float(bits: int) -> float:
    import struct

    return struct.unpack("<d", bits.to_bytes(8, "little"))[0]


class MsgIdTests(unittest.TestCase):
    """
    The msg_id is fedmsg's C{YEAR-uuid4}.
    """

    def test_format(self) -> None:
        """
        Every msg_id is YEAR- and a valid random (version 4, RFC 4122
        variant) UUID in canonical lowercase form, and they are unique.
        """
        seen = set()
        year = time.localtime().tm_year
        for _ in range(20000):
            msg_id = envelope.new_msg_id()
            y, _, rest = msg_id.partition("-")
            self.assertIn(int(y), (year, year + 1))
            u = uuid.UUID(rest)
            self.assertEqual(str(u), rest)
            self.assertEqual(u.version, 4)
            self.assertEqual(u.variant, uuid.RFC_4122)
            self.assertNotIn(rest, seen)
            seen.add(rest)

    def test_randomBits(self) -> None:
        """
        Apart from the fixed version and variant bits, every bit of the
        UUID varies (none stuck at 0 or 1).
        """
        ors, ands = 0, (1 << 128) - 1
        for _ in range(2000):
            n = uuid.UUID(envelope.new_msg_id().partition("-")[2]).int
            ors |= n
            ands &= n
        fixed = (0xF << 76) | (0x3 << 62)
        self.assertEqual(ors | fixed, (1 << 128) - 1)
        self.assertEqual(ands & ~fixed, 0)
        self.assertEqual((ands >> 76) & 0xF, 4)
        self.assertEqual((ands >> 62) & 0x3, 2)

    def test_threadsDoNotShareRandomBytes(self) -> None:
        """
        msg_ids drawn at once from many threads (each with its own pool of
        random bytes) are all different.
        """
        import threading

        results: list[list[str]] = [[] for _ in range(8)]

        def draw(out: list[str]) -> None:
            for _ in range(3000):
                out.append(envelope.uuid4_text())

        threads = [threading.Thread(target=draw, args=(r,)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [i for r in results for i in r]
        self.assertEqual(len(set(ids)), 8 * 3000)

    def test_forkedChildDoesNotRepeatParent(self) -> None:
        """
        A forked child does not reuse the random bytes its parent has
        drawn but not used yet.
        """
        import os

        envelope.uuid4_text()  # the parent's pool is filled
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its next ids and leave at once
            try:
                os.write(w, "\n".join(envelope.uuid4_text() for _ in range(50)).encode())
            finally:
                os._exit(0)
        os.close(w)
        parent = {envelope.uuid4_text() for _ in range(50)}
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        child = set(b"".join(chunks).decode().split("\n"))
        self.assertEqual(len(child), 50)
        self.assertEqual(parent & child, set())

    def test_yearFollowsTheClock(self) -> None:
        """
        The year comes from the given clock, also across a new year and
        when the clock goes back.
        """
        for when in ("2023-12-31 23:59:59", "2024-01-01 00:00:00", "2023-06-01 12:00:00", "1999-12-31 23:59:59"):
            t = time.mktime(time.strptime(when, "%Y-%m-%d %H:%M:%S"))
            for delta in (0.0, 0.4, 0.999):
                self.assertEqual(envelope.new_msg_id(lambda: t + delta)[:5], when[:4] + "-")

    def test_envelopesYear(self) -> None:
        """
        Envelopes.make takes the year from its clock for every message.
        """
        from fedmsg_twisted.config import from_dict

        clock = [time.mktime(time.strptime("2023-12-31 23:59:59", "%Y-%m-%d %H:%M:%S"))]
        maker = envelope.Envelopes(from_dict({}), now=lambda: clock[0])
        self.assertTrue(maker.make("t", {}, "m")["msg_id"].startswith("2023-"))
        clock[0] += 1.0
        self.assertTrue(maker.make("t", {}, "m")["msg_id"].startswith("2024-"))
        clock[0] -= 1.0
        self.assertTrue(maker.make("t", {}, "m")["msg_id"].startswith("2023-"))


class SignEncodedTests(unittest.TestCase):
    """
    X509Signer.sign_encoded: one encoding for signing and sending, with
    exactly the bytes of encoding.dumps_bytes(sign(envelope)).
    """

    def setUp(self) -> None:
        from tests.certs import make_pki

        from fedmsg_twisted.crypto.x509 import TrustStore, X509Signer, X509Validator

        self.pki = make_pki(self.mktemp())
        self.pki.issue("myapp-host.example.org", name="myapp.host")
        self.signer = X509Signer(self.pki.directory, "myapp.host")
        self.validator = X509Validator(TrustStore(self.pki.ca_cert_path, None))

    def assertSameSigning(self, env) -> None:
        try:
            expected = self.signer.sign(env)  # PKCS#1 v1.5 is deterministic
        except Exception as e:
            # (e.g. non-string keys beside "crypto": not sortable)
            self.assertRaises(type(e), self.signer.sign_encoded, env)
            return
        signed, body = self.signer.sign_encoded(env)
        self.assertEqual(signed, expected)
        self.assertEqual(body, encoding.dumps_bytes(expected))
        self.assertEqual(body, encoding.dumps(signed).encode("ascii"))

    def test_validates(self) -> None:
        """
        What sign_encoded sends validates, also after re-signing a signed
        envelope.
        """
        env = envelope.Envelopes(
            __import__("fedmsg_twisted.config", fromlist=["from_dict"]).from_dict({})
        ).make("t", {"é": [1.5, 2**70, None, "x\u2028"], "signature": "in msg"}, "m")
        signed, body = self.signer.sign_encoded(env)
        self.assertTrue(self.validator.validate(encoding.decode_body(body)).ok)
        again, body2 = self.signer.sign_encoded(signed)
        self.assertEqual(body2, body)
        self.assertTrue(self.validator.validate(encoding.decode_body(body2)).ok)

    def test_edgeEnvelopes(self) -> None:
        """
        Keys sorting next to the credentials, old credentials, non-string
        top-level keys (fallback), NaN and big numbers, empty envelopes.
        """
        for env in [
            {},
            {"msg": {}},
            {"certificate": "old", "signature": "old", "msg": 1},
            {"cert": 1, "certificatf": 2, "signaturd": 3, "signaturf": 4, "crypto": "gpg", "sig": [None]},
            {"msg": float("nan"), "i": 2**80, "timestamp": -0.0, "z": float("inf")},
            {"\u00e9": 1, "\U0001f600": {"b": 1, "a": 2}, "": "", "A": "\\\"/"},
            {1: "int key", "msg": {}},
            {None: 1, True: 2, "x": 3},
        ]:
            self.assertSameSigning(env)

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.dictionaries(
        st.one_of(_texts, st.sampled_from(["msg", "topic", "i", "crypto", "certificate", "signature",
                                           "cert", "signaturf", "certificatd", "sign", "z", "a"])),
        _json_values, max_size=10,
    ))
    def test_randomEnvelopes(self, env) -> None:
        """
        Random top-level dicts with random values: same signed dict, same bytes.
        """
        self.assertSameSigning(env)
