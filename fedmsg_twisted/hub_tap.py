"""
C{twistd fedmsg-hub}: consumers in one reactor, as a twistd plugin.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from fedmsg_twisted.consumer import ConsumerError
from fedmsg_twisted.gateway_tap import follow_srv
from fedmsg_twisted.health import HealthError, HealthService, health_settings
from fedmsg_twisted.hub import HubHealth, HubService, entry_point_consumers, load_consumer
from fedmsg_twisted.tap import ConfigOptions, StartupGuard


class Options(ConfigOptions):
    synopsis = "[--config PATH] [--consumer module:Class]... [--health-listen ENDPOINT]"
    longdesc = (
        "Run a fedmsg hub: subscribe to the site's endpoints and hand each message to "
        "the consumers that want its topic.  Consumers are the ones named with "
        "--consumer (module:Class, or an entry point name), or else every class "
        "registered under the 'fedmsg_twisted.consumers' entry point group."
    )
    optParameters = ConfigOptions.optParameters + [
        ["queue-size", None, None, "Messages held per busy consumer before the oldest is dropped (hub_queue_size).", int],
        ["shutdown-timeout", None, None, "Seconds to drain consumer queues on stop (shutdown_timeout).", float],
        ["health-listen", None, None, "Serve /live, /ready, /metrics on this Twisted endpoint (health_listen), "
         "e.g. tcp:9943:interface=127.0.0.1."],
        ["ready-window", None, None, "Not ready unless a message arrived within this many seconds; "
         "0 = connection state only (health_ready_window).", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["consumers"] = []

    def opt_consumer(self, spec: str) -> None:
        """
        Run this consumer: module:Class or an entry point name (repeatable).
        """
        self["consumers"].append(spec)

    def postOptions(self) -> None:
        super().postOptions()
        config = self["fedmsg_config"]
        try:
            if self["consumers"]:
                self["classes"] = [load_consumer(s) for s in self["consumers"]]
            else:
                self["classes"] = entry_point_consumers()
            self["health"] = health_settings(config, self["health-listen"], self["ready-window"])
        except (ConsumerError, HealthError) as e:
            raise usage.UsageError(str(e))
        if not self["classes"]:
            raise usage.UsageError(
                "no consumers: name one with --consumer module:Class or install one under "
                "the 'fedmsg_twisted.consumers' entry point group"
            )
        try:
            self["validator"] = _validator(config, self["classes"])
        except Exception as e:  # ConfigError from the crypto set-up
            raise usage.UsageError(f"cannot validate signatures: {e}")
        for key in ("queue-size", "shutdown-timeout"):
            if self[key] is not None and self[key] < (1 if key == "queue-size" else 0):
                raise usage.UsageError(f"--{key} must be {'>= 1' if key == 'queue-size' else '>= 0'}; got {self[key]}")


def _validator(config: Any, classes: list[type]) -> Any:
    default = bool(config.get("validate_signatures", False))
    wanted = any(
        default if getattr(c, "validate_signatures", None) is None else c.validate_signatures for c in classes
    )
    if not wanted:
        return None
    from fedmsg_twisted.crypto import Validator

    return Validator.from_config(config)


def makeService(options: Any) -> StartupGuard:
    config = options["fedmsg_config"]
    listen, window = options["health"]
    top = StartupGuard("fedmsg-hub")
    classes = options["classes"]
    try:
        hub = HubService(
            config,
            classes,
            validator=options["validator"],
            stop_validator=True,
            queue_size=options["queue-size"],
            shutdown_timeout=options["shutdown-timeout"],
        )
    except Exception as e:  # ConsumerError, a consumer's own __init__
        # One line on stderr and exit status 1, not a traceback.
        raise SystemExit(f"fedmsg-hub: cannot start: {e}") from None
    hub.setServiceParent(top)
    try:
        discovery = follow_srv(config, hub.subscriber)
    except ValueError as e:  # ConfigError: a bad srv_endpoints or srv_nameservers
        raise SystemExit(f"fedmsg-hub: cannot start: {e}") from None
    if discovery is not None:
        discovery.setServiceParent(top)
    if listen is not None:
        HealthService(listen, [HubHealth(hub, window=window)]).setServiceParent(top)
    return top
