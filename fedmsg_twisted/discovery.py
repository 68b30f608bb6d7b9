# -*- test-case-name: tests.test_discovery -*-
"""
DNS SRV discovery of subscriber endpoints (C{srv_endpoints}).

A site publishes C{_fedmsg._tcp.<domain>} SRV records; every record becomes
a zmq address C{tcp://<target>:<port>} that subscribers connect to, next to
the static C{endpoints}.

fedmsg 1.1.7 resolves once at load time and keeps the target's trailing dot.
We differ on purpose:

  - L{SRVDiscoveryService} re-resolves when the records' TTL runs out
    (bounded by a floor and a cap) and reports added and removed addresses,
    so a running subscriber follows the zone without a restart;
  - the target is written without its trailing dot
    (C{tcp://bus.example.org:9940});
  - any failure (NXDOMAIN, no SRV records, timeout, SERVFAIL, a dead
    nameserver) keeps the last good set, logs it, and retries later;
  - a record whose target is C{.} (RFC 2782: "service decidedly not
    available") is the way to withdraw every endpoint of a domain.

Resolution uses dnspython's blocking resolver in the reactor's thread pool:
the reactor thread never waits for DNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger

from fedmsg_twisted.config import ConfigError

__all__ = [
    "SRV_PREFIX",
    "SRVRecord",
    "Resolution",
    "DiscoveryError",
    "srv_to_endpoints",
    "static_endpoints",
    "parse_nameservers",
    "check_domains",
    "srv_query",
    "resolve_srv_endpoints",
    "SRVDiscoveryService",
]

log = Logger(namespace="fedmsg_twisted.discovery")

#: The service label fedmsg looks up under every C{srv_endpoints} domain.
SRV_PREFIX = "_fedmsg._tcp."

#: Default bounds (seconds): the re-resolution delay is the records' TTL
#: clamped to [MIN_INTERVAL, MAX_INTERVAL]; after a failure we retry after
#: RETRY_INTERVAL.  TIMEOUT is the total time one lookup may take.
MIN_INTERVAL = 5.0
MAX_INTERVAL = 3600.0
RETRY_INTERVAL = 30.0
TIMEOUT = 5.0


class SRVRecord(NamedTuple):
    """
    One SRV record.  C{target} is a host name, with or without its final dot.
    """

    priority: int
    weight: int
    port: int
    target: str


class Resolution(NamedTuple):
    """
    A successful lookup: its records and the TTL (seconds) they may be kept.
    """

    records: tuple[SRVRecord, ...]
    ttl: float


class DiscoveryError(Exception):
    """
    A lookup that gave no usable answer.  C{reason} is short and for humans
    (C{"NXDOMAIN"}, C{"timeout"}, ...); the last good endpoints stay in use.
    """

    def __init__(self, qname: str, reason: str) -> None:
        super().__init__(f"{qname}: {reason}")
        self.qname = qname
        self.reason = reason


# --- pure functions ------------------------------------------------------------


def _target_text(target: Any) -> str:
    # dnspython gives a dns.name.Name; tests and callers may give text.
    if not isinstance(target, str):
        target = target.to_text()
    return target.lower()


def srv_to_endpoints(records: Iterable[Any]) -> list[str]:
    """
    Turn SRV records into zmq addresses, in the order a client should prefer.

    Records are sorted by priority (lowest first), then by weight (highest
    first).  RFC 2782 asks for a weighted random order inside one priority;
    we use the deterministic order instead, because subscribers connect to
    every address anyway and a stable order keeps logs and change reports
    stable.  Ties are broken by target and port.  Duplicates are dropped, and
    so are records whose target is C{.} (service not available here).

    @param records: objects with C{priority}, C{weight}, C{port} and
        C{target} (dnspython SRV rdata or L{SRVRecord}).
    @return: addresses like C{tcp://bus.example.org:9940}.
    """
    rows = []
    for r in records:
        host = _target_text(r.target)
        if host in (".", ""):
            continue
        rows.append((int(r.priority), -int(r.weight), host.rstrip("."), int(r.port)))
    out: list[str] = []
    for _prio, _weight, host, port in sorted(rows):
        addr = f"tcp://{host}:{port}"
        if addr not in out:
            out.append(addr)
    return out


def static_endpoints(config: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """
    The addresses a subscriber connects to from the static config.

    Like fedmsg: every C{endpoints} entry except the one named
    C{relay_inbound} (where publishers send, not where they listen).
    Entries left empty are omitted; duplicates inside one entry are dropped.
    """
    out: dict[str, tuple[str, ...]] = {}
    for name, addrs in config.get("endpoints", {}).items():
        kept = tuple(dict.fromkeys(addrs))
        if name != "relay_inbound" and kept:
            out[name] = kept
    return out


def parse_nameservers(values: Iterable[str], key: str = "srv_nameservers") -> tuple[tuple[str, int], ...]:
    """
    Parse C{"host"} / C{"host:port"} nameserver strings into (ip, port).

    The host must be an IP address (looking up a nameserver's own name would
    need a nameserver); IPv6 with a port is written C{[2001:db8::53]:5353}.

    @raise ConfigError: naming C{key} and the bad value.
    """
    out = []
    for text in values:
        out.append(_parse_nameserver(text, key))
    return tuple(out)


def _parse_nameserver(text: Any, key: str) -> tuple[str, int]:
    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"key {key!r}: {text!r} is not a nameserver ({why}); expected an IP address with an "
            f"optional port, e.g. '192.0.2.53', '192.0.2.53:5353' or '[2001:db8::53]:5353'"
        )

    if not isinstance(text, str):
        raise bad("not a string")
    host, port_text = text.strip(), None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise bad("unclosed '['")
        rest = host[end + 1 :]
        host = host[1:end]
        if rest:
            if not rest.startswith(":"):
                raise bad("garbage after ']'")
            port_text = rest[1:]
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise bad(f"{host!r} is not an IP address") from None
    port = 53
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise bad(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return str(ip), port


def check_domains(values: Iterable[str], key: str = "srv_endpoints") -> tuple[str, ...]:
    """
    Check that every domain makes a valid C{_fedmsg._tcp.<domain>} name.

    @return: the domains without a trailing dot, duplicates removed.
    @raise ConfigError: naming C{key} and the bad value.
    """
    import dns.exception
    import dns.name

    out = []
    for d in values:
        if not isinstance(d, str) or not d.strip(".").strip():
            raise ConfigError(f"key {key!r}: {d!r} is not a domain name")
        try:
            dns.name.from_text(SRV_PREFIX + d)
        except dns.exception.DNSException as e:
            raise ConfigError(f"key {key!r}: {d!r} is not a domain name ({e})") from None
        d = d.rstrip(".")
        if d not in out:
            out.append(d)
    return tuple(out)


# --- blocking lookups (call in a thread, or from blocking scripts) ---------------


def srv_query(domain: str, nameservers: Iterable[tuple[str, int]] = (), timeout: float = TIMEOUT) -> Resolution:
    """
    Look up C{_fedmsg._tcp.<domain>} SRV records.  B{Blocks}: call it in a thread.

    UDP first; dnspython retries over TCP when the answer is truncated.

    @param nameservers: (ip, port) pairs; empty means the system resolver
        (C{/etc/resolv.conf}).
    @param timeout: seconds the whole lookup may take.
    @raise DiscoveryError: NXDOMAIN, no SRV records, timeout, or every
        nameserver failed (SERVFAIL, REFUSED, unreachable).
    """
    import dns.exception
    import dns.nameserver
    import dns.resolver

    qname = SRV_PREFIX + domain.rstrip(".") + "."
    nameservers = list(nameservers)
    try:
        resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
        resolver.lifetime = timeout
        # Leave time for every nameserver to be tried once.
        resolver.timeout = min(resolver.timeout, timeout / max(1, len(resolver.nameservers)))
        answer = resolver.resolve(qname, "SRV", search=False)
    except dns.resolver.NXDOMAIN:
        raise DiscoveryError(qname, "NXDOMAIN (no such name)") from None
    except dns.resolver.NoAnswer:
        raise DiscoveryError(qname, "no SRV records") from None
    except dns.exception.Timeout:
        raise DiscoveryError(qname, f"timeout after {timeout:g}s") from None
    except dns.resolver.NoNameservers as e:
        raise DiscoveryError(qname, f"no nameserver answered ({e})") from None
    except dns.resolver.NoResolverConfiguration:
        raise DiscoveryError(qname, "no nameservers configured (set srv_nameservers)") from None
    except (dns.exception.DNSException, OSError) as e:
        raise DiscoveryError(qname, f"{type(e).__name__}: {e}") from None
    records = tuple(SRVRecord(r.priority, r.weight, r.port, r.target.to_text()) for r in answer)
    return Resolution(records, float(answer.chaining_result.minimum_ttl))


def resolve_srv_endpoints(
    domains: Iterable[str], nameservers: Iterable[str] = (), timeout: float = TIMEOUT
) -> dict[str, tuple[str, ...]]:
    """
    Resolve every domain once, the way fedmsg does at load time.  B{Blocks.}

    For the blocking script API.  A domain that fails is logged and left out.

    @param nameservers: C{srv_nameservers} strings (C{"host"} or C{"host:port"}).
    @return: {domain: addresses}, only for domains that resolved.
    @raise ConfigError: for a bad domain or nameserver string.
    """
    servers = parse_nameservers(nameservers)
    out = {}
    for domain in check_domains(domains):
        try:
            res = srv_query(domain, servers, timeout)
        except DiscoveryError as e:
            log.warn("SRV discovery for {domain} failed: {reason}", domain=domain, reason=e.reason)
            continue
        out[domain] = tuple(srv_to_endpoints(res.records))
    return out


# --- the service ---------------------------------------------------------------

Resolve = Callable[[str], "defer.Deferred[Resolution]"]


class SRVDiscoveryService(service.Service):
    """
    Keeps the SRV endpoints of every C{srv_endpoints} domain up to date.

    Each domain is resolved at start, then again when its TTL runs out
    (clamped to [C{min_interval}, C{max_interval}]), or C{retry_interval}
    after a failure.  A failure keeps the last good addresses.

    C{on_change(name=..., added=set, removed=set)} reports changes to the
    set of addresses the subscriber should be connected to, so that it keeps
    exactly one connection per address:

      - the sets are net changes of the union of all sources: an address
        that is a static endpoint or that another domain still provides is
        never added or removed again;
      - an address is added under the name of the domain that first
        provided it, and later removed under that same name (it may then be
        a different domain's lookup that caused the removal, and one lookup
        may cause one call per name);
      - addresses of the C{relay_inbound} config key are never added.

    C{on_change} is called on the reactor thread and never with two empty
    sets; if it raises, the error is logged and discovery goes on.

    @ivar domains: the checked domains, in config order.
    """

    name = "srv-discovery"

    def __init__(
        self,
        config: Mapping[str, Any],
        on_change: Callable[..., Any],
        *,
        reactor: Any = None,
        clock: Any = None,
        resolve: Resolve | None = None,
        min_interval: float = MIN_INTERVAL,
        max_interval: float = MAX_INTERVAL,
        retry_interval: float = RETRY_INTERVAL,
        timeout: float = TIMEOUT,
        static: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """
        @param resolve: C{resolve(domain) -> Deferred[Resolution]} failing
            with L{DiscoveryError}; default: L{srv_query} in the reactor's
            thread pool against C{srv_nameservers}.
        @param timeout: seconds one lookup may take (default resolver only).
        @param static: the endpoints the subscriber connects to anyway
            (default L{static_endpoints}C{(config)}); never reported.
        @raise ConfigError: for a bad C{srv_endpoints} or C{srv_nameservers}.
        """
        if reactor is None:
            from twisted.internet import reactor as _r

            reactor = _r
        self.domains = check_domains(config.get("srv_endpoints", ()))
        self._nameservers = parse_nameservers(config.get("srv_nameservers", ()))
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._on_change = on_change
        self._resolve = resolve if resolve is not None else self._thread_resolve
        self._min, self._max, self._retry = float(min_interval), float(max_interval), float(retry_interval)
        self._timeout = float(timeout)
        if static is None:
            static = static_endpoints(config)
        self._static = {a for addrs in static.values() for a in addrs}
        self._owner: dict[str, str] = {}
        self._inbound = set(config.get("relay_inbound", ()))
        self._current: dict[str, tuple[str, ...]] = {}
        self._calls: dict[str, Any] = {}
        self._inflight: dict[str, defer.Deferred] = {}
        #: Lookups finished (ok or not) per domain; for monitoring and tests.
        self.lookups: dict[str, int] = {d: 0 for d in self.domains}
        #: The last failure reason per domain, or None after a success.
        self.last_error: dict[str, str | None] = {d: None for d in self.domains}

    # -- public ------------------------------------------------------------------

    def current(self) -> dict[str, tuple[str, ...]]:
        """
        The last good addresses of every domain that resolved at least once.
        """
        return dict(self._current)

    def endpoints(self) -> dict[str, tuple[str, ...]]:
        """
        The discovered addresses the subscriber should be connected to now,
        by the name they were reported under (the sum of every C{on_change}):
        the union over domains, minus static and C{relay_inbound} addresses.
        """
        out: dict[str, tuple[str, ...]] = {}
        for addr in self._wanted():
            owner = self._owner[addr]
            out[owner] = out.get(owner, ()) + (addr,)
        return out

    def startService(self) -> None:
        super().startService()
        for domain in self.domains:
            self._lookup(domain)

    def stopService(self) -> defer.Deferred:
        """
        Cancel the scheduled lookups; fires when lookups in flight have ended.
        """
        super().stopService()
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        pending = list(self._inflight.values())
        return defer.DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    # -- internals ---------------------------------------------------------------

    def _thread_resolve(self, domain: str) -> defer.Deferred:
        return threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), srv_query, domain, self._nameservers, self._timeout
        )

    def _wanted(self) -> dict[str, None]:
        out: dict[str, None] = {}
        for domain in self.domains:
            for addr in self._current.get(domain, ()):
                if addr not in self._static and addr not in self._inbound:
                    out[addr] = None
        return out

    def _lookup(self, domain: str) -> None:
        self._calls.pop(domain, None)
        if not self.running:
            return
        d = defer.maybeDeferred(self._resolve, domain)
        self._inflight[domain] = d
        d.addCallbacks(self._resolved, self._failed, callbackArgs=(domain,), errbackArgs=(domain,))
        d.addErrback(self._internal_error, domain)
        d.addBoth(self._finished, domain)

    def _internal_error(self, failure: Any, domain: str) -> float:
        log.failure("SRV discovery for {domain}: internal error", failure, domain=domain)
        return max(self._retry, 0.0)

    def _finished(self, delay: Any, domain: str) -> None:
        self._inflight.pop(domain, None)
        self.lookups[domain] += 1
        if self.running and isinstance(delay, float):
            self._calls[domain] = self._clock.callLater(delay, self._lookup, domain)

    def _resolved(self, res: Resolution, domain: str) -> float | None:
        if not self.running:
            return None
        self.last_error[domain] = None
        new = tuple(srv_to_endpoints(res.records))
        old = self._current.get(domain)
        if new != old:
            before = self._wanted()
            self._current[domain] = new
            after = self._wanted()
            log.info(
                "SRV discovery for {domain}: {endpoints} (TTL {ttl:g}s)",
                domain=domain,
                endpoints=", ".join(new) or "no endpoints",
                ttl=res.ttl,
            )
            added = {a for a in after if a not in before}
            removed: dict[str, set[str]] = {}
            for a in before:
                if a not in after:
                    removed.setdefault(self._owner.pop(a), set()).add(a)
            for a in added:
                self._owner[a] = domain
            if added or domain in removed:
                self._report(domain, added, removed.pop(domain, set()))
            for owner, gone in removed.items():
                self._report(owner, set(), gone)
        return min(max(float(res.ttl), self._min), self._max)

    def _report(self, name: str, added: set[str], removed: set[str]) -> None:
        try:
            self._on_change(name=name, added=added, removed=removed)
        except Exception:
            log.failure("SRV discovery: on_change({name}) failed", name=name)

    def _failed(self, failure: Any, domain: str) -> float | None:
        if not self.running:
            return None
        reason = failure.value.reason if failure.check(DiscoveryError) else repr(failure.value)
        self.last_error[domain] = reason
        kept = self._current.get(domain)
        log.warn(
            "SRV discovery for {domain} failed: {reason}; keeping {kept}; retrying in {retry:g}s",
            domain=domain,
            reason=reason,
            kept=", ".join(kept) if kept else "no endpoints (none found yet)",
            retry=self._retry,
        )
        if not failure.check(DiscoveryError):
            log.failure("SRV discovery for {domain}: unexpected error", failure, domain=domain)
        return max(self._retry, 0.0)


def attach_discovery(
    parent: Any, config: Mapping[str, Any], subscriber: Any, reactor: Any = None, **kw: Any
) -> "SRVDiscoveryService | None":
    """
    Keep C{subscriber} connected to the SRV endpoints of C{srv_endpoints}:
    the one line each process that subscribes needs.  Adds the discovery
    service to C{parent} (after the subscriber, so it stops first) and
    returns it, or returns None when no domain is configured.
    """
    if not config.get("srv_endpoints"):
        return None

    def on_change(name: str, added: set, removed: set) -> None:
        for address in removed:
            subscriber.remove_endpoint(name, address)
        for address in added:
            subscriber.add_endpoint(name, address)

    svc = SRVDiscoveryService(config, on_change, static=subscriber.endpoints(), reactor=reactor, **kw)
    svc.setServiceParent(parent)
    return svc
