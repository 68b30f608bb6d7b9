# -*- test-case-name: tests.test_text -*-
"""
Human text for bus messages: a title, a subtitle, a link and a colour.

This is the part of C{fedmsg.meta} the IRC bot and C{fedmsg-tail --terse}
need.  A L{Processor} knows one family of topics; L{TextLayer} asks the first
processor that matches, and when none does (or it has nothing to say) builds
a line from the topic and the payload, so no message is ever rendered as an
empty C{"title -- "} (fedmsg issue #370).

Processors come from, in order: the C{fedmsg_twisted.text} entry point
group, C{fedmsg.meta} entry points (fedmsg-style processors, adapted),
L{fedmsg_twisted.debian_text} when present, and the built-in ones here.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from twisted.logger import Logger

__all__ = [
    "Processor",
    "LoggerProcessor",
    "AnnounceProcessor",
    "SummaryProcessor",
    "DefaultProcessor",
    "Text",
    "TextLayer",
    "MIRC_COLOURS",
    "DEFAULT_COLOUR_LOOKUP",
    "short_topic",
    "topic_matches",
    "clean",
    "irc_colour",
    "terse",
    "msg2repr",
]

log = Logger(namespace="fedmsg_twisted.text")

#: mIRC colour numbers by name, as fedmsg names them.
MIRC_COLOURS: Mapping[str, int] = {
    "white": 0,
    "black": 1,
    "blue": 2,
    "green": 3,
    "red": 4,
    "brown": 5,
    "purple": 6,
    "orange": 7,
    "yellow": 8,
    "light green": 9,
    "teal": 10,
    "light cyan": 11,
    "light blue": 12,
    "pink": 13,
    "grey": 14,
    "light grey": 15,
}

#: fedmsg's default C{irc_color_lookup}; the configured one is laid over it.
DEFAULT_COLOUR_LOOKUP: Mapping[str, str] = {
    "fas": "light blue",
    "bodhi": "green",
    "git": "red",
    "tagger": "brown",
    "wiki": "purple",
    "logger": "orange",
    "pkgdb": "teal",
    "buildsys": "yellow",
    "planet": "light green",
}

#: Longest subtitle we render, in characters: a message is a notification,
#: not a document, and one bus message must not become dozens of IRC lines.
MAX_SUBTITLE = 400

_ENVIRONMENTS = ("dev", "stg", "prod")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s+")


def clean(text: Any, limit: int = MAX_SUBTITLE) -> str:
    """
    One line of printable text: control characters (newlines, IRC formatting
    codes a publisher put in) become spaces, runs of spaces collapse, and the
    result is cut at C{limit} characters with an ellipsis.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\N{HORIZONTAL ELLIPSIS}"
    return text


def short_topic(topic: str, topic_prefix: str | None = None) -> str:
    """
    The topic without its prefix and environment: C{bodhi.update.comment}.

    With C{topic_prefix} known, C{<prefix>.<env>.} is removed whatever the
    prefix's length; otherwise the first three tokens are, as fedmsg does.
    """
    if topic_prefix and topic.startswith(topic_prefix + "."):
        rest = topic[len(topic_prefix) + 1 :]
        env, _, tail = rest.partition(".")
        if tail and env in _ENVIRONMENTS:
            return tail
        if tail and "." in tail:  # an unknown environment name: still drop it
            return tail
    parts = topic.split(".")
    if len(parts) > 3:
        return ".".join(parts[3:])
    return topic


def topic_matches(pattern: str, topic: str, topic_prefix: str | None = None) -> bool:
    """
    Does C{topic} match an include pattern?

    A pattern with glob characters (C{*?[}) is matched with C{fnmatch};
    otherwise it is a prefix ending at a token boundary.  Both the full topic
    and the short one (L{short_topic}) are tried, so C{dak} and
    C{org.debian.prod.dak} both select C{org.debian.prod.dak.upload}.
    """
    candidates = (topic, short_topic(topic, topic_prefix))
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
    p = pattern.rstrip(".")
    return any(c == p or c.startswith(p + ".") for c in candidates)


def _get(mapping: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


class Processor:
    """
    Text for one family of topics.  Subclass and override what you know.

    C{name} is the service: the first token of the short topic (C{logger}
    in C{org.fedoraproject.prod.logger.log}).  The default L{match} accepts
    that service's topics; set C{topics} to prefixes or globs instead (see
    L{topic_matches}) to be more precise.  C{colour} is the colour name used
    when C{irc_color_lookup} does not name the service.

    Every method receives the whole envelope (C{msg["msg"]} is the payload),
    as C{fedmsg.meta} processors do.  Raising (C{KeyError} on a payload that
    lacks a field, say) is fine: the layer logs it and falls back.
    """

    name: str = ""
    topics: tuple[str, ...] = ()
    colour: str | None = None

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = config or {}
        self.topic_prefix = self.config.get("topic_prefix")

    def match(self, topic: str) -> bool:
        if self.topics:
            return any(topic_matches(p, topic, self.topic_prefix) for p in self.topics)
        if not self.name:
            return False
        return short_topic(topic, self.topic_prefix).split(".")[0] == self.name

    def title(self, msg: Mapping[str, Any]) -> str:
        return short_topic(msg.get("topic", ""), self.topic_prefix)

    def subtitle(self, msg: Mapping[str, Any]) -> str:
        return ""

    def link(self, msg: Mapping[str, Any]) -> str | None:
        return None

    def usernames(self, msg: Mapping[str, Any]) -> set[str]:
        user = msg.get("username")
        return {user} if isinstance(user, str) and user else set()

    def packages(self, msg: Mapping[str, Any]) -> set[str]:
        return set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or self.topics!r}>"


class LoggerProcessor(Processor):
    """
    C{fedmsg-logger} messages, worded as fedmsg does: C{hello (ralph)}.
    """

    name = "logger"

    def subtitle(self, msg: Mapping[str, Any]) -> str:
        if "logger.log" not in msg.get("topic", ""):
            return "<unhandled log message>"
        body = msg.get("msg")
        if isinstance(body, Mapping) and "log" in body:
            result = str(body["log"])
        else:
            result = "<custom JSON message>"
        return f"{result} ({msg.get('username', 'none')})"


class AnnounceProcessor(Processor):
    """
    Announcements: the message, and its link.
    """

    name = "announce"

    def subtitle(self, msg: Mapping[str, Any]) -> str:
        return msg["msg"]["message"]

    def link(self, msg: Mapping[str, Any]) -> str | None:
        return msg["msg"].get("link")


def own_summary(msg: Mapping[str, Any]) -> str | None:
    """
    The summary a message carries about itself, if any.

    fedora-messaging style publishers put it in C{msg["summary"]} (or in the
    headers, as C{summary} or C{__str__}); we trust it over guessing.
    """
    for candidate in (
        _get(msg, "msg", "summary"),
        _get(msg, "headers", "summary"),
        _get(msg, "headers", "__str__"),
        _get(msg, "msg", "headers", "summary"),
    ):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return None


class SummaryProcessor(Processor):
    """
    Any message that carries its own summary (see L{own_summary}).
    """

    name = "summary"

    def match(self, topic: str) -> bool:
        return False  # chosen by L{TextLayer} on content, not topic

    def subtitle(self, msg: Mapping[str, Any]) -> str:
        return own_summary(msg) or ""

    def link(self, msg: Mapping[str, Any]) -> str | None:
        return _find_link(msg.get("msg"))


_SUBTITLE_KEYS = ("summary", "subject", "title", "message", "log", "description", "text", "comment", "name")
_AGENT_KEYS = ("agent", "username", "user", "author", "submitter", "owner", "maintainer")
_LINK_KEYS = ("link", "url", "html_url", "web_url", "uri", "href")


def _find_link(body: Any) -> str | None:
    if not isinstance(body, Mapping):
        return None
    for key in _LINK_KEYS:
        value = body.get(key)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value
    return None


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


class DefaultProcessor(Processor):
    """
    Any message at all: a line built from the payload.

    A known text field (C{subject}, C{message}, ...) is used with its author
    when there is one; otherwise the payload's scalar fields as C{key=value}
    pairs; otherwise compact JSON.  Never empty.
    """

    name = "unhandled"

    def match(self, topic: str) -> bool:
        return True

    def subtitle(self, msg: Mapping[str, Any]) -> str:
        body = msg.get("msg")
        if isinstance(body, Mapping):
            agent = next(
                (v for k in _AGENT_KEYS if isinstance(v := body.get(k), str) and v), None
            ) or (msg.get("username") if isinstance(msg.get("username"), str) else None)
            for key in _SUBTITLE_KEYS:
                value = body.get(key)
                if isinstance(value, str) and value.strip():
                    return f"{value} ({agent})" if agent and agent not in value else value
            pairs = []
            for key, value in body.items():
                if key in _LINK_KEYS:
                    continue
                text = _scalar(value)
                if text is not None and text != "":
                    pairs.append(f"{key}={text}")
            if pairs:
                extra = len(body) - len(pairs)
                return " ".join(pairs) + (f" (+{extra} more fields)" if extra > 0 else "")
            if body:
                return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
            return "(empty message)"
        if body is None or body == "" or body == []:
            return "(empty message)"
        if isinstance(body, str):
            return body
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)

    def link(self, msg: Mapping[str, Any]) -> str | None:
        return _find_link(msg.get("msg"))


class MetaProcessorAdapter(Processor):
    """
    A C{fedmsg.meta} processor (C{BaseProcessor} subclass) used as ours.

    Its methods take C{(msg, **config)} and it matches with C{handle_msg}.
    """

    def __init__(self, meta_processor: Any, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.meta = meta_processor
        self.name = getattr(meta_processor, "__name__", "") or type(meta_processor).__name__
        self._config = dict(config or {})

    def match(self, topic: str) -> bool:
        return bool(self.meta.handle_msg({"topic": topic}, **self._config) is not None)

    def title(self, msg: Mapping[str, Any]) -> str:
        return self.meta.title(msg, **self._config)

    def subtitle(self, msg: Mapping[str, Any]) -> str:
        return self.meta.subtitle(msg, **self._config)

    def link(self, msg: Mapping[str, Any]) -> str | None:
        return self.meta.link(msg, **self._config)

    def usernames(self, msg: Mapping[str, Any]) -> set[str]:
        return set(self.meta.usernames(msg, **self._config) or ())

    def packages(self, msg: Mapping[str, Any]) -> set[str]:
        return set(self.meta.packages(msg, **self._config) or ())


@dataclass(frozen=True)
class Text:
    """
    A message in words.  C{colour} is a name from L{MIRC_COLOURS}.
    """

    topic: str
    title: str
    subtitle: str
    link: str | None
    colour: str
    processor: str
    usernames: frozenset[str] = field(default_factory=frozenset)
    packages: frozenset[str] = field(default_factory=frozenset)

    def terse(self) -> str:
        """
        fedmsg's C{msg2repr}: C{title -- subtitle link}.
        """
        return f"{self.title} -- {self.subtitle} {self.link or ''}".rstrip()

    def pretty(self) -> str:
        """
        The terse line with mIRC colours: the title in its service's colour,
        the link in teal.  Colour numbers are always two digits, so a title
        starting with a digit cannot change the colour (fedmsg wrote C{\\x037}).
        """
        title = irc_colour(self.title, self.colour)
        link = f" {irc_colour(self.link, 'teal')}" if self.link else ""
        return f"{title} -- {self.subtitle}{link}"

    def with_link(self, link: str | None) -> "Text":
        return Text(
            self.topic, self.title, self.subtitle, link, self.colour, self.processor, self.usernames, self.packages
        )


def irc_colour(text: str, colour: str) -> str:
    return f"\x03{MIRC_COLOURS.get(colour, 15):02d}{text}\x03"


def _load_module_processors(module: Any) -> list[Any]:
    found = getattr(module, "PROCESSORS", None)
    if found is not None:
        return list(found)
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Processor)
        and obj.__module__ == module.__name__
        and (obj.name or obj.topics)
    ]


def _instantiate(item: Any, config: Mapping[str, Any]) -> list[Processor]:
    """
    Whatever a plug-in offers (a class, an instance, a list, or a fedmsg.meta
    class) as a list of processor instances.
    """
    if isinstance(item, (list, tuple)):
        return [p for i in item for p in _instantiate(i, config)]
    if isinstance(item, type):
        if issubclass(item, Processor):
            return [item(config)]
        if hasattr(item, "handle_msg"):  # fedmsg.meta.base.BaseProcessor
            meta_config = dict(config)
            prefix = meta_config.get("topic_prefix", "org.fedoraproject")
            meta_config.setdefault("topic_prefix_re", re.escape(prefix) + r"\.(dev|stg|prod)")
            return [MetaProcessorAdapter(item(lambda s: s, **meta_config), meta_config)]
        raise TypeError(f"{item!r} is not a text processor")
    if hasattr(item, "handle_msg") and not isinstance(item, Processor):
        return [MetaProcessorAdapter(item, config)]
    if callable(getattr(item, "match", None)):
        return [item]
    raise TypeError(f"{item!r} is not a text processor")


def load_plugins(config: Mapping[str, Any], groups: Iterable[str] = ("fedmsg_twisted.text", "fedmsg.meta")) -> list[Processor]:
    """
    Processors from entry points.  A plug-in that fails to load is logged
    and skipped: a broken plug-in must not stop the bot.
    """
    from importlib.metadata import entry_points

    found: list[Processor] = []
    for group in groups:
        for ep in entry_points(group=group):
            try:
                found.extend(_instantiate(ep.load(), config))
            except Exception:
                log.failure("text processor {name!r} from {group} failed to load", name=ep.name, group=group)
    return found


def builtin_processors(config: Mapping[str, Any]) -> list[Processor]:
    """
    The processors that ship with fedmsg-twisted, Debian's included.
    """
    out: list[Processor] = []
    try:
        from fedmsg_twisted import debian_text
    except ImportError:
        pass
    else:
        try:
            out.extend(_instantiate(_load_module_processors(debian_text), config))
        except Exception:
            log.failure("Debian text processors failed to load")
    out += [LoggerProcessor(config), AnnounceProcessor(config)]
    return out


class TextLayer:
    """
    Turns envelopes into L{Text}.

    @param processors: the processors to try in order; L{None} means the
        plug-ins and the built-in ones.  L{DefaultProcessor} is always last.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, processors: Iterable[Any] | None = None) -> None:
        self.config = config or {}
        if processors is None:
            plist = load_plugins(self.config) + builtin_processors(self.config)
        else:
            plist = _instantiate(list(processors), self.config)
        self.processors: list[Processor] = plist
        self._summary = SummaryProcessor(self.config)
        self._default = DefaultProcessor(self.config)
        self.colour_lookup = dict(DEFAULT_COLOUR_LOOKUP)
        self.colour_lookup.update(self.config.get("irc_color_lookup") or {})
        self.default_colour = self.config.get("irc_default_color") or "light grey"

    def processor_for(self, msg: Mapping[str, Any]) -> Processor:
        topic = msg.get("topic", "")
        for p in self.processors:
            try:
                if p.match(topic):
                    return p
            except Exception:
                log.failure("text processor {p!r} failed to match {topic}", p=p, topic=topic)
        if own_summary(msg):
            return self._summary
        return self._default

    def _call(self, p: Processor, method: str, msg: Mapping[str, Any], default: Any) -> Any:
        try:
            value = getattr(p, method)(msg)
        except Exception as e:
            # fedmsg.meta swallows these too; a processor meeting an older
            # payload shape is normal, so keep it at debug level.
            log.debug("{p!r}.{method} failed on {topic}: {e!r}", p=p, method=method, topic=msg.get("topic"), e=e)
            return default
        return default if value is None else value

    def text(self, msg: Mapping[str, Any]) -> Text:
        """
        The L{Text} for an envelope.  Never raises on a dict with a string
        C{topic}; title and subtitle are never empty.
        """
        topic = msg.get("topic")
        if not isinstance(topic, str):
            raise ValueError("message has no string 'topic'")
        p = self.processor_for(msg)
        title = clean(self._call(p, "title", msg, ""), 200) or short_topic(topic, self.config.get("topic_prefix"))
        subtitle = clean(self._call(p, "subtitle", msg, ""))
        link = self._call(p, "link", msg, None)
        if not subtitle:
            fallback = self._summary if own_summary(msg) else self._default
            subtitle = clean(self._call(fallback, "subtitle", msg, "")) or "(empty message)"
            link = link or self._call(fallback, "link", msg, None)
        link = clean(link, 2000) or None if isinstance(link, str) else None
        service = title.split(".")[0]
        colour = self.colour_lookup.get(service) or getattr(p, "colour", None) or self.default_colour
        return Text(
            topic=topic,
            title=title,
            subtitle=subtitle,
            link=link,
            colour=colour if colour in MIRC_COLOURS else self.default_colour,
            processor=getattr(p, "name", "") or type(p).__name__,
            usernames=frozenset(self._call(p, "usernames", msg, set()) or ()),
            packages=frozenset(self._call(p, "packages", msg, set()) or ()),
        )

    def msg2repr(self, msg: Mapping[str, Any]) -> str:
        """
        The one-line terse form (C{fedmsg-tail --terse}).
        """
        return self.text(msg).terse()

    def marked(self, msg: Mapping[str, Any], mark: str) -> Text:
        """
        The text for a message we must not interpret (a bad signature): the
        topic, and C{mark} as subtitle, no link.  Processors are not run.
        """
        topic = msg.get("topic") if isinstance(msg.get("topic"), str) else "(no topic)"
        return Text(topic, clean(topic, 200), mark, None, self.default_colour, "marked")


def raw_line(msg: Mapping[str, Any]) -> str:
    """
    The non-terse form: topic padded to 30 columns, then the envelope as
    compact JSON without the topic (fedmsg printed a Python repr).
    """
    body = {k: v for k, v in msg.items() if k != "topic"}
    topic = clean(msg.get("topic", ""), 200)
    text = _CONTROL.sub(" ", json.dumps(body, sort_keys=True, separators=(",", ":"), default=str))
    if len(text) > MAX_SUBTITLE * 2:
        text = text[: MAX_SUBTITLE * 2 - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return f"{topic:<30} {text}"


_layers: dict[int, tuple[Any, TextLayer]] = {}


def terse(msg: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """
    fedmsg's C{msg2repr}: the one-line C{title -- subtitle link} of an
    envelope, for C{fedmsg-tail --terse} and friends.  The processors for a
    config are loaded once and kept.
    """
    key = id(config)
    cached = _layers.get(key)
    if cached is None or cached[0] is not config:
        # Keep a reference to the config so its id is not reused.
        cached = _layers[key] = (config, TextLayer(config or {}))
    return cached[1].msg2repr(msg)


msg2repr = terse
