"""
The Debian text processors, fed with what the mail parser really produces,
through the text layer the IRC bot and C{fedmsg-tail --terse} use.
"""

from __future__ import annotations

from twisted.trial import unittest

from fedmsg_twisted import debian_text, mailparse
from fedmsg_twisted.text import TextLayer
from tests import mails

PREFIX = "org.debian"


def envelope(parsed: mailparse.Parsed, username: str = "mailbridge") -> dict:
    return {
        "topic": f"{PREFIX}.dev.{parsed.modname}.{parsed.topic}",
        "msg": parsed.msg,
        "i": 1,
        "msg_id": "2026-00000000-0000-0000-0000-000000000000",
        "timestamp": 1795800000,
        "username": username,
    }


class TextTests(unittest.TestCase):
    def setUp(self) -> None:
        self.layer = TextLayer({"topic_prefix": PREFIX})

    def terse(self, env: dict) -> str:
        return self.layer.text(env).terse()

    def test_bug_closed(self) -> None:
        env = envelope(mailparse.parse(mails.bug_closed()))
        self.assertEqual(
            debian_text.bug_text(env, PREFIX),
            ("debbugs.bug.closed", "#123456 [src:foo] foo: crashes on startup closed by Zoë Ünal",
             "https://bugs.debian.org/123456"))
        self.assertEqual(
            self.terse(env),
            "debbugs.bug.closed -- #123456 [src:foo] foo: crashes on startup closed by Zoë Ünal "
            "https://bugs.debian.org/123456")

    def test_bug_report_with_patch(self) -> None:
        env = envelope(mailparse.parse(mails.bug_report(patch=b"--- a\n+++ b\n")))
        self.assertEqual(
            self.layer.text(env).subtitle,
            "#123456 [src:foo] foo: crashes on startup reported by Jörg Müller (serious, patch) "
            "[patch: fix-crash.patch]")
        self.assertEqual(self.layer.text(env).processor, "debbugs")

    def test_followup(self) -> None:
        env = envelope(mailparse.parse(mails.bug_report(kind="followup", source=None, package="bar")))
        self.assertEqual(self.layer.text(env).subtitle,
                         "#123456 [bar] foo: crashes on startup followup from Jörg Müller")

    def test_upload_accepted(self) -> None:
        env = envelope(mailparse.parse(mails.dak_accepted()))
        self.assertEqual(
            self.terse(env),
            "dak.upload.accepted -- foo 1.2-3 accepted into unstable by Zoë Ünal (closes #123456) "
            "https://tracker.debian.org/pkg/foo")

    def test_upload_rejected(self) -> None:
        raw = mails.plain(subject="foo_1.2-3_amd64.changes REJECTED", headers={"X-Debian": "DAK"})
        env = envelope(mailparse.parse(raw))
        self.assertEqual(self.layer.text(env).subtitle, "foo 1.2-3 rejected")

    def test_git_receive(self) -> None:
        env = {
            "topic": f"{PREFIX}.dev.git.receive",
            "username": "git",
            "msg": {"repository": "foo", "branch": "main", "pusher": "zoe", "total_commits": 3,
                    "commits": [{"summary": "one"}, {"summary": "Fix the crash"}], "forced": False},
        }
        self.assertEqual(self.terse(env), "git.receive -- zoe pushed 3 commits to foo main: Fix the crash")
        env["msg"].update(deleted=True)
        self.assertEqual(self.layer.text(env).subtitle, "zoe deleted foo main")

    def test_missing_fields_do_not_break(self) -> None:
        for topic in debian_text.TEXT:
            env = {"topic": f"{PREFIX}.prod.{topic}", "msg": {}}
            title, subtitle, link = debian_text.text_for(env, PREFIX)
            self.assertEqual(title, topic)
            self.assertIsInstance(subtitle, str)
        self.assertIsNone(debian_text.text_for({"topic": f"{PREFIX}.dev.bodhi.update", "msg": {}}, PREFIX))

    def test_hostile_title_is_one_line(self) -> None:
        env = envelope(mailparse.parse(mails.bug_report(title="evil\x03 04red =?x?= " + "long " * 100)))
        subtitle = self.layer.text(env).subtitle
        self.assertNotIn("\x03", subtitle)
        self.assertNotIn("\n", subtitle)
        self.assertLessEqual(len(subtitle), 400)
