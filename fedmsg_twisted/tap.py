# -*- test-case-name: tests.test_tap -*-
"""
What every twistd plugin of ours shares: C{--config}, and start-up errors
that end the process with one clear line instead of a traceback or, worse,
a daemon that runs deaf.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from fedmsg_twisted import config as _config

log = Logger(namespace="fedmsg_twisted.tap")


class ConfigOptions(usage.Options):
    """
    Options every plugin takes.  Subclasses add their own.
    """

    optParameters = [
        ["config", "c", None, "Config file (TOML, or a fedmsg .py file or fedmsg.d/ directory). "
         "Default: $FEDMSG_CONFIG, else built-in loopback defaults."],
    ]

    def postOptions(self) -> None:
        try:
            self["fedmsg_config"] = _config.load(self["config"], self.overrides())
        except _config.ConfigError as e:
            raise usage.UsageError(str(e))

    def overrides(self) -> dict[str, Any]:
        """
        Config values given by flags; subclasses extend.
        """
        return {}


class StartupGuard(MultiService):
    """
    A MultiService whose start-up errors stop the process with a message.

    twistd calls C{startService} after forking; an exception there would
    print a traceback (twistd) or be logged while the reactor runs on with
    nothing bound (twist).  We print one line naming the problem and exit 1.
    """

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def startService(self) -> None:
        try:
            super().startService()
        except Exception as e:
            message = f"{self.program}: cannot start: {e}"
            log.critical(message)
            print(message, file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            # Children that did start may own threads (the archive's
            # database pools) that only a running reactor could stop, and
            # twistd calls us before the reactor runs: end the process now,
            # with a failure status, rather than hang half-started.
            os._exit(1)
