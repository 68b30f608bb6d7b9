"""
The benchmark driver as a smoke check: it runs, prints its table, and fails
(non-zero) when a scenario loses messages or a worker crashes.

Speed is never asserted.  The driver is a separate process with its own
workers on loopback; these tests only start it and read its output.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import utils
from twisted.trial import unittest

from tests.fedmsgpeer import ensure_peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "bench", "run.py")

# The driver checks the fedmsg venv itself, but creating it inside a test
# would blow its time budget: do it at import, as the other peer tests do.
ensure_peer()


def bench(*args: str):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return utils.getProcessOutputAndValue(sys.executable, [RUN, "--quick", *args], env=env, path=ROOT)


class QuickBenchTests(unittest.TestCase):
    timeout = 120

    async def _bench(self, *args):
        out, err, code = await bench(*args)
        return out.decode(), err.decode(), code

    def test_cheap_scenarios(self):
        """
        Relay forwarding and publish run end to end with zero loss, and the
        table has a row per variant and the ratio verdicts.
        """

        async def go():
            out, err, code = await self._bench("--only", "relay,publish", "--scale", "0.01")
            self.assertEqual(code, 0, out + err)
            for needle in (
                "fedmsg-twisted RelayService, 200B",
                "zmq.proxy (C), 10KB",
                "Python pyzmq loop, 200B",
                "fedmsg-twisted PublisherService, 200B",
                "real fedmsg.publish, 10KB",
                "relay / zmq.proxy, 200B",
                "publish / real fedmsg, 10KB",
            ):
                self.assertIn(needle, out)
            self.assertNotIn("FAILURES", out)

        from twisted.internet import defer

        return defer.Deferred.fromCoroutine(go())

    def test_loss_fails(self):
        """
        A receiver that gets fewer messages than expected makes the run fail.
        """

        async def go():
            out, err, code = await self._bench("--only", "selftest-loss")
            self.assertEqual(code, 1, out + err)
            self.assertIn("lost 10 messages where zero loss is required", out)

        from twisted.internet import defer

        return defer.Deferred.fromCoroutine(go())

    def test_crash_fails(self):
        """
        A worker that exits before it is ready makes the run fail.
        """

        async def go():
            out, err, code = await self._bench("--only", "selftest-crash")
            self.assertEqual(code, 1, out + err)
            self.assertIn("exited", out)

        from twisted.internet import defer

        return defer.Deferred.fromCoroutine(go())
