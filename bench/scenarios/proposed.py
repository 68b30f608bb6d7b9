"""
Proposed hot-path changes for the core, applied by monkeypatching so their
gain is measured beside the current code in the same run (relay and
subscribe scenarios, variant "+ proposed patches").  The library does not
use this module; the changes are proposed to the lead as diffs.

The zmq read and send changes proposed here first are now in
C{fedmsg_twisted/zmq.py} itself; what is left:

1. C{Counters.incr}: the hot counters (label C{""}) go straight into the
   C{Counter} with a prebuilt key.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))


from fedmsg_twisted import stats  # noqa: E402

_keys: dict = {}


def incr(self, name: str, label: str = "", n: int = 1) -> None:
    key = _keys.get(name) if not label else None
    if key is None:
        key = (name, label)
        if not label:
            _keys[name] = key
    self._counts[key] += n


def apply() -> None:
    stats.Counters.incr = incr


if __name__ == "__main__":
    apply()
    import ours

    sys.argv[0] = os.path.join(HERE, "ours.py")
    ours.main()
