"""
C{twistd fedmsg-relay}: the relay as a twistd plugin, with what stands on it
in the same reactor: the archive, the replay endpoint, the HTTPS push
endpoint and the dashboard, each when the config asks for it.
"""

from __future__ import annotations

import os
from typing import Any

from fedmsg_twisted.relay import RelayService
from fedmsg_twisted.tap import ConfigOptions, StartupGuard


class Options(ConfigOptions):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run a fedmsg relay: bind relay_inbound (publishers connect here) and "
        "endpoints.relay_outbound (subscribers connect here), and forward every "
        "valid message unchanged.  With no config, it binds tcp://127.0.0.1:2003 "
        "and tcp://127.0.0.1:4001 and archives to ~/.local/state/fedmsg-twisted."
    )


def make_archive(config: Any) -> Any:
    """
    The relay's archive, or None when C{archive = false}.
    """
    if not config["archive"]:
        return None
    from fedmsg_twisted.store import Archive

    state = os.path.expanduser(config["state_directory"])
    if not config["archive_url"]:
        os.makedirs(state, exist_ok=True)
    archive = Archive(
        config["archive_url"],
        state_directory=state,
        retention_days=config["archive_retention_days"] or None,
        retention_count=config["archive_retention_count"] or None,
        prune_interval=config["archive_prune_interval"],
        batch_interval=config["archive_batch_interval"],
        batch_size=config["archive_batch_size"],
        max_pending=config["archive_max_pending"],
        text_config=config,
    )
    _preflight(archive)
    return archive


def _preflight(archive: Any) -> None:
    """
    Open a SQLite archive once, now, before the reactor runs: a corrupt file
    stops the relay at start with one clear line, instead of a relay that
    forwards while its archive silently fails.
    """
    from fedmsg_twisted.store import ArchiveError, _ReadOnly

    backend = archive._backend
    if backend.name != "sqlite":
        return  # PostgreSQL is checked when the archive starts, off the reactor
    try:
        conn = backend.connect(writer=True)
        try:
            backend.init_schema(conn)
        finally:
            conn.close()
    except _ReadOnly:
        return  # served read-only; writes are counted as failures
    except ArchiveError as e:
        raise SystemExit(f"fedmsg-relay: cannot start: {e}")


def makeService(options: Any) -> StartupGuard:
    config = options["fedmsg_config"]
    top = StartupGuard("fedmsg-relay")
    relay = RelayService(config)
    archive = make_archive(config)
    if archive is not None:
        from fedmsg_twisted.store import ArchiveService

        # The archive starts before the relay forwards anything, and stops
        # after it, so the last messages are flushed to disk.
        ArchiveService(archive).setServiceParent(top)
        relay.add_sink(archive.add)
        replay_address = None
        if "relay_outbound" in config["replay_endpoints"]:
            from fedmsg_twisted.replay import ReplayService

            replay = ReplayService.from_config(config, archive, name="relay_outbound")
            replay.setServiceParent(top)
            replay_address = replay.address
    relay.setServiceParent(top)
    if archive is not None and config.get("heartbeat_interval", 1.0) > 0:
        from fedmsg_twisted.heal import RelayHeartbeat

        RelayHeartbeat(config, relay, archive, replay_address).setServiceParent(top)
    from fedmsg_twisted.push import add_push_service

    add_push_service(top, config, relay)
    if archive is not None:
        from fedmsg_twisted.web import add_dashboard

        add_dashboard(top, config, archive, relay)
    if config["health_listen"]:
        from fedmsg_twisted.health import HealthService, RelayHealth

        HealthService(config["health_listen"], [RelayHealth(relay)]).setServiceParent(top)
    return top
