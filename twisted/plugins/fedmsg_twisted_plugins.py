"""
twistd plugins of fedmsg-twisted.  Each is one line; the heavy modules are
imported only when a plugin is chosen.
"""

from twisted.application.service import ServiceMaker

fedmsgRelay = ServiceMaker(
    "fedmsg relay",
    "fedmsg_twisted.relay_tap",
    "Relay fedmsg messages from active publishers to subscribers",
    "fedmsg-relay",
)

fedmsgGateway = ServiceMaker(
    "fedmsg gateway",
    "fedmsg_twisted.gateway_tap",
    "Republish a site's bus, unchanged, on one public address",
    "fedmsg-gateway",
)

fedmsgHub = ServiceMaker(
    "fedmsg hub",
    "fedmsg_twisted.hub_tap",
    "Host fedmsg consumers in one reactor",
    "fedmsg-hub",
)

ircbot = ServiceMaker(
    "fedmsg IRC bot",
    "fedmsg_twisted.irc_tap",
    "Announce fedmsg messages on IRC channels",
    "ircbot",
)

fedmsgMailbridge = ServiceMaker(
    "fedmsg mail bridge",
    "fedmsg_twisted.mailbridge_tap",
    "Publish debbugs and dak mails on the bus",
    "fedmsg-mailbridge",
)
