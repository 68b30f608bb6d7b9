# -*- test-case-name: tests.test_irc_tap -*-
"""
C{twistd ircbot}: the IRC bot as a twistd plugin.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from fedmsg_twisted.config import ConfigError
from fedmsg_twisted.health import HealthError, HealthService, TrackedSubscriberService, health_settings
from fedmsg_twisted.irc import IRCBotHealth, IRCBotService, parse_irc_config
from fedmsg_twisted.tap import ConfigOptions, StartupGuard


class Options(ConfigOptions):
    synopsis = "[--config PATH] [--health-listen ENDPOINT]"
    longdesc = (
        "Announce bus messages on IRC: one connection per entry of the config's "
        "'irc' list (fedmsg's format, plus channels, include filters, SASL, "
        "NickServ and a CA for TLS), subscribed to every address in endpoints."
    )
    optParameters = ConfigOptions.optParameters + [
        ["health-listen", None, None, "Serve /live, /ready, /metrics on this Twisted endpoint (health_listen), "
         "e.g. tcp:9943:interface=127.0.0.1.  Ready = every network registered and in all its channels."],
        ["ready-window", None, None, "Not ready unless a bus message arrived within this many seconds; "
         "0 = connection state only (health_ready_window).", float],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        config = self["fedmsg_config"]
        # Check the irc entries now, so a typo is one line at start-up,
        # not a traceback from inside twistd.
        try:
            if not parse_irc_config(config):
                raise ConfigError("no IRC networks configured: add an [[irc]] table")
            self["health"] = health_settings(config, self["health-listen"], self["ready-window"])
        except (ConfigError, HealthError) as e:
            raise usage.UsageError(str(e))


def makeService(options: Any) -> StartupGuard:
    config = options["fedmsg_config"]
    listen, window = options["health"]
    top = StartupGuard("ircbot")
    bot = IRCBotService(config, subscriber_class=TrackedSubscriberService)
    bot.setServiceParent(top)
    if bot.subscriber is not None:
        from fedmsg_twisted.discovery import attach_discovery

        attach_discovery(top, config, bot.subscriber)
    if listen is not None:
        HealthService(listen, [IRCBotHealth(bot, window=window)]).setServiceParent(top)
    return top
