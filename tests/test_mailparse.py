"""
Tests for L{fedmsg_twisted.mailparse}: real debbugs/dak header sets in, payloads out.
"""

from __future__ import annotations

from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from twisted.trial import unittest

from fedmsg_twisted import mailparse
from fedmsg_twisted.mailparse import Ignored, QuarantineError, parse
from tests import mails


class DebbugsTests(unittest.TestCase):
    def test_report(self) -> None:
        p = parse(mails.bug_report())
        self.assertEqual((p.modname, p.topic), ("debbugs", "bug.report"))
        m = p.msg
        self.assertEqual(m["bug"], 123456)
        self.assertEqual(m["kind"], "report")
        self.assertEqual(m["package"], "foo")
        self.assertEqual(m["source"], "foo")
        self.assertEqual(m["keywords"], ["patch"])
        self.assertEqual(m["severity"], "serious")
        self.assertEqual(m["version"], "1.2-2")
        self.assertEqual(m["title"], "foo: crashes on startup")
        self.assertEqual(m["sender"], {"name": "Jörg Müller", "email": "joerg@example.org"})
        self.assertEqual(m["sender_name"], "Jörg Müller")
        self.assertIn("«boom»", m["body"])
        self.assertFalse(m["body_truncated"])
        self.assertEqual(m["link"], "https://bugs.debian.org/123456")
        self.assertTrue(m["message_id"].startswith("<report."))

    def test_followup_and_rfc2047_subject(self) -> None:
        p = parse(mails.bug_report(kind="followup", title="ça plante encore — 再现", body="more info\n"))
        self.assertEqual(p.topic, "bug.followup")
        self.assertEqual(p.msg["title"], "ça plante encore — 再现")
        self.assertIsNone(p.msg["severity"])  # no pseudo-headers are read from followups

    def test_latin1_body(self) -> None:
        p = parse(mails.bug_report(body="Package: foo\n\nDéjà vu, naïve façade\n", charset="iso-8859-1"))
        self.assertIn("Déjà vu, naïve façade", p.msg["body"])

    def test_patch_attachment_noted_not_inlined(self) -> None:
        patch = b"--- a/foo.c\n+++ b/foo.c\n" + b"+ int x = 1;\n" * 20000
        p = parse(mails.bug_report(patch=patch))
        [att] = p.msg["attachments"]
        self.assertEqual(att["filename"], "fix-crash.patch")
        self.assertEqual(att["size"], len(patch))
        self.assertTrue(att["patch"])
        self.assertNotIn("int x", p.msg["body"])

    def test_body_truncated(self) -> None:
        p = parse(mails.bug_report(body="x" * 10000), max_body=100)
        self.assertEqual(len(p.msg["body"]), 100)
        self.assertTrue(p.msg["body_truncated"])

    def test_closed_names_the_closer(self) -> None:
        p = parse(mails.bug_closed())
        self.assertEqual(p.topic, "bug.closed")
        self.assertEqual(p.msg["title"], "foo: crashes on startup")
        self.assertEqual(p.msg["closed_by"], "Zoë Ünal")
        self.assertEqual(p.msg["bug"], 123456)

    def test_kinds(self) -> None:
        for header, topic in [("they-closed 42", "bug.closed"), ("forwarded 42", "bug.forwarded"),
                              ("ack 42", "bug.ack"), ("fixed 42", "bug.fixed"), ("done 42", "bug.closed"),
                              ("reassigned 42", "bug.reassigned")]:
            raw = mails.bug_report(bug=42).replace(b"X-Debian-PR-Message: report 42",
                                                   b"X-Debian-PR-Message: " + header.encode())
            self.assertEqual(parse(raw).topic, topic, header)

    def test_error_replies_are_ignored(self) -> None:
        raw = mails.bug_report().replace(b"X-Debian-PR-Message: report 123456", b"X-Debian-PR-Message: error")
        self.assertRaises(Ignored, parse, raw)

    def test_bug_number_from_subject(self) -> None:
        raw = mails.bug_report(bug=777).replace(b"X-Debian-PR-Message: report 777", b"X-Debian-PR-Message: ack")
        self.assertEqual(parse(raw).msg["bug"], 777)


class DakTests(unittest.TestCase):
    def check(self, p: mailparse.Parsed) -> None:
        self.assertEqual((p.modname, p.topic), ("dak", "upload.accepted"))
        m = p.msg
        self.assertEqual(m["source"], "foo")
        self.assertEqual(m["version"], "1.2-3")
        self.assertEqual(m["distribution"], "unstable")
        self.assertEqual(m["urgency"], "medium")
        self.assertEqual(m["architecture"], ["source", "amd64", "all"])
        self.assertEqual(m["maintainer"], "Jörg Müller <joerg@example.org>")
        self.assertEqual(m["changed_by"], "Zoë Ünal <zoe@example.org>")
        self.assertEqual(m["closes"], [123456])
        self.assertIn("Mise à jour de la traduction française.", m["changes"])
        self.assertNotIn("PGP", m["changes"])
        self.assertEqual([f["name"] for f in m["files"]], ["foo_1.2-3.dsc", "foo_1.2-3_amd64.deb"])
        self.assertEqual(m["files"][1]["size"], 48120)

    def test_signed(self) -> None:
        raw = mails.dak_accepted(signed=True)
        self.assertIn(b"-----BEGIN PGP SIGNATURE-----", raw)
        self.check(parse(raw))

    def test_unsigned(self) -> None:
        self.check(parse(mails.dak_accepted(signed=False)))

    def test_changes_that_does_not_parse(self) -> None:
        raw = mails.dak_accepted(signed=False, changes="this is not\na changes file\n")
        e = self.assertRaises(QuarantineError, parse, raw)
        self.assertEqual(e.reason, "bad-changes")

    def test_changes_with_bad_closes(self) -> None:
        raw = mails.dak_accepted(signed=False, changes=mails.changes_text(closes="12x"))
        self.assertEqual(self.assertRaises(QuarantineError, parse, raw).reason, "bad-changes")

    def test_truncated_signature(self) -> None:
        body = mails.clearsign(mails.changes_text())
        body = body[: body.index("-----BEGIN PGP SIGNATURE-----")]
        raw = mails.dak_accepted(signed=False, changes=body)
        self.assertEqual(self.assertRaises(QuarantineError, parse, raw).reason, "bad-changes")

    def test_rejected(self) -> None:
        raw = mails.plain(subject="foo_1.2-3_amd64.changes REJECTED", body="Rejected: bad checksum\n",
                          headers={"X-Debian": "DAK"})
        p = parse(raw)
        self.assertEqual(p.topic, "upload.rejected")
        self.assertEqual((p.msg["source"], p.msg["version"]), ("foo", "1.2-3"))


class BadMailTests(unittest.TestCase):
    def reason(self, raw: bytes) -> str:
        return self.assertRaises(QuarantineError, parse, raw).reason

    def test_not_debian(self) -> None:
        self.assertEqual(self.reason(mails.plain()), "not-debian")

    def test_empty(self) -> None:
        self.assertEqual(self.reason(b"\n\n"), "empty-mail")

    def test_unknown_charset_in_body(self) -> None:
        raw = mails.bug_report().replace(b'charset="utf-8"', b'charset="x-klingon"')
        self.assertEqual(self.reason(raw), "unknown-charset")

    def test_junk_charset_name(self) -> None:
        raw = mails.bug_report().replace(b'charset="utf-8"', b'charset="utf\x00-8"')
        self.assertEqual(self.reason(raw), "unknown-charset")

    def test_8bit_content_disposition(self) -> None:
        raw = mails.bug_report(patch=b"+x\n").replace(b'filename="fix-crash.patch"',
                                                       "filename=\"réparation.patch\"".encode())
        [att] = parse(raw).msg["attachments"]
        self.assertEqual(att["filename"], "réparation.patch")

    def test_fuzzed_mail_is_classified(self) -> None:
        """
        Damaged copies of real mails either parse or name a reason: nothing
        else escapes, and what parses is JSON.
        """
        import json
        import random

        rng = random.Random(20261127)
        seeds = [mails.bug_report(patch=b"--- a\n+++ b\n"), mails.bug_closed(), mails.dak_accepted()]
        for _ in range(400):
            raw = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 12)):
                pos = rng.randrange(len(raw))
                op = rng.random()
                if op < 0.4:
                    raw[pos] = rng.randrange(256)
                elif op < 0.7:
                    del raw[pos:pos + rng.randint(1, 50)]
                else:
                    raw[pos:pos] = rng.choice([b"\n", b"=?", b"?=", b"--", b":", b";", b'"', b"\0", b"boundary="])
            try:
                json.dumps(parse(bytes(raw)).msg)
            except (QuarantineError, Ignored):
                pass

    def test_unknown_charset_in_header(self) -> None:
        raw = mails.bug_report().replace(b"Subject: Bug#123456: foo", b"Subject: =?x-klingon?q?Bug=23123456?= foo")
        self.assertEqual(self.reason(raw), "unknown-charset")

    def test_multipart_without_boundary(self) -> None:
        raw = (b"From: a@b\nX-Debian-PR-Message: report 1\nSubject: Bug#1: x\n"
               b"Content-Type: multipart/mixed\n\nno parts here\n")
        self.assertEqual(self.reason(raw), "malformed-mime")

    def test_missing_from(self) -> None:
        raw = b"".join(line for line in mails.bug_report().splitlines(True) if not line.startswith(b"From:"))
        self.assertEqual(self.reason(raw), "missing-header")

    def test_no_bug_number(self) -> None:
        raw = mails.plain(subject="hello", headers={"X-Debian-PR-Message": "followup"})
        self.assertEqual(self.reason(raw), "no-bug-number")

    def test_raw_utf8_header_is_decoded(self) -> None:
        raw = mails.bug_report().replace(b"Subject: Bug#123456: foo: crashes on startup",
                                          "Subject: Bug#123456: foo: plante à l'ouverture".encode())
        self.assertEqual(parse(raw).msg["title"], "foo: plante à l'ouverture")

    def test_many_attachments_bounded(self) -> None:
        msg = MIMEMultipart()
        msg.attach(MIMEText("see attached", "plain", "utf-8"))
        for i in range(mailparse.MAX_ATTACHMENTS + 5):
            part = MIMEText("x", "plain", "utf-8")
            part.add_header("Content-Disposition", "attachment", filename=f"f{i}.txt")
            msg.attach(part)
        msg["From"] = "a@example.org"
        msg["Subject"] = "Bug#5: many"
        msg["X-Debian-PR-Message"] = "followup 5"
        p = parse(msg.as_bytes())
        self.assertEqual(len(p.msg["attachments"]), mailparse.MAX_ATTACHMENTS)
        self.assertEqual(p.msg["attachments_omitted"], 5)

    def test_dedup_key(self) -> None:
        a = mails.bug_report(bug=1, message_id="<same@x>")
        b = mails.bug_report(bug=2, message_id="<same@x>")
        self.assertEqual(mailparse.dedup_key(a), "<same@x> <handler.1.B.17000000001@bugs.debian.org>")
        self.assertNotEqual(mailparse.dedup_key(a), mailparse.dedup_key(b))
        self.assertEqual(mailparse.dedup_key(mails.plain(message_id="<p@x>")), "<p@x>")

    def test_message_id(self) -> None:
        self.assertEqual(mailparse.message_id(mails.plain(message_id="<a@b>")), "<a@b>")
        self.assertIsNone(mailparse.message_id(b"Subject: x\n\nbody\n"))
