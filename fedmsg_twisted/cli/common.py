"""
What the command-line tools share: C{--config} and fedmsg's common flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from fedmsg_twisted import config as _config


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (TOML, or a fedmsg .py file or fedmsg.d/ directory); "
        "default: $FEDMSG_CONFIG, else built-in loopback defaults",
    )
    parser.add_argument("--topic-prefix", dest="topic_prefix", help="override topic_prefix")
    parser.add_argument("--environment", choices=("dev", "stg", "prod"), help="override environment")
    parser.add_argument("--io-threads", dest="io_threads", type=int, metavar="N", help="zmq I/O threads")
    parser.add_argument("--high-water-mark", dest="high_water_mark", type=int, metavar="N", help="zmq high-water mark (0 = unlimited)")
    parser.add_argument("--linger", dest="zmq_linger", type=int, metavar="MS", help="ms to flush on close")
    parser.add_argument("--post-init-sleep", dest="post_init_sleep", type=float, metavar="SECONDS", help="longest wait for a first subscriber")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="how long to wait for the relay")
    parser.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")


COMMON_KEYS = ("topic_prefix", "environment", "io_threads", "high_water_mark", "zmq_linger", "post_init_sleep", "timeout")


def fail(program: str, message: str, code: int = 2) -> NoReturn:
    print(f"{program}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_config(program: str, args: argparse.Namespace, extra: dict[str, Any] | None = None) -> _config.Config:
    overrides = {k: getattr(args, k) for k in COMMON_KEYS if getattr(args, k, None) is not None}
    overrides.update(extra or {})
    try:
        cfg = _config.load(args.config, overrides)
    except _config.ConfigError as e:
        fail(program, str(e))
    if args.print_config:
        import json

        print(json.dumps(dict(cfg), indent=2, sort_keys=True, default=lambda o: dict(o) if hasattr(o, "items") else list(o)))
        raise SystemExit(0)
    return cfg
