"""
A real authoritative DNS server on loopback for tests (twisted.names).

It serves one zone from memory over UDP and TCP on the same free port of
127.0.0.1.  Tests change its records while clients run, and can make it
misbehave: C{server.mode = "drop"} (never answer: the client times out) or
C{"servfail"} (answer SERVFAIL).  C{stop()} closes the ports and every TCP
connection.

    server = await DNSServer.start(self, zone="test")
    server.set_srv("site.test", [(0, 10, 9940, "bus.site.test.")], ttl=1)
    ... srv_nameservers = [server.address]
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from twisted.internet import defer, error, task
from twisted.names import authority, dns, server as names_server

__all__ = ["DNSServer", "MemoryAuthority"]

#: Largest UDP answer without EDNS (RFC 1035).
UDP_SIZE = 512


class MemoryAuthority(authority.FileAuthority):
    """
    A zone kept in a dict that tests edit (C{records}, keyed by lowercased bytes).

    Names under the zone that are not in C{records} answer NXDOMAIN; names
    that exist without the asked type answer NODATA (FileAuthority's logic).
    """

    def __init__(self, zone: str, ttl: int = 1) -> None:
        self.zone = zone.rstrip(".")
        self.default_ttl = ttl
        super().__init__(None)

    def loadFile(self, filename: Any) -> None:
        origin = self.zone.encode("ascii")
        soa = dns.Record_SOA(
            mname=b"ns." + origin,
            rname=b"hostmaster." + origin,
            serial=1,
            refresh=60,
            retry=60,
            expire=self.default_ttl,
            minimum=self.default_ttl,
            ttl=self.default_ttl,
        )
        self.soa = (origin, soa)
        self.records = {origin.lower(): [soa, dns.Record_NS(b"ns." + origin, ttl=self.default_ttl)]}


class _Factory(names_server.DNSServerFactory):
    """
    DNSServerFactory that counts queries and can drop them or answer SERVFAIL.
    """

    def __init__(self, auth: MemoryAuthority) -> None:
        super().__init__(authorities=[auth])
        self.mode = "answer"
        #: (qname text, "udp" or "tcp") of every query received.
        self.queries: list[tuple[str, str]] = []

    def messageReceived(self, message, proto, address=None):
        message.timeReceived = time.time()
        transport = "udp" if address is not None else "tcp"
        for q in message.queries:
            self.queries.append((q.name.name.decode("ascii", "replace").lower(), transport))
        if self.mode == "drop":
            return
        if self.mode == "servfail":
            self.sendReply(proto, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)
            return
        return super().messageReceived(message, proto, address)

    def sendReply(self, protocol, message, address):
        if address is None:
            # A TCP answer may be up to 64 KiB.
            message.maxSize = 0
        elif len(message.toStr()) > UDP_SIZE:
            # RFC 1035 4.2.1 / RFC 2181 9: an answer too big for UDP goes out
            # empty with TC set, and the client asks again over TCP.
            # (twisted.names would send it whole.)
            message.answers, message.authority, message.additional = [], [], []
            message.trunc = 1
        return super().sendReply(protocol, message, address)


class DNSServer:
    """
    The running server.  C{address} is the C{"127.0.0.1:port"} string for
    C{srv_nameservers}.
    """

    def __init__(self, zone: str, ttl: int) -> None:
        self.authority = MemoryAuthority(zone, ttl)
        self.factory = _Factory(self.authority)
        self.port = 0
        self._udp = None
        self._tcp = None

    @classmethod
    async def start(cls, testcase: Any = None, zone: str = "test", ttl: int = 1, reactor: Any = None) -> "DNSServer":
        """
        Listen on UDP and TCP (same free port); stopped at C{testcase} cleanup.
        """
        if reactor is None:
            from twisted.internet import reactor
        self = cls(zone, ttl)
        for _attempt in range(20):
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(self.factory), interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self.factory, interface="127.0.0.1")
            except error.CannotListenError:
                await udp.stopListening()
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:  # pragma: no cover
            raise RuntimeError("no port free for both UDP and TCP")
        if testcase is not None:
            testcase.addCleanup(self.stop)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self.factory.mode

    @mode.setter
    def mode(self, value: str) -> None:
        assert value in ("answer", "drop", "servfail"), value
        self.factory.mode = value

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.factory.queries

    def _name(self, domain: str) -> bytes:
        return domain.rstrip(".").lower().encode("ascii")

    def set_srv(self, name: str, records: Iterable[tuple[int, int, int, str]], ttl: int | None = None) -> None:
        """
        Replace the SRV records of C{name} (a full owner name such as
        C{_fedmsg._tcp.site.test}) with (priority, weight, port, target).
        An empty list keeps the name (NODATA); L{remove} makes it NXDOMAIN.
        """
        ttl = self.authority.default_ttl if ttl is None else ttl
        rrs = [
            dns.Record_SRV(prio, weight, port, target.rstrip(".").encode("ascii"), ttl=ttl)
            for prio, weight, port, target in records
        ]
        # The name must own some record to exist; a TXT one stands in.
        self.authority.records[self._name(name)] = rrs or [dns.Record_TXT(b"no SRV here", ttl=ttl)]

    def remove(self, name: str) -> None:
        self.authority.records.pop(self._name(name), None)

    def stop(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        from twisted.internet import reactor

        for p in (self._udp, self._tcp):
            if p is not None:
                await p.stopListening()
        self._udp = self._tcp = None
        for proto in list(self.factory.connections):
            proto.transport.abortConnection()
        waited = 0.0
        while self.factory.connections and waited < 5:
            await task.deferLater(reactor, 0.01, lambda: None)
            waited += 0.01
