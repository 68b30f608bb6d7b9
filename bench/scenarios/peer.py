"""
The real fedmsg 1.1.7 (run with the fedmsg venv's python, in a directory
holding C{fedmsg.d/bench.py}).

Roles: pub (C{fedmsg.publish}, passive bind), sub (C{fedmsg.tail_messages},
with C{validate_signatures} when the config says so).

fedmsg documents C{high_water_mark = 0} as "unlimited" but leaves libzmq's
1000 (and crashes on any other value with modern pyzmq), so a fast sender
overruns it and the run loses messages.  We patch its helper to apply 0 as
documented; without the patch fedmsg would look faster by dropping.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

warnings.simplefilter("ignore")

import zmq  # noqa: E402

import fedmsg  # noqa: E402
import fedmsg.core  # noqa: E402


def _hwm(socket, config):
    socket.setsockopt(zmq.SNDHWM, config.get("bench_hwm", 0))
    socket.setsockopt(zmq.RCVHWM, config.get("bench_hwm", 0))


fedmsg.core.set_high_water_mark = _hwm


def pub(args):
    fedmsg.init(name="bench", endpoints={"bench": [args.bind]}, active=False, post_init_sleep=0)
    ctl = common.Control()
    common.say("READY")
    while True:
        fedmsg.publish(topic="bench.probe", msg={"sender": args.id}, modname="bench")
        if "go" in ctl.lines(0.02) or ctl.eof:
            break
    msgs = [common.payload(args.size, i) for i in range(64)]
    c0, t0 = common.cpu(), time.monotonic()
    publish = fedmsg.publish
    for i in range(args.n):
        publish(topic="data", msg=msgs[i % 64], modname="bench")
    t1, c1 = time.monotonic(), common.cpu()
    common.result(role="sender", sent=args.n, t0=t0, t1=t1, cpu=c1 - c0)
    ctl.wait_for("stop", 30)
    os._exit(0)


def sub(args):
    fedmsg.init(name="bench-sub", endpoints={"bench": list(args.connect)}, mute=True)
    rcv = common.Receiver(args.n, args.senders)
    common.say("READY")
    state = {"last": time.monotonic()}

    def watchdog():
        while True:
            time.sleep(0.05)
            idle = time.monotonic() - state["last"]
            if rcv.done or (rcv.warm and rcv.count and idle > args.idle) or idle > 120:
                rcv.report()
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    for name, endpoint, topic, msg in fedmsg.tail_messages():
        state["last"] = time.monotonic()
        if common.is_heartbeat(topic):
            continue
        if common.is_probe(topic):
            rcv.probe(msg["msg"]["sender"])
            continue
        rcv.got()
    time.sleep(60)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role")
    p.add_argument("--bind")
    p.add_argument("--connect", action="append")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--id", default="fedmsg")
    args = p.parse_args()
    globals()[args.role](args)


if __name__ == "__main__":
    main()
