"""
The text layer: every processor, unknown messages, colours, plug-ins.
"""

from __future__ import annotations

from twisted.trial import unittest

from fedmsg_twisted import text


def env(topic: str, msg, **extra) -> dict:
    e = {"topic": topic, "msg": msg, "username": "ralph", "timestamp": 1.0, "msg_id": "2026-x", "i": 1}
    e.update(extra)
    return e


class LayerTestCase(unittest.TestCase):
    def setUp(self):
        self.layer = text.TextLayer({"topic_prefix": "org.fedoraproject"}, processors=[
            text.LoggerProcessor, text.AnnounceProcessor])


class BuiltinProcessorTests(LayerTestCase):
    def test_logger_as_fedmsg(self):
        t = self.layer.text(env("org.fedoraproject.dev.logger.log", {"log": "hello"}))
        self.assertEqual(t.terse(), "logger.log -- hello (ralph)")
        self.assertEqual(t.pretty(), "\x0307logger.log\x03 -- hello (ralph)")
        self.assertEqual(t.processor, "logger")
        self.assertEqual(t.usernames, frozenset({"ralph"}))

    def test_logger_custom_json(self):
        t = self.layer.text(env("org.fedoraproject.dev.logger.log", {"a": 1}))
        self.assertEqual(t.terse(), "logger.log -- <custom JSON message> (ralph)")

    def test_announce(self):
        t = self.layer.text(env("org.fedoraproject.prod.announce.announcement", {"message": "GOLD", "link": "https://l"}))
        self.assertEqual(t.terse(), "announce.announcement -- GOLD https://l")
        self.assertEqual(t.pretty(), "\x0315announce.announcement\x03 -- GOLD \x0310https://l\x03")

    def test_announce_missing_field_falls_back(self):
        t = self.layer.text(env("org.fedoraproject.prod.announce.announcement", {"text": "no message key"}))
        self.assertEqual(t.terse(), "announce.announcement -- no message key (ralph)")


class UnknownMessageTests(LayerTestCase):
    def test_text_field_with_agent(self):
        t = self.layer.text(env("org.example.prod.wiki.page.edit", {"title": "Main Page", "user": "kevin",
                                                                    "url": "https://wiki/x"}))
        self.assertEqual(t.terse(), "wiki.page.edit -- Main Page (kevin) https://wiki/x")
        self.assertEqual(t.colour, "purple")  # fedmsg's default lookup

    def test_scalar_fields(self):
        t = self.layer.text(env("org.debian.prod.buildd.result", {"source": "hello", "arch": "amd64", "ok": True,
                                                                  "logs": ["a"]}))
        self.assertEqual(t.terse(), "buildd.result -- source=hello arch=amd64 ok=true (+1 more fields)")

    def test_never_empty(self):
        for msg in ({}, None, "", [], {"nested": {"a": 1}}, "plain string", [1, 2], {"k": ""}):
            t = self.layer.text(env("a.b.c.svc.thing", msg))
            self.assertTrue(t.subtitle, msg)
            self.assertTrue(t.title)
        self.assertEqual(self.layer.text(env("a.b.c.svc.thing", {})).subtitle, "(empty message)")
        self.assertEqual(self.layer.text(env("a.b.c.svc.thing", {"nested": {"a": 1}})).subtitle, '{"nested":{"a":1}}')
        self.assertEqual(self.layer.text(env("short", {"x": 1})).title, "short")

    def test_control_characters_and_length(self):
        t = self.layer.text(env("a.b.c.x.y", {"message": "line1\r\nPRIVMSG #x :evil\x03" + "z" * 1000}))
        self.assertNotIn("\r", t.subtitle)
        self.assertNotIn("\n", t.subtitle)
        self.assertNotIn("\x03", t.subtitle)
        self.assertEqual(len(t.subtitle), text.MAX_SUBTITLE)
        self.assertTrue(t.subtitle.endswith("\N{HORIZONTAL ELLIPSIS}"))

    def test_own_summary_wins_over_guessing(self):
        t = self.layer.text(env("org.fedoraproject.prod.bodhi.update.comment", {"summary": "bodhi said so",
                                                                                "comment": {"text": "x"}}))
        self.assertEqual(t.terse(), "bodhi.update.comment -- bodhi said so")
        t = self.layer.text(env("org.fedoraproject.prod.copr.build.end", {"x": 1}, headers={"summary": "built it"}))
        self.assertEqual(t.subtitle, "built it")

    def test_short_topic(self):
        self.assertEqual(text.short_topic("org.fedoraproject.prod.bodhi.update", "org.fedoraproject"), "bodhi.update")
        self.assertEqual(text.short_topic("io.example.team.stg.app.event", "io.example.team"), "app.event")
        self.assertEqual(text.short_topic("org.fedoraproject.prod.bodhi.update"), "bodhi.update")
        self.assertEqual(text.short_topic("a.b"), "a.b")

    def test_topic_matches(self):
        t = "org.debian.prod.dak.upload"
        self.assertTrue(text.topic_matches("dak", t))
        self.assertTrue(text.topic_matches("org.debian.prod.dak.", t))
        self.assertTrue(text.topic_matches("*.upload", t))
        self.assertFalse(text.topic_matches("da", t))
        self.assertFalse(text.topic_matches("git.*", t))

    def test_raw_line(self):
        self.assertEqual(
            text.raw_line(env("a.b.c.d", {"k": "v\n"})),
            'a.b.c.d                        {"i":1,"msg":{"k":"v\\n"},"msg_id":"2026-x","timestamp":1.0,"username":"ralph"}',
        )

    def test_marked(self):
        t = self.layer.marked(env("a.b.c.d", {"k": "v"}), "(unsigned)")
        self.assertEqual(t.terse(), "a.b.c.d -- (unsigned)")


class ColourTests(unittest.TestCase):
    def test_lookup_order(self):
        class Dak(text.Processor):
            name = "dak"
            colour = "green"

        layer = text.TextLayer({"irc_color_lookup": {"logger": "red"}, "irc_default_color": "grey"},
                               processors=[Dak, text.LoggerProcessor])
        self.assertEqual(layer.text(env("a.b.c.logger.log", {"log": "x"})).colour, "red")
        self.assertEqual(layer.text(env("a.b.c.dak.upload", {})).colour, "green")
        self.assertEqual(layer.text(env("a.b.c.other.x", {})).colour, "grey")

    def test_two_digit_codes(self):
        t = text.Text("t", "1title", "s", None, "orange", "p")
        self.assertEqual(t.pretty(), "\x03071title\x03 -- s")


class PluginTests(unittest.TestCase):
    def test_processor_protocol_and_errors(self):
        """
        A processor is any object with match/title/subtitle/link/usernames/
        packages; one that raises falls back instead of breaking the line.
        """

        class Broken(text.Processor):
            topics = ("*.koji.*",)

            def subtitle(self, msg):
                raise KeyError("build")

            def packages(self, msg):
                return {"kernel"}

        layer = text.TextLayer({}, processors=[Broken])
        t = layer.text(env("a.b.c.koji.build", {"name": "kernel"}))
        self.assertEqual(t.terse(), "koji.build -- kernel (ralph)")
        self.assertEqual(t.packages, frozenset({"kernel"}))

    def test_fedmsg_meta_style_processor(self):
        """
        fedmsg.meta processors (constructed with C{(_, **config)}, matching
        with handle_msg, methods taking C{**config}) are adapted.
        """
        import re

        class MetaProcessor:
            __name__ = "bodhi"

            def __init__(self, _, **config):
                self.__prefix__ = re.compile(r"^%s\.(bodhi)(\.(.*))?$" % config["topic_prefix_re"])

            def handle_msg(self, msg, **config):
                m = self.__prefix__.match(msg["topic"])
                return m.groups()[-1] or "" if m else None

            def title(self, msg, **config):
                return ".".join(msg["topic"].split(".")[3:])

            def subtitle(self, msg, **config):
                return f"{msg['msg']['agent']} commented"

            def link(self, msg, **config):
                return "https://bodhi/x"

            def usernames(self, msg, **config):
                return {msg["msg"]["agent"]}

            def packages(self, msg, **config):
                return set()

        layer = text.TextLayer({"topic_prefix": "org.fedoraproject"}, processors=[MetaProcessor])
        t = layer.text(env("org.fedoraproject.prod.bodhi.update.comment", {"agent": "bowlofeggs"}))
        self.assertEqual(t.terse(), "bodhi.update.comment -- bowlofeggs commented https://bodhi/x")
        self.assertEqual(t.colour, "green")
        self.assertEqual(layer.text(env("org.fedoraproject.prod.koji.x", {"a": 1})).processor, "unhandled")

    def test_default_layer_has_debian_and_builtins(self):
        layer = text.TextLayer({"topic_prefix": "org.debian"})
        names = [p.name for p in layer.processors]
        self.assertIn("logger", names)
        self.assertIn("announce", names)
        try:
            import fedmsg_twisted.debian_text  # noqa: F401
        except ImportError:
            return
        self.assertIn("dak", names)

    def test_module_processors(self):
        import types

        mod = types.ModuleType("plug")

        class P(text.Processor):
            name = "p"

        P.__module__ = "plug"
        mod.P = P
        mod.Base = text.Processor
        self.assertEqual(text._load_module_processors(mod), [P])
        mod.PROCESSORS = []
        self.assertEqual(text._load_module_processors(mod), [])

    def test_msg2repr(self):
        layer = text.TextLayer({}, processors=[])
        self.assertEqual(layer.msg2repr(env("a.b.c.logger.log", {"log": "x"})), "logger.log -- x (ralph)")
        self.assertRaises(ValueError, layer.text, {"msg": {}})


class TerseFunctionTests(unittest.TestCase):
    def test_terse(self):
        cfg = {"topic_prefix": "org.fedoraproject"}
        e = env("org.fedoraproject.dev.logger.log", {"log": "x"})
        self.assertEqual(text.terse(e, cfg), "logger.log -- x (ralph)")
        self.assertEqual(text.msg2repr(e), "logger.log -- x (ralph)")
        layer = text._layers[id(cfg)][1]
        text.terse(e, cfg)
        self.assertIs(text._layers[id(cfg)][1], layer)  # processors loaded once per config
        self.assertEqual(text.terse(env("a.b.c.x.y", {"summary": "s"}), cfg), "x.y -- s")
