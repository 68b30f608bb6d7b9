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
