"""
C{twistd fedmsg-relay}: the relay as a twistd plugin.
"""

from __future__ import annotations

from typing import Any

from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.tap import ConfigOptions, StartupGuard


class Options(ConfigOptions):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run a fedmsg relay: bind relay_inbound (publishers connect here) and "
        "endpoints.relay_outbound (subscribers connect here), and forward every "
        "valid message unchanged.  With no config, it binds tcp://127.0.0.1:2003 "
        "and tcp://127.0.0.1:4001."
    )


def makeService(options: Any) -> StartupGuard:
    config = options["fedmsg_config"]
    top = StartupGuard("fedmsg-relay")
    relay = RelayService(config)
    relay.setServiceParent(top)
    from fedmsg_twisted.push import add_push_service

    add_push_service(top, config, relay)
    return top
