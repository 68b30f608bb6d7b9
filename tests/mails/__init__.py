"""
Builders for the mails debbugs and dak really send (header sets copied from
debbugs' C{scripts/process} and dak's C{templates/process-unchecked.announce}).

Everything is built as code, never committed as binary fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr

_counter = [0]


def _next_id(tag: str) -> str:
    _counter[0] += 1
    return f"<{tag}.{os.getpid()}.{_counter[0]}@bugs.example.org>"


def _enc(name: str, addr: str) -> str:
    """An address with the display name RFC 2047-encoded as a real MUA does."""
    return formataddr((str(Header(name, "utf-8")), addr)) if not name.isascii() else formataddr((name, addr))


def bug_report(bug: int = 123456, package: str = "foo", title: str = "foo: crashes on startup",
               sender: tuple[str, str] = ("Jörg Müller", "joerg@example.org"),
               body: str | None = None, severity: str = "serious", tags: str = "patch",
               source: str | None = "foo", patch: bytes | None = None, charset: str = "utf-8",
               kind: str = "report", message_id: str | None = None) -> bytes:
    """
    A report (or followup) as debbugs forwards it to the submit list.
    """
    if body is None:
        body = (f"Package: {package}\nVersion: 1.2-2\nSeverity: {severity}\nTags: {tags}\n\n"
                "Dear Maintainer,\n\nfoo crashes when started with an empty config: «boom».\n\n"
                "-- System Information:\nDebian Release: trixie/sid\n")
    text = MIMEText(body, "plain", charset)
    if patch is not None:
        msg = MIMEMultipart()
        msg.attach(text)
        att = MIMEApplication(patch, "x-diff")
        att.replace_header("Content-Type", 'text/x-diff; charset="us-ascii"')
        att.add_header("Content-Disposition", "attachment", filename="fix-crash.patch")
        msg.attach(att)
    else:
        msg = text
    msg["From"] = _enc(*sender)
    msg["Subject"] = Header(f"Bug#{bug}: {title}", "utf-8") if not title.isascii() else f"Bug#{bug}: {title}"
    msg["Reply-To"] = f"{_enc(*sender)}, {bug}@bugs.debian.org"
    msg["Resent-From"] = _enc(*sender)
    msg["Resent-To"] = "submit@bugs.debian.org"
    msg["Resent-Date"] = "Fri, 27 Nov 2026 10:00:01 +0000"
    msg["Resent-Message-ID"] = f"<handler.{bug}.B.17000000001@bugs.debian.org>"
    msg["Resent-Sender"] = "owner@bugs.debian.org"
    msg["X-Debian-PR-Message"] = f"{kind} {bug}"
    msg["X-Debian-PR-Package"] = package
    msg["X-Debian-PR-Keywords"] = tags
    if source:
        msg["X-Debian-PR-Source"] = source
    msg["Date"] = "Fri, 27 Nov 2026 10:00:00 +0100"
    msg["Message-ID"] = message_id or _next_id("report")
    msg["X-Loop"] = "owner@bugs.debian.org"
    return msg.as_bytes()


def bug_closed(bug: int = 123456, package: str = "foo", title: str = "foo: crashes on startup",
               closer: tuple[str, str] = ("Zoë Ünal", "zoe@example.org"),
               message_id: str | None = None) -> bytes:
    """
    The "marked as done" mail debbugs sends to the done list, with the
    original report and the closing mail attached.
    """
    msg = MIMEMultipart()
    msg.attach(MIMEText(
        f"Your message dated Fri, 27 Nov 2026 11:00:00 +0000\nwith message-id <close@example.org>\n"
        f"and subject line Bug#{bug}: fixed in {package} 1.2-3\nhas caused the Debian Bug report #{bug},\n"
        f"regarding {title}\nto be marked as done.\n", "plain", "utf-8"))
    report = MIMEText("Package: foo\n\nit crashes\n", "plain", "utf-8")
    report["From"] = _enc("Jörg Müller", "joerg@example.org")
    report["Subject"] = f"{title}"
    msg.attach(MIMEMessage(report))
    closing = MIMEText(f"Source: {package}\nSource-Version: 1.2-3\n\nfixed upstream\n", "plain", "utf-8")
    closing["From"] = _enc(*closer)
    closing["Subject"] = f"Bug#{bug}: fixed in {package} 1.2-3"
    msg.attach(MIMEMessage(closing))
    msg["From"] = "owner@bugs.debian.org (Debian Bug Tracking System)"
    msg["To"] = _enc(*closer)
    msg["Subject"] = f"Bug#{bug}: marked as done ({title})"
    msg["Message-ID"] = message_id or f"<handler.{bug}.D{bug}.{_counter[0]}.ackdone@bugs.debian.org>"
    msg["In-Reply-To"] = "<close@example.org>"
    msg["Precedence"] = "bulk"
    msg["X-Debian-PR-Message"] = f"closed {bug}"
    msg["X-Debian-PR-Package"] = package
    msg["X-Debian-PR-Keywords"] = "patch"
    msg["X-Debian-PR-Source"] = package
    msg["Reply-To"] = f"{bug}@bugs.debian.org"
    _counter[0] += 1
    return msg.as_bytes()


def changes_text(source: str = "foo", version: str = "1.2-3", distribution: str = "unstable",
                 changed_by: str = "Zoë Ünal <zoe@example.org>", closes: str = "123456",
                 extra: str = "") -> str:
    return (
        "Format: 1.8\n"
        "Date: Fri, 27 Nov 2026 11:00:00 +0100\n"
        f"Source: {source}\n"
        f"Binary: {source} {source}-doc\n"
        "Architecture: source amd64 all\n"
        f"Version: {version}\n"
        f"Distribution: {distribution}\n"
        "Urgency: medium\n"
        "Maintainer: Jörg Müller <joerg@example.org>\n"
        f"Changed-By: {changed_by}\n"
        f"Closes: {closes}\n"
        "Changes:\n"
        f" {source} ({version}) {distribution}; urgency=medium\n"
        " .\n"
        f"   * Fix the crash on startup. (Closes: #{closes})\n"
        "   * Mise à jour de la traduction française.\n"
        f"{extra}"
        "Checksums-Sha256:\n"
        f" 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 1911 {source}_{version}.dsc\n"
        "Files:\n"
        f" 0123456789abcdef0123456789abcdef 1911 devel optional {source}_{version}.dsc\n"
        f" fedcba9876543210fedcba9876543210 48120 devel optional {source}_{version}_amd64.deb\n"
    )


_gpg_home: list[str] = []


def clearsign(text: str) -> str:
    """
    Clearsign C{text} with a throw-away key made once per test run (real gpg).
    """
    if not _gpg_home:
        home = tempfile.mkdtemp(prefix="mailbridge-gpg-")
        os.chmod(home, 0o700)
        subprocess.run(["gpg", "--homedir", home, "--batch", "--passphrase", "",
                        "--quick-gen-key", "Test Uploader <uploader@example.org>", "ed25519", "sign", "1d"],
                       check=True, capture_output=True)
        _gpg_home.append(home)
        import atexit
        atexit.register(shutil.rmtree, home, True)
    out = subprocess.run(["gpg", "--homedir", _gpg_home[0], "--batch", "--clearsign"],
                         input=text.encode("utf-8"), check=True, capture_output=True)
    return out.stdout.decode("utf-8")


def dak_accepted(signed: bool = True, changes: str | None = None, source: str = "foo",
                 version: str = "1.2-3", suite: str = "unstable",
                 message_id: str | None = None) -> bytes:
    """
    The announcement dak sends to debian-devel-changes for an accepted upload.
    """
    if changes is None:
        changes = changes_text(source=source, version=version, distribution=suite)
    body = clearsign(changes) if signed else changes
    headers = [
        ("From", _enc("Zoë Ünal", "zoe@example.org")),
        ("To", "debian-devel-changes@lists.debian.org"),
        ("X-Debian", "DAK"),
        ("X-Debian-Package", source),
        ("Precedence", "bulk"),
        ("Auto-Submitted", "auto-generated"),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="utf-8"'),
        ("Content-Transfer-Encoding", "8bit"),
        ("Subject", f"Accepted {source} {version} (source amd64 all) into {suite} ({suite})"),
        ("Date", "Fri, 27 Nov 2026 11:05:00 +0000"),
        ("Message-ID", message_id or _next_id("dak")),
    ]
    # dak sends the .changes as 8-bit UTF-8 text, not base64.
    head = "".join(f"{k}: {v}\n" for k, v in headers)
    return (head + "\n" + body).encode("utf-8")


def plain(subject: str = "hello", body: str = "just a mail\n", headers: dict | None = None,
          message_id: str | None = None) -> bytes:
    """A non-Debian mail."""
    msg = MIMEText(body, "plain", "utf-8")
    msg["From"] = "someone@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or _next_id("plain")
    for k, v in (headers or {}).items():
        msg[k] = v
    return msg.as_bytes()
