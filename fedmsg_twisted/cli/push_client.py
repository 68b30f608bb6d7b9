# -*- test-case-name: tests.test_push -*-
"""
C{fedmsg-logger --relay-url}: publish through the relay's HTTPS push
endpoint, so a host behind a firewall needs only outbound HTTPS.

Blocking on purpose (a shell tool has no reactor): the standard library's
C{ssl} and C{http.client}, TLS 1.2 at least, the relay's name verified
against C{--ca} (or the system's trust store), our client certificate
presented.  Envelopes are built (and, with C{sign_messages}, signed) here,
so the relay forwards exactly the bytes we send.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.request
import socket
import ssl
import sys
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit

from fedmsg_twisted import encoding
from fedmsg_twisted.envelope import Envelopes

__all__ = ["send_all", "PushClient", "PushClientError"]


class PushClientError(RuntimeError):
    """
    A message could not be pushed; the text says why, for a human.
    """


def _context(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except FileNotFoundError:
        raise PushClientError(f"--ca {ca}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise PushClientError(f"--ca {ca}: not a PEM CA certificate ({e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not cert or not key:
        raise PushClientError("--relay-url needs --client-cert and --client-key: the relay requires a client certificate")
    for flag, path in (("--client-cert", cert), ("--client-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise PushClientError(f"{flag} {path}: cannot read: {e.strerror}") from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise PushClientError(f"--client-key {key} does not match --client-cert {cert}") from None
        raise PushClientError(f"cannot load --client-cert {cert} / --client-key {key}: {e}") from None
    return ctx


def _explain(e: BaseException, url: str) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"cannot verify the relay's certificate at {url}: {e.verify_message or e}"
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, http.client.RemoteDisconnected)):
        # Under TLS 1.3 the relay checks our certificate after our side of
        # the handshake is done: a refusal shows up as the connection closing.
        return (
            f"the relay at {url} closed the connection without an answer: it probably refused "
            f"our client certificate (not issued by the CA it trusts, or not for client use) ({e})"
        )
    if isinstance(e, ssl.SSLError):
        text = str(e)
        if any(a in text for a in ("certificate required", "unknown ca", "bad certificate", "certificate unknown")):
            return f"the relay at {url} refused our client certificate ({e.reason or text})"
        return f"TLS error talking to {url}: {text}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"no answer from {url} in time"
    if isinstance(e, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused"
    if isinstance(e, OSError) and str(e).startswith("Tunnel connection failed"):
        return f"the proxy refused to connect to {url}: {e}"
    if isinstance(e, (ConnectionError, http.client.RemoteDisconnected)):
        return f"the relay at {url} closed the connection ({e}); is our client certificate from the CA it trusts?"
    return f"cannot push to {url}: {e}"


_FROM_ENVIRONMENT = object()


def proxy_for(host: str) -> str | None:
    """
    The HTTPS proxy the environment asks for (C{https_proxy}, unless
    C{no_proxy} covers C{host}), as curl and pip use them.
    """
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return proxy


def _tunnel(proxy: str, host: str, port: int, context: ssl.SSLContext, timeout: float) -> http.client.HTTPSConnection:
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise PushClientError(f"proxy {proxy!r}: only http:// proxies (HTTP CONNECT) are supported")
    headers = {}
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds).decode("ascii")
    tunnelled = http.client.HTTPSConnection(parts.hostname, parts.port or 3128, timeout=timeout, context=context)
    # TLS runs end to end through the tunnel: the relay's name is still
    # verified (http.client uses the tunnel host as server_hostname).
    tunnelled.set_tunnel(host, port, headers)
    return tunnelled


class PushClient:
    """
    One HTTPS connection to the push endpoint, reused for several messages.

    @param proxy: an C{http://[user:password@]host:port} proxy to tunnel
        through with CONNECT; by default C{https_proxy}/C{no_proxy} from
        the environment; L{None} for a direct connection.
    """

    def __init__(
        self,
        url: str,
        client_cert: str | None,
        client_key: str | None,
        ca: str | None = None,
        timeout: float = 10.0,
        proxy: Any = _FROM_ENVIRONMENT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise PushClientError(f"--relay-url {url!r} must be an https:// URL")
        self.url = url
        self.path = parts.path or "/publish"
        if parts.query:
            self.path += "?" + parts.query
        self._context = _context(client_cert, client_key, ca)
        port = parts.port or 443
        if proxy is _FROM_ENVIRONMENT:
            proxy = proxy_for(parts.hostname)
        self.proxy = proxy
        if proxy:
            self._conn = _tunnel(proxy, parts.hostname, port, self._context, timeout)
        else:
            self._conn = http.client.HTTPSConnection(parts.hostname, port, timeout=timeout, context=self._context)

    def post(self, body: bytes) -> dict:
        """
        POST one JSON body; return the relay's JSON answer.

        @raise PushClientError: on any non-2xx answer or transport error.
        """
        try:
            self._conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
            response = self._conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            via = f" (through the proxy {self._conn.host}:{self._conn.port})" if self.proxy else ""
            raise PushClientError(_explain(e, self.url) + via) from None
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {"error": data[:200].decode("utf-8", "replace")}
        if not 200 <= response.status < 300:
            why = answer.get("error") if isinstance(answer, dict) else None
            raise PushClientError(
                f"the relay refused the message: {response.status} {response.reason}"
                + (f": {why}" if why else "")
            )
        return answer if isinstance(answer, dict) else {}

    def close(self) -> None:
        self._conn.close()


def _signer(cfg: Mapping[str, Any]) -> Any:
    if not cfg["sign_messages"]:
        return None
    from fedmsg_twisted.crypto import Signer

    signer = Signer.from_config(cfg, name=cfg.get("name"))
    return getattr(signer, "sign", None) or signer.sign_blocking


def envelopes_for(cfg: Mapping[str, Any], topic: str, modname: str, payloads: Iterable[Any]) -> list[dict]:
    """
    Full envelopes, signed if C{sign_messages} is set.
    """
    sign = _signer(cfg)
    make = Envelopes(cfg)
    out = []
    for payload in payloads:
        envelope = make.make(topic=topic, msg=payload, modname=modname)
        out.append(sign(envelope) if sign is not None else envelope)
    return out


def send_all(prog: str, args: Any, cfg: Mapping[str, Any], payloads: list[Any]) -> int:
    """
    Push every payload as a full envelope; the exit code for C{fedmsg-logger}.
    """

    def error(message: str) -> int:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1

    try:
        envelopes = envelopes_for(cfg, args.topic, args.modname, payloads)
    except Exception as e:  # ConfigError, unreadable signing key, gpg failure
        return error(f"cannot sign: {e}")
    try:
        client = PushClient(
            args.relay_url,
            getattr(args, "client_cert", None),
            getattr(args, "client_key", None),
            getattr(args, "ca", None),
            timeout=float(cfg["timeout"]),
        )
    except PushClientError as e:
        return error(str(e))
    sent = 0
    try:
        for envelope in envelopes:
            client.post(encoding.dumps_bytes(envelope))
            sent += 1
    except PushClientError as e:
        done = f" ({sent} of {len(envelopes)} sent)" if len(envelopes) > 1 else ""
        return error(f"{e}{done}")
    finally:
        client.close()
    return 0
