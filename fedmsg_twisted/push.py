# -*- test-case-name: tests.test_push -*-
"""
The relay's HTTPS push endpoint: how a service behind a firewall publishes
with nothing but outbound HTTPS.

    POST /publish HTTP/1.1
    Content-Type: application/json

    {"topic": "org.fedoraproject.prod.git.receive", "msg": {...}}

Mutual TLS identifies the client: its certificate must chain to C{push_ca},
and its CN must be allowed the topic by C{routing_policy} (with
C{routing_nitpicky}, an unlisted topic is refused; without it, allowed), the
same rule fedmsg applies to signers.

The body is one of:
  - a complete envelope (it has a C{msg_id}; signed or not): forwarded with
    I{the bytes received}, so a signature stays valid byte for byte;
  - C{{"topic": FULL_TOPIC, "msg": ...}}, FULL_TOPIC starting with
    C{topic_prefix}; or C{{"modname": M, "topic": T, "msg": ...}}, which
    becomes C{PREFIX.ENV.M.T} as C{fedmsg.publish} builds it: the relay
    makes the envelope (unsigned, unless a signer is given).

Answers: 202 C{{"msg_id": ...}}; 400 malformed; 403 not allowed; 404, 405,
413 (rejected on C{Content-Length} before reading, and counted while
receiving), 415 (not C{application/json}).  Error bodies are
C{{"error": sentence, "reason": label}}.  Nothing is forwarded on any error.

Slow clients are cut off: C{push_timeout} is both the idle timeout and the
deadline for receiving a whole request (head and body), so trickling one
byte at a time does not keep a connection open.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import crypto as _ossl
from twisted.application.service import Service
from twisted.internet import defer, endpoints, interfaces
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import implementer

from fedmsg_twisted import encoding, tls
from fedmsg_twisted.config import ConfigError
from fedmsg_twisted.envelope import Envelopes
from fedmsg_twisted.stats import Counters

log = Logger(namespace="fedmsg_twisted.push")

__all__ = [
    "PushResource",
    "PushService",
    "PushError",
    "push_server_options",
    "add_push_service",
    "PushHealth",
    "DEFAULT_MAX_BODY",
    "DEFAULT_TIMEOUT",
]

DEFAULT_MAX_BODY = 256 * 1024
DEFAULT_TIMEOUT = 30.0
PATH = b"/publish"

#: After refusing a too-large body we keep reading (and discarding) this many
#: bytes at most, so the client gets to read its 413 instead of a reset.
_DRAIN_FACTOR = 4


class PushError(RuntimeError):
    """
    The push endpoint cannot start (bad TLS material, port taken).
    """


# -- TLS material ------------------------------------------------------------


def load_server_material(
    config: Mapping[str, Any], now: datetime.datetime | None = None
) -> tuple[Any, list[x509.Certificate], list[x509.Certificate]]:
    """
    Read and check C{push_private_key}, C{push_certificate} (leaf first, then
    any intermediates) and C{push_ca} (one or more client CAs).

    @return: C{(private key, [leaf, *chain], [ca, ...])} as C{cryptography} objects.
    @raise ConfigError: naming the key and the file that is wrong.
    """
    missing = "push_listen is set but {key} is not"
    key, chain = tls.load_key_and_chain(config, "push", "push_certificate", "push_private_key", missing, now)
    ca_path, ca_data = tls.read_pem(config, "push_ca", "push", missing.format(key="'push_ca'"))
    cas = tls.load_certificates("push", "push_ca", ca_path, ca_data)
    return key, chain, cas


def push_server_options(config: Mapping[str, Any]) -> CertificateOptions:
    """
    Server TLS options for mutual TLS: our certificate, a client certificate
    required and verified against C{push_ca}, TLS 1.2 at least.

    @raise ConfigError: for a missing, unreadable or mismatched key or certificate.
    """
    key, chain, cas = load_server_material(config)
    # pyOpenSSL 26 deprecates its own key and certificate types for the
    # context but its X509Store still wants them for the trusted CAs.
    options = CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        verify=True,
        requireCertificate=True,
        caCerts=[_ossl.X509.from_cryptography(c) for c in cas],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    # The context is otherwise built at the first connection: build it now,
    # so a problem stops start-up instead of every handshake.
    try:
        options.getContext()
    except Exception as e:
        raise ConfigError(f"push: cannot build the TLS context from push_certificate, push_private_key, push_ca: {e!r}") from None
    return options


def push_trust_store(config: Mapping[str, Any], reactor: Any = None) -> Any:
    """
    The revocation list for client certificates (C{push_crl}: a file, or an
    https URL re-fetched every C{crl_cache_expiry}), with the same
    C{crl_grace_period} rules as message validation; L{None} without
    C{push_crl}.  It applies to certificates issued by the first CA of
    C{push_ca}.

    @raise ConfigError: if a CRL file cannot be used at start-up.
    """
    location = config.get("push_crl")
    if not location:
        return None
    from fedmsg_twisted.crypto.x509 import TrustStore

    store = TrustStore(
        config.get("push_ca"),
        location,
        crl_grace_period=float(config.get("crl_grace_period", 86400)),
        crl_refresh=float(config.get("crl_cache_expiry", 3600) or 0),
        reactor=reactor,
    )
    if store.crl is None and not store.needs_network:
        raise ConfigError(f"push: push_crl {location}: {store.crl_problem or store.ca_problem or 'unusable'}")
    return store


def common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# -- the HTTP side -------------------------------------------------------------


def _error_body(message: str, reason: str) -> bytes:
    return json.dumps({"error": message, "reason": reason}).encode("utf-8")


@implementer(interfaces.IHandshakeListener)
class PushChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that knows its TLS peer, refuses oversized bodies
    before reading them, and gives each request a deadline.

    @ivar peer_cn: the client certificate's CN, set once the TLS handshake
        has completed (under TLS 1.3 it is not known in C{connectionMade}).
    """

    peer_cn: str | None = None
    peer_certificate: x509.Certificate | None = None
    _refusing = False
    _drain_over = False
    _drained = 0
    _deadline = None

    # -- TLS ----------------------------------------------------------------

    def handshakeCompleted(self) -> None:
        cert = self.transport.getPeerCertificate()
        if cert is not None:
            self.peer_certificate = cert.to_cryptography()
            self.peer_cn = common_name(self.peer_certificate)

    # -- request deadline ---------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.lost: defer.Deferred = defer.Deferred()
        self.site.channels.add(self)
        self._start_deadline()

    def _start_deadline(self) -> None:
        if self.timeOut and self._deadline is None:
            self._deadline = self.callLater(self.timeOut, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.counters.incr("timeouts")
        log.info("Push client {peer} too slow to send a request; closing", peer=str(self.transport.getPeer()))
        self.timeoutConnection()

    def timeoutConnection(self) -> None:
        self._stop_deadline()
        super().timeoutConnection()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        self._start_deadline()

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)
        self.site.channels.discard(self)
        self.lost.callback(None)

    # -- early refusal ------------------------------------------------------------

    def allHeadersReceived(self) -> None:
        limit = self.site.max_body
        if self.length is not None and self.length > limit:
            self.refuse(413, f"body of {self.length} bytes is larger than the limit of {limit}", "too-large")
            return
        super().allHeadersReceived()

    def refuse(self, code: int, message: str, reason: str) -> None:
        """
        Answer C{code} now, before the body is read, then discard the rest of
        the body (up to a bound) and close.
        """
        if self._refusing:
            return
        self._refusing = True
        self.site.counters.incr("refused", str(code))
        log.info(
            "Refused a push from {cn}: {code} {message}",
            cn=self.peer_cn,
            code=code,
            message=message,
        )
        body = _error_body(message, reason)
        phrase = http.RESPONSES.get(code, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (code, phrase, len(body), body)
        )
        if self._transferDecoder is None:  # no body to wait for
            self._end_refusal()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refusing:
            super().rawDataReceived(data)
            return
        if self._drain_over:
            return
        # Read the rest of the body (the request ignores it) up to a bound,
        # and close once it is complete: closing while the client is still
        # sending would reset the connection before it reads its answer.
        self._drained += len(data)
        if self._drained > self.site.max_body * _DRAIN_FACTOR or self._transferDecoder is None:
            self._end_refusal()
            return
        try:
            self._transferDecoder.dataReceived(data)
        except Exception:
            self._end_refusal()

    def _end_refusal(self) -> None:
        self._drain_over = True
        self.loseConnection()

    def allContentReceived(self) -> None:
        self._stop_deadline()
        if self._refusing:
            self._end_refusal()
            return
        super().allContentReceived()


class PushRequest(server.Request):
    """
    Keeps the body in memory (it is bounded) and counts it as it arrives.
    """

    _received = 0

    def gotLength(self, length: int | None) -> None:
        from io import BytesIO

        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if getattr(channel, "_refusing", False):
            return
        self._received += len(data)
        limit = channel.site.max_body
        if self._received > limit:
            channel.refuse(413, f"body is larger than the limit of {limit} bytes", "too-large")
            return
        self.content.write(data)


class PushSite(server.Site):
    """
    The push endpoint's site: plain HTTP/1.1 over TLS, bounded bodies.
    """

    protocol = PushChannel
    requestFactory = PushRequest
    displayTracebacks = False

    def __init__(self, resource: "PushResource", max_body: int, timeout: float | None, reactor: Any = None) -> None:
        super().__init__(resource, timeout=timeout, reactor=reactor)
        self.max_body = max_body
        self.counters = resource.counters
        self.channels: set[PushChannel] = set()

    def close_all(self) -> defer.Deferred:
        """
        Abort every open connection; fires once all are gone.
        """
        waiting = []
        for channel in list(self.channels):
            waiting.append(channel.lost)
            channel.transport.abortConnection()
        return defer.DeferredList(waiting)

    def log(self, request: Any) -> None:
        # One line per request, in our own namespace, with the client's CN.
        log.info(
            "{cn} {method} {uri} {code}",
            cn=getattr(request.channel, "peer_cn", None),
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace")[:200],
            code=request.code,
        )


class _Refusal(Exception):
    def __init__(self, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def _allowed(topic: str, cn: str, config: Mapping[str, Any]) -> str | None:
    """
    fedmsg's routing rule for the client certificate's CN: L{None} if allowed,
    else why not.
    """
    policy = config.get("routing_policy") or {}
    if topic in policy:
        if cn in policy[topic]:
            return None
        return f"client {cn!r} is not allowed to publish on {topic!r} by routing_policy"
    if config.get("routing_nitpicky", False):
        return f"topic {topic!r} is not in routing_policy and routing_nitpicky is set"
    return None


class PushResource(resource.Resource):
    """
    C{POST /publish}: check, authorise and hand one message to the relay.

    @param relay: has C{inject(frames, source) -> Deferred} (a
        L{fedmsg_twisted.relay.RelayService}).
    @param envelopes: builds envelopes for the short form; defaults to one
        made from C{config}.
    @param signer: optional; signs envelopes the relay builds.
    @param trust: optional L{fedmsg_twisted.crypto.x509.TrustStore} whose
        CRL client certificates are checked against (L{push_trust_store}).
    @ivar counters: C{accepted}, C{refused} by status code, C{timeouts}.
    """

    isLeaf = True

    def __init__(
        self,
        relay: Any,
        config: Mapping[str, Any],
        envelopes: Envelopes | None = None,
        *,
        signer: Any = None,
        trust: Any = None,
    ) -> None:
        super().__init__()
        self.relay = relay
        self.trust = trust
        self.config = config
        self.envelopes = envelopes if envelopes is not None else Envelopes(config)
        self.signer = signer
        self.max_body = int(config.get("push_max_body", DEFAULT_MAX_BODY))
        self.counters = Counters()

    def render(self, request: Any) -> Any:
        try:
            cn, topic, body, envelope = self._check(request)
        except _Refusal as r:
            self._refuse(request, r)
            return server.NOT_DONE_YET
        d = defer.maybeDeferred(self._prepare, topic, body, envelope)
        d.addCallback(lambda frames: self.relay.inject(frames, source="push"))
        d.addCallbacks(self._accepted, self._failed, callbackArgs=(request, cn, topic), errbackArgs=(request, cn))
        return server.NOT_DONE_YET

    # -- checks, cheapest first -------------------------------------------------------

    def _check(self, request: Any) -> tuple[str, str, bytes | None, dict]:
        if request.path != PATH:
            raise _Refusal(404, f"no such resource; POST messages to {PATH.decode()}", "not-found")
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            raise _Refusal(405, "only POST is allowed", "method-not-allowed")
        ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
        media, _, params = ctype.partition(";")
        charset = params.strip().lower()
        if media.strip().lower() != "application/json" or charset not in ("", "charset=utf-8", 'charset="utf-8"'):
            raise _Refusal(415, f"Content-Type must be application/json, not {ctype!r}", "content-type")
        cn = self._peer_cn(request)
        if cn is None:
            raise _Refusal(403, "a client certificate with a CN is required", "no-client-certificate")
        if self.trust is not None:
            self._check_revocation(request, cn)
        if not getattr(self.relay, "running", True):
            raise _Refusal(503, "the relay is not running", "relay-stopped")
        body = request.content.getvalue()
        if len(body) > self.max_body:
            raise _Refusal(413, f"body is larger than the limit of {self.max_body} bytes", "too-large")
        try:
            value = encoding.decode_body(body, 0)
        except encoding.DecodeError as e:
            raise _Refusal(400, f"body is not a JSON object: {e.detail[:200]}", e.reason) from None
        if "msg_id" in value:
            topic = self._check_envelope(value)
            envelope, raw = value, body
        else:
            envelope = self._build(value)
            topic, raw = envelope["topic"], None
        why = _allowed(topic, cn, self.config)
        if why is not None:
            raise _Refusal(403, why, "routing-policy")
        return cn, topic, raw, envelope

    def _check_envelope(self, value: dict) -> str:
        topic = value.get("topic")
        if not isinstance(topic, str) or not topic:
            raise _Refusal(400, "the envelope has no string 'topic'", "not-an-envelope")
        if "msg" not in value:
            raise _Refusal(400, "the envelope has no 'msg'", "not-an-envelope")
        if not isinstance(value["msg_id"], str):
            raise _Refusal(400, "the envelope's 'msg_id' is not a string", "not-an-envelope")
        return topic

    def _build(self, value: dict) -> dict:
        extra = set(value) - {"topic", "msg", "modname"}
        if extra or "msg" not in value or "topic" not in value:
            raise _Refusal(
                400,
                "expected a complete envelope (with msg_id) or {\"topic\", \"msg\"[, \"modname\"]}"
                + (f"; unexpected keys {sorted(extra)}" if extra else ""),
                "not-an-envelope",
            )
        topic, modname = value["topic"], value.get("modname")
        if not isinstance(topic, str) or not topic or (modname is not None and not (isinstance(modname, str) and modname)):
            raise _Refusal(400, "'topic' and 'modname' must be non-empty strings", "not-an-envelope")
        prefix = self.config["topic_prefix"]
        if modname is None:
            if not topic.startswith(prefix + "."):
                raise _Refusal(
                    400,
                    f"topic {topic!r} must start with {prefix + '.'!r}, or give 'modname' "
                    "and the last part of the topic",
                    "bad-topic",
                )
            envelope = self.envelopes.make(topic="-", msg=value["msg"], modname="-")
            envelope["topic"] = topic
            return envelope
        return self.envelopes.make(topic=topic, msg=value["msg"], modname=modname)

    def _check_revocation(self, request: Any, cn: str) -> None:
        cert = self._peer_certificate(request)
        trust = self.trust
        trust.refresh_files()  # throttled stat() of the CRL file
        problem = trust.crl_verdict()
        if problem is not None:
            log.error("Cannot check push client certificates: {detail}", detail=problem[1])
            raise _Refusal(503, f"cannot check client certificates for revocation now: {problem[1]}", "crl")
        crl = trust.crl
        if crl is None or trust.ca is None or cert.issuer != trust.ca.subject:
            return
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise _Refusal(
                403, f"client certificate {cn!r} (serial {cert.serial_number:x}) is revoked", "revoked"
            )

    def _peer_certificate(self, request: Any) -> x509.Certificate | None:
        channel = request.channel
        if getattr(channel, "peer_certificate", None) is not None:
            return channel.peer_certificate
        # Not our channel (e.g. the resource mounted elsewhere): ask TLS.
        get = getattr(request.transport, "getPeerCertificate", None)
        cert = get() if get is not None else None
        return cert.to_cryptography() if cert is not None else None

    def _peer_cn(self, request: Any) -> str | None:
        cert = self._peer_certificate(request)
        return common_name(cert) if cert is not None else None

    # -- forwarding ------------------------------------------------------------------

    def _prepare(self, topic: str, body: bytes | None, envelope: dict) -> Any:
        if body is not None:
            return [topic.encode("utf-8"), body]
        if self.signer is None:
            return [topic.encode("utf-8"), encoding.dumps_bytes(envelope)]
        sign = getattr(self.signer, "sign_async", None) or self.signer.sign
        d = defer.maybeDeferred(sign, envelope)
        d.addCallback(lambda signed: [topic.encode("utf-8"), encoding.dumps_bytes(signed)])
        return d

    def _accepted(self, envelope: dict, request: Any, cn: str, topic: str) -> None:
        self.counters.incr("accepted")
        log.info("Pushed {topic} from {cn} ({msg_id})", topic=topic, cn=cn, msg_id=envelope.get("msg_id"))
        self._answer(request, 202, {"msg_id": envelope.get("msg_id")})

    def _failed(self, failure: Failure, request: Any, cn: str) -> None:
        from fedmsg_twisted.relay import Rejected

        if failure.check(encoding.DecodeError):
            e = failure.value
            code = 413 if e.reason == "too-large" else 400
            self._refuse(request, _Refusal(code, f"the relay refused the message: {e}", e.reason))
        elif failure.check(Rejected):
            e = failure.value
            self._refuse(request, _Refusal(403, f"the relay rejected the message: {e.reason}", e.reason))
        else:
            log.failure("Push from {cn} failed unexpectedly", failure, cn=cn)
            self._refuse(request, _Refusal(500, "internal error; see the relay's log", "internal"))

    def _refuse(self, request: Any, r: _Refusal) -> None:
        self.counters.incr("refused", str(r.code))
        log.info(
            "Refused a push from {cn}: {code} {message}",
            cn=getattr(request.channel, "peer_cn", None),
            code=r.code,
            message=r.message,
        )
        self._answer(request, r.code, {"error": r.message, "reason": r.reason})

    def _answer(self, request: Any, code: int, value: dict) -> None:
        if request.finished or request._disconnected:
            return
        body = json.dumps(value).encode("utf-8")
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()


# -- the service -------------------------------------------------------------------


def _server_endpoint(reactor: Any, description: str) -> Any:
    """
    The plain (TCP, UNIX, systemd) endpoint under the TLS layer.

    C{ssl:...} is accepted for readability and means the same address as
    C{tcp:...}: certificate and key come from the C{push_*} keys, because
    Twisted's C{ssl:} endpoint cannot require client certificates.
    """
    desc = description.strip()
    if desc.isdigit():
        desc = "tcp:" + desc
    if desc.startswith("ssl:"):
        for k in ("privateKey=", "certKey=", "extraCertChain=", "caCertsDir=", "sslmethod=", "dhParameters="):
            if k in desc:
                raise ConfigError(
                    f"push: push_listen {description!r}: give TLS files with push_certificate, "
                    f"push_private_key and push_ca, not {k[:-1]!r}"
                )
        desc = "tcp:" + desc[4:]
    try:
        return endpoints.serverFromString(reactor, desc)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(
            f"push: push_listen {description!r} is not a server endpoint description "
            f"like 'ssl:8443:interface=127.0.0.1': {e}"
        ) from None


class PushService(Service):
    """
    Listens for HTTPS pushes and hands them to C{relay}.

    @ivar port: the listening port once started (C{port.getHost().port}).
    @ivar resource: the L{PushResource}, with its counters.
    """

    name = "push"

    def __init__(self, config: Mapping[str, Any], relay: Any, reactor: Any = None, *, signer: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.config = config
        self.relay = relay
        self.listen = config.get("push_listen")
        self._reactor = reactor
        self.resource = PushResource(relay, config, signer=signer)
        self.port = None
        self.site: PushSite | None = None
        self.trust: Any = None

    def startService(self) -> None:
        if not self.listen:
            raise ConfigError("push: 'push_listen' is not set")
        options = push_server_options(self.config)
        self.trust = push_trust_store(self.config, self._reactor)
        endpoint = _server_endpoint(self._reactor, self.listen)
        # 0 turns the timeouts off (twisted.web would time out at once).
        timeout = float(self.config.get("push_timeout", DEFAULT_TIMEOUT)) or None
        site = self.site = PushSite(self.resource, self.resource.max_body, timeout, reactor=self._reactor)
        factory = TLSMemoryBIOFactory(options, False, site)
        # The stock endpoints listen synchronously: a taken port must fail
        # startService itself, so the process ends with the reason.
        starting = True
        failures: list[Failure] = []

        def failed(f: Failure) -> None:
            if starting:
                failures.append(f)
            else:
                log.failure("push endpoint {listen} failed", f, listen=self.listen)

        d = endpoint.listen(factory)
        d.addCallbacks(self._listening, failed)
        starting = False
        if failures:
            raise PushError(f"push: cannot listen on push_listen {self.listen!r}: {failures[0].getErrorMessage()}")
        if self.trust is not None:
            self.resource.trust = self.trust
            d = self.trust.start()  # fetches a CRL URL; files are already read
            d.addErrback(lambda f: log.failure("push_crl: first fetch failed", f))
        super().startService()

    def _listening(self, port: Any) -> None:
        self.port = port
        log.info("HTTPS push endpoint listening on {address}", address=port.getHost())

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self.trust is not None:
            self.trust.stop()
        port, self.port = self.port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        if self.site is not None:
            site = self.site
            d.addCallback(lambda _: site.close_all())
        return d


class PushHealth:
    """
    The push endpoint as a L{fedmsg_twisted.health} component: live while
    running, ready while listening (and, with C{push_crl}, while the CRL
    can be used).  Counters: C{accepted}, C{refused} by status code,
    C{timeouts}; gauge: open connections.
    """

    def __init__(self, service: PushService, name: str = "push") -> None:
        self.service = service
        self.name = name
        self.counters = service.resource.counters

    def is_live(self) -> bool:
        return bool(self.service.running)

    def is_ready(self) -> bool:
        svc = self.service
        if not (svc.running and svc.port is not None):
            return False
        return svc.trust is None or svc.trust.crl_verdict() is None

    def gauges(self) -> dict[str, Any]:
        site = self.service.site
        return {"open_connections": len(site.channels) if site is not None and self.service.running else 0}

    def details(self) -> dict[str, Any]:
        port = self.service.port
        return {"listen": self.service.listen, "address": str(port.getHost()) if port is not None else None}


def add_push_service(parent: Any, config: Mapping[str, Any], relay: Any, reactor: Any = None) -> PushService | None:
    """
    Add a L{PushService} to C{parent} if C{push_listen} is set (the one line
    C{relay_tap} needs); start-up errors then surface through C{parent}.
    """
    if not config.get("push_listen"):
        return None
    svc = PushService(config, relay, reactor)
    svc.setServiceParent(parent)
    return svc
