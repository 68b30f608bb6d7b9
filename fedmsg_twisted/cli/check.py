# -*- test-case-name: tests.test_cli_check -*-
"""
C{fedmsg-check}: is a daemon of ours ready?  For monitoring scripts.

It reads the daemon's C{/ready} (see L{fedmsg_twisted.health}) and exits:

  - 0: every named component (or, with none named, the whole daemon) is ready;
  - 1: something is not ready, or a named component does not exist;
  - 2: no answer that makes sense: connection refused, timeout, not our
    health endpoint (bad arguments also exit 2, as argparse does).

fedmsg's own C{fedmsg-check} read moksha's monitoring socket; ours speaks
HTTP, so C{curl} works too.  It is a short-lived command, so plain blocking
C{urllib} is the right tool here.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

PROGRAM = "fedmsg-check"
DEFAULT_URL = "http://127.0.0.1:9941"

OK, NOT_READY, UNKNOWN = 0, 1, 2


class CheckError(Exception):
    """
    The endpoint could not be read; the message says why.
    """


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Check that a fedmsg-twisted daemon (relay, gateway, hub, bot) is ready, "
        "through its health endpoint (health_listen).",
        epilog="Exit status: 0 ready, 1 not ready, 2 cannot tell (unreachable, garbage).",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"base URL of the health endpoint (default {DEFAULT_URL})")
    p.add_argument(
        "--component",
        "-c",
        action="append",
        default=[],
        metavar="NAME",
        help="a component that must be ready (repeatable), e.g. relay, gateway, hub; default: all",
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="HTTP timeout (default 10)")
    p.add_argument("--json", action="store_true", help="print the endpoint's JSON report instead of one line per component")
    return p


def ready_url(base: str) -> str:
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CheckError(f"--url must be an http(s) URL like {DEFAULT_URL}; got {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/ready"):
        path += "/ready"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def fetch(url: str, timeout: float) -> dict[str, Any]:
    """
    GET C{url} and return its JSON report (200 and 503 both carry one).

    @raise CheckError: with a one-line reason.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read(1024 * 1024)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read(1024 * 1024)
        if status != 503:
            raise CheckError(f"{url}: HTTP {status} {e.reason}: not a fedmsg-twisted health endpoint?") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise CheckError(f"{url}: connection refused (is the daemon running with health_listen set?)") from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise CheckError(f"{url}: no answer within the timeout") from None
        raise CheckError(f"{url}: cannot connect: {reason}") from None
    except (TimeoutError, socket.timeout):
        raise CheckError(f"{url}: no answer within the timeout") from None
    except (http.client.HTTPException, OSError, ValueError) as e:  # bad status line, reset, ...
        raise CheckError(f"{url}: broken HTTP answer: {e!r}") from None
    try:
        report = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckError(f"{url}: HTTP {status} but the body is not JSON: {body[:80]!r}") from None
    if (
        not isinstance(report, dict)
        or not isinstance(report.get("components"), dict)
        or not isinstance(report.get("ready"), bool)
        or not all(isinstance(v, dict) for v in report["components"].values())
    ):
        raise CheckError(f"{url}: HTTP {status} with JSON that is not a fedmsg-twisted health report")
    return report


def evaluate(report: dict[str, Any], names: Sequence[str]) -> tuple[int, list[str]]:
    """
    The exit status and one line per component checked.
    """
    components = report["components"]
    lines, bad = [], False
    for name in names or sorted(components):
        entry = components.get(name)
        if entry is None or "error" in entry and entry.get("ready") is not True:
            known = ", ".join(n for n in sorted(components) if "error" not in components[n]) or "none"
            lines.append(f"{name}: no such component (known: {known})")
            bad = True
            continue
        ready = entry.get("ready") is True
        lines.append(f"{name}: {'ready' if ready else 'NOT READY'}" + ("" if entry.get("live", True) else " (not live)"))
        bad = bad or not ready
    if not names and not components:
        lines.append("no components reported")
        bad = True
    if not names and not report["ready"]:
        bad = True
    return (NOT_READY if bad else OK), lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.timeout <= 0:
        print(f"{PROGRAM}: error: --timeout must be > 0", file=sys.stderr)
        return UNKNOWN
    try:
        url = ready_url(args.url)
        report = fetch(url, args.timeout)
    except CheckError as e:
        print(f"{PROGRAM}: {e}", file=sys.stderr)
        return UNKNOWN
    code, lines = evaluate(report, args.component)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))
    return code


def run() -> None:
    """
    The console-script entry point.
    """
    raise SystemExit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
