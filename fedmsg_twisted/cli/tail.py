# -*- test-case-name: tests.test_cli_tail -*-
"""
C{fedmsg-tail}: watch the bus.

    fedmsg-tail                       # every message, one line each
    fedmsg-tail --really-pretty       # coloured, indented JSON
    fedmsg-tail --terse               # one human sentence per message
    fedmsg-tail --json --count 10     # ten compact envelopes, for scripts
    fedmsg-tail --since 2026-11-27T18:00  # the archived backlog, then live
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any, Callable

from fedmsg_twisted.cli.common import add_common_arguments, fail, load_config

PROG = "fedmsg-tail"

#: fedmsg's defaults: hide heartbeats.
DEFAULT_EXCLUDE = "_heartbeat"
DEFAULT_INCLUDE = "^((?!_heartbeat).)*$"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Watch messages on the fedmsg bus.")
    p.add_argument("--topic", action="append", default=None, metavar="PREFIX",
                   help="subscribe to this topic prefix (repeatable; default: everything)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--pretty", action="store_true", help="indented JSON, credentials stripped, readable timestamp")
    fmt.add_argument("--really-pretty", dest="really_pretty", action="store_true", help="like --pretty, in colour")
    fmt.add_argument("--terse", action="store_true", help="one human-readable line per message")
    fmt.add_argument("--json", action="store_true", help="one compact JSON envelope per line, flushed per message")
    fmt.add_argument("--query", metavar="KEYS", help="print only these dotted keys, comma-separated (e.g. msg.log,topic)")
    p.add_argument("--include", default=DEFAULT_INCLUDE, metavar="REGEXP", help="only topics matching this regexp")
    p.add_argument("--exclude", default=DEFAULT_EXCLUDE, metavar="REGEXP", help="skip topics matching this regexp")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--validate", dest="validate", action="store_true", default=None, help="show only messages whose signature validates")
    val.add_argument("--no-validate", dest="validate", action="store_false", help="do not validate signatures")
    p.add_argument("--count", type=int, metavar="N", help="exit 0 after N messages")
    p.add_argument("--verbose", action="store_true",
                   help="log healing and connection events to stderr (warnings always are)")
    p.add_argument("--since", metavar="TIME|MSG_ID",
                   help="first print what the relay archived since TIME (epoch seconds or ISO 8601, "
                        "e.g. 2026-11-27T18:00:00+00:00) or since the message MSG_ID, then go live "
                        "(needs a relay with an archive and replay endpoint; capped by catchup_max)")
    add_common_arguments(p)
    return p


def parse_since(value: str) -> tuple[str, Any]:
    """
    C{("time", epoch)} for a number or an ISO 8601 time, else C{("msg_id", value)}.
    """
    import datetime

    try:
        return ("time", float(value))
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return ("msg_id", value)
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as the user typed it
    return ("time", when.timestamp())


def _compile(flag: str, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        fail(PROG, f"{flag}: invalid regular expression {pattern!r}: {e}")


def strip_credentials(msg: dict) -> dict:
    return {k: v for k, v in msg.items() if k not in ("signature", "certificate")}


def query(msg: Any, dotted: str) -> Any:
    value = msg
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


_COLOURS = {"key": "\x1b[34m", "str": "\x1b[32m", "num": "\x1b[33m", "lit": "\x1b[35m", "end": "\x1b[0m"}
_TOKEN = re.compile(r'("(?:[^"\\]|\\.)*")(\s*:)?|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|\b(true|false|null)\b')


def colourise(text: str) -> str:
    """
    ANSI colours for indented JSON, without a dependency.
    """

    def paint(m: re.Match) -> str:
        c = _COLOURS
        if m.group(1):
            kind = "key" if m.group(2) else "str"
            return f"{c[kind]}{m.group(1)}{c['end']}{m.group(2) or ''}"
        if m.group(3):
            return f"{c['num']}{m.group(3)}{c['end']}"
        return f"{c['lit']}{m.group(4)}{c['end']}"

    return _TOKEN.sub(paint, text)


def _pretty(msg: dict) -> str:
    shown = strip_credentials(msg)
    if isinstance(shown.get("timestamp"), (int, float)):
        shown["timestamp"] = time.ctime(shown["timestamp"])
    return json.dumps(shown, indent=2, sort_keys=True, ensure_ascii=False)


def formatter(args: argparse.Namespace, config: Any) -> Callable[[str, dict], str]:
    if args.json:
        from fedmsg_twisted.encoding import dumps

        return lambda topic, msg: dumps(msg)
    if args.pretty:
        return lambda topic, msg: _pretty(msg)
    if args.really_pretty:
        return lambda topic, msg: colourise(_pretty(msg))
    if args.terse:
        from fedmsg_twisted import text

        return lambda topic, msg: text.terse(msg, config)
    if args.query:
        keys = [k.strip() for k in args.query.split(",") if k.strip()]
        if not keys:
            fail(PROG, "--query: give one or more dotted keys, e.g. msg.log,topic")

        def q(topic: str, msg: dict) -> str:
            return ", ".join(
                v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                for v in (query(msg, k) for k in keys)
            )

        return q
    return lambda topic, msg: f"{topic} {json.dumps(strip_credentials(msg), sort_keys=True, ensure_ascii=False)}"


def _log_to_stderr(verbose: bool) -> None:
    """
    Warnings (a catch-up that skipped messages, a relay that cannot be
    healed from) go to stderr, never mixed with the messages on stdout.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.info if verbose else LogLevel.warn
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=True, redirectStandardIO=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.count is not None and args.count < 1:
        fail(PROG, f"--count must be 1 or more, got {args.count}")
    include = _compile("--include", args.include)
    exclude = _compile("--exclude", args.exclude)
    extra = {} if args.validate is None else {"validate_signatures": args.validate}
    cfg = load_config(PROG, args, extra)
    fmt = formatter(args, cfg)
    topics = args.topic or [""]
    since = parse_since(args.since) if args.since else None
    if since is not None and not cfg["heal"]:
        fail(PROG, "--since needs heal = true in the config")

    from twisted.internet import defer, task

    _log_to_stderr(args.verbose)

    def run(reactor: Any) -> defer.Deferred:
        from fedmsg_twisted.subscriber import SubscriberService

        done: defer.Deferred = defer.Deferred()
        seen = [0]

        def on_message(name: str, endpoint: str, topic: str, msg: dict) -> None:
            if done.called or not include.search(topic) or exclude.search(topic):
                return
            try:
                line = fmt(topic, msg)
            except Exception as e:  # a formatter must never end the tail
                line = f"{topic} (could not format: {e})"
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            seen[0] += 1
            if args.count is not None and seen[0] >= args.count:
                done.callback(0)

        validator = None
        if cfg["validate_signatures"]:
            from fedmsg_twisted.crypto import Validator

            validator = Validator.from_config(cfg)
        from twisted.application.service import MultiService

        from fedmsg_twisted.discovery import attach_discovery

        top = MultiService()
        sub = SubscriberService(cfg, on_message, topics, validator=validator, since=since)
        sub.setServiceParent(top)
        attach_discovery(top, cfg, sub)  # follows srv_endpoints, if any
        top.startService()
        reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
        return done

    try:
        task.react(run)
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
