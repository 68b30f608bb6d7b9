"""
Helpers shared by the tests: free ports, waiting for conditions, processes.
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.internet import defer, error, protocol, task


def free_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port that is free right now on C{host}.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def tcp(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """
    Poll C{predicate} on the reactor until it is true; fail after C{timeout}.

    The timeout is only a safety net so a broken test ends; nothing is asserted
    about how long it took.
    """
    from twisted.internet import reactor

    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, interval, lambda: None)
        waited += interval


def sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


class LineCollector(protocol.ProcessProtocol):
    """
    Collects a child's stdout lines and stderr; C{ended} fires with the exit code.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._buf = b""
        self.stderr = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        *complete, self._buf = self._buf.split(b"\n")
        self.lines.extend(c.decode("utf-8", "replace") for c in complete)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        if self._buf:
            self.lines.append(self._buf.decode("utf-8", "replace"))
            self._buf = b""
        code = getattr(reason.value, "exitCode", None)
        self.exit_code = code
        self.ended.callback(code)


def spawn(testcase, argv: list[str], env: dict | None = None, path: str | None = None) -> LineCollector:
    """
    Start a child process; the test kills it (if still running) at cleanup.
    """
    from twisted.internet import reactor

    proto = LineCollector()
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    from tests.fedmsgpeer import PEER_VENV

    if argv[0].startswith(PEER_VENV):
        # trial -j puts our venv on PYTHONPATH; the peer must not see our
        # pyOpenSSL (fedmsg then silently turns X.509 off).
        full_env.pop("PYTHONPATH", None)
    transport = reactor.spawnProcess(proto, argv[0], argv, env=full_env, path=path)

    async def cleanup():
        if proto.exit_code is None and not proto.ended.called:
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            await proto.ended

    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(cleanup()))
    return proto


PYTHON = sys.executable
