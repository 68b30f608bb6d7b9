# -*- test-case-name: tests.test_config -*-
"""
Configuration: fedmsg's key names and meanings, read from TOML.

A config is an immutable mapping from fedmsg key names to checked values.
It comes from, in order of preference: an explicit path (C{--config}),
C{$FEDMSG_CONFIG}, or nothing at all, in which case the built-in defaults run
everything on loopback.  A path may also be an existing fedmsg config (a
C{fedmsg.d/} directory of C{*.py} files, or one C{.py} file), so a fedmsg site
can switch without rewriting anything.

Every error names the file and the key, and an unknown key comes with the
closest known one.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = [
    "Config",
    "ConfigError",
    "KEYS",
    "DEFAULTS",
    "load",
    "load_config",
    "from_dict",
]


class ConfigError(ValueError):
    """
    A configuration that cannot be used.  The message names file and key.
    """


# --- value checkers ----------------------------------------------------------
# Each takes the raw value and returns the normalised value, or raises
# TypeError/ValueError with a message that completes "must be ...".


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("a string")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("true or false")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("an integer")
    return v


def _nonneg_int(v: Any) -> int:
    v = _int(v)
    if v < 0:
        raise ValueError("an integer >= 0")
    return v


def _pos_int(v: Any) -> int:
    v = _int(v)
    if v < 1:
        raise ValueError("an integer >= 1")
    return v


def _opt_int(v: Any) -> int | None:
    return None if v is None else _int(v)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError("a number")
    if v < 0:
        raise ValueError("a number >= 0")
    return float(v)


def _str_list(v: Any) -> tuple[str, ...]:
    # fedmsg "listifies" single strings where it expects lists.
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise TypeError("a string or a list of strings")
    return tuple(v)


def _zmq_address(v: str) -> str:
    if "://" not in v:
        raise ValueError(f"a zmq address like tcp://127.0.0.1:4001 (got {v!r})")
    return v


def _address_list(v: Any) -> tuple[str, ...]:
    return tuple(_zmq_address(a) for a in _str_list(v))


def _endpoints(v: Any) -> Mapping[str, tuple[str, ...]]:
    if not isinstance(v, Mapping):
        raise TypeError("a table of service name -> list of zmq addresses")
    out = {}
    for k, addrs in v.items():
        if not isinstance(k, str):
            raise TypeError("a table with string keys")
        try:
            out[k] = _address_list(addrs)
        except (TypeError, ValueError) as e:
            raise type(e)(f"a table whose value {k!r} is {e}") from None
    return _frozen(out)


def _str_map(v: Any) -> Mapping[str, str]:
    if not isinstance(v, Mapping) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise TypeError("a table of string -> string")
    return _frozen(dict(v))


def _str_list_map(v: Any) -> Mapping[str, tuple[str, ...]]:
    if not isinstance(v, Mapping):
        raise TypeError("a table of string -> list of strings")
    out = {}
    for k, x in v.items():
        if not isinstance(k, str):
            raise TypeError("a table with string keys")
        out[k] = _str_list(x)
    return _frozen(out)


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        v = _str(v)
        if v not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return v

    return check


def _choices_list(*choices: str) -> Callable[[Any], tuple[str, ...]]:
    def check(v: Any) -> tuple[str, ...]:
        items = _str_list(v)
        for item in items:
            if item not in choices:
                raise ValueError(
                    "a list of " + ", ".join(repr(c) for c in choices)
                )
        return items

    return check


def _opt_endpoint(v: Any) -> str | None:
    """
    A Twisted server endpoint description such as C{tcp:8080:interface=127.0.0.1}.
    """
    if v is None:
        return None
    v = _str(v)
    from twisted.internet import endpoints

    try:
        # Parsing only; the parser never touches the reactor it is given.
        endpoints.serverFromString(object(), v)
    except Exception as e:
        raise ValueError(f"a Twisted server endpoint like 'tcp:8080:interface=127.0.0.1' ({e})") from None
    return v


def _opt_endpoint_or_none_word(v: Any) -> str | None:
    if isinstance(v, str) and v.strip().lower() == "none":
        return "none"
    return _opt_endpoint(v)


def _prefix_list(v: Any) -> tuple[str, ...]:
    items = _str_list(v)
    for item in items:
        if "*" in item[:-1]:
            raise ValueError(f"topic prefixes with at most a trailing '*' (got {item!r})")
    return items


def _table(v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise TypeError("a table")
    return _frozen(dict(v))


def _table_list(v: Any) -> tuple[Mapping[str, Any], ...]:
    if isinstance(v, Mapping):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, Mapping) for x in v):
        raise TypeError("a list of tables")
    return tuple(_frozen(dict(x)) for x in v)


def _any(v: Any) -> Any:
    return v


class _FrozenDict(dict):
    """
    A dict that refuses changes, so a shared config cannot drift.
    """

    def _refuse(self, *a: Any, **k: Any) -> None:
        raise TypeError("configuration values are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # pragma: no cover - never used as a key
        return id(self)


def _frozen(d: dict) -> Mapping:
    return _FrozenDict(d)


@dataclass(frozen=True)
class Key:
    """
    One configuration key: its checker, default and a one-line meaning.
    """

    check: Callable[[Any], Any]
    default: Any
    doc: str
    section: str = "core"


_ENV = ("dev", "stg", "prod")

#: Every key we understand.  C{docs/config.rst} is generated from this table
#: (C{python -m fedmsg_twisted.config --rst}).
KEYS: dict[str, Key] = {
    # -- the bus --------------------------------------------------------------
    "topic_prefix": Key(_str, "org.fedoraproject", "First tokens of every topic, e.g. org.debian."),
    "environment": Key(_choice(*_ENV), "dev", "Second part of every topic: dev, stg or prod."),
    "endpoints": Key(
        _endpoints,
        {"relay_outbound": ("tcp://127.0.0.1:4001",)},
        "Service name -> zmq addresses. Passive publishers bind the first free address of their own "
        "name; subscribers connect to every address except relay_inbound.",
    ),
    "relay_inbound": Key(
        _address_list,
        ("tcp://127.0.0.1:2003",),
        "Addresses the relay binds (SUB) and active publishers such as fedmsg-logger connect to.",
    ),
    "srv_endpoints": Key(_str_list, (), "Domains whose _fedmsg._tcp SRV records are added to the endpoints, re-resolved when their TTL runs out."),
    "srv_nameservers": Key(_str_list, (), "Nameservers for SRV discovery: IP or IP:port ([v6]:port); empty = system resolver."),
    "replay_endpoints": Key(_str_map, {}, "Service name -> zmq address of its replay (REP) endpoint."),
    "name": Key(_opt_str, None, "Service name this process publishes under (a key of endpoints)."),
    "active": Key(_bool, False, "Connect to relay_inbound instead of binding an address of endpoints[name]."),
    "mute": Key(_bool, False, "Create no publisher socket at all."),
    "cert_prefix": Key(_opt_str, None, "Signing certificate lookup: certnames['<cert_prefix>.<hostname>']."),
    "io_threads": Key(_pos_int, 1, "zmq context I/O threads."),
    "post_init_sleep": Key(
        _number,
        0.5,
        "Longest time (seconds) a fresh publisher holds messages while waiting for its first "
        "subscriber (we release them as soon as one subscribes, instead of always sleeping).",
    ),
    "timeout": Key(_number, 2, "Seconds to wait for network operations such as replay requests."),
    "high_water_mark": Key(_nonneg_int, 0, "zmq SNDHWM/RCVHWM in messages; 0 means unlimited."),
    "zmq_linger": Key(_nonneg_int, 1000, "Milliseconds an active publisher waits to flush on close."),
    "zmq_enabled": Key(_bool, True, "Accepted for fedmsg compatibility; must be true (zmq is the only transport)."),
    "zmq_strict": Key(_bool, False, "Consumers match topics exactly instead of by prefix."),
    "zmq_tcp_keepalive": Key(_opt_int, None, "ZMQ_TCP_KEEPALIVE (unset = libzmq default)."),
    "zmq_tcp_keepalive_cnt": Key(_opt_int, None, "ZMQ_TCP_KEEPALIVE_CNT."),
    "zmq_tcp_keepalive_idle": Key(_opt_int, None, "ZMQ_TCP_KEEPALIVE_IDLE (seconds)."),
    "zmq_tcp_keepalive_intvl": Key(_opt_int, None, "ZMQ_TCP_KEEPALIVE_INTVL (seconds)."),
    "zmq_reconnect_ivl": Key(_nonneg_int, 100, "Subscriber reconnect interval (ms)."),
    "zmq_reconnect_ivl_max": Key(_nonneg_int, 1000, "Subscriber maximum reconnect interval (ms)."),
    "max_message_size": Key(_pos_int, 1024 * 1024, "Largest body (bytes) accepted from the wire; larger ones are dropped and counted."),
    # -- signing and validation -----------------------------------------------
    "sign_messages": Key(_bool, False, "Sign every published message.", "crypto"),
    "validate_signatures": Key(_bool, False, "Drop received messages whose signature does not validate.", "crypto"),
    "crypto_backend": Key(_choice("x509", "gpg"), "x509", "Signer: x509 or gpg.", "crypto"),
    "crypto_validate_backends": Key(_choices_list("x509", "gpg"), ("x509",), "Signature kinds accepted on receive.", "crypto"),
    "ssldir": Key(_str, "/etc/pki/fedmsg", "Directory of <certname>.crt and <certname>.key.", "crypto"),
    "certnames": Key(_str_map, {}, "'<service>.<hostname>' -> certificate name in ssldir.", "crypto"),
    "certname": Key(_opt_str, None, "Certificate name to sign with, overriding the certnames lookup.", "crypto"),
    "ca_cert_location": Key(_opt_str, None, "CA certificate (path, or an https URL fetched asynchronously).", "crypto"),
    "crl_location": Key(_opt_str, None, "CRL (path, or an https URL fetched asynchronously); unset = no CRL.", "crypto"),
    "crl_grace_period": Key(_number, 86400, "Seconds an expired or unreadable CRL's last good copy stays in force.", "crypto"),
    "crl_cache_expiry": Key(_number, 3600, "Seconds between re-reads of a CRL URL.", "crypto"),
    "ca_cert_cache_expiry": Key(_number, 0, "Seconds between re-reads of a CA URL (0 = once).", "crypto"),
    "routing_policy": Key(_str_list_map, {}, "Full topic -> certificate CNs (or gpg fingerprints) allowed to publish it.", "crypto"),
    "routing_nitpicky": Key(_bool, False, "Reject topics that routing_policy does not list.", "crypto"),
    "gpg_home": Key(_opt_str, None, "GnuPG home directory.", "crypto"),
    "gpg_signing_key": Key(_opt_str, None, "Fingerprint of the key to sign with.", "crypto"),
    "gpg_keys": Key(_str_map, {}, "Hostname -> signing key fingerprint.", "crypto"),
    # -- relay ----------------------------------------------------------------
    "relay_validate": Key(_bool, False, "The relay validates signatures at the door and drops what fails.", "relay"),
    "relay_bind_host": Key(_bool, True, "Passive sockets bind the host written in the address (fedmsg binds *).", "relay"),
    # -- HTTPS push endpoint on the relay ---------------------------------------
    "push_listen": Key(_opt_endpoint, None, "Twisted server endpoint of the relay's HTTPS push endpoint, e.g. ssl:8443:interface=0.0.0.0 (mutual TLS is always added; unset = off).", "push"),
    "push_certificate": Key(_opt_str, None, "PEM certificate of the push endpoint, leaf first, then intermediates.", "push"),
    "push_private_key": Key(_opt_str, None, "Unencrypted PEM key matching push_certificate.", "push"),
    "push_ca": Key(_opt_str, None, "PEM CA certificate(s) that issue client certificates; clients must present one.", "push"),
    "push_crl": Key(_opt_str, None, "CRL file or https URL for client certificates (uses crl_grace_period, crl_cache_expiry).", "push"),
    "push_max_body": Key(_pos_int, 262144, "Largest request body in bytes; larger gets 413.", "push"),
    "push_timeout": Key(_number, 30, "Idle timeout and deadline for a whole request, in seconds; 0 = off.", "push"),
    # -- mail bridge ----------------------------------------------------------------
    "mailbridge_maildir": Key(_opt_str, None, "Maildir whose new/ the mail bridge watches.", "mailbridge"),
    "mailbridge_listen": Key(_opt_endpoint_or_none_word, "tcp:8025:interface=127.0.0.1", "SMTP/LMTP server endpoint of the mail bridge; 'none' disables it.", "mailbridge"),
    "mailbridge_state_dir": Key(_str, "/var/lib/fedmsg-twisted/mailbridge", "Where the record of published mail (dedup by Message-ID) is kept.", "mailbridge"),
    "mailbridge_quarantine": Key(_opt_str, None, "Quarantine Maildir for bad mail (default: <state dir>/quarantine).", "mailbridge"),
    "mailbridge_max_mail_size": Key(_pos_int, 10485760, "Largest mail in bytes; larger mail is quarantined.", "mailbridge"),
    "mailbridge_max_body": Key(_pos_int, 4000, "Characters of body or Changes text kept in a message.", "mailbridge"),
    "mailbridge_rescan_interval": Key(_number, 60, "Seconds between rescans of the Maildir's new/ (0 = never).", "mailbridge"),
    # -- archive and replay ---------------------------------------------------------
    "state_directory": Key(_str, "~/.local/state/fedmsg-twisted", "Where the relay keeps its state (the SQLite archive).", "archive"),
    "archive": Key(_bool, True, "The relay stores every message it forwards in its archive.", "archive"),
    "archive_url": Key(_opt_str, None, "SQLite path or postgresql://user@host:port/db URL; unset = <state_directory>/archive.sqlite.", "archive"),
    "archive_retention_days": Key(_number, 0, "Prune messages older than this many days (0 = keep forever).", "archive"),
    "archive_retention_count": Key(_nonneg_int, 0, "Keep at most this many messages (0 = no limit).", "archive"),
    "archive_prune_interval": Key(_number, 600, "Seconds between prunes.", "archive"),
    "archive_batch_interval": Key(_number, 0.05, "Seconds a write batch waits for more messages before committing.", "archive"),
    "archive_batch_size": Key(_pos_int, 500, "Messages per write transaction at most.", "archive"),
    "archive_max_pending": Key(_pos_int, 100000, "Messages waiting for the writer beyond which new ones are not archived (counted).", "archive"),
    "replay_max_messages": Key(_pos_int, 1000, "A replay query matching more messages is refused with an error.", "archive"),
    "replay_max_bytes": Key(_pos_int, 64 * 1024 * 1024, "Largest replay reply in bytes.", "archive"),
    # -- web: query API and dashboard -----------------------------------------------
    "web_listen": Key(_opt_endpoint, None, "Twisted server endpoint of the query API and dashboard (tcp:PORT binds 127.0.0.1 unless interface= is given; ssl:PORT adds TLS); unset = off.", "web"),
    "web_certificate": Key(_opt_str, None, "PEM certificate (leaf first, then chain) for web_listen ssl:.", "web"),
    "web_private_key": Key(_opt_str, None, "Unencrypted PEM key for web_listen ssl:.", "web"),
    "web_allowed_hosts": Key(lambda v: None if v is None else _str_list(v), None, "Host names served; unset = loopback names only when bound to loopback, any otherwise.", "web"),
    "web_max_rows_per_page": Key(_pos_int, 100, "Cap on rows_per_page in /raw.", "web"),
    "web_query_timeout": Key(_number, 5.0, "Seconds one archive query may run.", "web"),
    "web_max_clients": Key(_pos_int, 100, "Open live event streams at most.", "web"),
    "web_max_replay": Key(_pos_int, 1000, "Most events replayed to a reconnecting stream.", "web"),
    "web_poll_interval": Key(_number, 1.0, "Seconds between archive polls while someone watches.", "web"),
    "web_keepalive": Key(_number, 15.0, "Seconds between keepalive comments on streams (0 = off).", "web"),
    "web_client_buffer": Key(_pos_int, 2000, "Events queued for a stream that does not read before it is cut.", "web"),
    # -- health, gateway, hub --------------------------------------------------------
    "health_listen": Key(_opt_endpoint, None, "Twisted server endpoint for /live, /ready and /metrics, e.g. tcp:9941:interface=127.0.0.1; unset = off.", "health"),
    "health_ready_window": Key(_number, 0, "A subscriber is not ready unless a message (heartbeats included) arrived within this many seconds; 0 = connection state only.", "health"),
    "metrics_topic_depth": Key(_nonneg_int, 0, "Topic tokens kept in metric labels; 0 = topic_prefix + 2.", "health"),
    "gateway_bind": Key(lambda v: _zmq_address(_str(v)), "tcp://127.0.0.1:9940", "Public PUB address of fedmsg-gateway.", "gateway"),
    "gateway_high_water_mark": Key(_nonneg_int, 10000, "fedmsg-gateway SNDHWM/RCVHWM (0 = unlimited).", "gateway"),
    "gateway_topics": Key(_prefix_list, (), "Topic prefixes the gateway exports (only a trailing * allowed); empty = all.", "gateway"),
    "hub_queue_size": Key(_pos_int, 1000, "Messages waiting per hub consumer before the oldest is dropped.", "hub"),
    "shutdown_timeout": Key(_number, 10, "Seconds the hub drains consumer queues on stop.", "hub"),
    "heartbeat_interval": Key(_number, 1.0, "Seconds between the relay's heartbeats (its archive's seq_id, for gap healing); 0 = off.", "healing"),
    "relay_high_water_mark": Key(_nonneg_int, 10000, "Messages the relay queues per subscriber before dropping for it (healed from the archive); 0 = unlimited.", "healing"),
    "heal": Key(_bool, True, "Subscribers fetch the messages they missed from the relay's archive, once each.", "healing"),
    "catchup_page": Key(_pos_int, 500, "Messages per replay request while healing.", "healing"),
    "catchup_max": Key(_nonneg_int, 10000, "Most seq_ids one catch-up covers; older missed ones are skipped and logged.", "healing"),
    "heal_dedup_size": Key(_pos_int, 100000, "msg_ids a subscriber remembers to deliver each message once.", "healing"),
    "subscriber_state_file": Key(_opt_str, None, "File where a subscriber keeps how far it has every relay's messages, to heal across its restarts; unset = memory only.", "healing"),
    "publish_resend_window": Key(_nonneg_int, 10000, "An active publisher keeps this many sent messages until the relay's archive has them, and resends the missing ones when the relay comes back; 0 = off.", "healing"),
    "publish_outbox": Key(_opt_str, None, "File where an active publisher with a resend window keeps what it published until the relay's archive confirms it, so that a killed process resends it at its next start; unset = memory only.", "healing"),
    # -- later sections (archive, replay, push, irc, health) add keys below --
    "logging": Key(_any, None, "Accepted for fedmsg compatibility and ignored (we log with twisted.logger).", "compat"),
    "irc": Key(_table_list, (), "IRC bot connections (list of tables), fedmsg's format plus channels/include/SASL/NickServ/ssl_ca; see the IRC bot page.", "irc"),
    "irc_color_lookup": Key(_str_map, {}, "Service -> colour name for the IRC bot.", "irc"),
    "irc_default_color": Key(_str, "light grey", "Colour for services not in irc_color_lookup.", "irc"),
    "irc_method": Key(_choice("notice", "msg"), "notice", "Send lines as NOTICE or PRIVMSG.", "irc"),
}

#: fedmsg keys that make sense only inside fedmsg/moksha.  A legacy fedmsg
#: config may carry them; they are accepted and ignored.
IGNORED_FEDMSG_KEYS = frozenset(
    {
        "topic_prefix_re",
        "persistent_store",
        "print_config",
        "crl_cache",
        "ca_cert_cache",
        "status_directory",
        "datagrepper_url",
        "skip_last_message",
        "stomp_uri",
        "stomp_user",
        "stomp_pass",
        "stomp_ssl_crt",
        "stomp_ssl_key",
        "stomp_heartbeat",
        "stomp_queue",
    }
)

# Defaults go through their checkers too, so they are normalised and frozen.
DEFAULTS: Mapping[str, Any] = {k: key.check(key.default) if key.default is not None else None for k, key in KEYS.items()}


def _is_foreign(key: str) -> bool:
    # fedmsg sites carry consumer and moksha settings in the same dict.
    return key in IGNORED_FEDMSG_KEYS or key.startswith(("fedmsg.", "moksha.", "zmq_")) and key not in KEYS


class Config(Mapping):
    """
    A checked, read-only configuration.

    It is a C{Mapping} of fedmsg key names, so C{config["topic_prefix"]} and
    C{tail_messages(**config)} both work.  C{sources} lists the files read.
    """

    def __init__(self, values: Mapping[str, Any], sources: tuple[str, ...] = ()) -> None:
        self._values = dict(values)
        self.sources = sources

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<Config from {', '.join(self.sources) or 'built-in defaults'}>"

    def replace(self, **changes: Any) -> "Config":
        """
        A copy with some keys changed; the new values are checked too.
        """
        merged = dict(self._values)
        merged.update(_check(changes, "<override>", strict=True))
        return Config(merged, self.sources)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(raw: Mapping[str, Any], source: str, strict: bool) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        spec = KEYS.get(key)
        if spec is None:
            if not strict and _is_foreign(key):
                continue
            if not strict:
                # A legacy fedmsg config: application keys are common there.
                continue
            raise ConfigError(f"{source}: unknown key {key!r}{_suggest(key)}")
        try:
            out[key] = spec.check(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: key {key!r} must be {e}; got {value!r}") from None
    return out


def _merge(base: dict, new: Mapping) -> dict:
    # fedmsg merges nested dicts key by key, later files winning.
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), Mapping):
            base[k] = _merge(dict(base[k]), v)
        else:
            base[k] = v
    return base


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None


def _read_fedmsg_py(path: str) -> dict[str, Any]:
    # fedmsg's own format: a Python file that defines a dict named config.
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    scope: dict[str, Any] = {"__file__": path, "__name__": "fedmsg_config"}
    try:
        exec(compile(source, path, "exec"), scope)
    except Exception as e:
        raise ConfigError(f"{path}: error while executing fedmsg config: {e!r}") from None
    config = scope.get("config")
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: a fedmsg config file must define a dict named 'config'")
    return _translate_legacy(dict(config))


def _translate_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """
    fedmsg's dotted consumer keys that have a key of ours.
    """
    raw = dict(raw)
    port = raw.pop("fedmsg.consumers.gateway.port", None)
    if port is not None and "gateway_bind" not in raw:
        raw["gateway_bind"] = f"tcp://*:{port}"
    hwm = raw.pop("fedmsg.consumers.gateway.high_water_mark", None)
    if hwm is not None and "gateway_high_water_mark" not in raw:
        raw["gateway_high_water_mark"] = hwm
    return raw


def _read_path(path: str) -> tuple[dict[str, Any], bool, tuple[str, ...]]:
    """
    Read one path.  Returns (raw values, strict?, files read).
    """
    if os.path.isdir(path):
        names = sorted(
            n for n in os.listdir(path) if n.endswith((".py", ".toml")) and not n.startswith(".")
        )
        if not names:
            raise ConfigError(f"{path}: directory holds no *.py or *.toml config files")
        merged: dict[str, Any] = {}
        strict = True
        for n in names:
            full = os.path.join(path, n)
            raw = _read_fedmsg_py(full) if n.endswith(".py") else _read_toml(full)
            if n.endswith(".py"):
                strict = False
            # Each file is checked on its own so errors name the right file.
            _check(raw, full, strict=n.endswith(".toml"))
            merged = _merge(merged, raw)
        return merged, strict, tuple(os.path.join(path, n) for n in names)
    if path.endswith(".py"):
        raw = _read_fedmsg_py(path)
        _check(raw, path, strict=False)
        return raw, False, (path,)
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file does not exist")
    raw = _read_toml(path)
    _check(raw, path, strict=True)
    return raw, True, (path,)


def from_dict(values: Mapping[str, Any], source: str = "<dict>", strict: bool = True) -> Config:
    """
    Build a L{Config} from a plain dict over the defaults (for embedding and tests).
    """
    merged = dict(DEFAULTS)
    merged.update(_check(values, source, strict=strict))
    cfg = Config(merged, (source,))
    _cross_check(cfg, source)
    return cfg


def _cross_check(cfg: Config, source: str) -> None:
    if not cfg["zmq_enabled"]:
        raise ConfigError(f"{source}: key 'zmq_enabled' must be true: zmq is the only transport")
    name = cfg["name"]
    if name is not None and not cfg["active"] and not cfg["mute"] and name not in cfg["endpoints"]:
        raise ConfigError(
            f"{source}: key 'name' is {name!r} but endpoints has no {name!r} entry to bind"
            f"{' (did you mean ' + repr(m[0]) + '?)' if (m := difflib.get_close_matches(name, cfg['endpoints'], 1)) else ''}"
        )


def load(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """
    Load the configuration.

    @param path: a TOML file, a fedmsg C{.py} file, or a directory of either.
        L{None} means C{$FEDMSG_CONFIG}, or the built-in defaults when unset.
    @param overrides: values that win over the file (command-line flags).
    @raise ConfigError: with the file and key named.
    """
    if path is None:
        path = os.environ.get("FEDMSG_CONFIG") or None
    merged: dict[str, Any] = {}
    sources: tuple[str, ...] = ()
    strict = True
    if path is not None:
        raw, strict, sources = _read_path(path)
        merged = _check(raw, path, strict=False)
        source = path
    else:
        source = "<built-in defaults>"
    values = dict(DEFAULTS)
    values.update(merged)
    if overrides:
        values.update(_check(overrides, "<command line>", strict=True))
    cfg = Config(values, sources)
    _cross_check(cfg, source)
    return cfg


def load_config(extra_args: Any = None, doc: Any = None, filenames: Any = None, **kw: Any) -> Config:
    """
    fedmsg's spelling: C{fedmsg_twisted.config.load_config([], None)}.

    C{filenames}, if given, is a list whose first entry is read as C{path}.
    """
    path = None
    if filenames:
        path = filenames[0] if isinstance(filenames, (list, tuple)) else filenames
    return load(path)


def to_rst() -> str:
    """
    The config reference, as reStructuredText, from L{KEYS}.
    """
    lines = []
    sections: dict[str, list[tuple[str, Key]]] = {}
    for name, key in KEYS.items():
        sections.setdefault(key.section, []).append((name, key))
    for section, keys in sections.items():
        title = f"{section} keys"
        lines += [title, "-" * len(title), ""]
        for name, key in keys:
            default = key.default
            if isinstance(default, tuple):
                default = list(default)
            doc = key.doc.replace("*", "\\*")
            lines += [f"``{name}``", f"    Default: ``{default!r}``.", f"    {doc}", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    if sys.argv[1:] == ["--rst"]:
        print(to_rst())
