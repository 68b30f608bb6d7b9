# -*- test-case-name: tests.test_irc_tap -*-
"""
C{twistd ircbot}: the IRC bot as a twistd plugin.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from fedmsg_twisted.config import ConfigError
from fedmsg_twisted.irc import IRCBotService, parse_irc_config
from fedmsg_twisted.tap import ConfigOptions, StartupGuard


class Options(ConfigOptions):
    synopsis = "[--config PATH]"
    longdesc = (
        "Announce bus messages on IRC: one connection per entry of the config's "
        "'irc' list (fedmsg's format, plus channels, include filters, SASL, "
        "NickServ and a CA for TLS), subscribed to every address in endpoints."
    )

    def postOptions(self) -> None:
        super().postOptions()
        # Check the irc entries now, so a typo is one line at start-up,
        # not a traceback from inside twistd.
        try:
            if not parse_irc_config(self["fedmsg_config"]):
                raise ConfigError("no IRC networks configured: add an [[irc]] table")
        except ConfigError as e:
            raise usage.UsageError(str(e))


def makeService(options: Any) -> StartupGuard:
    top = StartupGuard("ircbot")
    IRCBotService(options["fedmsg_config"]).setServiceParent(top)
    return top
