# -*- test-case-name: tests.test_cli_logger -*-
"""
C{fedmsg-logger}: publish from the shell, through the relay.

    echo "Hello, world" | fedmsg-logger
    fedmsg-logger --message "Hello" --modname git --topic receive
    echo '{"a": 1}' | fedmsg-logger --json-input

It exits non-zero, with a message, when the JSON is invalid or when no relay
took the message: it never reports success for a message it could not hand
to the relay.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable

from fedmsg_twisted.cli.common import add_common_arguments, fail, load_config

PROG = "fedmsg-logger"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Publish a message on the fedmsg bus through the relay. "
        "Without --message, each line of stdin is one message (or, with "
        "--json-input, all of stdin is one JSON document).",
    )
    p.add_argument("--message", help="the message text (or JSON document with --json-input)")
    p.add_argument("--json-input", action="store_true", help="the input is one JSON document, sent as the msg")
    p.add_argument("--modname", default="logger", help="service part of the topic (default: logger)")
    p.add_argument("--topic", default="log", help="last part of the topic (default: log)")
    p.add_argument(
        "--cert-prefix",
        default="shell",
        help="sign with certnames['<cert-prefix>.<hostname>'] (default: shell)",
    )
    p.add_argument("--relay-url", metavar="URL", help="publish through the relay's HTTPS push endpoint instead of zmq")
    p.add_argument("--client-cert", metavar="PEM", help="client certificate for --relay-url")
    p.add_argument("--client-key", metavar="PEM", help="client private key for --relay-url")
    p.add_argument("--ca", metavar="PEM", help="CA that signed the relay's certificate (for --relay-url)")
    add_common_arguments(p)
    return p


def messages_from(args: argparse.Namespace, stdin: Any) -> Iterable[Any]:
    """
    The payloads to send, from C{--message} or stdin, already parsed.
    """
    if args.json_input:
        text = args.message if args.message is not None else stdin.read()
        try:
            yield json.loads(text)
        except ValueError as e:
            fail(PROG, f"--json-input: the input is not valid JSON: {e}", 1)
        return
    if args.message is not None:
        yield {"log": args.message}
        return
    for line in stdin:
        line = line.strip()
        if line:
            yield {"log": line}


def main(argv: list[str] | None = None, stdin: Any = None) -> int:
    args = build_parser().parse_args(argv)
    stdin = stdin if stdin is not None else sys.stdin
    cfg = load_config(PROG, args, {"active": True, "cert_prefix": args.cert_prefix})
    payloads = list(messages_from(args, stdin))
    if not payloads:
        fail(PROG, "nothing to send: give --message or lines on stdin", 1)
    if args.relay_url:
        from fedmsg_twisted.cli import push_client

        return push_client.send_all(PROG, args, cfg, payloads)
    from fedmsg_twisted.blocking import BlockingPublisher, PublishError

    try:
        publisher = BlockingPublisher(cfg)
    except Exception as e:  # bad certificate config, bind errors
        fail(PROG, str(e), 1)
    try:
        for payload in payloads:
            publisher.publish(topic=args.topic, modname=args.modname, msg=payload)
    except PublishError as e:
        fail(PROG, str(e), 1)
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
