# -*- test-case-name: tests.test_mail_text -*-
"""
Words for the messages the mail bridge and the git hook publish, for IRC and
C{fedmsg-tail --terse}:

    debbugs.bug.closed -- #123456 [src:foo] foo: crashes closed by Zoë Ünal https://bugs.debian.org/123456
    dak.upload.accepted -- foo 1.2-3 accepted into unstable by Zoë Ünal (closes #123456) https://tracker.debian.org/pkg/foo
    git.receive -- zoe pushed 3 commits to foo main: Fix the crash

Each C{*_text(envelope)} function returns C{(title, subtitle, link)};
L{TEXT} maps the short topic (without prefix and environment) to its
function, and the L{Processor} classes below are what L{fedmsg_twisted.text}
loads.  Every function takes the whole envelope (C{envelope["msg"]} is the
payload) and copes with missing fields.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from fedmsg_twisted.text import Processor, clean, short_topic

__all__ = [
    "bug_text",
    "upload_text",
    "git_text",
    "TEXT",
    "text_for",
    "DebbugsProcessor",
    "DakProcessor",
    "GitProcessor",
    "PROCESSORS",
]

Triple = tuple[str, str, "str | None"]

_TITLE_MAX = 120


def _payload(envelope: Mapping[str, Any]) -> Mapping[str, Any]:
    body = envelope.get("msg")
    return body if isinstance(body, Mapping) else {}


def _title(envelope: Mapping[str, Any], topic_prefix: str | None = None) -> str:
    return short_topic(str(envelope.get("topic", "")), topic_prefix)


def _package_tag(m: Mapping[str, Any]) -> str:
    source = m.get("source")
    if source:
        return f"[src:{source}]"
    package = m.get("package")
    return f"[{package}]" if package else ""


def _join(*words: Any) -> str:
    return " ".join(str(w) for w in words if w not in (None, ""))


def _name(value: Any) -> str:
    """
    A person's display name from C{"Name <addr>"}, an address dict, or a string.
    """
    if isinstance(value, Mapping):
        return str(value.get("name") or value.get("email") or "")
    if not value:
        return ""
    from email.utils import parseaddr

    name, addr = parseaddr(str(value))
    return name or addr or str(value)


def bug_text(envelope: Mapping[str, Any], topic_prefix: str | None = None) -> Triple:
    """
    C{#123456 [src:foo] title closed by …}, C{… reported by …}, and so on.
    """
    m = _payload(envelope)
    event = _title(envelope, topic_prefix).rsplit(".", 1)[-1]
    bug = m.get("bug")
    head = _join(f"#{bug}" if bug else "", _package_tag(m), clean(m.get("title"), _TITLE_MAX))
    sender = m.get("sender_name") or _name(m.get("sender"))
    if event == "report":
        extra = ", ".join(x for x in [m.get("severity") or "", *(m.get("keywords") or [])] if x)
        sub = _join(head, "reported by", sender, f"({extra})" if extra else "")
    elif event == "followup":
        sub = _join(head, "followup from", sender)
    elif event == "closed":
        sub = _join(head, "closed by", m.get("closed_by") or sender)
    elif event == "forwarded":
        sub = _join(head, "marked as forwarded upstream")
    else:
        sub = _join(head, f"({m.get('kind') or event})", "by" if sender else "", sender)
    patches = [a for a in m.get("attachments") or [] if isinstance(a, Mapping) and a.get("patch")]
    if patches:
        sub += f" [patch: {clean(patches[0].get('filename'), 60)}]"
    link = m.get("link") or (f"https://bugs.debian.org/{bug}" if bug else None)
    return _title(envelope, topic_prefix), clean(sub), link


def upload_text(envelope: Mapping[str, Any], topic_prefix: str | None = None) -> Triple:
    """
    C{foo 1.2-3 accepted into unstable by … (closes #1, #2)}.
    """
    m = _payload(envelope)
    event = _title(envelope, topic_prefix).rsplit(".", 1)[-1]
    who = _name(m.get("changed_by")) or m.get("sender_name") or _name(m.get("sender"))
    head = _join(m.get("source"), m.get("version"))
    if event == "accepted":
        sub = _join(head, "accepted into", m.get("distribution") or "the archive", "by", who)
        closes = [c for c in m.get("closes") or [] if isinstance(c, int)]
        if closes:
            shown = ", ".join(f"#{c}" for c in closes[:5])
            sub += f" (closes {shown}{', …' if len(closes) > 5 else ''})"
    elif event == "new":
        sub = _join(head, "is NEW: waiting for the ftp-masters")
    else:
        dist = m.get("distribution")
        sub = _join(head, event, "for" if dist else "", dist)
    link = m.get("link") or (f"https://tracker.debian.org/pkg/{m['source']}" if m.get("source") else None)
    return _title(envelope, topic_prefix), clean(sub), link


def git_text(envelope: Mapping[str, Any], topic_prefix: str | None = None) -> Triple:
    """
    C{zoe pushed 3 commits to foo main: latest summary}.
    """
    m = _payload(envelope)
    who = m.get("pusher") or envelope.get("username") or "someone"
    repo = m.get("repository") or "?"
    branch = m.get("branch") or m.get("ref") or "?"
    if m.get("deleted"):
        sub = f"{who} deleted {repo} {branch}"
    else:
        n = m.get("total_commits")
        if not isinstance(n, int):
            n = len(m.get("commits") or [])
        verb = "force-pushed" if m.get("forced") else "pushed"
        sub = f"{who} {verb} {n} commit{'s' if n != 1 else ''} to {repo} {branch}"
        if m.get("created"):
            sub += " (new)"
        commits = [c for c in m.get("commits") or [] if isinstance(c, Mapping)]
        if commits:
            sub += f": {clean(commits[-1].get('summary'), _TITLE_MAX)}"
    return _title(envelope, topic_prefix), clean(sub), m.get("url")


#: Short topic -> text function, for callers that dispatch themselves.
TEXT: dict[str, Callable[..., Triple]] = {
    "debbugs.bug.report": bug_text,
    "debbugs.bug.followup": bug_text,
    "debbugs.bug.closed": bug_text,
    "debbugs.bug.forwarded": bug_text,
    "dak.upload.accepted": upload_text,
    "dak.upload.rejected": upload_text,
    "dak.upload.new": upload_text,
    "git.receive": git_text,
}


def text_for(envelope: Mapping[str, Any], topic_prefix: str | None = None) -> Triple | None:
    """
    The text of a Debian message, or L{None} if the topic is not ours.
    """
    short = _title(envelope, topic_prefix)
    fn = TEXT.get(short)
    if fn is None:
        service = short.split(".")[0]
        fn = {"debbugs": bug_text, "dak": upload_text, "git": git_text}.get(service)
    return fn(envelope, topic_prefix) if fn else None


class _Triple(Processor):
    _fn: Callable[..., Triple]

    def _triple(self, msg: Mapping[str, Any]) -> Triple:
        return type(self)._fn(msg, self.topic_prefix)

    def title(self, msg: Mapping[str, Any]) -> str:
        return self._triple(msg)[0]

    def subtitle(self, msg: Mapping[str, Any]) -> str:
        return self._triple(msg)[1]

    def link(self, msg: Mapping[str, Any]) -> str | None:
        return self._triple(msg)[2]

    def packages(self, msg: Mapping[str, Any]) -> set[str]:
        m = _payload(msg)
        return {p for p in (m.get("source"),) if isinstance(p, str) and p}


class DebbugsProcessor(_Triple):
    """
    Bug reports, followups, closes from debbugs (C{debbugs.bug.*}).
    """

    name = "debbugs"
    colour = "pink"
    _fn = staticmethod(bug_text)


class DakProcessor(_Triple):
    """
    Archive uploads from dak (C{dak.upload.*}).
    """

    name = "dak"
    colour = "green"
    _fn = staticmethod(upload_text)


class GitProcessor(_Triple):
    """
    Pushes from the post-receive hook (C{git.receive}).
    """

    name = "git"
    topics = ("git.receive",)
    colour = "red"
    _fn = staticmethod(git_text)


PROCESSORS = [DebbugsProcessor, DakProcessor, GitProcessor]
