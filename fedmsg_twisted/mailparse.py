# -*- test-case-name: tests.test_mailparse -*-
"""
Turning a mail that Debian's infrastructure sends into a bus message.

Pure functions, no I/O: L{parse} takes the bytes of one mail and returns a
L{Parsed} (modname, topic, payload) ready for C{publish()}, or raises
L{QuarantineError} naming why the mail cannot be published, or L{Ignored} for
a well-formed mail that carries no event (a debbugs C{error} reply).

Two senders are understood:
  - debbugs, recognised by its C{X-Debian-PR-Message} header
    (C{report 123456}, C{followup 123456}, C{closed 123456}, ...);
  - dak, recognised by C{X-Debian: DAK}, whose announcements carry the
    (usually clearsigned) C{.changes} file as the body.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.header
import email.message
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Parsed",
    "QuarantineError",
    "Ignored",
    "parse",
    "message_id",
    "dedup_key",
    "decode_header",
    "DEFAULT_MAX_BODY",
    "BUG_EVENTS",
]

#: Characters of body text kept in a payload; the rest is cut and flagged.
DEFAULT_MAX_BODY = 4000

#: Most attachments listed in one payload.
MAX_ATTACHMENTS = 20

#: debbugs message kinds and the topic event each becomes.  C{they-closed} is
#: the submitter's copy of a close, so it shares C{closed}; unknown kinds of
#: the right shape pass through as their own event.
BUG_EVENTS = {
    "report": "report",
    "followup": "followup",
    "closed": "closed",
    "they-closed": "closed",
    "done": "closed",
    "forwarded": "forwarded",
    "ack": "ack",
    "ack-info": "ack",
    "ack-done": "ack",
    "fixed": "fixed",
    "found": "found",
    "reopened": "reopened",
    "reassigned": "reassigned",
    "transcript": "control",
}

#: debbugs kinds that are replies about mail errors, not bug events.
_NOT_EVENTS = {"error"}

_KIND_RE = re.compile(r"^[a-z][a-z-]{0,30}$")
_BUG_SUBJECT_RE = re.compile(r"^(?:(?:re|fwd?|aw)\s*:\s*)*bug\s*#(\d+)\s*:?\s*", re.I)
_MARKED_RE = re.compile(r"^marked as (?:done|forwarded)\s*\((.*)\)\s*$", re.I | re.S)
_THEY_CLOSED_RE = re.compile(r"^bug\s*#(\d+) closed by (.*?) \((.*)\)\s*$", re.I | re.S)
_DAK_ACCEPTED_RE = re.compile(
    r"^Accepted (?P<source>\S+) (?P<version>\S+) \((?P<arch>[^)]*)\)"
    r"(?: into (?P<suite>\S+)(?: \((?P<codename>[^)]*)\))?)?", re.I)
_DAK_STATUS_RE = re.compile(
    r"^(?P<file>(?P<source>[^_\s]+)_(?P<version>[^_\s]+)_(?P<arch>[^_\s]+)\.changes) "
    r"(?P<status>ACCEPTED|REJECTED|is NEW)(?: into (?P<suite>\S+))?", re.I)
# Structural MIME damage that makes the text we would publish unreliable.
_FATAL_DEFECTS = (
    email.errors.NoBoundaryInMultipartDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
    email.errors.MissingHeaderBodySeparatorDefect,
)


class QuarantineError(ValueError):
    """
    A mail that cannot become a message.

    @ivar reason: a short label (used for counters and the quarantine header).
    @ivar detail: a human explanation for the log line.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Ignored(Exception):
    """
    A well-formed mail with no event in it: acknowledged, never published.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Parsed:
    """
    What to publish for one mail: C{publish(modname=..., topic=..., msg=...)}.
    """

    modname: str
    topic: str
    msg: dict[str, Any] = field(default_factory=dict)


# --- headers and text ------------------------------------------------------------


def _check_charset(charset: str, where: str) -> str:
    try:
        return codecs.lookup(charset).name
    except (LookupError, ValueError):  # ValueError: NUL or other junk in the name
        raise QuarantineError("unknown-charset", f"unknown charset {charset!r} in {where}") from None


def _raw_to_text(value: str) -> str:
    # BytesParser keeps undecodable header bytes as surrogates; most such mail is UTF-8.
    if any("\udc80" <= c <= "\udcff" for c in value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def decode_header(value: Any, where: str = "header") -> str:
    """
    Decode an RFC 2047 header value to text, unfolded.

    @raise QuarantineError: for an encoded word in a charset Python does not know.
    """
    if value is None:
        return ""
    if not isinstance(value, email.header.Header):
        value = _raw_to_text(str(value))
    try:
        chunks = email.header.decode_header(value)
    except email.errors.HeaderParseError as e:
        raise QuarantineError("bad-header", f"{where}: {e}") from None
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        if charset in (None, "unknown-8bit"):
            out.append(chunk.decode("utf-8", "replace"))
        else:
            out.append(chunk.decode(_check_charset(charset, where), "replace"))
    text = "".join(out)
    return " ".join(text.split())


def _header(msg: email.message.Message, name: str) -> str:
    return decode_header(msg.get(name), name)


def _head(raw: bytes) -> email.message.Message | None:
    head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    try:
        return email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32)
    except Exception:
        return None


def _one_line(value: Any) -> str:
    return " ".join(str(value or "").split())


def message_id(raw: bytes) -> str | None:
    """
    The Message-ID of a mail, read from its header block only.
    """
    msg = _head(raw)
    return (_one_line(msg.get("Message-ID")) or None) if msg is not None else None


def dedup_key(raw: bytes) -> str | None:
    """
    What makes two deliveries the same mail: the Message-ID, with the
    Resent-Message-ID when there is one.

    debbugs forwards one message sent to two bugs twice, with the same
    Message-ID and a Resent-Message-ID of its own for each bug; the copies a
    site gets from two lists share both.
    """
    msg = _head(raw)
    if msg is None:
        return None
    mid = _one_line(msg.get("Message-ID"))
    if not mid:
        return None
    resent = _one_line(msg.get("Resent-Message-ID"))
    return f"{mid} {resent}" if resent else mid


def _address(value: str) -> dict[str, str]:
    name, addr = email.utils.parseaddr(value)
    return {"name": name, "email": addr}


def _who(value: str) -> str:
    """
    A short display form of an address: the name, else the address.
    """
    name, addr = email.utils.parseaddr(value)
    return name or addr or value


def _truncate(text: str, bound: int) -> tuple[str, bool]:
    if len(text) <= bound:
        return text, False
    return text[:bound], True


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = b""
    charset = part.get_content_charset() or "us-ascii"
    codec = _check_charset(charset, "body")
    if codec == "ascii":
        codec = "utf-8"  # 8-bit text mislabelled as ASCII is nearly always UTF-8
    return payload.decode(codec, "replace")


def _filename(part: email.message.Message) -> str:
    """
    An attachment's file name; raw 8-bit UTF-8 in the parameter (common, if
    not allowed) is read as such instead of as replacement characters.
    """
    name = part.get_filename() or ""
    if "\ufffd" in name:
        for key, value in part.raw_items():
            if key.lower() in ("content-disposition", "content-type"):
                tmp = email.message.Message()
                tmp[key] = _raw_to_text(str(value))
                better = tmp.get_filename()
                if better:
                    return better
    return name


def _is_attachment(part: email.message.Message) -> bool:
    disposition = str(part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    return disposition == "attachment" or bool(part.get_filename())


def _walk(msg: email.message.Message):
    """
    The leaf parts of a message, not descending into attached messages
    (those are yielded whole, as C{message/rfc822} parts).
    """
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        for sub in msg.get_payload():
            yield from _walk(sub)
    else:
        yield msg


def _check_structure(msg: email.message.Message) -> None:
    for part in msg.walk():
        for defect in getattr(part, "defects", ()):
            if isinstance(defect, _FATAL_DEFECTS):
                raise QuarantineError("malformed-mime", type(defect).__name__)
    if msg.get_content_maintype() == "multipart" and not isinstance(msg.get_payload(), list):
        raise QuarantineError("malformed-mime", "multipart without parts")


def _body_and_attachments(msg: email.message.Message, max_body: int) -> dict[str, Any]:
    text = None
    attachments = []
    attached_messages = []
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, email.message.Message):
                attached_messages.append({
                    "from": _header(inner, "From"),
                    "subject": _header(inner, "Subject"),
                    "message_id": " ".join(str(inner.get("Message-ID", "")).split()),
                })
            continue
        if text is None and ctype == "text/plain" and not _is_attachment(part):
            text = _part_text(part)
            continue
        if _is_attachment(part) or part.get_content_maintype() != "multipart":
            payload = part.get_payload(decode=True) or b""
            filename = decode_header(_filename(part), "attachment filename")
            attachments.append({
                "filename": filename,
                "content_type": ctype,
                "size": len(payload),
                "patch": ctype in ("text/x-diff", "text/x-patch")
                or filename.endswith((".patch", ".diff", ".debdiff")),
            })
    if text is None:
        text = ""
    body, truncated = _truncate(text.replace("\r\n", "\n"), max_body)
    omitted = max(0, len(attachments) - MAX_ATTACHMENTS)
    return {
        "body": body,
        "body_truncated": truncated,
        "attachments": attachments[:MAX_ATTACHMENTS],
        "attachments_omitted": omitted,
        "attached_messages": attached_messages[:MAX_ATTACHMENTS],
    }


def _pseudo_headers(text: str) -> dict[str, str]:
    """
    The C{Package:}/C{Severity:}/C{Tags:} lines that start a bug report body.
    """
    out: dict[str, str] = {}
    for line in text.lstrip("\n").split("\n"):
        m = re.match(r"^([\w-]+):\s*(\S.*?)\s*$", line)
        if not m:
            break
        out.setdefault(m.group(1).lower(), m.group(2))
    return out


# --- debbugs ----------------------------------------------------------------------


def _parse_debbugs(msg: email.message.Message, kind_header: str, max_body: int) -> Parsed:
    words = kind_header.split()
    kind = words[0].lower() if words else ""
    if kind in _NOT_EVENTS:
        raise Ignored(f"debbugs {kind} mail")
    if not _KIND_RE.match(kind):
        raise QuarantineError("bad-debbugs-kind", f"X-Debian-PR-Message {kind_header!r}")
    bug = None
    if len(words) > 1 and words[1].isdigit():
        bug = int(words[1])
    subject = _header(msg, "Subject")
    if bug is None:
        m = _BUG_SUBJECT_RE.match(subject) or _THEY_CLOSED_RE.match(subject)
        if m:
            bug = int(m.group(1))
    if bug is None or bug <= 0:
        raise QuarantineError("no-bug-number", f"X-Debian-PR-Message {kind_header!r}, Subject {subject!r}")

    sender = _header(msg, "From")
    if not sender:
        raise QuarantineError("missing-header", "no From header")
    content = _body_and_attachments(msg, max_body)

    title = _BUG_SUBJECT_RE.sub("", subject, count=1)
    closed_by = None
    m = _MARKED_RE.match(title)
    if m:
        title = m.group(1)
    m = _THEY_CLOSED_RE.match(subject)
    if m:
        closed_by, title = m.group(2), m.group(3)

    pseudo = _pseudo_headers(content["body"]) if kind == "report" else {}
    keywords = _header(msg, "X-Debian-PR-Keywords").split()
    if not keywords and pseudo.get("tags"):
        keywords = [t for t in re.split(r"[,\s]+", pseudo["tags"].lower()) if t]
    severity = _header(msg, "X-Debian-PR-Severity").lower() or pseudo.get("severity", "").lower() or None
    package = _header(msg, "X-Debian-PR-Package") or pseudo.get("package", "")
    source = _header(msg, "X-Debian-PR-Source") or pseudo.get("source", "")
    if not source and package.startswith("src:"):
        source = package[4:]

    event = BUG_EVENTS.get(kind, kind)
    if event == "closed" and closed_by is None:
        # debbugs attaches the closing mail after the original report.
        froms = [m["from"] for m in content["attached_messages"] if m["from"]]
        closed_by = froms[-1] if froms else sender

    payload: dict[str, Any] = {
        "kind": kind,
        "bug": bug,
        "package": package,
        "source": source,
        "keywords": keywords,
        "severity": severity,
        "title": title,
        "subject": subject,
        "sender": _address(sender),
        "sender_name": _who(sender),
        "message_id": " ".join(str(msg.get("Message-ID", "")).split()),
        "link": f"https://bugs.debian.org/{bug}",
        **content,
    }
    if closed_by is not None:
        payload["closed_by"] = _who(closed_by)
    if kind == "report" and pseudo.get("version"):
        payload["version"] = pseudo["version"]
    return Parsed("debbugs", f"bug.{event}", payload)


# --- dak --------------------------------------------------------------------------


def _split_list(value: str) -> list[str]:
    return [v for v in value.split() if v]


def _unfold(value: str) -> str:
    """
    A deb822 multi-line value as plain text: one leading space off, C{.} lines blank.
    """
    lines = []
    for line in value.strip("\n").split("\n"):
        line = line[1:] if line.startswith(" ") else line
        lines.append("" if line == "." else line)
    return "\n".join(lines)


def _parse_changes(text: str, max_body: int) -> dict[str, Any]:
    from debian.deb822 import Changes

    start = text.find("-----BEGIN PGP SIGNED MESSAGE-----")
    if start < 0:
        m = re.search(r"^Format:", text, re.M)
        start = m.start() if m else 0
    candidate = text[start:]
    if candidate.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        end = candidate.find("-----END PGP SIGNATURE-----")
        if end < 0:
            raise QuarantineError("bad-changes", "clearsigned .changes without its signature end")
        candidate = candidate[: end + len("-----END PGP SIGNATURE-----")] + "\n"
    try:
        changes = Changes(candidate)
        files = changes.get("Files") or []
        fields = {k: changes.get(k, "") for k in (
            "Source", "Version", "Distribution", "Urgency", "Architecture",
            "Maintainer", "Changed-By", "Closes", "Changes")}
    except QuarantineError:
        raise
    except Exception as e:  # python-debian raises many kinds on bad input
        raise QuarantineError("bad-changes", f"{type(e).__name__}: {e}") from None
    for required in ("Source", "Version", "Distribution"):
        if not fields[required] or "\n" in fields[required].strip():
            raise QuarantineError("bad-changes", f".changes without a usable {required} field")
    closes = []
    for token in _split_list(fields["Closes"]):
        if not token.isdigit():
            raise QuarantineError("bad-changes", f"Closes entry {token!r} is not a bug number")
        closes.append(int(token))
    changes_text, truncated = _truncate(_unfold(fields["Changes"]), max_body)
    file_list = []
    for f in files if isinstance(files, list) else []:
        try:
            size = int(f.get("size", 0))
        except ValueError:
            size = None
        file_list.append({"name": f.get("name", ""), "size": size,
                          "section": f.get("section", ""), "priority": f.get("priority", "")})
    return {
        "source": fields["Source"].split()[0],
        "version": fields["Version"].strip(),
        "distribution": fields["Distribution"].strip(),
        "urgency": fields["Urgency"].strip(),
        "architecture": _split_list(fields["Architecture"]),
        "maintainer": fields["Maintainer"].strip(),
        "changed_by": fields["Changed-By"].strip(),
        "closes": closes,
        "changes": changes_text,
        "changes_truncated": truncated,
        "files": file_list[:100],
    }


def _parse_dak(msg: email.message.Message, max_body: int) -> Parsed:
    subject = _header(msg, "Subject")
    sender = _header(msg, "From")
    if not sender:
        raise QuarantineError("missing-header", "no From header")
    mid = " ".join(str(msg.get("Message-ID", "")).split())
    if _DAK_ACCEPTED_RE.match(subject):
        text = ""
        for part in _walk(msg):
            if part.get_content_type() == "text/plain":
                text = _part_text(part)
                break
        fields = _parse_changes(text, max_body)
        payload = {
            **fields,
            "sender": _address(sender),
            "sender_name": _who(fields["changed_by"] or sender),
            "subject": subject,
            "message_id": mid,
            "link": f"https://tracker.debian.org/pkg/{fields['source']}",
        }
        return Parsed("dak", "upload.accepted", payload)
    m = _DAK_STATUS_RE.match(subject)
    if m:
        status = m.group("status").lower()
        event = {"accepted": "accepted", "rejected": "rejected", "is new": "new"}[status]
        if event == "accepted":
            # the maintainer's copy of an acceptance: the announcement carries it.
            raise Ignored("dak acceptance notice to the maintainer")
        text = ""
        for part in _walk(msg):
            if part.get_content_type() == "text/plain":
                text = _part_text(part)
                break
        body, truncated = _truncate(text, max_body)
        return Parsed("dak", f"upload.{event}", {
            "source": m.group("source"),
            "version": m.group("version"),
            "architecture": m.group("arch").split("+"),
            "distribution": m.group("suite") or "",
            "changes_file": m.group("file"),
            "sender": _address(sender),
            "sender_name": _who(sender),
            "subject": subject,
            "message_id": mid,
            "body": body,
            "body_truncated": truncated,
            "link": f"https://tracker.debian.org/pkg/{m.group('source')}",
        })
    raise QuarantineError("unknown-dak-mail", f"Subject {subject!r}")


# --- entry point ------------------------------------------------------------------


def parse(raw: bytes, max_body: int = DEFAULT_MAX_BODY) -> Parsed:
    """
    Parse one mail.

    @param raw: the mail as delivered (headers and body, any line endings).
    @param max_body: characters of body or C{Changes} text kept.
    @raise QuarantineError: the mail is damaged or not from debbugs/dak.
    @raise Ignored: the mail is fine but carries no event.
    """
    if not raw.strip():
        raise QuarantineError("empty-mail", "no bytes")
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as e:  # the parser is lenient, but not infinitely
        raise QuarantineError("malformed-mime", f"{type(e).__name__}: {e}") from None
    if not msg.keys():
        raise QuarantineError("missing-header", "no headers at all")
    _check_structure(msg)
    try:
        pr_kind = msg.get("X-Debian-PR-Message")
        if pr_kind is not None:
            return _parse_debbugs(msg, _header(msg, "X-Debian-PR-Message"), max_body)
        if _header(msg, "X-Debian").strip().upper() == "DAK":
            return _parse_dak(msg, max_body)
    except (QuarantineError, Ignored):
        raise
    except (LookupError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        # the email package's odd corners (bad base64, broken parameters, ...)
        raise QuarantineError("malformed-mime", f"{type(e).__name__}: {e}") from None
    raise QuarantineError("not-debian", "neither X-Debian-PR-Message nor X-Debian: DAK")
