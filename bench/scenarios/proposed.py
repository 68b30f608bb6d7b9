"""
Proposed hot-path changes for the core, applied by monkeypatching so their
gain is measured beside the current code in the same run (relay and
subscribe scenarios, variant "+ proposed patches").  The library does not
use this module; the changes are proposed to the lead as diffs.

1. C{_Socket.doRead}: receive with C{socket.recv} and integer flags instead
   of C{recv_multipart(zmq.NOBLOCK)}, which builds C{enum.Flag} objects and
   loops generically for every message.
2. C{_Socket.send_frames}: two C{socket.send} calls with precomputed integer
   flags instead of C{send_multipart} (zmq takes a multipart message
   atomically: once the first part is accepted the second is too), and skip
   the C{_schedule_read} call when a read is already scheduled.
3. C{Counters.incr}: the hot counters (label C{""}) go straight into the
   C{Counter} with a prebuilt key.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import zmq as _zmq  # noqa: E402

from fedmsg_twisted import stats  # noqa: E402
from fedmsg_twisted import zmq as fzmq  # noqa: E402

_NOBLOCK = int(_zmq.NOBLOCK)
_MORE_NOBLOCK = int(_zmq.NOBLOCK | _zmq.SNDMORE)
_RCVMORE = int(_zmq.RCVMORE)
_Again = _zmq.Again


def doRead(self) -> None:
    if self.read_scheduled is not None:
        if not self.read_scheduled.called:
            self.read_scheduled.cancel()
        self.read_scheduled = None
    sock = self.socket
    recv, more = sock.recv, sock.getsockopt
    on_frames = self._on_frames
    for _ in range(fzmq.READ_BATCH):
        if self.factory is None:
            return
        try:
            frames = [recv(_NOBLOCK)]
        except _Again:
            return
        while more(_RCVMORE):
            frames.append(recv(_NOBLOCK))
        try:
            on_frames(frames)
        except Exception:
            fzmq.log.failure("Unexpected error handling a zmq message on {sock!r}", sock=self)
    self._schedule_read()


def send_frames(self, frames) -> bool:
    try:
        if len(frames) == 2:
            send = self.socket.send
            send(frames[0], _MORE_NOBLOCK)
            send(frames[1], _NOBLOCK)
        else:
            self.socket.send_multipart(frames, _NOBLOCK)
    except _Again:
        return False
    if self.read_scheduled is None:
        self._schedule_read()
    return True


_keys: dict = {}


def incr(self, name: str, label: str = "", n: int = 1) -> None:
    key = _keys.get(name) if not label else None
    if key is None:
        key = (name, label)
        if not label:
            _keys[name] = key
    self._counts[key] += n


def apply() -> None:
    fzmq._Socket.doRead = doRead
    fzmq._Socket.send_frames = send_frames
    stats.Counters.incr = incr


if __name__ == "__main__":
    apply()
    import ours

    sys.argv[0] = os.path.join(HERE, "ours.py")
    ours.main()
