# -*- test-case-name: tests.test_mailbridge_tap -*-
"""
C{twistd fedmsg-mailbridge}: Debian's bug and upload mail onto the bus.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.strports import service as strports_service
from twisted.python import usage

from fedmsg_twisted.tap import ConfigOptions, StartupGuard

DEFAULT_LISTEN = "tcp:8025:interface=127.0.0.1"
DEFAULT_STATE_DIR = "/var/lib/fedmsg-twisted/mailbridge"


def _size(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise usage.UsageError(f"{value!r} is not a number of bytes") from None
    if n < 1024:
        raise usage.UsageError(f"{value!r}: use at least 1024 bytes")
    return n


class Options(ConfigOptions):
    synopsis = "[--config PATH] [--maildir DIR] [--listen ENDPOINT|none] [--state-dir DIR]"
    longdesc = (
        "Publish debbugs and dak mail on the bus.  Mail comes from a Maildir "
        "watched with inotify (--maildir) and/or from the MTA over SMTP or LMTP "
        "on --listen (a Twisted server endpoint, default "
        f"{DEFAULT_LISTEN}; 'none' disables it).  Published mail is recorded "
        "by Message-ID in --state-dir so a restart never publishes it twice; "
        "bad mail goes to the quarantine Maildir (default STATE_DIR/quarantine)."
    )
    optParameters = ConfigOptions.optParameters + [
        ["maildir", "m", None, "Maildir to watch (config: mailbridge_maildir)."],
        ["listen", "l", None, f"SMTP/LMTP server endpoint, or 'none' (config: mailbridge_listen; "
         f"default {DEFAULT_LISTEN})."],
        ["state-dir", "s", None, f"Directory for the dedup record (config: mailbridge_state_dir; "
         f"default {DEFAULT_STATE_DIR})."],
        ["quarantine", "q", None, "Quarantine Maildir (config: mailbridge_quarantine; "
         "default STATE_DIR/quarantine)."],
        ["max-mail-size", None, None, "Largest mail taken, in bytes (config: mailbridge_max_mail_size).", _size],
        ["max-body", None, None, "Characters of body text kept in a message (config: mailbridge_max_body).", int],
        ["rescan-interval", None, None, "Seconds between rescans of the Maildir "
         "(config: mailbridge_rescan_interval; default 60).", float],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        from fedmsg_twisted.mailbridge import DEFAULT_MAX_MAIL_SIZE
        from fedmsg_twisted.mailparse import DEFAULT_MAX_BODY

        cfg = self["fedmsg_config"]

        def pick(opt: str, key: str, default: Any) -> Any:
            value = self[opt]
            if value is None:
                value = cfg.get(key, default)
            return value

        self["maildir"] = pick("maildir", "mailbridge_maildir", None)
        listen = pick("listen", "mailbridge_listen", DEFAULT_LISTEN)
        self["listen"] = None if listen in (None, "", "none") else listen
        self["state-dir"] = pick("state-dir", "mailbridge_state_dir", DEFAULT_STATE_DIR)
        self["quarantine"] = pick("quarantine", "mailbridge_quarantine", None)
        self["max-mail-size"] = pick("max-mail-size", "mailbridge_max_mail_size", DEFAULT_MAX_MAIL_SIZE)
        self["max-body"] = pick("max-body", "mailbridge_max_body", DEFAULT_MAX_BODY)
        self["rescan-interval"] = pick("rescan-interval", "mailbridge_rescan_interval", 60.0)
        if self["maildir"] is None and self["listen"] is None:
            raise usage.UsageError("nothing to take mail from: give --maildir and/or --listen")
        if self["maildir"] is not None:
            self["maildir"] = os.path.abspath(self["maildir"])


def makeService(options: Any, *, reactor: Any = None, publisher: Any = None) -> StartupGuard:
    """
    The publisher, then the bridge with its intakes (stopped in reverse, so
    in-flight mail drains before the publisher closes).
    """
    from fedmsg_twisted.mailbridge import MailBridge, MaildirWatcher, SMTPFactory

    if reactor is None:
        from twisted.internet import reactor  # noqa: F811
    config = options["fedmsg_config"]
    top = StartupGuard("fedmsg-mailbridge")
    if publisher is None:
        from fedmsg_twisted.publisher import PublisherService

        publisher = PublisherService(config, reactor=reactor)
    publisher.setServiceParent(top)
    bridge = MailBridge(
        publisher,
        options["state-dir"],
        quarantine_dir=options["quarantine"],
        max_mail_size=options["max-mail-size"],
        max_body=options["max-body"],
        reactor=reactor,
    )
    bridge.setServiceParent(top)
    if options["maildir"] is not None:
        MaildirWatcher(bridge, options["maildir"], rescan_interval=options["rescan-interval"],
                       reactor=reactor).setServiceParent(bridge)
    if options["listen"] is not None:
        listener = strports_service(options["listen"], SMTPFactory(bridge), reactor=reactor)
        listener.setName("listener")
        listener.setServiceParent(bridge)
    return top
