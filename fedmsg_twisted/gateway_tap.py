"""
C{twistd fedmsg-gateway}: the gateway as a twistd plugin.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from fedmsg_twisted.gateway import GatewayError, GatewayHealth, GatewayService, gateway_settings
from fedmsg_twisted.health import HealthError, HealthService, health_settings
from fedmsg_twisted.tap import ConfigOptions, StartupGuard


class Options(ConfigOptions):
    synopsis = "[--config PATH] [--bind ADDRESS] [--topic PREFIX]... [--health-listen ENDPOINT]"
    longdesc = (
        "Run a fedmsg gateway: subscribe to the site's endpoints and republish every "
        "message, byte for byte, on one public PUB address (gateway_bind, default "
        "tcp://127.0.0.1:9940), optionally only the topics starting with one of the "
        "--topic prefixes (gateway_topics)."
    )
    optParameters = ConfigOptions.optParameters + [
        ["bind", "b", None, "Public zmq address to bind (gateway_bind), e.g. tcp://0.0.0.0:9940."],
        ["high-water-mark", None, None, "Messages queued per outside subscriber before drops (gateway_high_water_mark).", int],
        ["health-listen", None, None, "Serve /live, /ready, /metrics on this Twisted endpoint (health_listen), "
         "e.g. tcp:9942:interface=127.0.0.1."],
        ["ready-window", None, None, "Not ready unless a message arrived within this many seconds; "
         "0 = connection state only (health_ready_window).", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["topics"] = []

    def opt_topic(self, prefix: str) -> None:
        """
        Export only topics starting with PREFIX (repeatable; gateway_topics).
        """
        self["topics"].append(prefix)

    def postOptions(self) -> None:
        super().postOptions()
        config = self["fedmsg_config"]
        try:
            self["gateway"] = gateway_settings(
                config, self["bind"], self["high-water-mark"], self["topics"] or None
            )
            self["health"] = health_settings(config, self["health-listen"], self["ready-window"])
        except (GatewayError, HealthError) as e:
            raise usage.UsageError(str(e))


def follow_srv(config: Any, subscriber: Any, exclude: Any = ()) -> Any:
    """
    A discovery service keeping C{subscriber} connected to the SRV endpoints
    of C{srv_endpoints}, or L{None} when there are none.

    @param exclude: addresses never to connect to (the gateway's own).
    """
    if not config.get("srv_endpoints"):
        return None
    from fedmsg_twisted.discovery import SRVDiscoveryService

    skip = set(exclude)

    def on_change(name: str, added: Any, removed: Any) -> None:
        for address in removed:
            subscriber.remove_endpoint(name, address)
        for address in added:
            if address not in skip:
                subscriber.add_endpoint(name, address)

    return SRVDiscoveryService(config, on_change, static=subscriber.endpoints())


def makeService(options: Any) -> StartupGuard:
    config = options["fedmsg_config"]
    bind, hwm, topics = options["gateway"]
    listen, window = options["health"]
    top = StartupGuard("fedmsg-gateway")
    gateway = GatewayService(config, bind=bind, high_water_mark=hwm, topics=topics)
    gateway.setServiceParent(top)
    try:
        discovery = follow_srv(config, gateway.subscriber, exclude=[bind])
    except ValueError as e:  # ConfigError: a bad srv_endpoints or srv_nameservers
        raise SystemExit(f"fedmsg-gateway: cannot start: {e}") from None
    if discovery is not None:
        discovery.setServiceParent(top)
    if listen is not None:
        HealthService(listen, [GatewayHealth(gateway, window=window)]).setServiceParent(top)
    return top
