"""
The canonical bytes must equal fedmsg 1.1.7's, or signatures break.
"""

import json

from twisted.trial import unittest

from fedmsg_twisted import encoding


class CanonicalTests(unittest.TestCase):
    def test_fedmsg_confirmed_vector(self):
        # The 181 bytes fedmsg 1.1.7 signs for this envelope, verified with
        # openssl against a real fedmsg signature (protocol notes, 5.2).
        envelope = {
            "username": "alice",
            "topic": "org.example.dev.logger.log",
            "timestamp": 1700000000,
            "msg_id": "2023-00000000-0000-0000-0000-000000000000",
            "msg": {"log": "hi \u00e9"},
            "i": 1,
            "crypto": "x509",
        }
        expected = (
            b'{"crypto":"x509","i":1,"msg":{"log":"hi \\u00e9"},'
            b'"msg_id":"2023-00000000-0000-0000-0000-000000000000",'
            b'"timestamp":1700000000,"topic":"org.example.dev.logger.log","username":"alice"}'
        )
        self.assertEqual(encoding.dumps_bytes(envelope), expected)
        self.assertEqual(len(expected), 181)

    def test_non_ascii_and_floats(self):
        msg = {"z": [1, 2.5, None, True, 1e-05, 0.1 + 0.2], "a": "h\u00e9llo \u2603 \U0001f600", "b": 2}
        self.assertEqual(
            encoding.dumps(msg),
            '{"a":"h\\u00e9llo \\u2603 \\ud83d\\ude00","b":2,"z":[1,2.5,null,true,1e-05,0.30000000000000004]}',
        )

    def test_slash_not_escaped_controls_escaped(self):
        self.assertEqual(encoding.dumps({"u": "a/b\n\t\"\\\x01"}), '{"u":"a/b\\n\\t\\"\\\\\\u0001"}')

    def test_nested_keys_sorted(self):
        self.assertEqual(encoding.dumps({"b": {"y": 1, "x": 2}, "a": 0}), '{"a":0,"b":{"x":2,"y":1}}')

    def test_sets_and_json_hook(self):
        class Obj:
            def __json__(self):
                return {"k": "v"}

        self.assertEqual(encoding.dumps({"s": {3}, "o": Obj()}), '{"o":{"k":"v"},"s":[3]}')

    def test_unserialisable_raises(self):
        self.assertRaises(TypeError, encoding.dumps, {"x": object()})

    def test_pretty_is_readable(self):
        text = encoding.pretty_dumps({"b": "\u00e9", "a": 1})
        self.assertIn("\u00e9", text)
        self.assertEqual(json.loads(text), {"a": 1, "b": "\u00e9"})


class DecodeTests(unittest.TestCase):
    def reason(self, body, max_size=1000):
        with self.assertRaises(encoding.DecodeError) as cm:
            encoding.decode_body(body, max_size)
        return cm.exception.reason

    def test_garbage_reasons(self):
        self.assertEqual(self.reason(b"\xff\xfe"), "not-utf8")
        self.assertEqual(self.reason(b"{nope"), "not-json")
        self.assertEqual(self.reason(b"[1,2]"), "not-an-object")
        self.assertEqual(self.reason(b"x" * 1001), "too-large")

    def test_valid(self):
        self.assertEqual(encoding.decode_body(b'{"a":1}'), {"a": 1})

    def test_parse_frames(self):
        body = b'{"msg":{},"topic":"a.b"}'
        self.assertEqual(encoding.parse_frames([b"a.b", body]), ("a.b", {"msg": {}, "topic": "a.b"}))
        for frames, reason in [
            ([body], "bad-frames"),
            ([b"a.b", body, b"x"], "bad-frames"),
            ([b"\xff", body], "not-utf8"),
            ([b"a.c", body], "topic-mismatch"),
            ([b"a.b", b'{"topic":"a.b"}'], "not-an-envelope"),
        ]:
            with self.assertRaises(encoding.DecodeError) as cm:
                encoding.parse_frames(frames)
            self.assertEqual(cm.exception.reason, reason, frames)
