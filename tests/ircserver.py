"""
A real IRC server for the tests (Debian's C{ngircd}) and a raw IRC client.

L{NgircdServer} writes a config into the test's temp directory, runs
C{ngircd -n -f CONF} as a child process on free loopback ports (plain, and
TLS with a throwaway CA when asked), and can be killed and restarted on the
same ports.  L{RawClient} is a deliberately dumb client: it registers, joins,
answers PINGs, and records every line the server sends it, so the tests
assert on exactly what reached the channel.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.protocols import basic

from tests.util import free_port, spawn, wait_for

NGIRCD = shutil.which("ngircd") or "/usr/sbin/ngircd"


def _required(found: bool, what: str) -> bool:
    # CI installs the servers (scripts/install-test-deps): there, a missing
    # one is a failure, not a reason to skip.
    if not found and os.environ.get("FEDMSG_TEST_REQUIRE_IRCD"):
        raise RuntimeError(f"{what} is required (FEDMSG_TEST_REQUIRE_IRCD=1) but not installed")
    return found


def have_ngircd() -> bool:
    return _required(os.access(NGIRCD, os.X_OK), "ngircd")


def write_certs(directory: str, hostname: str = "localhost") -> dict[str, str]:
    """
    A throwaway CA (tests/certs.py) and a server certificate for C{hostname}
    and 127.0.0.1.  Returns the paths of C{ca}, C{cert} and C{key}.
    """
    from tests.certs import make_pki

    pki = make_pki(directory, crl=False)
    crt, key = pki.issue(hostname, client=False, server=True, dns=[hostname], ips=["127.0.0.1"], name="server")
    for p in (crt, key, pki.ca_cert_path):
        os.chmod(p, 0o644)  # ngircd runs as "nobody"
    os.chmod(directory, 0o755)
    return {"ca": pki.ca_cert_path, "cert": crt, "key": key}


class NgircdServer:
    """
    One ngircd process for one test.  C{start()} and C{stop()} may be
    called again (same ports) to simulate a server restart.
    """

    def __init__(self, testcase, tls: bool = False, password: str | None = None, extra: str = "") -> None:
        self.testcase = testcase
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(os.path.join(self.dir, "conf.d"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.certs = write_certs(os.path.join(self.dir, "certs")) if tls else None
        self.conf = os.path.join(self.dir, "ngircd.conf")
        lines = [
            "[Global]",
            "Name = irc.test.local",
            "Info = fedmsg-twisted test server",
            "AdminInfo1 = test",
            "AdminInfo2 = test",
            "AdminEMail = test@localhost",
            "Listen = 127.0.0.1",
            f"Ports = {self.port}",
            "MotdPhrase = test",
        ]
        if password:
            lines.append(f"Password = {password}")
        lines += [
            "[Limits]",
            "MaxNickLength = 30",
            "PingTimeout = 120",
            "PongTimeout = 20",
            "ConnectRetry = 60",
            "[Options]",
            "PAM = no",
            "Ident = no",
            "DNS = no",
            f"IncludeDir = {os.path.join(self.dir, 'conf.d')}",
        ]
        if tls:
            lines += [
                "[SSL]",
                f"CertFile = {self.certs['cert']}",
                f"KeyFile = {self.certs['key']}",
                f"Ports = {self.tls_port}",
            ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n" + extra)
        self.process = None
        testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(self.stop()))

    async def start(self) -> None:
        self.process = spawn(self.testcase, [NGIRCD, "-n", "-f", self.conf])
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])

        def listening() -> bool:
            text = "\n".join(self.process.lines) + self.process.stderr.decode("utf-8", "replace")
            if self.process.exit_code is not None:
                raise AssertionError(f"ngircd exited: {text}")
            return all(f"]:{p} " in text for p in ports)

        await wait_for(listening, what="ngircd listening")

    async def stop(self) -> None:
        """
        Kill the server (SIGKILL: the "server died" case) and wait for it.
        """
        p, self.process = self.process, None
        if p is None or p.ended.called:
            return
        try:
            p.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        await p.ended


class RawClient(basic.LineReceiver):
    """
    Registers, then records every line; answers PING.
    """

    delimiter = b"\r\n"

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.lines: list[str] = []
        self.raw: list[bytes] = []
        self.welcomed: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.send(f"NICK {self.nick}")
        self.send(f"USER {self.nick} 0 * :raw test client")

    def send(self, line: str | bytes) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.transport.write(line + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        self.raw.append(line)
        text = line.decode("utf-8", "replace")
        self.lines.append(text)
        parts = text.split(" ")
        if parts[0] == "PING":
            self.send("PONG " + " ".join(parts[1:]))
        elif len(parts) > 1 and parts[1] == "001" and not self.welcomed.called:
            self.welcomed.callback(self)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)

    def said(self, channel: str | None = None, command: str | None = None) -> list[tuple[str, str, str]]:
        """
        C{(sender nick, command, text)} of every PRIVMSG/NOTICE seen, in order.
        """
        out = []
        for line in self.lines:
            if not line.startswith(":"):
                continue
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[1] not in ("PRIVMSG", "NOTICE"):
                continue
            if channel and parts[2].lower() != channel.lower():
                continue
            if command and parts[1] != command:
                continue
            text = parts[3][1:] if parts[3].startswith(":") else parts[3]
            out.append((parts[0][1:].split("!")[0], parts[1], text))
        return out

    async def join(self, channel: str) -> None:
        self.send(f"JOIN {channel}")
        await wait_for(
            lambda: any(f" 366 {self.nick} {channel} " in l for l in self.lines), what=f"{self.nick} joined {channel}"
        )

    def has_joined(self, nick: str, channel: str) -> bool:
        return any(l.startswith(f":{nick}!") and f" JOIN {channel}" in l or l.startswith(f":{nick}!") and f" JOIN :{channel}" in l for l in self.lines)


async def raw_client(testcase, port: int, nick: str) -> RawClient:
    from twisted.internet import reactor

    client = RawClient(nick)
    f = protocol.Factory.forProtocol(lambda: client)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(f)

    async def cleanup():
        if not client.lost.called:
            client.transport.abortConnection()
            await client.lost

    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(cleanup()))
    await client.welcomed
    return client


INSPIRCD = shutil.which("inspircd") or "/usr/sbin/inspircd"
ATHEME = shutil.which("atheme-services") or "/usr/bin/atheme-services"


def have_services() -> bool:
    return _required(os.access(INSPIRCD, os.X_OK) and os.access(ATHEME, os.X_OK), "inspircd with atheme-services")


class ServicesServer:
    """
    InspIRCd 3 with Atheme services linked to it: SASL PLAIN, NickServ
    IDENTIFY and REGAIN, as on Libera or OFTC; and channel mode +c (no
    colours), which ngircd lacks.  Both run in the foreground
    as children of the test, on free loopback ports.
    """

    def __init__(self, testcase) -> None:
        self.testcase = testcase
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(os.path.join(self.dir, "data"))
        self.port = free_port()
        self.link_port = free_port()
        d = self.dir
        with open(os.path.join(d, "inspircd.conf"), "w") as f:
            f.write(f"""<config format="xml">
<server name="irc.test.local" description="test" network="TestNet">
<admin name="a" nick="a" email="a@example.org">
<bind address="127.0.0.1" port="{self.port}" type="clients">
<bind address="127.0.0.1" port="{self.link_port}" type="servers">
<connect name="main" allow="*" timeout="60" pingfreq="120" hardsendq="1M" softsendq="65536" recvq="65536"
 threshold="1000" commandrate="100000" fakelag="off" localmax="100" globalmax="100" useident="no"
 resolvehostnames="no">
<pid file="{d}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{d}/inspircd.log">
<module name="cap">
<module name="spanningtree">
<module name="services_account">
<module name="svshold">
<module name="sasl">
<module name="blockcolor">
<link name="services.test.local" ipaddr="127.0.0.1" port="{self.link_port}" allowmask="127.0.0.0/8"
 sendpass="linkpw" recvpass="linkpw">
<uline server="services.test.local" silent="yes">
<sasl target="services.test.local">
<dns server="127.0.0.1" timeout="1">
<security hidesplits="no" hideulines="yes">
""")
        modules = ["protocol/inspircd", "backend/opensex", "crypto/pbkdf2v2", "nickserv/main",
                   "nickserv/identify", "nickserv/register", "nickserv/ghost", "nickserv/enforce",
                   "saslserv/main", "saslserv/plain"]
        with open(os.path.join(d, "atheme.conf"), "w") as f:
            f.write("".join(f'loadmodule "modules/{m}";\n' for m in modules))
            f.write(f"""
serverinfo {{
    name = "services.test.local"; desc = "Test services"; numeric = "00A"; recontime = 1;
    netname = "TestNet"; hidehostsuffix = "users.test"; adminname = "admin";
    adminemail = "admin@example.org"; registeremail = "noreply@example.org";
    loglevel = {{ error; info; }}; maxlogins = 5; maxusers = 5; mdlimit = 30;
    emaillimit = 10; emailtime = 300; auth = none; casemapping = rfc1459;
}};
uplink "irc.test.local" {{
    host = "127.0.0.1"; port = {self.link_port};
    send_password = "linkpw"; receive_password = "linkpw";
}};
nickserv {{ nick = "NickServ"; user = "NickServ"; host = "services.test.local"; real = "Nick"; maxnicks = 5; expire = 30; }};
saslserv {{ nick = "SaslServ"; user = "SaslServ"; host = "services.test.local"; real = "SASL"; }};
general {{
    flood_msgs = 0; flood_time = 10; ratelimit_uses = 0; ratelimit_period = 60; kline_time = 7;
    commit_interval = 5; default_clone_allowed = 5; default_clone_warn = 4;
    uplink_sendq_limit = 1048576; language = "en";
}};
""")

    async def start(self) -> None:
        d = self.dir
        self.ircd = spawn(self.testcase, [INSPIRCD, "--nofork", "--runasroot", f"--config={d}/inspircd.conf"])
        await wait_for(lambda: "is now running" in self._output(self.ircd) or self._died(self.ircd),
                       what="inspircd running")
        self.services = spawn(self.testcase, [ATHEME, "-n", "-c", f"{d}/atheme.conf", "-D", f"{d}/data",
                                              "-l", f"{d}/atheme.log", "-p", f"{d}/atheme.pid"])
        await wait_for(lambda: "finished synching" in self._output(self.services) or self._died(self.services),
                       what="atheme linked")

    def _output(self, proc) -> str:
        return "\n".join(proc.lines) + proc.stderr.decode("utf-8", "replace")

    def _died(self, proc) -> bool:
        if proc.exit_code is not None or proc.ended.called:
            raise AssertionError("exited: " + "\n".join(proc.lines) + proc.stderr.decode("utf-8", "replace"))
        return False

    async def register(self, nick: str, password: str, stay: bool = False) -> RawClient:
        """
        Register the NickServ account C{nick} from a raw client of that
        nick; it quits unless C{stay} (then it holds the nick).
        """
        client = await raw_client(self.testcase, self.port, nick)
        client.send(f"PRIVMSG NickServ :REGISTER {password} {nick}@example.org")
        await wait_for(lambda: any("is now registered" in l for l in client.lines), what=f"{nick} registered")
        if not stay:
            client.send("QUIT :done")
            await client.lost
        return client
