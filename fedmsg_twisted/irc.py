# -*- test-case-name: tests.test_irc -*-
"""
The IRC bot: bus messages as lines in IRC channels.

One L{Network} per entry of the C{irc} config list: a L{ClientService} that
keeps one L{BotProtocol} connection alive (back-off reconnect, TLS verified,
PING/PONG watchdog), and a bounded per-channel line queue drained at
C{line_rate} that survives reconnects.  L{IRCBotService} holds the networks
and, unless told otherwise, a subscriber feeding L{IRCBotService.announce}.

Formatting is L{fedmsg_twisted.text}'s job; this module decides where and
when lines go.
"""

from __future__ import annotations

import base64
import difflib
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, protocol, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols import irc

from fedmsg_twisted import text as _text
from fedmsg_twisted.config import ConfigError
from fedmsg_twisted.stats import Counters

__all__ = [
    "ChannelSettings",
    "NetworkSettings",
    "parse_irc_config",
    "BotProtocol",
    "BotFactory",
    "Network",
    "IRCBotService",
    "split_utf8",
]

log = Logger(namespace="fedmsg_twisted.irc")

#: IRC's limit on one line, CR LF included (RFC 1459 2.3).
MAX_LINE = 512

#: Seconds to wait for a channel's modes after joining before speaking.
MODE_WAIT = 5.0

#: Link shortener requests in flight per network; more messages keep long links.
MAX_SHORTENING = 4

#: Seconds a signature check may take before the message is dropped.
VALIDATION_TIMEOUT = 30.0

# --- configuration ------------------------------------------------------------


def _t_str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise TypeError("a non-empty string")
    return v


def _t_opt_str(v: Any) -> str | None:
    return None if v is None else _t_str(v)


def _t_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("true or false")
    return v


def _t_port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
        raise ValueError("a port number (1-65535)")
    return v


def _t_pos_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("an integer >= 1")
    return v


def _t_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError("a number >= 0")
    return float(v)


def _t_str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise TypeError("a string or a list of strings")
    return tuple(v)


def _t_filters(v: Any) -> dict[str, tuple[re.Pattern, ...]]:
    if not isinstance(v, Mapping):
        raise TypeError("a table like {topic = [regex, ...], body = [regex, ...]}")
    out = {}
    for k, patterns in v.items():
        if k not in ("topic", "body"):
            raise ValueError(f"a table with keys 'topic' and 'body' only (got {k!r})")
        compiled = []
        for p in _t_str_list(patterns):
            try:
                compiled.append(re.compile(p))
            except re.error as e:
                raise ValueError(f"valid regular expressions ({p!r}: {e})") from None
        out[k] = tuple(compiled)
    return out


def _t_short(v: Any) -> str | None:
    if v is False or v is None:
        return None
    if v is True:
        return "https://da.gd/s?url={url}"
    if isinstance(v, str) and "{url}" in v and v.startswith(("http://", "https://")):
        return v
    raise ValueError("true, false, or a URL template containing {url}")


def _t_choice(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return v

    return check


def _channel_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("a channel name")
    return name if name[0] in "#&+!" else "#" + name


@dataclass(frozen=True)
class ChannelSettings:
    """
    One channel: its name, key, and the topics it wants (empty = all).
    """

    name: str
    key: str | None = None
    include: tuple[str, ...] = ()


def _t_channel(v: Any) -> ChannelSettings:
    if isinstance(v, str):
        return ChannelSettings(_channel_name(v))
    if isinstance(v, Mapping):
        unknown = set(v) - {"name", "key", "include"}
        if unknown:
            raise ValueError(f"a channel table with keys name, key, include (unknown: {sorted(unknown)})")
        if "name" not in v:
            raise ValueError("a channel table with a 'name'")
        return ChannelSettings(
            _channel_name(_t_str(v["name"])), _t_opt_str(v.get("key")), _t_str_list(v.get("include", ()))
        )
    raise TypeError("a channel name or a table {name, key, include}")


def _t_channels(v: Any) -> tuple[ChannelSettings, ...]:
    if isinstance(v, (str, Mapping)):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v:
        raise TypeError("a non-empty list of channels")
    return tuple(_t_channel(c) for c in v)


@dataclass(frozen=True)
class NetworkSettings:
    """
    One checked entry of the C{irc} config list.  See L{IRC_KEYS}.
    """

    network: str = "irc.freenode.net"
    port: int = 6667
    ssl: bool = False
    ssl_ca: str | None = None
    ssl_hostname: str | None = None
    nickname: str = "fedmsg-bot"
    username: str | None = None
    realname: str = "fedmsg-twisted IRC bot"
    password: str | None = None
    nickserv_password: str | None = None
    nickserv_account: str | None = None
    nickserv_nick: str = "NickServ"
    sasl_username: str | None = None
    sasl_password: str | None = None
    channels: tuple[ChannelSettings, ...] = ()
    timeout: float = 120.0
    make_pretty: bool = False
    make_terse: bool = False
    make_short: str | None = None
    short_timeout: float = 3.0
    line_rate: float = 1.0
    queue_size: int = 50
    filters: Mapping[str, tuple[re.Pattern, ...]] = field(default_factory=dict)
    include: tuple[str, ...] = ()
    method: str | None = None
    ping_interval: float = 60.0
    ping_timeout: float = 150.0
    rejoin_delay: float = 10.0
    regain_interval: float = 60.0
    reconnect_max_delay: float = 300.0
    on_invalid: str = "drop"

    @property
    def name(self) -> str:
        return f"{self.network}:{self.port}"


#: The keys of one C{irc} entry: checker and one-line meaning.  fedmsg's keys
#: first, then ours.
IRC_KEYS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "network": (_t_str, "Server host name (default irc.freenode.net)."),
    "port": (_t_port, "Server port (default 6667, or 6697 with ssl)."),
    "ssl": (_t_bool, "Use TLS; the certificate and host name are always verified."),
    "nickname": (_t_str, "Nickname (default fedmsg-bot); regained when taken."),
    "channel": (_t_str, "One channel ('#' added if missing); see also channels."),
    "timeout": (_t_number, "Seconds allowed to connect and register (default 120)."),
    "make_pretty": (_t_bool, "mIRC colours (off in +c channels)."),
    "make_terse": (_t_bool, "'title -- subtitle link' lines instead of topic + JSON."),
    "make_short": (_t_short, "Shorten links: true (da.gd) or a URL template with {url}."),
    "line_rate": (_t_number, "Seconds between lines sent (default 1.0)."),
    "filters": (_t_filters, "Exclusion regexes {topic = [...], body = [...]} as in fedmsg."),
    # ours
    "channels": (_t_channels, "Channels: names, or tables {name, key, include}."),
    "include": (_t_str_list, "Only topics matching these prefixes or globs (default: all)."),
    "ssl_ca": (_t_str, "PEM file of CA certificates to verify the server with (default: system CAs)."),
    "ssl_hostname": (_t_str, "Name the server certificate must carry (default: network)."),
    "username": (_t_str, "User (ident) name (default: nickname)."),
    "realname": (_t_str, "Real name (GECOS)."),
    "password": (_t_str, "Server password (PASS)."),
    "nickserv_password": (_t_str, "Identify to NickServ with this password after connecting."),
    "nickserv_account": (_t_str, "NickServ account (default: nickname)."),
    "nickserv_nick": (_t_str, "NickServ's nickname (default NickServ)."),
    "sasl_username": (_t_str, "SASL PLAIN account (default: nickserv_account or nickname)."),
    "sasl_password": (_t_str, "SASL PLAIN password; enables SASL."),
    "queue_size": (_t_pos_int, "Lines held per channel; on overflow the oldest go (default 50)."),
    "short_timeout": (_t_number, "Seconds to wait for the link shortener (default 3)."),
    "method": (_t_choice("notice", "msg"), "notice or msg for this network (default: irc_method)."),
    "ping_interval": (_t_number, "Seconds between PINGs to the server (default 60)."),
    "ping_timeout": (_t_number, "Silence (seconds) after which the link is dead (default 150)."),
    "rejoin_delay": (_t_number, "Seconds before rejoining after a kick (default 10; doubles while banned)."),
    "regain_interval": (_t_number, "Seconds between attempts to regain the nickname (default 60)."),
    "reconnect_max_delay": (_t_number, "Longest wait between reconnection attempts (default 300)."),
    "on_invalid": (_t_choice("drop", "mark"), "With validate_signatures: drop invalid messages, or mark them."),
}


def parse_irc_entry(entry: Mapping[str, Any], where: str) -> NetworkSettings:
    """
    Check one C{irc} entry; errors name the entry and the key.
    """
    values: dict[str, Any] = {}
    for key, raw in entry.items():
        spec = IRC_KEYS.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, IRC_KEYS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        try:
            values[key] = spec[0](raw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: key {key!r} must be {e}; got {raw!r}") from None
    channels = list(values.pop("channels", ()))
    if "channel" in values:
        channels.insert(0, ChannelSettings(_channel_name(values.pop("channel"))))
    if not channels:
        raise ConfigError(f"{where}: needs 'channel' or 'channels'")
    seen: dict[str, ChannelSettings] = {}
    for c in channels:
        seen.setdefault(c.name.lower(), c)
    values["channels"] = tuple(seen.values())
    if "port" not in values:
        values["port"] = 6697 if values.get("ssl") else 6667
    for key in ("ssl_ca", "ssl_hostname"):
        if key in values and not values.get("ssl"):
            raise ConfigError(f"{where}: key {key!r} needs ssl = true")
    return NetworkSettings(**values)


def parse_irc_config(config: Mapping[str, Any]) -> list[NetworkSettings]:
    """
    All entries of C{config["irc"]}, checked.
    """
    entries = config.get("irc") or ()
    return [parse_irc_entry(e, f"irc[{i}]") for i, e in enumerate(entries)]


# --- lines ---------------------------------------------------------------------


def split_utf8(line: str, limit: int) -> list[str]:
    """
    Cut C{line} into pieces of at most C{limit} UTF-8 bytes, at spaces when
    there is one in the second half of a piece, never inside a character.
    """
    if limit < 4:
        raise ValueError("limit too small")
    out: list[str] = []
    while len(line.encode("utf-8")) > limit:
        data = line.encode("utf-8")[:limit]
        cut = len(data.decode("utf-8", "ignore"))  # whole characters only
        space = line.rfind(" ", 0, cut + 1)
        if space > cut // 2:
            out.append(line[:space])
            line = line[space + 1 :]
        else:
            out.append(line[:cut])
            line = line[cut:]
    if line or not out:
        out.append(line)
    return out


@dataclass(frozen=True)
class _Line:
    plain: str
    coloured: str | None = None


class _ChannelQueue:
    def __init__(self, size: int) -> None:
        self.size = size
        self.lines: deque[_Line] = deque()
        self.dropped = 0

    def put(self, line: _Line) -> None:
        self.lines.append(line)
        while len(self.lines) > self.size:
            self.lines.popleft()
            self.dropped += 1

    def __bool__(self) -> bool:
        return bool(self.lines) or self.dropped > 0


# --- protocol -------------------------------------------------------------------


class BotProtocol(irc.IRCClient):
    """
    An IRC client that registers (with SASL PLAIN, PASS, NickServ as
    configured), joins its channels, and says what its L{Network} gives it.

    The L{Network} hears of it once the server welcomed us (after SASL, when
    used).  Lines go out at once: pacing is the L{Network}'s queue, on the
    injected clock (Twisted's own C{lineRate} uses the global reactor and an
    unbounded list).
    """

    lineRate = None
    versionName = "fedmsg-twisted"

    def __init__(self, network: "Network") -> None:
        self.network = network
        self.settings = s = network.settings
        self.clock = network.clock
        self.wanted_nick = s.nickname
        self.nickname = s.nickname
        self.username = s.username or s.nickname
        self.realname = s.realname
        self.password = s.password
        self.heartbeatInterval = s.ping_interval or None
        self.joined_channels: set[str] = set()
        self.no_colour: set[str] = set()
        self.sasl_ok = False
        #: The services account we are logged in to (RPL_LOGGEDIN), if any.
        self.account: str | None = None
        self.last_seen = 0.0
        self._collisions = 0
        self._calls: dict[Any, Any] = {}
        self._rejoin_tries: dict[str, int] = {}
        self._regain = None
        self._channels = {c.name.lower(): c for c in s.channels}

    # -- timers on the injected clock
    def _later(self, key: Any, delay: float, f: Callable, *a: Any) -> None:
        old = self._calls.pop(key, None)
        if old is not None and old.active():
            old.cancel()

        def run() -> None:
            self._calls.pop(key, None)
            f(*a)

        self._calls[key] = self.clock.callLater(delay, run)

    def _cancel_all(self) -> None:
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        if self._regain is not None and self._regain.running:
            self._regain.stop()
        self._regain = None

    # -- connection
    def connectionMade(self) -> None:
        self.last_seen = self.clock.seconds()
        self._later("register", self.settings.timeout, self._registration_timeout)
        super().connectionMade()

    def _registration_timeout(self) -> None:
        if not self._registered:
            log.warn("{net}: not registered after {t}s, dropping the connection", net=self.settings.name, t=self.settings.timeout)
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._cancel_all()
        super().connectionLost(reason)
        self.network.disconnected(self, reason)

    def register(self, nickname: str, hostname: str = "foo", servername: str = "bar") -> None:
        if self.settings.sasl_password:
            # Registration pauses at CAP until we send CAP END.
            self.sendLine("CAP REQ :sasl")
        super().register(nickname, hostname, servername)

    def lineReceived(self, line: bytes | str) -> None:
        self.last_seen = self.clock.seconds()
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                # Servers relay whatever bytes users send; an old client's
                # latin-1 must not drop our connection (Twisted would).
                line = line.decode("latin-1")
        super().lineReceived(line)

    def sendLine(self, line: str) -> None:
        if self.transport is not None:
            super().sendLine(line)

    # -- SASL PLAIN (IRCv3 CAP + AUTHENTICATE)
    def irc_CAP(self, prefix: str, params: list[str]) -> None:
        if len(params) < 3:
            return
        sub, caps = params[1].upper(), params[-1].split()
        if sub == "ACK" and "sasl" in [c.lower() for c in caps]:
            self.sendLine("AUTHENTICATE PLAIN")
        elif sub == "NAK":
            log.error("{net}: server refused SASL (CAP NAK); continuing without", net=self.settings.name)
            self._cap_end()

    def irc_AUTHENTICATE(self, prefix: str, params: list[str]) -> None:
        if params and params[0] == "+":
            s = self.settings
            account = s.sasl_username or s.nickserv_account or s.nickname
            payload = base64.b64encode(f"{account}\0{account}\0{s.sasl_password}".encode()).decode()
            chunks = [payload[i : i + 400] for i in range(0, len(payload), 400)]
            for chunk in chunks:
                self.sendLine("AUTHENTICATE " + chunk)
            if not chunks or len(chunks[-1]) == 400:
                self.sendLine("AUTHENTICATE +")

    def _cap_end(self) -> None:
        self.sendLine("CAP END")

    def irc_900(self, prefix: str, params: list[str]) -> None:  # RPL_LOGGEDIN
        self.account = params[2] if len(params) > 2 else "?"
        log.info("{net}: logged in as {account}", net=self.settings.name, account=self.account)

    def irc_901(self, prefix: str, params: list[str]) -> None:  # RPL_LOGGEDOUT
        self.account = None

    def irc_903(self, prefix: str, params: list[str]) -> None:  # RPL_SASLSUCCESS
        self.sasl_ok = True
        self._cap_end()

    def _sasl_failed(self, prefix: str, params: list[str]) -> None:
        log.error("{net}: SASL authentication failed: {why}", net=self.settings.name, why=params[-1] if params else "")
        self._cap_end()

    irc_902 = irc_904 = irc_905 = irc_906 = irc_908 = _sasl_failed

    # -- registration results
    def irc_ERR_PASSWDMISMATCH(self, prefix: str, params: list[str]) -> None:
        log.error("{net}: server password rejected", net=self.settings.name)

    def irc_ERROR(self, prefix: str, params: list[str]) -> None:
        log.warn("{net}: server closes the link: {why}", net=self.settings.name, why=params[-1] if params else "")

    def _collided_nick(self) -> str:
        self._collisions += 1
        n, w = self._collisions, self.wanted_nick
        if n == 1:
            return w + "_"
        return w[: max(1, len(w) - len(str(n)))] + str(n)

    def irc_ERR_NICKNAMEINUSE(self, prefix: str, params: list[str]) -> None:
        if self._registered:
            return  # a regain attempt failed; keep the nick we have
        self._attemptedNick = self._collided_nick()
        log.warn("{net}: nickname {want} in use, trying {nick}", net=self.settings.name, want=self.wanted_nick, nick=self._attemptedNick)
        self.setNick(self._attemptedNick)

    irc_ERR_NICKCOLLISION = irc_ERR_UNAVAILRESOURCE = irc_ERR_NICKNAMEINUSE

    def irc_ERR_ERRONEUSNICKNAME(self, prefix: str, params: list[str]) -> None:
        if self._registered:
            return
        self._attemptedNick = self._collided_nick()
        log.warn("{net}: server refused nickname, trying {nick}", net=self.settings.name, nick=self._attemptedNick)
        self.setNick(self._attemptedNick)

    def signedOn(self) -> None:
        s = self.settings
        call = self._calls.pop("register", None)
        if call is not None and call.active():
            call.cancel()
        log.info("{net}: registered as {nick}", net=s.name, nick=self.nickname)
        if s.nickserv_password and not self.sasl_ok:
            account = s.nickserv_account or s.nickname
            self.sendLine(f"PRIVMSG {s.nickserv_nick} :IDENTIFY {account} {s.nickserv_password}")
        for c in s.channels:
            self._join(c)
        if self.nickname != self.wanted_nick:
            self._start_regain()
        self.network.connected(self)

    def _join(self, c: ChannelSettings) -> None:
        self.join(c.name, c.key)

    # -- nick regain
    def _start_regain(self) -> None:
        from twisted.internet.task import LoopingCall

        if self._regain is None and self.settings.regain_interval:
            self._regain = LoopingCall(self._try_regain)
            self._regain.clock = self.clock
            self._regain.start(self.settings.regain_interval, now=True)

    def _try_regain(self) -> None:
        if self.nickname.lower() == self.wanted_nick.lower():
            return
        s = self.settings
        if s.nickserv_password or self.sasl_ok:
            # Atheme and Anope both release a nick held by a ghost on REGAIN/RECOVER.
            self.sendLine(f"PRIVMSG {s.nickserv_nick} :REGAIN {self.wanted_nick}")
        self.setNick(self.wanted_nick)

    def nickChanged(self, nick: str) -> None:
        super().nickChanged(nick)
        if nick.lower() == self.wanted_nick.lower():
            log.info("{net}: nickname {nick} regained", net=self.settings.name, nick=nick)
            if self._regain is not None and self._regain.running:
                self._regain.stop()
            self._regain = None
        else:
            # Renamed by the server or services (e.g. to Guest12345).
            log.warn("{net}: nickname changed to {nick}", net=self.settings.name, nick=nick)
            self._start_regain()

    def userQuit(self, user: str, quitMessage: str) -> None:
        if user.lower() == self.wanted_nick.lower() and self.nickname.lower() != user.lower():
            self.setNick(self.wanted_nick)

    def userRenamed(self, oldname: str, newname: str) -> None:
        self.userQuit(oldname, "")

    # -- channels
    def _ours(self, channel: str) -> ChannelSettings | None:
        return self._channels.get(channel.lower())

    def joined(self, channel: str) -> None:
        c = self._ours(channel)
        if c is None:
            return
        log.info("{net}: joined {channel}", net=self.settings.name, channel=c.name)
        self._rejoin_tries.pop(c.name.lower(), None)
        # Nothing is said before the channel's modes are known (+c means no
        # colours); a server that does not answer MODE gets MODE_WAIT seconds.
        self.sendLine(f"MODE {c.name}")
        self._later(("mode", c.name.lower()), MODE_WAIT, self._ready_in, c.name.lower())

    def _ready_in(self, key: str) -> None:
        call = self._calls.pop(("mode", key), None)
        if call is not None and call.active():
            call.cancel()
        self.joined_channels.add(key)
        self.network.wake()

    def left(self, channel: str) -> None:
        self.joined_channels.discard(channel.lower())

    def irc_RPL_CHANNELMODEIS(self, prefix: str, params: list[str]) -> None:
        if len(params) >= 3:
            self._set_colour(params[1], "c" not in params[2])
            key = params[1].lower()
            if ("mode", key) in self._calls:
                self._ready_in(key)

    def _set_colour(self, channel: str, allowed: bool) -> None:
        if allowed:
            self.no_colour.discard(channel.lower())
        else:
            self.no_colour.add(channel.lower())

    def modeChanged(self, user: str, channel: str, set: bool, modes: str, args: tuple) -> None:
        if "c" in modes and self._ours(channel) is not None:
            self._set_colour(channel, not set)

    def kickedFrom(self, channel: str, kicker: str, message: str) -> None:
        c = self._ours(channel)
        self.joined_channels.discard(channel.lower())
        log.warn("{net}: kicked from {channel} by {kicker}: {reason}", net=self.settings.name, channel=channel, kicker=kicker, reason=message)
        if c is not None:
            self._rejoin_later(c)

    def _rejoin_later(self, c: ChannelSettings) -> None:
        tries = self._rejoin_tries.get(c.name.lower(), 0)
        self._rejoin_tries[c.name.lower()] = tries + 1
        delay = min(self.settings.rejoin_delay * (2**tries), 600.0)
        self._later(("join", c.name.lower()), delay, self._join, c)

    def _cannot_join(self, prefix: str, params: list[str]) -> None:
        channel = params[1] if len(params) > 1 else ""
        c = self._ours(channel)
        log.warn("{net}: cannot join {channel}: {why}", net=self.settings.name, channel=channel, why=params[-1])
        if c is not None:
            self._rejoin_later(c)

    irc_ERR_BANNEDFROMCHAN = irc_ERR_INVITEONLYCHAN = irc_ERR_CHANNELISFULL = _cannot_join
    irc_ERR_BADCHANNELKEY = irc_477 = _cannot_join

    def irc_ERR_CANNOTSENDTOCHAN(self, prefix: str, params: list[str]) -> None:
        log.warn("{net}: cannot send to {channel}: {why}", net=self.settings.name, channel=params[1] if len(params) > 1 else "", why=params[-1])

    # -- liveness
    def _createHeartbeat(self):
        from twisted.internet.task import LoopingCall

        call = LoopingCall(self._sendHeartbeat)
        call.clock = self.clock
        return call

    def _sendHeartbeat(self) -> None:
        silent = self.clock.seconds() - self.last_seen
        if silent > self.settings.ping_timeout:
            log.warn("{net}: no reply from the server for {s:.0f}s, reconnecting", net=self.settings.name, s=silent)
            self.transport.abortConnection()
            return
        self.sendLine("PING " + (self.hostname or self.settings.network))

    def irc_PONG(self, prefix: str, params: list[str]) -> None:
        pass  # lineReceived noted that the link is alive

    # -- saying things
    def say(self, channel: str, line: str, method: str) -> int:
        """
        Send C{line} to C{channel}, split to fit IRC's 512 bytes.  Returns
        the number of IRC lines sent.
        """
        command = "PRIVMSG" if method == "msg" else "NOTICE"
        # What the server prepends when relaying: ":nick!user@host ".
        relay = f":{self.nickname}!{'u' * 10}@{'h' * 63} {command} {channel} :"
        budget = MAX_LINE - 2 - len(relay.encode("utf-8"))
        parts = split_utf8(line, max(budget, 64))
        for part in parts:
            self.sendLine(f"{command} {channel} :{part}")
        return len(parts)


class BotFactory(protocol.Factory):
    def __init__(self, network: "Network") -> None:
        self.network = network

    def buildProtocol(self, addr: Any) -> BotProtocol:
        p = BotProtocol(self.network)
        p.factory = self
        return p


# --- one network ----------------------------------------------------------------


def _trust_root(path: str):
    from twisted.python.filepath import FilePath

    try:
        data = FilePath(path).getContent()
    except OSError as e:
        raise ConfigError(f"ssl_ca {path!r}: cannot read: {e.strerror}") from None
    pems = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    if not pems:
        raise ConfigError(f"ssl_ca {path!r}: no PEM certificate in the file")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(p) for p in pems])


def make_endpoint(settings: NetworkSettings, reactor: Any):
    """
    The client endpoint: TCP, or TLS with the certificate verified against
    C{ssl_ca} (or the system's CAs) for C{ssl_hostname} (or C{network}).
    """
    tcp = HostnameEndpoint(reactor, settings.network, settings.port, timeout=settings.timeout)
    if not settings.ssl:
        return tcp
    trust = _trust_root(settings.ssl_ca) if settings.ssl_ca else ssl.platformTrust()
    options = ssl.optionsForClientTLS(
        settings.ssl_hostname or settings.network,
        trustRoot=trust,
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )
    return wrapClientTLS(options, tcp)


class Network(service.MultiService):
    """
    One IRC network: a reconnecting connection and the channels' queues.

    @ivar protocol: the registered L{BotProtocol}, or L{None}.
    """

    def __init__(
        self,
        settings: NetworkSettings,
        *,
        index: int = 0,
        method: str = "notice",
        reactor: Any = None,
        clock: Any = None,
        stats: Counters | None = None,
        endpoint: Any = None,
        shortener: Callable[[str, str, float], defer.Deferred] | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.settings = settings
        self.reactor = reactor
        self.clock = clock or reactor
        self.method = settings.method or method
        self.stats = stats or Counters()
        self.protocol: BotProtocol | None = None
        self.queues = {c.name.lower(): _ChannelQueue(settings.queue_size) for c in settings.channels}
        self._names = {c.name.lower(): c.name for c in settings.channels}
        self._order = list(self.queues)
        self._next = 0
        self._drain_call = None
        self._pending: defer.Deferred = defer.succeed(None)
        self._shortener = shortener
        self._shortening = 0
        self._waiters: list[defer.Deferred] = []
        self._bad_sessions = 0
        self._since = 0.0
        #: Why the last connection ended before it was usable (TLS
        #: verification, a refused password, ...), for logs and tests.
        self.last_failure: Failure | None = None
        self.failures = 0
        self.setName(f"irc[{index}] {settings.name}")
        backoff = backoffPolicy(initialDelay=1.0, maxDelay=settings.reconnect_max_delay)
        # ClientService resets its failure count whenever TCP connects, so a
        # server that accepts and then refuses us (bad password, TLS
        # verification, K-line) would be retried every second; we count such
        # sessions ourselves.  (prepareConnection would be the natural gate,
        # but Twisted 26's ClientService raises NoTransition when the
        # connection is lost while it is pending.)
        self.client = ClientService(
            endpoint or make_endpoint(settings, reactor),
            BotFactory(self),
            retryPolicy=lambda attempt: backoff(max(attempt, self._bad_sessions)),
            clock=self.clock,
        )
        self.client.setServiceParent(self)

    def when_ready(self) -> defer.Deferred:
        """
        Fires with the registered L{BotProtocol}: now, or at the next
        successful registration.
        """
        if self.protocol is not None:
            return defer.succeed(self.protocol)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    # -- connection state
    def connected(self, p: BotProtocol) -> None:
        self.protocol = p
        self._since = self.clock.seconds()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(p)
        self.wake()

    def disconnected(self, p: BotProtocol, reason: Failure) -> None:
        if self.protocol is p:
            self.protocol = None
            lasted = self.clock.seconds() - self._since
            self._bad_sessions = self._bad_sessions + 1 if lasted < 60 else 0
            if self.running:
                log.warn("{net}: connection lost: {why}", net=self.settings.name, why=reason.getErrorMessage())
        else:
            self._bad_sessions += 1
            self.failures += 1
            self.last_failure = reason
            if self.running:
                log.error(
                    "{net}: connection ended before registration: {why}",
                    net=self.settings.name,
                    why=reason.getErrorMessage(),
                )
        self._stop_drain()

    def stopService(self):
        if not self.running:
            return defer.succeed(None)
        self._stop_drain()
        p = self.protocol
        if p is not None and p.transport is not None:
            p.quit("shutting down")
        return super().stopService()

    def ready(self) -> bool:
        """
        Registered and in every configured channel.
        """
        p = self.protocol
        return p is not None and all(key in p.joined_channels for key in self.queues)

    def queued(self) -> int:
        return sum(len(q.lines) for q in self.queues.values())

    # -- accepting lines
    def wants(self, topic: str, envelope: Mapping[str, Any]) -> bool:
        """
        The network's filters: fedmsg's exclusion regexes (topic, and the
        body's Python repr as fedmsg searched it), then our include list.
        """
        f = self.settings.filters
        if any(p.search(topic) for p in f.get("topic", ())):
            return False
        body = f.get("body", ())
        if body:
            as_text = str(envelope)
            if any(p.search(as_text) for p in body):
                return False
        if self.settings.include:
            return any(_text.topic_matches(p, topic, None) for p in self.settings.include)
        return True

    def channels_for(self, topic: str) -> list[str]:
        return [
            c.name.lower()
            for c in self.settings.channels
            if not c.include or any(_text.topic_matches(p, topic, None) for p in c.include)
        ]

    def announce(self, envelope: Mapping[str, Any], text: _text.Text | None, raw: str) -> defer.Deferred:
        """
        Queue one message's line for every channel that wants it.  The
        Deferred fires once queued (links may be shortened first); lines
        keep the bus order.
        """
        topic = envelope.get("topic", "")
        if not self.wants(topic, envelope):
            self.stats.incr("filtered", self.settings.name)
            return defer.succeed(None)
        channels = self.channels_for(topic)
        if not channels:
            self.stats.incr("filtered", self.settings.name)
            return defer.succeed(None)
        link_d: defer.Deferred = defer.succeed(None)
        if self.settings.make_terse and text is not None and text.link and self.settings.make_short and self._shortener:
            if self._shortening < MAX_SHORTENING:
                # Bounded: a burst must not become a burst of HTTP requests
                # to someone else's shortener; beyond it, long links.
                self._shortening += 1
                link_d = self._shortener(text.link, self.settings.make_short, self.settings.short_timeout)

                def done(result: Any) -> Any:
                    self._shortening -= 1
                    return result

                link_d.addBoth(done)
            else:
                self.stats.incr("shortener_skipped", self.settings.name)

        def queue(short: str | None) -> None:
            t = text.with_link(short) if (text is not None and short) else text
            if self.settings.make_terse and t is not None:
                line = _Line(t.terse(), t.pretty() if self.settings.make_pretty else None)
            else:
                line = _Line(raw)
            for c in channels:
                self.queues[c].put(line)
            self.wake()

        def ordered(_: Any) -> defer.Deferred:
            return link_d.addErrback(lambda f: None).addCallback(queue)

        def failed(f: Failure) -> None:
            log.failure("{net}: queueing failed", f, net=self.settings.name)

        self._pending = self._pending.addCallback(ordered).addErrback(failed)
        return _follow(self._pending)

    # -- draining at line_rate
    def wake(self) -> None:
        if self._drain_call is None and self.protocol is not None:
            self._drain_call = self.clock.callLater(0, self._drain)

    def _stop_drain(self) -> None:
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None

    def _drain(self) -> None:
        self._drain_call = None
        p = self.protocol
        if p is None:
            return
        n = len(self._order)
        for i in range(n):
            key = self._order[(self._next + i) % n]
            q = self.queues[key]
            if not q or key not in p.joined_channels:
                continue
            self._next = (self._next + i + 1) % n
            channel = self._names[key]
            if q.dropped:
                line = f"*** flood control: {q.dropped} older message{'s' if q.dropped != 1 else ''} dropped"
                self.stats.incr("dropped", "flood", q.dropped)
                log.warn("{net}: {channel}: {n} lines dropped by flood control", net=self.settings.name, channel=channel, n=q.dropped)
                q.dropped = 0
            else:
                item = q.lines.popleft()
                colour = item.coloured is not None and key not in p.no_colour
                line = item.coloured if colour else item.plain
            sent = p.say(channel, line, self.method)
            self.stats.incr("sent", self.settings.name, sent)
            self._drain_call = self.clock.callLater(self.settings.line_rate * sent, self._drain)
            return


def _follow(chain: defer.Deferred) -> defer.Deferred:
    """
    A new Deferred that fires (with None) when C{chain} reaches this point,
    so callers cannot disturb an ordering chain by adding callbacks to it.
    """
    d: defer.Deferred = defer.Deferred()

    def fire(result: Any) -> Any:
        d.callback(None)
        return result

    chain.addBoth(fire)
    return d


# --- the bot service ------------------------------------------------------------


def _agent_shortener(reactor: Any) -> Callable[[str, str, float], defer.Deferred]:
    """
    A shortener using twisted.web's Agent: GET the template with the URL
    filled in; the body is the short link.  Gives up after C{timeout}.
    """
    from urllib.parse import quote

    from twisted.web.client import Agent, readBody

    agent = Agent(reactor)

    def shorten(url: str, template: str, timeout: float) -> defer.Deferred:
        async def go() -> str | None:
            response = await agent.request(b"GET", template.format(url=quote(url, safe="")).encode())
            body = (await readBody(response)).decode("utf-8", "replace").strip()
            if response.code == 200 and body.startswith(("http://", "https://")) and " " not in body:
                return body
            return None

        d = defer.Deferred.fromCoroutine(go())
        d.addTimeout(timeout, reactor)

        def failed(f: Failure) -> None:
            log.warn("link shortener failed for {url}: {why}", url=url, why=f.getErrorMessage())
            return None

        return d.addErrback(failed)

    return shorten


class IRCBotService(service.MultiService):
    """
    The IRC bot: every network of C{config["irc"]}, and a subscriber.

    Embed it in another Twisted application as any service; or pass
    C{subscribe=False} and feed L{announce} yourself.

    @param validator: something with C{validate_async(envelope)} returning a
        Deferred C{Verdict(ok, reason, signer)}; by default one from
        L{fedmsg_twisted.crypto} when C{validate_signatures} is on.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        reactor: Any = None,
        clock: Any = None,
        subscribe: bool = True,
        text_layer: _text.TextLayer | None = None,
        validator: Any = None,
        endpoints: Mapping[str, Any] | None = None,
        shortener: Callable[[str, str, float], defer.Deferred] | None = None,
        subscriber_class: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.subscriber = None
        self.config = config
        self.reactor = reactor
        self.stats = Counters()
        self.text = text_layer or _text.TextLayer(config)
        settings = parse_irc_config(config)
        if not settings:
            raise ConfigError("irc: no IRC networks configured (the 'irc' list is empty)")
        self._own_validator = False
        if config.get("validate_signatures") and validator is None:
            try:
                from fedmsg_twisted.crypto import Validator  # type: ignore[attr-defined]
            except ImportError as e:
                raise ConfigError(f"validate_signatures is on but the crypto module is unavailable: {e}") from None
            validator = Validator.from_config(config, reactor=reactor)
            self._own_validator = True
        self.validator = validator if config.get("validate_signatures") or validator is not None else None
        method = config.get("irc_method", "notice")
        shortener = shortener or _agent_shortener(reactor)
        self.networks: list[Network] = []
        for i, s in enumerate(settings):
            n = Network(
                s,
                index=i,
                method=method,
                reactor=reactor,
                clock=clock,
                stats=self.stats,
                endpoint=(endpoints or {}).get(s.name),
                shortener=shortener,
            )
            n.setServiceParent(self)
            self.networks.append(n)
        self._order: defer.Deferred = defer.succeed(None)
        if subscribe:
            if subscriber_class is None:
                from fedmsg_twisted.subscriber import SubscriberService as subscriber_class
            self.subscriber = subscriber_class(config, self._received, reactor=reactor)
            self.subscriber.setServiceParent(self)

    def startService(self) -> None:
        if self._own_validator:
            # A CA/CRL given as a URL is fetched now; until then validation
            # rejects, which is the safe side.
            self.validator.start().addErrback(lambda f: log.failure("could not load the CA/CRL", f))
        super().startService()

    def stopService(self):
        if not self.running:
            return defer.succeed(None)
        if self._own_validator:
            self.validator.stop()
        return super().stopService()

    def _received(self, name: str, endpoint: str, topic: str, msg: Any) -> None:
        self.announce(msg)

    def announce(self, envelope: Any) -> defer.Deferred:
        """
        Put one bus message on IRC.  Malformed messages are skipped with a
        log line; the Deferred fires when the lines are queued everywhere.
        """
        if not isinstance(envelope, Mapping) or not isinstance(envelope.get("topic"), str):
            self.stats.incr("dropped", "malformed")
            log.warn("skipping a malformed message (no string topic): {msg!r:.200}", msg=envelope)
            return defer.succeed(None)
        if self.validator is None:
            verdict_d = defer.succeed(None)
        else:
            verdict_d = defer.maybeDeferred(self.validator.validate_async, envelope)
            # A stuck validation (a hung gpg) must not hold every later line.
            verdict_d.addTimeout(VALIDATION_TIMEOUT, self.reactor)
        # Validation runs concurrently; lines still leave in bus order.
        self._order = (
            self._order.addCallback(lambda _: verdict_d)
            .addCallback(self._dispatch, envelope)
            .addErrback(self._failed, envelope)
        )
        return _follow(self._order)

    def _failed(self, f: Failure, envelope: Mapping[str, Any]) -> None:
        self.stats.incr("dropped", "error")
        log.failure("could not announce {topic}", f, topic=envelope.get("topic"))

    def _dispatch(self, verdict: Any, envelope: Mapping[str, Any]) -> defer.Deferred:
        text: _text.Text | None
        marked = None
        if verdict is not None and not getattr(verdict, "ok", False):
            self.stats.incr("invalid", str(getattr(verdict, "reason", "")))
            log.warn("invalid signature on {topic}: {reason}", topic=envelope.get("topic"), reason=getattr(verdict, "reason", ""))
            marked = "(unsigned)" if "signature" not in envelope else "(invalid signature!)"
        topic = envelope["topic"]
        if not any(n.wants(topic, envelope) and n.channels_for(topic) for n in self.networks):
            self.stats.incr("filtered", "")
            return defer.succeed(None)
        try:
            text = self.text.text(envelope) if marked is None else self.text.marked(envelope, marked)
            raw = _text.raw_line(envelope) if marked is None else f"{envelope['topic']:<30} {marked}"
        except Exception:
            self.stats.incr("dropped", "malformed")
            log.failure("skipping a message that cannot be rendered: {topic}", topic=envelope.get("topic"))
            return defer.succeed(None)
        ds = []
        for n in self.networks:
            if marked is not None and n.settings.on_invalid == "drop":
                continue
            ds.append(n.announce(envelope, text, raw))
        self.stats.incr("announced", "")
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)


class IRCBotHealth:
    """
    The bot as a L{fedmsg_twisted.health} component: ready when every
    network is registered and in all its channels, and the subscriber (if
    any) is ready.
    """

    def __init__(self, bot: IRCBotService, name: str = "ircbot", window: float = 0.0, reactor: Any = None) -> None:
        from fedmsg_twisted.health import SubscriberHealth

        self.bot = bot
        self.name = name
        self.counters = bot.stats
        self._sub = SubscriberHealth(bot.subscriber, window=window, reactor=reactor) if bot.subscriber else None

    def is_live(self) -> bool:
        return bool(self.bot.running)

    def is_ready(self) -> bool:
        return (
            self.is_live()
            and all(n.ready() for n in self.bot.networks)
            and (self._sub is None or self._sub.is_ready())
        )

    def gauges(self) -> dict[str, Any]:
        g: dict[str, Any] = self._sub.gauges() if self._sub else {}
        g["irc_registered"] = {n.settings.name: int(n.protocol is not None) for n in self.bot.networks}
        g["irc_ready"] = {n.settings.name: int(n.ready()) for n in self.bot.networks}
        g["irc_queued_lines"] = {n.settings.name: n.queued() for n in self.bot.networks}
        return g

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = self._sub.details() if self._sub else {}
        d["networks"] = {
            n.settings.name: {
                "nick": n.protocol.nickname if n.protocol else None,
                "channels": sorted(n.protocol.joined_channels) if n.protocol else [],
                "last_failure": n.last_failure.getErrorMessage() if n.last_failure else None,
            }
            for n in self.bot.networks
        }
        return d
