"""
A real, throwaway PostgreSQL server for tests.

C{ensure_template()} runs C{initdb} once per test process into a temporary
directory (blocking: call it at module import, before the reactor runs).
C{start_server(testcase)} starts C{postgres} on that cluster on a free
127.0.0.1 port, creates a fresh database for the test, and stops the server
(immediate shutdown: the data is throwaway) at the test's cleanup.  Starting
a server per test keeps tests independent and leaves no process behind; the
cluster is deleted when the test process exits.

PostgreSQL refuses to run as root, so when the tests run as root the cluster
belongs to the C{postgres} system user and the server runs under that uid.

Binaries: C{$FEDMSG_TEST_PG_BIN}, else the newest C{/usr/lib/postgresql/*/bin}
(Debian: C{apt-get install -y postgresql}), else C{initdb} on C{$PATH}.
Without them the PG tests skip, unless C{FEDMSG_TEST_REQUIRE_PG=1} (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile

from twisted.internet import defer, error, protocol

from tests.util import free_port, sleep

PG_USER = "fedmsg"
_template: str | None = None
_template_error: str | None = None
_databases = 0


def pg_bin() -> str | None:
    explicit = os.environ.get("FEDMSG_TEST_PG_BIN")
    if explicit:
        return explicit
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    which = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(which)) if which else None


def _run_as() -> tuple[int, int] | None:
    # (uid, gid) to run PostgreSQL as, or None for "as ourselves".
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def _chown_tree(path: str, ids: tuple[int, int] | None) -> None:
    if ids is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *ids)
        for n in files:
            os.chown(os.path.join(root, n), *ids)


def _demote(ids: tuple[int, int] | None):
    if ids is None:
        return None

    def f() -> None:
        os.setgid(ids[1])
        os.setuid(ids[0])

    return f


def skip_reason() -> str | None:
    """
    Why PostgreSQL tests cannot run here, or None.
    """
    if pg_bin() is None:
        return "PostgreSQL binaries not found (apt-get install -y postgresql)"
    ensure_template()
    return _template_error


def require() -> None:
    """
    Raise C{SkipTest} (or fail under C{FEDMSG_TEST_REQUIRE_PG=1}) without PostgreSQL.
    """
    from twisted.trial.unittest import SkipTest

    why = skip_reason()
    if why is None:
        return
    if os.environ.get("FEDMSG_TEST_REQUIRE_PG"):
        raise AssertionError(f"PostgreSQL required (FEDMSG_TEST_REQUIRE_PG) but: {why}")
    raise SkipTest(why)


def ensure_template() -> str | None:
    """
    initdb a template cluster once per process; blocking.
    """
    global _template, _template_error
    if _template is not None or _template_error is not None:
        return _template
    binary = pg_bin()
    if binary is None:
        _template_error = "PostgreSQL binaries not found (apt-get install -y postgresql)"
        return None
    ids = _run_as()
    base = tempfile.mkdtemp(prefix="fedmsg-pg-template-")
    os.chmod(base, 0o755)
    data = os.path.join(base, "data")
    os.mkdir(data, 0o700)
    _chown_tree(base, ids)
    atexit.register(shutil.rmtree, base, True)
    r = subprocess.run(
        [
            os.path.join(binary, "initdb"),
            "-D",
            data,
            "-U",
            PG_USER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        ],
        capture_output=True,
        preexec_fn=_demote(ids),
        env={**os.environ, "LC_ALL": "C"},
    )
    if r.returncode != 0:
        _template_error = f"initdb failed: {r.stderr.decode(errors='replace')[-500:]}"
        return None
    _template = data
    return _template


class _Collector(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.done = False

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.done = True
        self.ended.callback(None)


class PGServer:
    """
    The cluster's server on C{port}; C{url} points at the test's own database.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.proto: _Collector | None = None
        self.transport = None
        self.url = f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"

    async def start(self) -> None:
        from twisted.internet import reactor

        ids = _run_as()
        sockdir = os.path.join(os.path.dirname(_template), "sock")
        if not os.path.isdir(sockdir):
            os.mkdir(sockdir)
            _chown_tree(sockdir, ids)
        argv = [
            os.path.join(pg_bin(), "postgres"),
            "-D", _template,
            "-p", str(self.port),
            "-k", sockdir,
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "synchronous_commit=off",
            "-c", "logging_collector=off",
        ]
        kw = {"uid": ids[0], "gid": ids[1]} if ids is not None else {}
        self.proto = proto = _Collector()
        self.transport = reactor.spawnProcess(
            proto, argv[0], argv, env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")}, **kw
        )
        # Wait until it accepts connections (the safety timeout only ends a broken run).
        waited = 0.0
        while b"ready to accept connections" not in proto.output:
            if proto.done:
                raise AssertionError(f"postgres exited: {proto.output.decode(errors='replace')[-800:]}")
            if waited > 30:
                raise AssertionError("postgres did not start")
            await sleep(0.02)
            waited += 0.02

    async def stop(self, graceful: bool = False) -> None:
        """
        Immediate shutdown (the data is throwaway, and recent commits may be
        lost: C{synchronous_commit=off}), or with C{graceful} a fast shutdown
        that keeps every commit; idempotent.
        """
        if self.proto is not None and not self.proto.done:
            try:
                self.transport.signalProcess(signal.SIGINT if graceful else signal.SIGQUIT)
            except error.ProcessExitedAlready:
                pass
            await self.proto.ended


async def start_server(testcase) -> PGServer:
    """
    Start the process's cluster for C{testcase} with a fresh, empty database;
    the server is stopped at cleanup (the database is left behind, unused).
    """
    from twisted.internet import threads

    global _databases
    require()
    server = PGServer(free_port())
    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(server.stop()))
    await server.start()
    _databases += 1
    name = f"test{os.getpid()}_{_databases}"

    def create() -> None:
        import psycopg

        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")

    await threads.deferToThread(create)
    server.url = f"postgresql://{PG_USER}@127.0.0.1:{server.port}/{name}"
    return server
